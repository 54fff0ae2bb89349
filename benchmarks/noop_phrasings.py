"""Does a checkpoint leave the image alone whatever the no-op phrasing? One turn per phrasing.

    python benchmarks/noop_phrasings.py --checkpoint weights/shapes_stage3 [--num-images 32]

Every no-op template of ShapesEdit (training and held-out phrasings, as written and with a final
period), and the null instruction as a control, is given to the same held-out source images for one
turn, with the source as the only memory (as in benchmarks/edit_by_type.py) and the same noise for
every phrasing, so differences between rows are the phrasing's. The target of a no-op is the source:
printed per phrasing are the mean PSNR (dB) against the source with a 95% interval, its paired
difference from the first phrasing ("keep it as it is"), the worst image, and how many images fall
more than 6 dB below the VAE's own round trip of the source (the best any model on this VAE can do):
the subject or the scene lost, not blur.

    python benchmarks/noop_phrasings.py --checkpoint weights/shapes_stage3 --text-similarity 600

prints instead how close each training no-op phrasing sits to each edit type's training
instructions (drawn from that many sequences of 3 turns) for the text encoder: the mean cosine of
the token states averaged over each instruction's tokens. A phrasing close to "remove ..." is one a
model may read as a removal.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from anchoredit_jax import checkpointing, editor, eval_metrics, evaluate  # noqa: E402
from anchoredit_jax.data.images import to_float  # noqa: E402
from anchoredit_jax.data.shapes_edit import generate_pair, generate_scenes  # noqa: E402
from anchoredit_jax.data.shapes_phrasing import TEMPLATES  # noqa: E402
from readme_tables import paired_interval  # noqa: E402


def phrasings() -> list[tuple[str, str]]:
    """(label, instruction) for every no-op template, as written and with a final period."""
    train, held = TEMPLATES["noop"]
    out = []
    for kind, texts in (("train", train), ("held-out", held)):
        out += [(f"{kind}: {t}", t) for t in texts] + [(f"{kind}: {t}.", t + ".") for t in texts]
    return out


def pooled_text(ld, texts: list[str]) -> np.ndarray:
    """Instructions -> [N, D] unit vectors: the text encoder's token states averaged over real tokens."""
    tx, tm = evaluate.embed_instructions(ld, [[t] for t in texts])
    states, mask = np.asarray(tx[:, 0], np.float64), np.asarray(tm[:, 0], np.float64)
    v = (states * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def text_similarity(ld, num_sequences: int) -> None:
    by_type: dict[str, list[str]] = {}
    for seed in range(num_sequences):
        for e in generate_scenes(seed, 3, ld.resolution, "train", 0.0)[1]:
            by_type.setdefault(e.edit_type, []).append(e.instruction)
    noop = list(TEMPLATES["noop"][0])
    vecs = pooled_text(ld, noop)
    types = sorted(by_type)
    print(f"mean cosine of pooled text states, {num_sequences} training sequences of 3 turns "
          f"({sum(map(len, by_type.values()))} instructions)")
    print(f"{'no-op phrasing':28s}" + "".join(f"{t:>11s}" for t in types) + f"{'other no-ops':>14s}")
    others = (vecs @ vecs.T - np.eye(len(noop))).sum(1) / (len(noop) - 1)
    per_type = [pooled_text(ld, by_type[t]).mean(0) for t in types]  # mean of cosines = cosine with the mean
    for i, text in enumerate(noop):
        cells = [float(m @ vecs[i]) for m in per_type]
        print(f"{text:28s}" + "".join(f"{c:11.2f}" for c in cells) + f"{others[i]:14.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--weights", default="ema", choices=("ema", "params", "best"))
    ap.add_argument("--num-images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="default: the run's val.sample_steps")
    ap.add_argument("--guidance", type=float, default=None, help="default: the run's val.guidance")
    ap.add_argument("--split", default="heldout_seeds")
    ap.add_argument("--text-similarity", type=int, metavar="N", default=0,
                    help="print the phrasings' text similarity to N sequences' edit instructions instead")
    args = ap.parse_args(argv)
    checkpointing.quiet_logging()

    ld = evaluate.load_checkpoint(args.checkpoint, args.weights, "")
    if args.text_similarity:
        return text_similarity(ld, args.text_similarity)
    n = args.num_images
    src = to_float(np.stack([generate_pair(i, 0, ld.resolution, split=args.split, noop_prob=0.0).source
                             for i in range(n)]))
    enc, dec = jax.jit(ld.enc.encode_images), jax.jit(ld.enc.decode_latents)
    zs = enc(ld.frozen, src)
    nt, nm = ld.enc.null_text((n,))
    settings = editor.SamplerSettings(
        num_steps=args.steps or ld.val.get("sample_steps", 20),
        guidance=args.guidance if args.guidance is not None else ld.val.get("guidance", 3.0),
        method=ld.val.get("sampler", "euler"), shift=ld.val.get("sample_shift", 1.0))

    @jax.jit
    def one_turn(params, text, tmask, rng):
        mem = editor.start(ld.model, params, zs, nt, nm, window=1)
        latent, _ = editor.edit_turn(ld.model, settings, params, mem, text, tmask, nt, nm, rng)
        return dec(ld.frozen, latent)

    def psnr(img):
        return np.asarray(eval_metrics.psnr(img, src))

    ceiling = psnr(dec(ld.frozen, zs))
    rows = []
    for label, text in phrasings():
        tx, tm = evaluate.embed_instructions(ld, [[text]] * n)
        rows.append((label, psnr(one_turn(ld.params, tx[:, 0], tm[:, 0], jax.random.key(0)))))
    rows.append(("null instruction (control)", psnr(one_turn(ld.params, nt, nm, jax.random.key(0)))))

    print(f"{args.checkpoint} ({args.weights}): {n} held-out sources, one no-op turn each, "
          f"{settings.num_steps} {settings.method} steps, guidance {settings.guidance:g}; "
          f"the VAE's round trip of the source: {ceiling.mean():.2f} dB")
    print(f"{'phrasing':44s}{'PSNR vs source':>17s}{'- first':>16s}{'worst':>7s}{'lost':>6s}")
    first = rows[0][1]
    for label, p in rows:
        print(f"{label:44s}" + "{:9.2f} ± {:4.2f}".format(*paired_interval(p))
              + "{:+9.2f} ± {:4.2f}".format(*paired_interval(p - first))
              + f"{p.min():7.2f}{int(np.sum(p < ceiling - 6)):6d}")


if __name__ == "__main__":
    main()
