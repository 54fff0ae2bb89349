"""What keeping edits costs the subject: each editing setting against its model's plain one.

    python benchmarks/persistence_trade.py docs/results/persistence/distill_long_per_sequence.csv.gz \\
        --against stage3/anchor_w4/a1,s3_long/anchor_w4/a1

For every method of an evaluate run's per_sequence.csv.gz that shares a model (the name before the
first "/") with one of the --against methods, the paired differences from it over --turns (default
1-30; each sequence's mean over the turns, as readme_tables.py): edits kept (`edits_kept`), edits
made and identity (`identity_psnr`, dB), ± their 95% intervals; then the exchange rate, the dB of
identity lost for each 0.1 of edits kept gained (-d identity / (10 d kept); the ratio of the two
mean differences), for the settings whose kept difference is at least --min-kept away from 0.
The last line gives the rates' median and range: docs/persistence.md, "The newest frame weighed up".
"""
from __future__ import annotations

import argparse
import csv
import gzip
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from readme_tables import paired_interval, parse_turns, per_sequence, span_values  # noqa: E402


def paired(seqs: dict, method: str, against: str, metric: str, span) -> tuple[float, float]:
    ref, got = span_values(seqs, against, metric, span), span_values(seqs, method, metric, span)
    common = sorted(ref.keys() & got.keys())
    if len(common) < 2:
        raise ValueError(f"{method} and {against} share {len(common)} sequences with {metric}: need 2")
    return paired_interval([got[q] - ref[q] for q in common])


def trade(rows: list[dict], against: list[str], span=(1, 30), min_kept: float = 0.05,
          protocol: str = "edit") -> list[dict]:
    """One dict per compared method: method, against, kept, made, identity ((mean, half-width) each)
    and rate (dB of identity per 0.1 kept; None where |d kept| < min_kept)."""
    seqs = per_sequence(rows, protocol)
    methods = list(dict.fromkeys(r["method"] for r in rows if r["protocol"] == protocol))
    missing = [a for a in against if a not in methods]
    if missing:
        raise ValueError(f"--against {', '.join(missing)}: not a method of this file ({', '.join(methods)})")
    refs = {a.split("/")[0]: a for a in against}
    out = []
    for m in methods:
        ref = refs.get(m.split("/")[0])
        if ref is None or m == ref:
            continue
        kept, made, ident = (paired(seqs, m, ref, k, span) for k in ("edits_kept", "edit_made", "identity_psnr"))
        rate = -ident[0] / (10 * kept[0]) if abs(kept[0]) >= min_kept else None
        out.append(dict(method=m, against=ref, kept=kept, made=made, identity=ident, rate=rate))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="an evaluate --out folder or its per_sequence.csv.gz")
    ap.add_argument("--against", required=True, help="comma list: each model's reference method (MODEL/...)")
    ap.add_argument("--turns", default="1-30", help="one turn or range of turns (each sequence's mean over it)")
    ap.add_argument("--min-kept", type=float, default=0.05, help="no rate where the kept difference is smaller")
    args = ap.parse_args(argv)
    try:
        spans = parse_turns(args.turns)
        if len(spans) != 1:
            raise ValueError(f"--turns: one turn or range, got {args.turns!r}")
        path = args.run if args.run.endswith(".gz") else os.path.join(args.run, "per_sequence.csv.gz")
        with gzip.open(path, "rt", newline="") as f:
            rows = list(csv.DictReader(f))
        got = trade(rows, [a for a in args.against.split(",") if a], spans[0], args.min_kept)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    a, b = spans[0]
    print(f"| method − its model's reference, turns {a}–{b} | kept | made | identity (dB) | dB per 0.1 kept |")
    print("|---|---|---|---|---|")
    for r in got:
        cells = [f"{r[k][0]:+.2f} ± {r[k][1]:.2f}" for k in ("kept", "made", "identity")]
        rate = "–" if r["rate"] is None else f"{r['rate']:.2f}"
        print(f"| {r['method']} − {r['against']} | " + " | ".join(cells) + f" | {rate} |")
    rates = [r["rate"] for r in got if r["rate"] is not None]
    if rates:
        print(f"\n{len(rates)} settings with |d kept| >= {args.min_kept}: median {np.median(rates):.2f} dB of identity "
              f"per 0.1 of edits kept, from {min(rates):.2f} to {max(rates):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
