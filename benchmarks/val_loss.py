"""The stage-1 held-out loss (the `val_loss` training logs: the same pairs, noise and timesteps) of
releases or training workdirs, under one run's config, e.g. the weights a run started from:

    python benchmarks/val_loss.py --config runs/anneal_w256/config.json out/shapes_stage1 runs/anneal_w256

Each CHECKPOINT is a release or workdir (its EMA weights; `PATH:params` or `PATH:best` for others).
`--num-examples N` evaluates N held-out pairs instead of the run's val.loss_examples (256 for
configs/stage1_shapes.py; runs from before 2026-12-05 used val.num_examples, 6), for a figure that
tells close checkpoints apart: the first pairs are the run's own, and so are the noise and
timesteps of each val.batch_size chunk of them.

From the second checkpoint on, each line also gives its difference from the first with a 95%
interval (±1.96 standard errors of the per-pair differences): the pairs, noise and timesteps are
the same for all, so the comparison is paired and far tighter than the spread of either figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from readme_tables import paired_interval  # noqa: E402

from anchoredit_jax import checkpointing, samples  # noqa: E402
from anchoredit_jax import train as train_lib  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a run's config.json (data, text, VAE, validation)")
    ap.add_argument("--num-examples", type=int, help="held-out pairs (default: the run's val.loss_examples)")
    ap.add_argument("checkpoints", nargs="+")
    args = ap.parse_args(argv)
    if args.num_examples is not None and args.num_examples <= 0:
        ap.error(f"--num-examples must be positive, got {args.num_examples}")
    checkpointing.quiet_logging()
    with open(args.config) as f:
        cfg = ml_collections.ConfigDict(json.load(f))
    cfg.data.worker_count = 0
    if args.num_examples is not None:
        cfg.val.loss_examples = args.num_examples
        cfg.val.num_examples = min(cfg.val.num_examples, args.num_examples)  # the preview pairs: unused here
    n = samples.val_settings(cfg.val)[1]  # the loss pairs, defaulted and checked as training does
    print(f"{n} held-out pairs ({cfg.val.split}, seeds from {cfg.val.seed_offset}); seconds per checkpoint, "
          "the first with compilation")
    _, tokenize = train_lib.make_data(cfg, "pair")
    _, model, enc, frozen = train_lib.load_model_and_encoders(cfg)
    val = samples.Stage1Validation(cfg, enc, tokenize, model)
    first = None
    for spec in args.checkpoints:
        path, _, which = spec.partition(":")
        _, _, params = checkpointing.load_trained(path, which=which or "ema")
        t0 = time.perf_counter()
        per_pair, _ = val.per_pair(params, frozen)
        line = f"{spec}: val_loss {per_pair.mean():.4f} ({time.perf_counter() - t0:.1f} s)"
        if first is None:
            first = (spec, per_pair)
        elif len(per_pair) > 1:  # paired: the same pairs, noise and timesteps, so most of the noise cancels
            mean, half = paired_interval(per_pair - first[1])
            line += f"; {mean:+.4f} ± {half:.4f} against {first[0]} (95%)"
        print(line)

if __name__ == "__main__":
    main()
