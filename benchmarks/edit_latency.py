"""Per-turn edit latency for turns 1..K: anchor memory vs recomputing the whole history each turn.

    python benchmarks/edit_latency.py --config configs/stage1_shapes.py --turns 30 --out docs/edit_latency

Three ways to generate turn k, same model, same sampler (Euler, CFG in one batch):
  memory W      the fixed-size anchor memory (anchor + window W): cost flat in k
  memory full   a memory large enough never to evict (W = K): cost grows with the cached keys
  recompute     no cache: every sampler step runs the DiT block-causally over all k+1 frames
Compilation is excluded (each program is run once before it is timed). Prints a table with
ratios side by side and writes a CSV and a PNG curve. Random weights: latency does not depend
on them.
"""
from __future__ import annotations

import argparse
import csv
import functools
import os
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from anchoredit_jax import editor, sampler
from anchoredit_jax.config_lib import load_config, model_config
from anchoredit_jax.model import WanDiT, init_params


def _time(fn, repeats):
    jax.block_until_ready(fn())  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def recompute_turn(model, settings, params, history, texts, masks, null_text, null_mask, rng):
    """Turn k without a cache: history [B, k, h, w, C] (clean), texts [B, k+1, L, D] (null first)."""
    b, k = history.shape[:2]
    two = lambda x: jnp.concatenate([x, x])  # noqa: E731
    ctx_t = two(texts).at[b:, k].set(null_text)  # uncond branch: null instruction for the new frame
    ctx_m = two(masks).at[b:, k].set(null_mask)
    pos = jnp.broadcast_to(jnp.arange(k + 1), (2 * b, k + 1))
    hist2 = two(history)

    def fn(x, t):
        frames = jnp.concatenate([hist2, two(x)[:, None]], axis=1)
        times = jnp.concatenate([jnp.zeros((2 * b, k)), jnp.full((2 * b, 1), t)], axis=1)
        v = model.apply({"params": params}, frames, times, ctx_t, ctx_m, pos, mode="block_causal")[:, -1]
        return v[:b], v[b:]

    noise = jax.random.normal(rng, history.shape[:1] + history.shape[2:])
    return sampler.sample(sampler.guided(fn, settings.guidance), noise, settings.num_steps, method=settings.method)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/stage1_shapes.py")
    ap.add_argument("--turns", type=int, default=30)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="sampler steps per turn")
    ap.add_argument("--resolution", type=int, default=0, help="pixels (0: the config's)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="docs/edit_latency")
    args = ap.parse_args(argv)

    config = load_config(args.config)
    mcfg = model_config(config)
    model = WanDiT(mcfg)
    params = nn.unbox(init_params(mcfg, jax.random.key(0)))
    res = args.resolution or config.data.resolution
    h = w = res // 8
    b, L = 1, config.text.max_length
    settings = editor.SamplerSettings(num_steps=args.steps, guidance=3.0)
    null_text = jnp.zeros((b, L, mcfg.text_dim))
    null_mask = jnp.broadcast_to(jnp.arange(L) == 0, (b, L))
    text = jax.random.normal(jax.random.key(1), (b, L, mcfg.text_dim))
    mask = jnp.broadcast_to(jnp.arange(L) < 8, (b, L))
    src = jax.random.normal(jax.random.key(2), (b, h, w, mcfg.in_channels))

    turn = jax.jit(functools.partial(editor.edit_turn, model, settings))
    rec = jax.jit(functools.partial(recompute_turn, model, settings))
    rows = []
    mems = {name: editor.start(model, params, src, null_text, null_mask, window=win)
            for name, win in (("memory", args.window), ("memory_full", args.turns))}
    history = src[:, None]
    for k in range(1, args.turns + 1):
        row = {"turn": k}
        for name in mems:
            mem = mems[name]
            row[name] = _time(lambda: turn(params, mem, text, mask, null_text, null_mask, jax.random.key(k)),
                              args.repeats)
            _, mems[name] = turn(params, mem, text, mask, null_text, null_mask, jax.random.key(k))
        texts = jnp.concatenate([null_text[:, None], jnp.broadcast_to(text[:, None], (b, k, L, mcfg.text_dim))], 1)
        masks = jnp.concatenate([null_mask[:, None], jnp.broadcast_to(mask[:, None], (b, k, L))], 1)
        row["recompute"] = _time(lambda: rec(params, history, texts, masks, null_text, null_mask,
                                             jax.random.key(k)), args.repeats)
        history = jnp.concatenate([history, rec(params, history, texts, masks, null_text, null_mask,
                                                jax.random.key(k))[:, None]], axis=1)
        rows.append(row)
        print(f"turn {k:2d}: memory W={args.window} {1e3 * row['memory']:7.1f} ms | memory full "
              f"{1e3 * row['memory_full']:7.1f} ms | recompute {1e3 * row['recompute']:7.1f} ms | "
              f"recompute / memory W = {row['recompute'] / row['memory']:.2f}x", flush=True)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "edit_latency.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["turn"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for key, label in (("memory", f"anchor memory, W={args.window}"), ("memory_full", "memory, no eviction"),
                       ("recompute", "recompute history")):
        ax.plot(ks, [1e3 * r[key] for r in rows], marker="o", ms=3, label=label)
    ax.set_xlabel("turn")
    ax.set_ylabel("ms per turn")
    ax.set_title(f"{mcfg.num_layers}x{mcfg.dim} DiT, {res}px, {args.steps} steps, "
                 f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()})", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "edit_latency.png"))
    last = rows[-1]
    print(f"turn {last['turn']}: recompute/memory = {last['recompute'] / last['memory']:.1f}x, "
          f"memory turn {last['turn']}/turn 1 = {last['memory'] / rows[0]['memory']:.2f}x")


if __name__ == "__main__":
    main()
