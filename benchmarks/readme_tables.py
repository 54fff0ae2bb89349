"""Markdown tables of several metrics per cell ("PSNR / LPIPS") from an evaluate run's metrics.csv.

    python benchmarks/readme_tables.py out/eval_main --metrics psnr,lpips --turns 1,5,10,20,30
    python benchmarks/readme_tables.py out/eval_protocols --protocol roundtrip --metrics psnr,lpips

README's results tables are printed by this script from the CSVs in docs/results/, so the numbers
there are the ones `anchoredit_jax.evaluate` wrote.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

DIGITS = {"psnr": 2, "edit_psnr": 2, "identity_psnr": 2, "source_psnr": 2, "ssim": 3, "lpips": 3,
          "source_lpips": 3, "edit_mae": 3, "identity_mae": 3}


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="an evaluate --out folder (or its metrics.csv)")
    ap.add_argument("--protocol", default="edit")
    ap.add_argument("--metrics", default="psnr,lpips")
    ap.add_argument("--turns", default="1,5,10,20,30")
    ap.add_argument("--exclude", default="", help="comma-separated method names to leave out (e.g. repeated "
                    "checkpoint-free baselines: stage2/copy,stage3/copy)")
    args = ap.parse_args(argv)
    path = args.run if args.run.endswith(".csv") else os.path.join(args.run, "metrics.csv")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        excluded = set(args.exclude.split(","))
        rows = [r for r in rows if r["method"] not in excluded]
        print(table(rows, args.protocol, args.metrics.split(","), [int(t) for t in args.turns.split(",")]))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
