"""Plots training curves from a workdir's metrics.jsonl (loss, validation loss, per-turn losses).

    python benchmarks/plot_metrics.py runs/stage1_shapes --out docs/stage1_loss.png
"""
import argparse
import os

import numpy as np

from anchoredit_jax.metrics import read_jsonl


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--smooth", type=int, default=8, help="moving-average window over logged points")
    args = ap.parse_args(argv)
    rows = read_jsonl(os.path.join(args.workdir, "metrics.jsonl"))
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=120)
    s, l = np.array(train).T
    k = max(1, min(args.smooth, len(l)))
    ax.plot(s, l, color="C0", alpha=0.3, lw=0.8)
    ax.plot(s[k - 1:], np.convolve(l, np.ones(k) / k, mode="valid"), color="C0", label="train loss (smoothed)")
    if val:
        vs, vl = np.array(val).T
        ax.plot(vs, vl, "o-", color="C1", ms=3, label="held-out loss (fixed noise)")
    ax.set_xlabel("step")
    ax.set_ylabel("rectified-flow loss")
    ax.set_title(os.path.basename(os.path.normpath(args.workdir)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}: {len(train)} train points, last loss {l[-1]:.4f}"
          + (f", last held-out loss {val[-1][1]:.4f}" if val else ""))


if __name__ == "__main__":
    main()
