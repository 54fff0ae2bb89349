"""How far each turn's output is from the source, per latent token, on tokens the ground truth's edits
have touched so far and on tokens they have not: the numbers behind `--anchor-gate` (memory.read).

    python benchmarks/anchor_gate_distances.py --checkpoint runs/long_release --turns 10

Edits the held-out ShapesEdit sequences of `anchoredit_jax.evaluate` (same seeds and noise, anchor +
window 4) and prints, over all turns and sequences, quantiles of the per-token mean squared latent
distance from the source (what `AnchorMemory.change` holds after the turn) for untouched and touched
tokens, and the share of each below a few gates. A token is touched from the first turn whose known
edit mask covers any of its pixels.
"""
from __future__ import annotations

import argparse

import einops
import jax
import numpy as np

from anchoredit_jax import eval_methods
from anchoredit_jax import memory as mem_lib
from anchoredit_jax import evaluate as ev
from anchoredit_jax.data.images import to_float

GATES = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def touched_tokens(cells, has_mask, patch: tuple[int, int]):
    """cells [K, B, h, w] (the edit masks on the latent grid, Encoders.latent_mask), has_mask [K, B] ->
    [K, B, h // ph, w // pw] bool: tokens any known mask of turns <= k covers."""
    known = (np.asarray(cells) > 0) & np.asarray(has_mask)[..., None, None]
    per_turn = einops.reduce(known, "k b (h p1) (w p2) -> k b h w", "max", p1=patch[0], p2=patch[1])
    return np.logical_or.accumulate(per_turn, axis=0)


def split_stats(dist, touched):
    """dist [K, B, h, w], touched (same shape, bool) -> {name: (count, quantiles 10..99%, share below GATES)}."""
    out = {}
    for name, sel in (("untouched", ~touched), ("touched", touched)):
        d = dist[sel]
        out[name] = (d.size, np.quantile(d, [0.1, 0.25, 0.5, 0.75, 0.9, 0.99]), [float(np.mean(d < g)) for g in GATES])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--num-sequences", type=int, default=16)
    ap.add_argument("--anchor-weight", default="1", help="the anchor weight to edit with (memory.read)")
    a = ap.parse_args(argv)
    args = ev.parse_args(["--checkpoint", f"m={a.checkpoint}", "--methods", "anchor_w4", "--turns", str(a.turns),
                          "--num-sequences", str(a.num_sequences), "--out", "unused", "--anchor-weights",
                          a.anchor_weight])
    ld = ev.load_checkpoint(a.checkpoint, "ema")
    data = ev.load_protocols(args, ld.resolution)[0]
    text, tmask = ev.embed_instructions(ld, data.instructions)
    encode = jax.jit(ld.enc.encode_images)
    method = ev.make_methods(args, {"m": ld.val})[0]
    run_fn = eval_methods.METHODS[method.kind](ld.model, ld.enc, method)
    dist, touched = [], []
    for bi, idx in enumerate(ev.batch_indices(len(data.seeds), args.batch_size)):
        real = len(np.unique(idx))  # the last batch is padded with its final sequence
        src = encode(ld.frozen, to_float(data.source[idx]))
        lat = run_fn(ld.params, src, np.swapaxes(text[idx], 0, 1), np.swapaxes(tmask[idx], 0, 1),
                     jax.random.fold_in(jax.random.key(args.seed), bi))
        patch = ld.model.config.patch_size[1:]
        dist.append(np.asarray(mem_lib.token_change(lat, src[None], patch))[:, :real])  # [K, B, h, w]
        cells = ld.enc.latent_mask(np.swapaxes(data.masks[idx], 0, 1))
        touched.append(touched_tokens(cells, np.swapaxes(data.has_mask[idx], 0, 1), patch)[:, :real])
    for name, (n, q, below) in split_stats(np.concatenate(dist, 1), np.concatenate(touched, 1)).items():
        print(f"{name:9s} tokens {n:6d}  quantiles 10/25/50/75/90/99%: " + " ".join(f"{x:.3f}" for x in q))
        print(" " * 10 + "share below gate " + ", ".join(f"{g:g}: {s:.2f}" for g, s in zip(GATES, below)))


if __name__ == "__main__":
    main()
