"""Does the anchor put a moved object back? Moves scored with and without the edit history.

    python benchmarks/moves_history.py --checkpoint weights/shapes_stage3 --guidance 1 --steps 4 --num-pairs 288

The moves among edit_by_type.py's held-out pairs (turn i % 4 of sequence i), each edited once,
teacher-forced, with two memories: `previous` holds only the true previous frame (what
edit_by_type.py and naive chaining condition on); `anchor` holds the sequence's source as the
anchor and the true frames of the turns before (window 4), as the editor's memory would after
those turns had gone perfectly. At turn 1 the two are the same; from turn 2 on, the anchor holds
the scene as it was before earlier edits, the moved object perhaps still in its old place. PSNR
(dB) against the target where the object was and is no more (a copy left behind scores low) and
where it is now (its shape), as edit_by_type.py's move table; from turn 2 on also anchor −
previous, paired over the moves (the same noise for both), ± a 95% interval.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from edit_by_type import heldout_pairs, masked_psnr, move_regions  # noqa: E402
from readme_tables import paired_interval  # noqa: E402

from anchoredit_jax import checkpointing, editor, evaluate  # noqa: E402
from anchoredit_jax import memory as mem_lib  # noqa: E402
from anchoredit_jax.data.images import to_float  # noqa: E402
from anchoredit_jax.data.shapes_edit import generate_sequence  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--weights", default="ema", choices=("ema", "params", "best"))
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--num-pairs", type=int, default=288)
    ap.add_argument("--split", default="heldout_seeds")
    ap.add_argument("--turns", default="1,2,3,4", help="which of the pairs' turns (1 to 4) to score")
    args = ap.parse_args(argv)
    checkpointing.quiet_logging()

    ld = evaluate.load_checkpoint(args.checkpoint, args.weights)
    n = args.num_pairs
    _, _, tgt_u8, _, types = heldout_pairs(n, ld.resolution, args.split)
    vacated, destination = move_regions(n, ld.resolution, args.split)
    settings = editor.SamplerSettings(num_steps=args.steps, guidance=args.guidance,
                                      method=ld.val.get("sampler", "euler"), shift=ld.val.get("sample_shift", 1.0))
    enc = jax.jit(ld.enc.encode_images)
    print(f"{args.checkpoint} ({args.weights}), moves among {n} held-out pairs, {args.steps} {settings.method} "
          f"steps, guidance {args.guidance:g}, window {args.window}")
    print(f"{'turn':>4s} {'n':>3s}  {'memory':9s}{'where it was':>16s}{'where it is now':>18s}")
    for t in sorted(int(x) - 1 for x in args.turns.split(",")):
        idx = np.array([i for i in range(n) if i % 4 == t and types[i] == "move"])
        if not len(idx):
            continue
        seqs = [generate_sequence(int(i), t + 1, ld.resolution, split=args.split, noop_prob=0.0) for i in idx]
        assert all(np.array_equal(s.targets[-1], tgt_u8[i]) for s, i in zip(seqs, idx))  # edit_by_type's pairs
        pixels = np.stack([np.concatenate([s.source[None], s.targets[:-1]]) for s in seqs])  # [b, t + 1, H, W, 3]
        z = enc(ld.frozen, to_float(pixels.reshape(-1, *pixels.shape[2:])))
        frames = z.reshape(len(idx), t + 1, *z.shape[1:])  # source, then the true frames before turn t + 1
        text, tmask = evaluate.embed_instructions(ld, [s.instructions for s in seqs])
        nt, nm = ld.enc.null_text((len(idx),))

        def turn(params, frames, text, tmask, rng, anchor):
            if anchor:  # the source, then the true frames of the turns before, with their instructions
                mem = editor.start(ld.model, params, frames[:, 0], nt, nm, window=args.window)
                for j in range(1, t + 1):
                    mem = mem_lib.update(ld.model, params, mem, frames[:, j], text[:, j - 1], tmask[:, j - 1])
            else:
                mem = editor.start(ld.model, params, frames[:, t], nt, nm, window=1)
            latent, _ = editor.edit_turn(ld.model, settings, params, mem, text[:, t], tmask[:, t], nt, nm, rng)
            return ld.enc.decode_latents(ld.frozen, latent)

        tgt, per_pair = to_float(tgt_u8[idx]), {}
        for name, anchor in (("previous", False), ("anchor", True)):
            img = np.asarray(jax.jit(turn, static_argnums=5)(ld.params, frames, text, tmask, jax.random.key(0), anchor))
            per_pair[name] = [masked_psnr(img, tgt, m[idx]) for m in (vacated, destination)]
            was, now = (np.nanmean(x) for x in per_pair[name])
            print(f"{t + 1:4d} {len(idx):3d}  {name:9s}{was:16.2f}{now:18.2f}")
        if t:  # paired over the moves (the same noise for both memories), ± 1.96 standard errors
            diffs = [a - b for a, b in zip(per_pair["anchor"], per_pair["previous"])]
            cells = ["{:+.2f} ± {:.2f}".format(*paired_interval(d)) for d in diffs]
            print(f"{'':9s}{'difference':10s}{cells[0]:>15s}{cells[1]:>18s}")


if __name__ == "__main__":
    main()
