"""Markdown tables of several metrics per cell ("PSNR / LPIPS") from an evaluate run's metrics.csv.

    python benchmarks/readme_tables.py out/eval_main --metrics psnr,lpips --turns 1,5,10,20,30
    python benchmarks/readme_tables.py out/eval_protocols --protocol roundtrip --metrics psnr,lpips

README's results tables are printed by this script from the CSVs in docs/results/, so the numbers
there are the ones `anchoredit_jax.evaluate` wrote.

    python benchmarks/readme_tables.py out/eval_main --against stage1/anchor_w4

prints, from the run's per_sequence.csv.gz, each other method's difference from that one: the mean
over the sequences both have a value for, ± 1.96 standard errors of the per-sequence differences (a
95% interval; the same seeds and noise for every method, so the comparison is paired).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import os
import sys

import numpy as np

DIGITS = {"psnr": 2, "edit_psnr": 2, "identity_psnr": 2, "kept_psnr": 2, "source_psnr": 2, "ssim": 3, "lpips": 3,
          "source_lpips": 3, "edit_mae": 3, "identity_mae": 3, "kept_mae": 3}


def table(rows: list[dict], protocol: str, metrics: list[str], turns: list[int]) -> str:
    values = {(r["method"], int(r["turn"]), r["metric"]): float(r["value"])
              for r in rows if r["protocol"] == protocol and r["value"] != ""}  # "": nothing to count
    methods = list(dict.fromkeys(r["method"] for r in rows if r["protocol"] == protocol))
    if not methods:
        raise ValueError(f"no rows for protocol {protocol!r}")
    out = ["| method | " + " | ".join(f"turn {t}" for t in turns) + " |", "|---" * (len(turns) + 1) + "|"]
    for m in methods:
        cells = []
        for t in turns:
            got = [values.get((m, t, k)) for k in metrics]
            cells.append(" / ".join("–" if v is None else f"{v:.{DIGITS.get(k, 3)}f}"
                                    for k, v in zip(metrics, got)))
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def paired_interval(d) -> tuple[float, float]:
    """Paired differences, one per item (nan: the item has no value) -> (their mean, the half-width
    of its 95% interval: 1.96 standard errors). val_loss.py and moves_history.py print it too."""
    d = np.asarray(d, np.float64)
    d = d[~np.isnan(d)]
    return float(d.mean()), float(1.96 * d.std(ddof=1) / np.sqrt(len(d)))


def paired_table(rows: list[dict], protocol: str, metrics: list[str], turns: list[int], against: str) -> str:
    seqs: dict = {}  # (method, turn, metric) -> {sequence: value}
    for r in rows:
        if r["protocol"] == protocol:
            seqs.setdefault((r["method"], int(r["turn"]), r["metric"]), {})[r["sequence"]] = float(r["value"])
    methods = list(dict.fromkeys(r["method"] for r in rows if r["protocol"] == protocol))
    if against not in methods:
        raise ValueError(f"--against {against!r} is not a method of protocol {protocol!r}: {', '.join(methods)}")

    def cell(m: str, t: int, k: str) -> str:
        ref, got = seqs.get((against, t, k), {}), seqs.get((m, t, k), {})
        d = np.asarray([got[q] - ref[q] for q in sorted(ref.keys() & got.keys())])
        digits = DIGITS.get(k, 3)
        if len(d) < 2:
            return "–"
        mean, half = paired_interval(d)
        return f"{mean:+.{digits}f} ± {half:.{digits}f}"

    out = [f"| method − {against} | " + " | ".join(f"turn {t}" for t in turns) + " |",
           "|---" * (len(turns) + 1) + "|"]
    for m in (m for m in methods if m != against):
        out.append(f"| {m} | " + " | ".join(" / ".join(cell(m, t, k) for k in metrics) for t in turns) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="an evaluate --out folder (or its metrics.csv)")
    ap.add_argument("--protocol", default="edit")
    ap.add_argument("--metrics", default="psnr,lpips")
    ap.add_argument("--turns", default="1,5,10,20,30")
    ap.add_argument("--exclude", default="", help="comma-separated method names to leave out (e.g. repeated "
                    "checkpoint-free baselines: stage2/copy,stage3/copy)")
    ap.add_argument("--against", help="a method: print the others' paired differences from it (per_sequence.csv.gz)")
    args = ap.parse_args(argv)
    name = "per_sequence.csv.gz" if args.against else "metrics.csv"
    path = args.run if args.run.endswith((".csv", ".gz")) else os.path.join(args.run, name)
    try:
        with (gzip.open(path, "rt", newline="") if path.endswith(".gz") else open(path, newline="")) as f:
            rows = list(csv.DictReader(f))
        excluded = set(args.exclude.split(","))
        rows = [r for r in rows if r["method"] not in excluded]
        metrics, turns = args.metrics.split(","), [int(t) for t in args.turns.split(",")]
        print(paired_table(rows, args.protocol, metrics, turns, args.against) if args.against
              else table(rows, args.protocol, metrics, turns))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
