"""Which edits can a VAE carry at all? Its reconstruction of each held-out target, by edit type.

    python benchmarks/vae_by_type.py --vae shipped=runs/vae_shapes --vae ft=runs/vae_shapes_ft \
        [--sheet out/vae_patterns.png --sheet-type pattern]

No DiT is involved: a model trained on a VAE's latents can at best draw what the VAE decodes from
the target's latent, so this is the ceiling of every edit type (the `vae(target)` row of
benchmarks/edit_by_type.py, same 96 pairs), for several VAEs side by side. PSNR (dB) inside the
edit mask against the target; `copy source` is doing nothing; the last lines count, per type, the
pairs on which each VAE's reconstruction beats doing nothing inside the mask. A type where it
seldom does is one no model on that VAE can be seen to carry out.

`--sheet PATH` writes, for `--sheet-type` pairs: source (captioned with the instruction), target and
each VAE's reconstruction of the target.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from anchoredit_jax import train_vae  # noqa: E402
from anchoredit_jax import vae as vae_lib  # noqa: E402
from anchoredit_jax.data.contact_sheet import save_contact_sheet  # noqa: E402
from anchoredit_jax.data.images import to_float, to_uint8  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from edit_by_type import heldout_pairs, masked_psnr  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", action="append", required=True, help="[NAME=]train_vae workdir, repeatable")
    ap.add_argument("--num-pairs", type=int, default=96)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--split", default="heldout_seeds")
    ap.add_argument("--sheet", default="")
    ap.add_argument("--sheet-type", default="pattern")
    ap.add_argument("--per-sheet", type=int, default=12, help="pairs on --sheet (4 per row)")
    args = ap.parse_args(argv)

    n = args.num_pairs
    seqs, src_u8, tgt_u8, mask, types = heldout_pairs(n, args.resolution, args.split)
    src, tgt = to_float(src_u8), to_float(tgt_u8)
    rows = {"copy source": np.asarray(src)}
    for spec in args.vae:
        name, _, path = spec.rpartition("=")
        config, params, _ = train_vae.load_trained_vae(path)
        _, reconstruct = train_vae.make_eval_fns(vae_lib.WanVAE(config))
        rows[name or os.path.basename(os.path.normpath(path))] = train_vae.batched(reconstruct, params, tgt_u8, 32)

    kinds = sorted(set(types))
    print(f"{n} held-out pairs ({args.split}), reconstruction of the target; PSNR (dB) inside the edit mask "
          "(n = " + ", ".join(f"{k} {int(np.sum(types == k))}" for k in kinds) + ")")
    print(f"{'':14s}" + "".join(f"{k[:10]:>11s}" for k in kinds) + f"{'all':>8s}{'outside':>9s}")
    inside = {name: masked_psnr(img, tgt, mask) for name, img in rows.items()}
    for name, img in rows.items():
        outside = masked_psnr(img, tgt, ~mask)
        print(f"{name[:14]:14s}" + "".join(f"{np.nanmean(inside[name][types == k]):11.2f}" for k in kinds)
              + f"{np.nanmean(inside[name]):8.2f}{np.nanmean(outside):9.2f}")
    print("pairs where the reconstruction beats doing nothing inside the mask:")
    for name in list(rows)[1:]:
        wins = inside[name] > inside["copy source"]
        print(f"{name[:14]:14s}" + "".join(f"{int(np.sum(wins[types == k])):>7d}/{int(np.sum(types == k)):<3d}"
                                           for k in kinds))

    if args.sheet:
        pick = np.flatnonzero(types == args.sheet_type)[:args.per_sheet]
        cells = [[(to_uint8(src[i]), seqs[i].instructions[0]), (to_uint8(tgt[i]), "target")]
                 + [(to_uint8(img[i]), f"{name} {inside[name][i]:.1f}") for name, img in list(rows.items())[1:]]
                 for i in pick]
        sheet = [sum(cells[r:r + 4], []) for r in range(0, len(cells), 4)]
        print(f"contact sheet: {save_contact_sheet(sheet, args.sheet)}")


if __name__ == "__main__":
    main()
