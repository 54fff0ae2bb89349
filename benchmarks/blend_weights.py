"""A release whose DiT weights are (1 - alpha) * A + alpha * B: weight interpolation between two
models of the same shape (e.g. a stage-1 model and a stage 2 fine-tuned from it), to check
whether a point between them edits better than either (docs/experiments.md, "Two controls and a blend").

    python benchmarks/blend_weights.py --a runs/gpu_w256_release --b runs/stage2_gpu_tf_clean \\
        --alpha 0.5 --out out/interp_tfclean_50

A and B are releases or training workdirs (their EMA weights); the new release takes A's config,
VAE and release.json, the latter noting the blend. `--out` must not exist.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil

import jax
import orbax.checkpoint as ocp

from anchoredit_jax import checkpointing, release


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="release folder (its config and VAE are kept)")
    ap.add_argument("--b", required=True, help="release folder or training workdir of the same model shape")
    ap.add_argument("--alpha", type=float, required=True, help="weight of B, in [0, 1]")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    checkpointing.quiet_logging()
    if not 0.0 <= args.alpha <= 1.0:
        ap.error(f"--alpha must be in [0, 1], got {args.alpha}")
    if not release.is_release(args.a):
        ap.error(f"--a {args.a} is not a release folder (python -m anchoredit_jax.release makes one)")
    if os.path.exists(args.out):
        ap.error(f"--out {args.out} exists; nothing is overwritten")
    _, _, pa = checkpointing.load_trained(args.a)
    _, _, pb = checkpointing.load_trained(args.b)
    shapes = lambda p: jax.tree.map(lambda x: x.shape, p)  # noqa: E731
    if shapes(pa) != shapes(pb):
        ap.error(f"{args.a} and {args.b} are not the same model shape")
    blend = jax.tree.map(lambda x, y: (1.0 - args.alpha) * x + args.alpha * y, pa, pb)
    tmp = args.out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(args.a, tmp, ignore=shutil.ignore_patterns(release.DIT))
    with ocp.StandardCheckpointer() as ck:
        ck.save(os.path.abspath(os.path.join(tmp, release.DIT)), jax.device_get(blend))
    with open(os.path.join(tmp, "release.json")) as f:
        info = json.load(f)
    info.update(dtype="float32", blend={"a": os.path.normpath(args.a), "b": os.path.normpath(args.b),
                                        "alpha": args.alpha})
    with open(os.path.join(tmp, "release.json"), "w") as f:
        json.dump(info, f, indent=2)
    os.rename(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
