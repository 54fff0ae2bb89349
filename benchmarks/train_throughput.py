"""Training tokens/s: this project's jitted JAX step vs diffusers' WanTransformer3DModel in PyTorch.

    python benchmarks/train_throughput.py --preset tiny --batch 2 --frames 4 --resolution 64      # CPU check
    python benchmarks/train_throughput.py --preset wan13b --batch 2 --frames 4 --resolution 512 \\
        --dtype bfloat16 --device cuda                                                            # one GPU

One workload on both sides: B clips of F latent frames (resolution / 8, patch 2: (res/16)^2 tokens a
frame), one rectified-flow timestep per clip, the velocity MSE over every frame, global-norm clipping
at 1 and AdamW on float32 master weights, compute in --dtype; random weights and inputs.
  JAX: WanDiT (model.py) with the preset's attention backend (cuDNN on GPUs) and --remat policy, in
       --jax-mode: `bidirectional` is diffusers' full attention over the clip, `block_causal` is
       AnchorEdit's (each frame sees itself and the frames before it); optax; one jit, state donated.
  PyTorch: WanTransformer3DModel(**config_to_diffusers(config)) (the same architecture), autocast to
       --dtype around the forward, AdamW (fused on CUDA), gradient checkpointing with --remat != none.
Both start from the same weights (JAX init, exported with interop.to_state_dict; turn_stride 1 so
that RoPE's frame positions are diffusers' own) and print their first loss: equal to float32
tolerance in bidirectional mode, the check that both time the same computation. Warm-up/compile
steps are excluded; the median of --steps timed steps is reported. The JAX side also prints the
cuDNN fused-attention calls in its compiled step (forward and backward; a warning on a GPU if
none). MFU uses one FLOP count for both (metrics.dit_forward_flops x 3 for forward + backward, full attention: every
frame attends F frames; block_causal counts (F + 1) / 2) against the device's peak, where known.
On one GPU both sides run in one process, one after the other (JAX's preallocation is turned off);
where memory is tight, time them in two runs with --skip torch / --skip jax.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time

# both frameworks share one GPU: JAX must not reserve 75% of its memory up front
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import flax.linen as nn  # noqa: E402  (after the env var)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

from anchoredit_jax import flow, interop, metrics  # noqa: E402
from anchoredit_jax.attention import cudnn_attention_calls  # noqa: E402
from anchoredit_jax.config_lib import load_config, model_config  # noqa: E402
from anchoredit_jax.model import REMAT_POLICIES, WanDiT, init_params  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = {"tiny": ("configs/tiny.py", 24), "wan13b": ("configs/wan2_1_1_3b.py", 512)}  # config, text length


def _median_seconds(step, n: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def jax_step_seconds(mcfg, args, inputs, params) -> tuple[float, float]:
    """(median seconds of one jitted train step (loss, grads, clip, AdamW) on B x F frames, first loss)."""
    x0, noise, t, text = (jnp.asarray(a) for a in inputs)  # [B, F, h, w, C] x2, [B], [B, L, Dt]
    b, f = x0.shape[:2]
    model = WanDiT(mcfg)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5, weight_decay=0.01))
    texts = jnp.broadcast_to(text[:, None], (b, f, *text.shape[1:]))  # every frame reads the clip's text
    masks = jnp.ones(texts.shape[:3], bool)
    times = jnp.broadcast_to(t[:, None], (b, f))
    positions = jnp.broadcast_to(jnp.arange(f), (b, f))

    def loss_fn(p):
        v = model.apply({"params": p}, flow.add_noise(x0, noise, times), times, texts, masks, positions,
                        mode=args.jax_mode)
        return jnp.mean(jnp.square(v.astype(jnp.float32) - flow.velocity_target(x0, noise)))

    def step(p, opt):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    state = {"p": jax.device_put(params), "opt": tx.init(params)}
    step = jax.jit(step, donate_argnums=(0, 1)).lower(state["p"], state["opt"]).compile()  # compiled once, run as is
    calls = cudnn_attention_calls(step.as_text())
    print("   jax attention in the compiled step: " + (", ".join(f"{n} {k}" for k, n in sorted(calls.items()))
          if calls else "XLA (no cuDNN fused calls)"), flush=True)
    if jax.default_backend() == "gpu" and not calls:
        print("   WARNING: no cuDNN attention on a GPU: XLA's is 5-8x slower (check --dtype and the preset's "
              "attention_backend)", flush=True)
    out = {}

    def run():
        state["p"], state["opt"], out["loss"] = step(state["p"], state["opt"])
        out.setdefault("first", out["loss"])

    s = _median_seconds(run, args.steps, args.warmup, lambda: jax.block_until_ready(out["loss"]))
    return s, float(out["first"])


def torch_step_seconds(mcfg, args, inputs, params) -> tuple[float, float]:
    """The same step on diffusers' WanTransformer3DModel, from the same weights."""
    from diffusers import WanTransformer3DModel

    dev = args.device
    cfg = {k: v for k, v in interop.config_to_diffusers(mcfg).items() if not k.startswith("_")}
    torch.manual_seed(0)
    model = WanTransformer3DModel(**cfg)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in interop.to_state_dict(params, mcfg).items()})
    model = model.to(dev).train()
    if args.remat != "none":
        model.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01, fused=dev.startswith("cuda"))
    x0, noise, t, text = (torch.from_numpy(np.asarray(a)).to(dev) for a in inputs)
    x0, noise = (a.permute(0, 4, 1, 2, 3).contiguous() for a in (x0, noise))  # [B, C, F, h, w]
    tt = t[:, None, None, None, None]
    half = args.dtype == "bfloat16"
    out = {}

    def run():
        with torch.autocast(device_type=dev.split(":")[0], dtype=torch.bfloat16, enabled=half):
            v = model(hidden_states=(1 - tt) * x0 + tt * noise, timestep=t * mcfg.timestep_scale,
                      encoder_hidden_states=text, return_dict=False)[0]
        loss = torch.mean(torch.square(v.float() - (noise - x0)))
        out.setdefault("first", float(loss.detach()))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = (lambda: torch.cuda.synchronize()) if dev.startswith("cuda") else (lambda: None)
    return _median_seconds(run, args.steps, args.warmup, sync), out["first"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="tiny")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64, help="pixels (latents are /8)")
    ap.add_argument("--text-len", type=int, help="text tokens (default: the preset's)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--remat", choices=list(REMAT_POLICIES), help="default: the preset's")
    ap.add_argument("--jax-mode", default="bidirectional", choices=("bidirectional", "block_causal"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="PyTorch device")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (the compile included)")
    ap.add_argument("--skip", choices=("jax", "torch"), help="time one side only")
    args = ap.parse_args(argv)

    cfg_file, text_len = PRESETS[args.preset]
    text_len = args.text_len or text_len
    mcfg = model_config(load_config(os.path.join(ROOT, cfg_file)))
    mcfg = dataclasses.replace(mcfg, dtype=args.dtype, remat_policy=args.remat or mcfg.remat_policy, turn_stride=1)
    args.remat = mcfg.remat_policy
    if args.resolution % 16:
        sys.exit(f"error: --resolution must be a multiple of 16 (VAE /8, patch 2), got {args.resolution}")
    h = args.resolution // 8
    rng = np.random.default_rng(0)
    shape = (args.batch, args.frames, h, h, mcfg.in_channels)
    inputs = (rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32),
              rng.uniform(0.05, 0.95, args.batch).astype(np.float32),
              rng.standard_normal((args.batch, text_len, mcfg.text_dim), np.float32))
    tokens = args.batch * args.frames * (h // mcfg.patch_size[1]) * (h // mcfg.patch_size[2])
    keys = args.frames if args.jax_mode == "bidirectional" else (args.frames + 1) / 2
    flops = args.batch * 3 * metrics.dit_forward_flops(mcfg, args.frames, tokens // (args.batch * args.frames),
                                                       text_len, keys_per_frame=keys)
    peak = metrics.peak_flops_per_device()
    # host copy (JAX donates its own); perturbed, since the init's zero output projection would make
    # the first loss E|noise - x0|^2 whatever the rest computes
    params = jax.tree.map(lambda p: np.asarray(p) + np.float32(0.02) * rng.standard_normal(p.shape, np.float32),
                          jax.device_get(nn.unbox(init_params(mcfg, jax.random.key(0), latent_hw=(h, h)))))
    n_params = sum(p.size for p in jax.tree.leaves(params))
    print(f"{args.preset}: {n_params / 1e6:.1f}M params, {args.dtype} compute, fp32 master, remat {args.remat}; "
          f"B={args.batch} x {args.frames} frames of {args.resolution}^2 = {tokens} tokens, text {text_len}; "
          f"JAX {jax.__version__} on {jax.devices()[0].device_kind} (mode {args.jax_mode}), "
          f"torch {torch.__version__} on {args.device}; {platform.node()}", flush=True)
    rows = []
    for name, fn in (("jax", jax_step_seconds), ("torch", torch_step_seconds)):
        if args.skip == name:
            continue
        s, first = fn(mcfg, args, inputs, params)
        mfu = f"{flops / s / peak:.1%}" if peak else "-"
        rows.append((name, s))
        print(f"{name:>6}: {s:.4f} s/step  {tokens / s:,.0f} tokens/s  MFU {mfu}  first loss {first:.6f}", flush=True)
    if len(rows) == 2:
        print(f"jax/torch tokens/s: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
