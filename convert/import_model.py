"""Import PyTorch weights into a training run: a Wan2.1 DiT (diffusers or original naming) and a Wan VAE.

    python convert/import_model.py --transformer Wan2.1-T2V-1.3B-Diffusers/transformer \\
        --vae Wan2.1-T2V-1.3B-Diffusers/vae --out ckpt/wan13b
    python convert/import_model.py --transformer Wan2.1-T2V-1.3B --out ckpt/wan13b_orig   # original release
    python convert/import_model.py --exported served/ --out ckpt/back                     # export_model.py output

Writes, in a new (or empty) --out:
  transformer/   an anchoredit_jax params folder (config.json + orbax params/): `config.init_from`
  vae/           a diffusers AutoencoderKLWan folder, checked and re-written through the JAX VAE
                 (single-frame path; latents_mean/std kept): `config.vae.workdir`
and prints the two training flags. --transformer takes a diffusers WanTransformer3DModel folder, an
original Wan2.1 folder (config.json with `dim`/`num_heads`, keys like `blocks.0.self_attn.q.weight`,
optionally under a `model.` prefix as Self-Forcing saves them) or one .safetensors file with such a
config.json beside it. Pickle files are refused. Missing, unexpected or mis-shaped tensors are named.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):  # run as a script: make `convert` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from anchoredit_jax import interop  # noqa: E402
from anchoredit_jax import vae as vae_lib  # noqa: E402
from convert.export_model import SERVED_FILE  # noqa: E402


def import_model(out: str, *, transformer: str | None = None, vae: str | None = None, exported: str | None = None,
                 turn_stride: int | None = None) -> dict:
    """-> {"init_from": ..., "vae_workdir": ...} (the paths written)."""
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"--out {out} exists and is not empty; imports never overwrite: choose a new folder")
    overrides = {}
    if exported:
        if transformer or vae:
            raise ValueError("give either --exported or --transformer/--vae, not both")
        info_file = os.path.join(exported, SERVED_FILE)
        if not os.path.exists(info_file):
            raise FileNotFoundError(f"--exported {exported} has no {SERVED_FILE} (not convert/export_model.py output)")
        with open(info_file) as f:
            model = json.load(f)["model"]
        # numerics and RoPE numbering of the run travel in anchoredit.json (diffusers' config has no place for them)
        overrides = {k: model[k] for k in ("turn_stride", "timestep_scale", "rope_theta", "dtype",
                                           "attention_backend", "attention_strategy", "remat_policy")}
        transformer, vae = os.path.join(exported, "transformer"), os.path.join(exported, "vae")
    if not transformer and not vae:
        raise ValueError("nothing to import: give --transformer and/or --vae, or --exported")
    if turn_stride is not None:
        overrides["turn_stride"] = turn_stride
    for name, path in (("--transformer", transformer), ("--vae", vae)):
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"{name} {path}: no such file or folder")
    # convert both before writing anything, so a bad input leaves no half-written --out
    loaded_dit = interop.load_diffusers_transformer(transformer, **overrides) if transformer else None
    loaded_vae = vae_lib.load_diffusers_vae(vae) if vae else None
    if loaded_vae is not None and loaded_vae[0].latents_mean is None:
        raise ValueError(f"--vae {vae}: config.json has no latents_mean/latents_std (the latent normalisation)")
    written = {}
    os.makedirs(out, exist_ok=True)
    if loaded_dit is not None:
        model, params = loaded_dit
        written["init_from"] = os.path.join(out, "transformer")
        interop.save_jax_params(model.config, params, written["init_from"])
    if loaded_vae is not None:
        written["vae_workdir"] = os.path.join(out, "vae")
        vae_lib.save_diffusers_vae(*loaded_vae, written["vae_workdir"])
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transformer", help="diffusers or original-Wan2.1 transformer folder (or .safetensors file)")
    ap.add_argument("--vae", help="diffusers AutoencoderKLWan folder")
    ap.add_argument("--exported", help="a folder written by convert/export_model.py (both parts)")
    ap.add_argument("--out", required=True, help="new (or empty) output folder")
    ap.add_argument("--turn-stride", type=int, help="RoPE turn stride stored in the params config (default 4)")
    args = ap.parse_args(argv)
    written = import_model(args.out, transformer=args.transformer, vae=args.vae, exported=args.exported,
                           turn_stride=args.turn_stride)
    flags = []
    if "init_from" in written:
        flags.append(f"--config.init_from={written['init_from']}")
    if "vae_workdir" in written:
        flags.append(f"--config.vae.workdir={written['vae_workdir']}")
    print(f"wrote {args.out}; train from it with: python -m anchoredit_jax.train --config ... " + " ".join(flags))


if __name__ == "__main__":
    try:
        main()
    except (FileExistsError, FileNotFoundError, ValueError, KeyError, NotImplementedError) as e:
        sys.exit(f"error: {e}")  # one clear line, no traceback
