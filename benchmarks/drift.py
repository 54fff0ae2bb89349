"""Multi-turn drift on held-out ShapesEdit: a thin alias of `python -m anchoredit_jax.evaluate`.

    python benchmarks/drift.py --run stage1=runs/stage1_shapes --run stage2=runs/stage2_shapes \\
        --turns 10 --num-sequences 16 --window 3 --out out/drift

Kept for its older flags: each --run NAME=WORKDIR becomes a --checkpoint, --window W (with
--no-anchor) the method anchor_wW (no_anchor_wW), and the rest is passed on. Everything (metrics,
files in --out, the printed table) is anchoredit_jax.evaluate's; see its --help.
"""
from __future__ import annotations

import argparse
import sys

from anchoredit_jax import evaluate


def to_evaluate_argv(args) -> list[str]:
    argv = [a for name_path in args.run for a in ("--checkpoint", name_path)]
    argv += ["--methods", f"{'no_' if args.no_anchor else ''}anchor_w{args.window}", "--turns", str(args.turns),
             "--num-sequences", str(args.num_sequences), "--steps", str(args.steps), "--sampler", args.sampler,
             "--guidance", str(args.guidance), "--weights", args.weights, "--seed", str(args.seed),
             "--protocols", args.protocols, "--out", args.out]
    return argv + (["--overwrite"] if args.overwrite else [])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="NAME=WORKDIR (repeatable)")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--num-sequences", type=int, default=16)
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--no-anchor", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--weights", default="ema", choices=["ema", "params", "best"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--protocols", default="edit")
    ap.add_argument("--out", default="out/drift")
    ap.add_argument("--overwrite", action="store_true")
    return evaluate.main(to_evaluate_argv(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
