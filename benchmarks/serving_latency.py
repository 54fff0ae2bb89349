"""Seconds per editing turn, JAX vs PyTorch serving, side by side, on whatever device this process has.

    python benchmarks/serving_latency.py --preset tiny --resolution 64 128 --steps 4            # CPU
    python benchmarks/serving_latency.py --preset wan13b --resolution 512 1024 --steps 20 \\
        --dtype bfloat16 --device cuda                                                           # one GPU

Both sides run the same weights (random, perturbed; written through the export path: JAX params ->
diffusers folder -> WanTransformer3DModel.from_pretrained) and the same turn: a memory filled to
its steady state (anchor + W window frames), `num_steps` sampler steps with classifier-free guidance
(both branches in one batch), then the memory update. JAX: `editor.edit_turn` under jax.jit;
PyTorch: `convert/torch_serving.edit_turn`. Compilation / warm-up is excluded (one untimed turn),
the best of --repeats is reported, and the two turns' latents (same noise) are compared as a check.
VAE and text encoder are not timed (a few ms per turn against the DiT's seconds at Wan scale).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `convert`

import dataclasses  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from anchoredit_jax import editor, interop  # noqa: E402
from anchoredit_jax import memory as mem_lib  # noqa: E402
from anchoredit_jax.config_lib import load_config, model_config  # noqa: E402
from anchoredit_jax.model import WanDiT, init_params  # noqa: E402
from convert import torch_serving as ts  # noqa: E402

PRESETS = {"tiny": ("configs/tiny.py", 24), "wan13b": ("configs/wan2_1_1_3b.py", 512)}  # config, text length
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best(fn, repeats, sync):
    fn()  # compile / warm up
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="tiny")
    ap.add_argument("--resolution", type=int, nargs="+", default=[64, 128], help="pixels (latents are /8)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="PyTorch device")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--csv", help="also write the table here")
    args = ap.parse_args(argv)

    cfg_file, L = PRESETS[args.preset]
    mcfg = dataclasses.replace(model_config(load_config(os.path.join(ROOT, cfg_file))), dtype=args.dtype,
                               remat_policy="none")
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: np.asarray(p) + np.float32(0.02) * rng.standard_normal(p.shape, np.float32),
                          jax.device_get(nn.unbox(init_params(mcfg, jax.random.key(0)))))
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    with tempfile.TemporaryDirectory() as tmp:  # the export path, as served models take it
        interop.save_diffusers_transformer(mcfg, params, tmp, dtype=jnp.dtype(args.dtype))
        from diffusers import WanTransformer3DModel

        dit = ts.ServedDiT(WanTransformer3DModel.from_pretrained(tmp, torch_dtype=tdtype).to(args.device), mcfg)
    model, params = WanDiT(mcfg), jax.device_put(params)
    settings = editor.SamplerSettings(num_steps=args.steps, method="euler", guidance=3.0)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    print(f"{args.preset}: {n_params / 1e6:.1f}M params, {args.dtype}; JAX on {jax.devices()[0].platform} "
          f"({jax.devices()[0].device_kind}), PyTorch on {args.device}; {args.steps} Euler steps with CFG, "
          f"memory 1+{args.window}; {platform.node()}")
    print(f"{'res':>6} {'tokens':>7} {'jax s/turn':>11} {'torch s/turn':>13} {'torch/jax':>10} {'max|dlat|':>10}")
    rows = []
    turn = jax.jit(lambda p, m, t, tm, nt, nm, r: editor.edit_turn(model, settings, p, m, t, tm, nt, nm, r))
    upd = jax.jit(lambda p, m, x, t, tm: mem_lib.update(model, p, m, x, t, tm))
    for res in args.resolution:
        h = w = res // 8
        text = rng.standard_normal((1, L, mcfg.text_dim), np.float32)
        mask = np.arange(L)[None] < L // 2
        null_t, null_m = np.zeros_like(text), (np.arange(L) == 0)[None]
        frames = rng.standard_normal((args.window + 1, 1, h, w, mcfg.in_channels), np.float32)
        # steady state: anchor + full window, filled by memory updates (no sampling needed)
        jmem = mem_lib.init_memory(mcfg, 1, (h, w), window=args.window)
        tmem = ts.init_memory(mcfg, 1, (h, w), window=args.window, dtype=tdtype, device=args.device)
        tt = lambda x: torch.from_numpy(np.array(x)).to(args.device)  # noqa: E731
        chw = lambda x: tt(x).permute(0, 3, 1, 2)  # noqa: E731
        for f in frames:
            jmem = upd(params, jmem, f, text, mask)
            tmem = ts.update(dit, tmem, chw(f), tt(text), tt(mask))
        r = jax.random.key(1)
        noise = chw(jax.random.normal(r, (1, h, w, mcfg.in_channels)))
        out = {}

        def jax_turn():
            out["jax"] = jax.block_until_ready(turn(params, jmem, text, mask, null_t, null_m, r))[0]

        def torch_turn():
            out["torch"] = ts.edit_turn(dit, settings, tmem, tt(text), tt(mask), tt(null_t), tt(null_m), noise)[0]

        tj = _best(jax_turn, args.repeats, lambda: None)
        tp = _best(torch_turn, args.repeats, lambda: _sync(args.device))
        diff = float(np.abs(np.asarray(out["jax"], np.float32) - out["torch"].permute(0, 2, 3, 1).cpu().numpy()).max())
        tokens = (h // 2) * (w // 2)
        rows.append(dict(resolution=res, tokens_per_frame=tokens, jax_s=tj, torch_s=tp, max_abs_diff=diff))
        print(f"{res:>6} {tokens:>7} {tj:>11.3f} {tp:>13.3f} {tp / tj:>10.2f} {diff:>10.1e}", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)


if __name__ == "__main__":
    main()
