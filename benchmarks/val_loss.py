"""The stage-1 held-out loss (the `val_loss` training logs: the same pairs, noise and timesteps) of
releases or training workdirs, under one run's config, e.g. the weights a run started from:

    python benchmarks/val_loss.py --config runs/anneal_w256/config.json out/shapes_stage1 runs/anneal_w256

Each CHECKPOINT is a release or workdir (its EMA weights; `PATH:params` or `PATH:best` for others).
"""
from __future__ import annotations

import argparse
import json

import ml_collections

from anchoredit_jax import checkpointing, samples
from anchoredit_jax import train as train_lib


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a run's config.json (data, text, VAE, validation)")
    ap.add_argument("checkpoints", nargs="+")
    args = ap.parse_args(argv)
    checkpointing.quiet_orbax_logging()
    with open(args.config) as f:
        cfg = ml_collections.ConfigDict(json.load(f))
    cfg.data.worker_count = 0
    _, tokenize = train_lib.make_data(cfg, "pair")
    _, model, enc, frozen = train_lib.load_model_and_encoders(cfg)
    val = samples.Stage1Validation(cfg, enc, tokenize, model)
    for spec in args.checkpoints:
        path, _, which = spec.partition(":")
        _, _, params = checkpointing.load_trained(path, which=which or "ema")
        print(f"{spec}: val_loss {val.run(params, frozen, 0, '', False)['val_loss']:.4f}")


if __name__ == "__main__":
    main()
