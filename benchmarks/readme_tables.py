"""Markdown tables of several metrics per cell ("PSNR / LPIPS") from an evaluate run's metrics.csv.

    python benchmarks/readme_tables.py out/eval_main --metrics psnr,lpips --turns 1,5,10,20,30
    python benchmarks/readme_tables.py out/eval_protocols --protocol roundtrip --metrics psnr,lpips

README's results tables are printed by this script from the CSVs in docs/results/, so the numbers
there are the ones `anchoredit_jax.evaluate` wrote.

    python benchmarks/readme_tables.py out/eval_main --against stage1/anchor_w4

prints, from the run's per_sequence.csv.gz, each other method's difference from that one: the mean
over the sequences both have a value for, ± 1.96 standard errors of the per-sequence differences (a
95% interval; the same seeds and noise for every method, so the comparison is paired).
`--turns 1-10,11-30` takes ranges of turns too: each sequence's mean over the turns of the range it
has values for (from per_sequence.csv.gz), then the mean over sequences, or their paired differences.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import os
import sys

import numpy as np

DIGITS = {"psnr": 2, "edit_psnr": 2, "identity_psnr": 2, "kept_psnr": 2, "source_psnr": 2, "ssim": 3, "lpips": 3,
          "source_lpips": 3, "edit_mae": 3, "identity_mae": 3, "kept_mae": 3,
          "edit_made": 2, "edits_kept": 2}


def parse_turns(text: str) -> list[tuple[int, int]]:
    """"1,5,1-10" -> [(1, 1), (5, 5), (1, 10)]: single turns and inclusive ranges."""
    spans = []
    for item in text.split(","):
        lo, _, hi = item.partition("-")
        try:
            span = (int(lo), int(hi or lo))
        except ValueError:
            raise ValueError(f"--turns: a turn (5) or a range of turns (1-10), not {item!r}") from None
        if not 1 <= span[0] <= span[1]:
            raise ValueError(f"--turns: {item!r} is not a turn or a rising range from 1 on")
        spans.append(span)
    return spans


def _header(spans) -> str:
    return " | ".join(f"turn {a}" if a == b else f"turns {a}–{b}" for a, b in spans)


def per_sequence(rows: list[dict], protocol: str) -> dict:
    """per_sequence.csv.gz rows -> {(method, metric): {sequence: {turn: value}}}."""
    out: dict = {}
    for r in rows:
        if r["protocol"] == protocol:
            by_turn = out.setdefault((r["method"], r["metric"]), {}).setdefault(r["sequence"], {})
            by_turn[int(r["turn"])] = float(r["value"])
    return out


def span_values(seqs: dict, method: str, metric: str, span: tuple[int, int]) -> dict:
    """{sequence: its mean over the turns of span that it has a value for} (sequences with none left out)."""
    out = {}
    for q, turns in seqs.get((method, metric), {}).items():
        got = [v for t, v in turns.items() if span[0] <= t <= span[1]]
        if got:
            out[q] = float(np.mean(got))
    return out


def table(rows: list[dict], protocol: str, metrics: list[str], spans: list[tuple[int, int]]) -> str:
    """rows from metrics.csv (single turns only) or per_sequence.csv.gz (a range of turns: each
    sequence's mean over the range, then the mean over sequences; for one turn that is metrics.csv's)."""
    methods = list(dict.fromkeys(r["method"] for r in rows if r["protocol"] == protocol))
    if not methods:
        raise ValueError(f"no rows for protocol {protocol!r}")
    if rows and "sequence" in rows[0]:
        seqs = per_sequence(rows, protocol)
        values = {(m, span, k): float(np.mean(list(v.values())))
                  for m in methods for span in spans for k in metrics if (v := span_values(seqs, m, k, span))}
    else:
        if any(a != b for a, b in spans):
            raise ValueError("a range of turns needs per_sequence.csv.gz")
        values = {(r["method"], (int(r["turn"]),) * 2, r["metric"]): float(r["value"])
                  for r in rows if r["protocol"] == protocol and r["value"] != ""}  # "": nothing to count
    out = ["| method | " + _header(spans) + " |", "|---" * (len(spans) + 1) + "|"]
    for m in methods:
        cells = []
        for span in spans:
            got = [values.get((m, span, k)) for k in metrics]
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


def paired_table(rows: list[dict], protocol: str, metrics: list[str], spans: list[tuple[int, int]],
                 against: str) -> str:
    seqs = per_sequence(rows, protocol)
    methods = list(dict.fromkeys(r["method"] for r in rows if r["protocol"] == protocol))
    if against not in methods:
        raise ValueError(f"--against {against!r} is not a method of protocol {protocol!r}: {', '.join(methods)}")

    def cell(m: str, span: tuple[int, int], k: str) -> str:
        ref, got = span_values(seqs, against, k, span), span_values(seqs, m, k, span)
        d = np.asarray([got[q] - ref[q] for q in sorted(ref.keys() & got.keys())])
        digits = DIGITS.get(k, 3)
        if len(d) < 2:
            return "–"
        mean, half = paired_interval(d)
        return f"{mean:+.{digits}f} ± {half:.{digits}f}"

    out = [f"| method − {against} | " + _header(spans) + " |", "|---" * (len(spans) + 1) + "|"]
    for m in (m for m in methods if m != against):
        out.append(f"| {m} | " + " | ".join(" / ".join(cell(m, span, k) for k in metrics) for span in spans) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="an evaluate --out folder (or its metrics.csv)")
    ap.add_argument("--protocol", default="edit")
    ap.add_argument("--metrics", default="psnr,lpips")
    ap.add_argument("--turns", default="1,5,10,20,30", help="turns and ranges of turns (1-10: each sequence's "
                    "mean over them, from per_sequence.csv.gz)")
    ap.add_argument("--exclude", default="", help="comma-separated method names to leave out (e.g. repeated "
                    "checkpoint-free baselines: stage2/copy,stage3/copy)")
    ap.add_argument("--against", help="a method: print the others' paired differences from it (per_sequence.csv.gz)")
    args = ap.parse_args(argv)
    try:
        spans = parse_turns(args.turns)
        ranges = any(a != b for a, b in spans)
        name = "per_sequence.csv.gz" if args.against or ranges else "metrics.csv"
        path = args.run if args.run.endswith((".csv", ".gz")) else os.path.join(args.run, name)
        with (gzip.open(path, "rt", newline="") if path.endswith(".gz") else open(path, newline="")) as f:
            rows = list(csv.DictReader(f))
        excluded = set(args.exclude.split(","))
        rows = [r for r in rows if r["method"] not in excluded]
        metrics = args.metrics.split(",")
        print(paired_table(rows, args.protocol, metrics, spans, args.against) if args.against
              else table(rows, args.protocol, metrics, spans))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
