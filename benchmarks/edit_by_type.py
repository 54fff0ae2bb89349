"""Does a checkpoint carry out instructions? One teacher-forced turn per held-out pair, by edit type.

    python benchmarks/edit_by_type.py --checkpoint runs/stage1_shapes --guidance 1,3 [--sheet by_type.png]

Each pair is one ShapesEdit turn (split heldout_seeds, no no-ops) with the ground-truth previous
image as the only memory, so nothing here is multi-turn drift. Two tables:

1. PSNR (dB) inside the edit mask against the target, per edit type, side by side:
   `vae(target)` (the VAE's ceiling), `copy source` (doing nothing) and the model at each guidance.
   A model row no higher than `copy source` did not carry the edits out; the last column is the
   PSNR outside the mask (what must stay). Then the moves alone, split into where the object was
   (a copy left behind shows here) and where it is now (its shape: a blob scores low).
2. The held-out flow loss (fixed t and noise) inside / outside the mask with the true instruction,
   another pair's instruction and the null one: how much the instruction helps the prediction.

`--sheet PATH` also writes the pictures behind table 1: for each edit type, `--per-type` pairs as
source (captioned with the instruction), target, the VAE's reconstruction of the target (the best
any model on this VAE can draw) and the model's output at each guidance, one row per type.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from anchoredit_jax import checkpointing, editor, eval_metrics, evaluate, flow, stage1  # noqa: E402
from anchoredit_jax.data.contact_sheet import save_contact_sheet  # noqa: E402
from anchoredit_jax.data.images import to_float, to_uint8  # noqa: E402
from anchoredit_jax.data.shapes_edit import generate_pair  # noqa: E402


def masked_psnr(x, y, mask):
    """Images [N, H, W, 3] in [-1, 1], mask [N, H, W] -> [N] PSNR over the masked pixels (nan if none)."""
    psnr, _, count = eval_metrics.masked_errors(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask))
    return np.where(np.asarray(count) > 0, np.asarray(psnr), np.nan)


def heldout_pairs(n: int, resolution, split: str):
    """The n held-out one-turn pairs both per-type benchmarks score (no no-ops): -> (pairs,
    source u8 [n, H, W, 3], target u8 [n, H, W, 3], mask [n, H, W], edit type [n])."""
    seqs = [generate_pair(i, i % 4, resolution, split=split, noop_prob=0.0) for i in range(n)]
    return (seqs, np.stack([s.source for s in seqs]), np.stack([s.targets[0] for s in seqs]),
            np.stack([s.masks[0] for s in seqs]), np.array([s.edit_types[0] for s in seqs]))


def move_regions(n: int, resolution, split: str):
    """For the moves among heldout_pairs(n, ...): where the moved object was and is no more
    (`vacated`) and where it is now (`destination`), [n, H, W] bool each, all False for other types."""
    from anchoredit_jax.data.images import resolution_hw
    from anchoredit_jax.data.shapes_edit import generate_scenes
    from anchoredit_jax.data.shapes_render import region_mask, render

    hw = resolution_hw(resolution)
    vacated, destination = np.zeros((n, *hw), bool), np.zeros((n, *hw), bool)
    for i in range(n):
        scenes, edits = generate_scenes(i, i % 4 + 1, resolution, split, 0.0, None)
        if edits[-1].edit_type == "move":
            destination[i] = region_mask(render(scenes[-1], hw, {})[1], edits[-1].ids_after)
            vacated[i] = region_mask(render(scenes[-2], hw, {})[1], edits[-1].ids_before) & ~destination[i]
    return vacated, destination


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--weights", default="ema", choices=("ema", "params", "best"))
    ap.add_argument("--vae", default="", help="a VAE workdir in place of the run's vae.workdir")
    ap.add_argument("--guidance", default="1,3", help="comma-separated CFG scales")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--shift", type=float, default=None, help="timestep shift (default: the run's val.sample_shift)")
    ap.add_argument("--sampler", default=None, help="euler | midpoint | fireflow (default: the run's val.sampler)")
    ap.add_argument("--num-pairs", type=int, default=96)
    ap.add_argument("--split", default="heldout_seeds")
    ap.add_argument("--sheet", default="", help="write a contact sheet of the outputs, by edit type, here")
    ap.add_argument("--per-type", type=int, default=3, help="pairs per edit type on --sheet")
    args = ap.parse_args(argv)
    checkpointing.quiet_logging()

    ld = evaluate.load_checkpoint(args.checkpoint, args.weights, args.vae)
    n = args.num_pairs
    seqs, src_u8, tgt_u8, mask, types = heldout_pairs(n, ld.resolution, args.split)
    src, tgt = to_float(src_u8), to_float(tgt_u8)
    text, tmask = evaluate.embed_instructions(ld, [[s.instructions[0]] for s in seqs])
    text, tmask = text[:, 0], tmask[:, 0]
    enc, dec = jax.jit(ld.enc.encode_images), jax.jit(ld.enc.decode_latents)
    zs, zt = enc(ld.frozen, src), enc(ld.frozen, tgt)
    nt, nm = ld.enc.null_text((n,))

    method = args.sampler or ld.val.get("sampler", "euler")
    shift = args.shift if args.shift is not None else ld.val.get("sample_shift", 1.0)
    rows = {"vae(target)": np.asarray(dec(ld.frozen, zt)), "copy source": src}
    for g in [float(x) for x in args.guidance.split(",")]:
        settings = editor.SamplerSettings(num_steps=args.steps, guidance=g, method=method, shift=shift)

        def one_turn(params, zs, text, tmask, rng, settings=settings):
            mem = editor.start(ld.model, params, zs, nt, nm, window=1)
            latent, _ = editor.edit_turn(ld.model, settings, params, mem, text, tmask, nt, nm, rng)
            return ld.enc.decode_latents(ld.frozen, latent)

        rows[f"model g={g:g}"] = np.asarray(jax.jit(one_turn)(ld.params, zs, text, tmask, jax.random.key(0)))

    kinds = sorted(set(types))
    print(f"{args.checkpoint} ({args.weights}), {n} held-out pairs, {args.steps} {method} steps, shift {shift:g}")
    print("PSNR (dB) inside the edit mask vs target, by type (n = " +
          ", ".join(f"{k} {int(np.sum(types == k))}" for k in kinds) + ")")
    print(f"{'':14s}" + "".join(f"{k[:10]:>11s}" for k in kinds) + f"{'all':>8s}{'outside':>9s}")
    for name, img in rows.items():
        inside, outside = masked_psnr(img, tgt, mask), masked_psnr(img, tgt, ~mask)
        print(f"{name:14s}" + "".join(f"{np.nanmean(inside[types == k]):11.2f}" for k in kinds)
              + f"{np.nanmean(inside):8.2f}{np.nanmean(outside):9.2f}")

    # a move has two halves: clear the old place (no copy left behind) and draw the object, its
    # shape kept, in the new one; the mask above pools them
    vacated, destination = move_regions(n, ld.resolution, args.split)
    moves = np.flatnonzero(types == "move")
    print(f"\nmoves (n = {len(moves)}): PSNR (dB) vs target where the object was / where it is now")
    for name, img in rows.items():
        was, now = (np.nanmean(masked_psnr(img[moves], tgt[moves], m[moves])) for m in (vacated, destination))
        print(f"{name:14s}{was:11.2f}{now:11.2f}")

    if args.sheet:
        sheet = []  # one row per edit type: (source, target, model outputs) for each of its first pairs
        for k in kinds:
            sheet.append([cell for i in np.flatnonzero(types == k)[:args.per_type] for cell in
                          [(to_uint8(src[i]), f"{k}: {seqs[i].instructions[0]}"), (to_uint8(tgt[i]), "target")]
                          + [(to_uint8(img[i]), name) for name, img in rows.items() if name != "copy source"]])
        print(f"contact sheet: {save_contact_sheet(sheet, args.sheet)}")

    lmask = ld.enc.latent_mask(mask)

    @jax.jit
    def flow_loss(params, text, tmask, key):
        kt, kn = jax.random.split(key)
        t = jax.random.uniform(kt, (n,), minval=0.05, maxval=0.95)
        noise = jax.random.normal(kn, zt.shape)
        v = stage1.pair_velocity(params, ld.model, zs, flow.add_noise(zt, noise, t), t, text, tmask, nt, nm)
        err = jnp.mean(jnp.square(v - flow.velocity_target(zt, noise)), -1)
        return jnp.sum(err * lmask) / jnp.sum(lmask), jnp.sum(err * (1 - lmask)) / jnp.sum(1 - lmask)

    print("\nflow loss (4 draws of t, noise)  inside  outside")
    other = np.roll(np.arange(n), 1)
    for name, (tx, tm) in {"true instruction": (text, tmask), "another pair's": (text[other], tmask[other]),
                           "null": (nt, nm)}.items():
        inside, outside = np.mean([np.asarray(flow_loss(ld.params, tx, tm, jax.random.key(s))) for s in range(4)], 0)
        print(f"{name:32s}{inside:8.4f}{outside:9.4f}")


if __name__ == "__main__":
    main()
