"""A deeper DiT from a trained one that computes exactly what the trained one did.

    python -m anchoredit_jax.grow --from runs/stage1_long --num-layers 8 --out runs/grown8
    python -m anchoredit_jax.train --config configs/stage1_shapes.py --workdir runs/stage1_deep \\
        --config.model.num_layers=8 --config.init_from=runs/grown8

Why: on a small machine a model that has stopped improving can keep what it learned and gain
capacity, instead of starting a bigger one from scratch. The trained blocks keep their order; new
blocks are interleaved between them (trained block i goes to slot i * new // old) with freshly
initialised weights, except their three residual-branch output projections (`attn1/to_out`,
`attn2/to_out`, `ffn_out`), which are zero. A Wan block adds only those projections' outputs to its
input, so a new block starts as the identity: same outputs, same memory semantics, and gradients
still reach the new blocks through the zeroed projections (their inputs are not zero).
Everything outside `blocks` (patch embedding, conditioning, head) is copied unchanged.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anchoredit_jax import checkpointing, interop
from anchoredit_jax.model import DiTConfig, init_params

ZEROED = (("attn1", "to_out"), ("attn2", "to_out"), ("ffn_out",))  # the residual-branch outputs of a block


def trained_slots(old: int, new: int) -> np.ndarray:
    """Which of `new` block slots the `old` trained blocks go to (in order, spread evenly)."""
    if new < old:
        raise ValueError(f"can only grow: the model has {old} layers, asked for {new}")
    return np.arange(old) * new // old


def grow_depth(params: dict, config: DiTConfig, num_layers: int, rng) -> tuple[dict, DiTConfig]:
    """params of `config` (blocks stacked on a leading layer axis [L, ...]) -> (params, config) with
    `num_layers` blocks; the grown model's outputs equal the original's (see the module docstring)."""
    new_config = dataclasses.replace(config, num_layers=num_layers)
    fresh = jax.device_get(nn.unbox(init_params(new_config, rng)))
    slots = trained_slots(config.num_layers, num_layers)
    is_new = np.ones(num_layers, bool)
    is_new[slots] = False

    def merge(path, fresh_leaf, old_leaf):
        names = tuple(getattr(k, "key", str(k)) for k in path)
        if fresh_leaf.shape != (num_layers,) + tuple(old_leaf.shape[1:]):
            raise ValueError(f"blocks/{'/'.join(names)}: {fresh_leaf.shape} in the grown model, {old_leaf.shape} "
                             "in the trained one")
        out = np.array(fresh_leaf)
        if any(names[:len(z)] == z for z in ZEROED):
            out[is_new] = 0.0
        out[slots] = np.asarray(old_leaf)
        return out

    grown = dict(jax.device_get(params))
    grown["blocks"] = jax.tree_util.tree_map_with_path(merge, fresh["blocks"], params["blocks"])
    return grown, new_config


def main(argv=None) -> int:
    checkpointing.quiet_logging()
    ap = argparse.ArgumentParser(prog="python -m anchoredit_jax.grow", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", required=True, help="a training workdir, release or params folder")
    ap.add_argument("--weights", default="ema", choices=("ema", "params", "best"))
    ap.add_argument("--num-layers", type=int, required=True)
    ap.add_argument("--out", required=True, help="new anchoredit_jax params folder (config.json + params/)")
    ap.add_argument("--seed", type=int, default=0, help="initialisation of the new blocks")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.src):
        ap.error(f"--from {args.src}: no such directory")
    try:
        if os.path.isdir(os.path.join(args.src, "params")):
            module, params = interop.load_jax_params(args.src)
            config = module.config
        else:
            _, config, params = checkpointing.load_trained(args.src, which=args.weights)
    except FileNotFoundError as e:
        ap.error(f"--from {args.src}: {e}")
    if args.num_layers <= config.num_layers:
        ap.error(f"--num-layers {args.num_layers}: can only grow, and {args.src} has {config.num_layers} layers")
    grown, new_config = grow_depth(params, config, args.num_layers, jax.random.key(args.seed))
    grown = jax.tree.map(jnp.asarray, grown)
    interop.save_jax_params(new_config, grown, args.out, overwrite=args.overwrite)
    print(f"{args.src}: {config.num_layers} layers -> {args.out}: {args.num_layers} layers "
          f"(trained blocks at slots {trained_slots(config.num_layers, args.num_layers).tolist()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
