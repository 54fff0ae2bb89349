"""Multi-turn drift on held-out ShapesEdit: PSNR and LPIPS against ground truth per turn.

    python benchmarks/drift.py --run stage1=runs/stage1_shapes --run stage2=runs/stage2_shapes \\
        --turns 10 --num-sequences 16 --out docs/drift

Every run edits the same held-out sequences (split heldout_seeds, same seeds, same sampler noise)
turn by turn from its own outputs with the anchor memory (window --window); turn k is compared
with the exact ground-truth image of turn k. Also reports the identity error: PSNR on the pixels
that no edit up to turn k touched, against the source. Prints a table, writes a CSV, a PNG of the
curves and a contact sheet of the first sequence (ground truth, then each run).
"""
from __future__ import annotations

import argparse
import csv
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from anchoredit_jax import checkpointing, editor, encoders
from anchoredit_jax import text_encoder as te
from anchoredit_jax.data.contact_sheet import save_contact_sheet
from anchoredit_jax.data.shapes_edit import generate_sequence
from anchoredit_jax.model import WanDiT
from anchoredit_jax.train_vae import load_lpips, psnr
from anchoredit_jax.data.images import to_float, to_uint8


def evaluate_run(workdir, seqs, args, lpips_fn):
    config, mcfg, params = checkpointing.load_trained(workdir, which=args.weights)
    model = WanDiT(mcfg)
    enc, frozen = encoders.load_encoders(config)
    tokenize = te.make_tokenize_fn(config.text.max_length)
    b, k = len(seqs), args.turns
    f = lambda a: jnp.asarray(to_float(np.asarray(a)))  # noqa: E731
    src = f([s.source for s in seqs])
    ids, mask = tokenize([s.instructions[t] for t in range(k) for s in seqs])
    text, text_mask = jax.jit(enc.embed_text)(frozen, jnp.asarray(ids).reshape(k, b, -1),
                                              jnp.asarray(mask).reshape(k, b, -1))
    null_text, null_mask = enc.null_text((b,))
    settings = editor.SamplerSettings(num_steps=args.steps, method=args.sampler, guidance=args.guidance)
    t0 = time.perf_counter()
    mem = jax.jit(functools.partial(editor.start, model, window=args.window, keep_anchor=not args.no_anchor))(
        params, jax.jit(enc.encode_images)(frozen, src), null_text, null_mask)
    latents, _ = jax.jit(functools.partial(editor.edit_sequence, model, settings))(
        params, mem, text, text_mask, null_text, null_mask, jax.random.key(args.seed))
    images = jax.jit(enc.decode_latents)(frozen, latents)  # [K, B, H, W, 3]
    images.block_until_ready()
    seconds = time.perf_counter() - t0
    rows = []
    untouched = np.ones((b,) + seqs[0].masks.shape[1:], bool)
    for t in range(k):
        gt = f([s.targets[t] for s in seqs])
        untouched &= ~np.stack([s.masks[t] for s in seqs])
        keep = jnp.asarray(untouched[..., None], jnp.float32)
        n_keep = np.asarray(keep.sum((1, 2, 3)))
        mse_id = np.asarray(jnp.sum(keep * jnp.square(images[t] - src), (1, 2, 3))) / np.maximum(3 * n_keep, 1)
        has = n_keep > 0  # a background edit touches every pixel: such sequences have no identity left to test
        id_psnr = float(np.mean(10 * np.log10(4.0 / np.maximum(mse_id[has], 1e-10)))) if has.any() else float("nan")
        rows.append({"turn": t + 1, "psnr": float(psnr(images[t], gt).mean()),
                     "lpips": float(lpips_fn(images[t], gt).mean()),
                     "identity_psnr": id_psnr, "identity_n": int(has.sum())})
    return rows, to_uint8(images[:, 0]), seconds


def main(argv=None):
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
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--out", default="docs/drift")
    args = ap.parse_args(argv)
    runs = [r.split("=", 1) for r in args.run]
    seqs = [generate_sequence(10_000 + i, args.turns, args.resolution, split="heldout_seeds")
            for i in range(args.num_sequences)]
    lpips_fn = jax.jit(load_lpips())
    results, sheets = {}, [[(seqs[0].source, "source")] + [(seqs[0].targets[t], f"GT {t + 1}: {seqs[0].instructions[t]}")
                                                          for t in range(args.turns)]]
    for name, workdir in runs:
        rows, first, secs = evaluate_run(workdir, seqs, args, lpips_fn)
        results[name] = rows
        sheets.append([(seqs[0].source, name)] + [(first[t], f"{name} {t + 1}") for t in range(args.turns)])
        print(f"{name}: {secs:.1f} s for {args.num_sequences} sequences x {args.turns} turns (compile included)")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "drift.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "turn", "psnr", "lpips", "identity_psnr", "identity_sequences"])
        for name, rows in results.items():
            for r in rows:
                w.writerow([name, r["turn"], f"{r['psnr']:.3f}", f"{r['lpips']:.4f}", f"{r['identity_psnr']:.3f}", r["identity_n"]])
    show = sorted({1, 5, 10, 20, 30, args.turns} & set(range(1, args.turns + 1)))
    print("turn  " + "  ".join(f"{n + ' PSNR':>14s} {n + ' LPIPS':>14s} {n + ' id-PSNR':>16s}" for n in results)
          + "  (id: sequences with untouched pixels)")
    for t in show:
        print(f"{t:4d}  " + "  ".join(f"{results[n][t - 1]['psnr']:14.2f} {results[n][t - 1]['lpips']:14.4f} "
                                      f"{results[n][t - 1]['identity_psnr']:11.2f} ({results[n][t - 1]['identity_n']:2d})"
                                      for n in results))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), dpi=110)
    for ax, key, label in zip(axes, ("psnr", "lpips", "identity_psnr"),
                              ("PSNR vs ground truth (dB)", "LPIPS vs ground truth", "identity PSNR on never-edited px (dB)")):
        for name, rows in results.items():
            ax.plot([r["turn"] for r in rows], [r[key] for r in rows], marker="o", ms=3, label=name)
        ax.set_xlabel("turn")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "drift.png"))
    save_contact_sheet(sheets, os.path.join(args.out, "drift_sheet.png"))


if __name__ == "__main__":
    main()
