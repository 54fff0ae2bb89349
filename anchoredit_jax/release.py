"""A release: the few MB a user needs to edit with a trained run, nothing to train further with.

    python -m anchoredit_jax.release --checkpoint runs/stage2_shapes --weights ema --out weights/shapes_stage2
    python -m anchoredit_jax.release --checkpoint runs/stage2_shapes --step 600 --out runs/s2_at600

Layout (every tool that takes --checkpoint reads it, through checkpointing.load_trained):
  config.json   the run's experiment config, vae.workdir rewritten to "vae" (inside the release)
  dit/          the DiT params (orbax), the chosen weights only (no optimiser state)
  vae/          the train_vae workdir's latest checkpoint + vae_config.json + latent_stats.json
                (--vae DIR: a decoder fine-tune of the run's VAE instead; its encoder and latent
                statistics must be the run's, bit for bit, so the DiT's latent space is unchanged)
  release.json  where it came from: source workdir, weights, step, date, sizes, stored dtype
--dtype bfloat16 stores the DiT's floating-point weights in half the bytes (rounded once); `load`
widens them back to float32, the dtype every tool computes and trains in.
The output folder must not exist (nothing is overwritten).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from anchoredit_jax import checkpointing

DIT, VAE = "dit", "vae"
DTYPES = ("float32", "bfloat16")


def _floats_as(tree, dtype):
    """Floating-point leaves cast to `dtype`; integer leaves (none today) left as they are."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def folder_bytes(path: str) -> int:
    """Bytes of every file under `path` (what a release costs on disk)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def is_release(path: str) -> bool:
    return os.path.isdir(os.path.join(path, DIT)) and os.path.exists(os.path.join(path, "config.json"))


ENCODER_KEYS = ("encoder", "quant_conv")  # pixels -> latents: what the DiT was trained on


def check_same_latent_space(run_vae: str, other: str) -> None:
    """Raises ValueError unless train_vae workdir `other` encodes exactly as `run_vae` does."""
    from anchoredit_jax import train_vae  # absl flags are defined only when run as a program

    (_, ours, our_stats), (_, theirs, their_stats) = map(train_vae.load_trained_vae, (run_vae, other))
    same = [k for k in ENCODER_KEYS if k in ours["params"] and k in theirs["params"] and all(
        jax.tree.leaves(jax.tree.map(np.array_equal, ours["params"][k], theirs["params"][k])))]
    same_stats = (our_stats["mean"], our_stats["std"]) == (their_stats["mean"], their_stats["std"])
    if len(same) < len(ENCODER_KEYS) or not same_stats:
        raise ValueError(f"--vae {other}: its encoder or latent statistics differ from the run's VAE ({run_vae}); "
                         "only a decoder fine-tune of that VAE (train_vae --config.train.trainable=decoder) fits")


def export(workdir: str, out: str, *, which: str = "ema", vae: str = "", dtype: str = "float32",
           step: int | None = None) -> dict:
    """Writes a release of `workdir` (a training or distillation workdir) to `out` -> release.json dict.

    `step`: an earlier checkpoint the workdir keeps (None: the newest), e.g. to evaluate a run's course.
    `vae`: a train_vae workdir to ship in place of the run's VAE (checked: same latent space).
    `dtype`: how the DiT weights are stored ("bfloat16" halves the folder; the VAE stays float32)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists; a release is written to a new folder (nothing is overwritten)")
    config, _, params = checkpointing.load_trained(workdir, which=which, step=step)
    vae_dir = config.vae.workdir
    for d in [vae_dir] + ([vae] if vae else []):
        if d != "random" and not os.path.exists(os.path.join(d, "latent_stats.json")):
            raise ValueError(f"{workdir}: VAE {d!r} is not a train_vae workdir (or 'random' for tests)")
    if vae:
        if vae_dir == "random":
            raise ValueError(f"--vae: {workdir} was trained with a random VAE; nothing to check {vae} against")
        check_same_latent_space(vae_dir, vae)
        vae_dir = vae
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with ocp.StandardCheckpointer() as ck:
        ck.save(os.path.abspath(os.path.join(tmp, DIT)), jax.device_get(_floats_as(params, jnp.dtype(dtype))))
    if vae_dir != "random":  # "random" (tests) stays a config entry, config.vae.model rebuilds it
        os.makedirs(os.path.join(tmp, VAE, "checkpoints"))
        for name in ("vae_config.json", "latent_stats.json"):
            shutil.copy(os.path.join(vae_dir, name), os.path.join(tmp, VAE, name))
        vae_step = checkpointing.latest_step(os.path.join(vae_dir, "checkpoints"))
        shutil.copytree(os.path.join(vae_dir, "checkpoints", str(vae_step)),
                        os.path.join(tmp, VAE, "checkpoints", str(vae_step)))
        config.vae.workdir = VAE
    with open(os.path.join(tmp, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    n_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    info = {"source": os.path.normpath(workdir), "weights": which,
            "step": checkpointing.trained_step(workdir, which, step), "dit_params": n_params, "dtype": dtype,
            "date": datetime.date.today().isoformat(),
            "vae_source": os.path.normpath(vae_dir)}
    if is_release(workdir):  # a release re-stored (e.g. as bfloat16): keep where the weights came from
        with open(os.path.join(workdir, "release.json")) as f:
            before = json.load(f)
        keep = ("source", "weights") + (() if vae else ("vae_source",))
        info.update({k: before[k] for k in keep if k in before}, restored_from=os.path.normpath(workdir))
    with open(os.path.join(tmp, "release.json"), "w") as f:
        json.dump(info, f, indent=2)
    os.rename(tmp, out)  # all or nothing
    info["bytes"] = folder_bytes(out)
    return info


def load(path: str):
    """-> (experiment ConfigDict with vae.workdir made absolute, DiTConfig, params on one device)."""
    import ml_collections

    from anchoredit_jax.config_lib import model_config

    with open(os.path.join(path, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if not os.path.isabs(config.vae.workdir) and config.vae.workdir != "random":
        config.vae.workdir = os.path.join(os.path.abspath(path), config.vae.workdir)
    params = checkpointing.restore_on_one_device(os.path.abspath(os.path.join(path, DIT)))
    return config, model_config(config), _floats_as(params, jnp.float32)  # a bfloat16 release, widened


def main(argv=None) -> int:
    checkpointing.quiet_logging()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="training or distillation workdir")
    ap.add_argument("--weights", default="ema", choices=("ema", "params", "best"))
    ap.add_argument("--out", required=True, help="new folder")
    ap.add_argument("--vae", default="", help="ship this decoder fine-tune of the run's VAE instead of it")
    ap.add_argument("--dtype", default="float32", choices=DTYPES, help="how the DiT weights are stored")
    ap.add_argument("--step", type=int, default=None, help="an earlier checkpoint the workdir keeps (default: newest)")
    args = ap.parse_args(argv)
    try:
        info = export(args.checkpoint, args.out, which=args.weights, vae=args.vae, dtype=args.dtype, step=args.step)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
