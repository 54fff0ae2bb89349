"""Training entry point (stage 1 now; stages share this loop).

    python -m anchoredit_jax.train --config configs/stage1_shapes.py --workdir runs/stage1 [--config.a.b=v]

Sections: distributed -> mesh -> input -> model and frozen encoders -> sharded state -> restore ->
update step -> loop (metrics, validation and samples, checkpoints, preemption, NaN guard).
Rerunning the same command resumes from the latest checkpoint in --workdir, data included.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from anchoredit_jax import checkpointing, compile_cache, config_lib, distributed, encoders, metrics, optim, samples
from anchoredit_jax import sharding, stage1, stage2
from anchoredit_jax import text_encoder as te
from anchoredit_jax.config_lib import ConfigError, model_config
from anchoredit_jax.data import pipeline, shapes_edit
from anchoredit_jax.model import WanDiT, init_params


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: dict
    opt_state: optax.OptState
    ema: dict | None
    rng: jax.Array
    bad_step: jax.Array  # first step whose loss or gradients were not finite, -1 if none


class NonFiniteError(FloatingPointError):
    pass


def make_source(cfg: ml_collections.ConfigDict, split: str | None = None):
    """The sequence source of config.data: procedural ShapesEdit or a JSONL set."""
    if cfg.kind == "shapes_edit":
        return pipeline.ShapesEditSource(cfg.num_sequences, cfg.num_turns, cfg.resolution, split or cfg.split,
                                         noop_prob=cfg.noop_prob, edit_weights=_edit_weights(cfg))
    if cfg.kind == "jsonl":
        return pipeline.JsonlSource(cfg.path, resolution=cfg.resolution)
    raise ConfigError(f"config.data.kind must be 'shapes_edit' or 'jsonl', got {cfg.kind!r}")


def _edit_weights(cfg: ml_collections.ConfigDict) -> dict | None:
    weights = cfg.get("edit_weights")  # absent in configs saved before it existed
    return shapes_edit.check_edit_weights(weights.to_dict()) if weights is not None else None


def global_batch(local: dict, shardings: dict) -> dict:
    """Per-process numpy batch -> global jax.Arrays sharded over (data, fsdp)."""
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local.items()}


STAGES = ("stage1", "stage2")
BATCH_RANKS = {  # what the jitted step receives, per stage (leading axis: batch)
    "stage1": dict(source=4, target=4, mask=3, has_mask=1, text=3, text_mask=2),
    "stage2": dict(frames=5, mask=4, has_mask=2, turn_valid=2, text=4, text_mask=3),
}


def stage_loss(config, model, enc, frozen, batch, rng, step, noop=None):
    """params -> (loss, aux) for this stage's batch (images in, frozen encoders applied here).

    noop: stage 1's embedded no-op instructions (`stage1.noop_instructions`), made once before the
    loop: the same every step, so not re-encoded in it."""
    null_text, null_mask = enc.null_text()
    if config.stage == "stage1":
        noop_text, noop_mask = noop
        return functools.partial(
            stage1.loss_fn, model=model, rng=rng, source=enc.encode_images(frozen, batch["source"]),
            target=enc.encode_images(frozen, batch["target"]), text=batch["text"], text_mask=batch["text_mask"],
            null_text=null_text, null_mask=null_mask, noop_text=noop_text, noop_mask=noop_mask,
            edit_mask=enc.latent_mask(batch["mask"]),
            has_mask=batch["has_mask"], cfg=config.stage1)
    return functools.partial(
        stage2.loss_fn, model=model, rng=rng, frames=enc.encode_images(frozen, batch["frames"]), texts=batch["text"],
        text_masks=batch["text_mask"], null_text=null_text, null_mask=null_mask,
        edit_masks=enc.latent_mask(batch["mask"]), has_mask=batch["has_mask"], turn_valid=batch["turn_valid"],
        ratio=stage2.rollout_ratio(step, config.stage2), cfg=config.stage2)


def stage_flops(config, mcfg, n_tokens):
    """Model FLOPs of one training example (forward = 1, backward = 2)."""
    fwd = functools.partial(metrics.dit_forward_flops, mcfg, tokens_per_frame=n_tokens, text_len=config.text.max_length)
    if config.stage == "stage1":
        return 3 * fwd(num_frames=2, keys_per_frame=1.5)
    c = config.stage2
    slots = c.window + int(c.keep_anchor) + 1
    per_turn = (3 + 2 * c.rollout_steps + 1) * fwd(num_frames=1, keys_per_frame=slots)
    return config.data.num_turns * per_turn + fwd(num_frames=1, keys_per_frame=1)


def _check_sources(config: ml_collections.ConfigDict, workdir: str) -> None:
    """A new run's init_from and distill.teacher must be folders before its workdir is made (a
    resumed run reads neither)."""
    ckpts = os.path.join(workdir, "checkpoints")
    if os.path.isdir(ckpts) and os.listdir(ckpts):
        return
    named = [("config.init_from", config.get("init_from", ""))]
    if "distill" in config:
        named.append(("config.distill.teacher", config.distill.get("teacher", "")))
    for key, path in named:
        if path and path != "random" and not os.path.isdir(path):
            raise ConfigError(f"{key}={path!r}: no such directory (a training workdir, release, params "
                              "folder or diffusers transformer folder)")


def setup_run(config: ml_collections.ConfigDict, workdir: str):
    """Distributed init, mesh, logical rules, config.json in the workdir -> (mesh, rules, is_main)."""
    distributed.maybe_initialize(config.get("distributed"))
    try:
        mesh = sharding.make_mesh(**config.mesh)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}") from None
    rules = sharding.rules_from_config(config.sharding_rules)
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.batch_size % batch_shards:
        raise ConfigError(f"batch_size {config.batch_size} does not split over data x fsdp = {batch_shards} "
                          "devices; change config.batch_size or config.mesh")
    if config.batch_size % jax.process_count():
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {jax.process_count()} processes")
    if config.data.kind == "shapes_edit":
        try:
            _edit_weights(config.data)  # a bad value fails here, before the workdir is touched
        except ValueError as e:
            raise ConfigError(f"config.data.edit_weights: {e}") from None
    if "val" in config:
        samples.val_settings(config.val)  # likewise
    if "stage1" in config:
        stage1.check_settings(config.stage1)  # likewise (stage 2 and 3 configs carry stage 1's section)
    if "stage2" in config:
        stage2.check_settings(config.stage2)
    if config.eval_every < 0:
        raise ConfigError(f"config.eval_every must be >= 0 (0: no held-out evaluation), got {config.eval_every}")
    _check_sources(config, workdir)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))
    logging.info("mesh %s on %d processes, %d %s devices", dict(mesh.shape), jax.process_count(),
                 jax.device_count(), jax.devices()[0].platform)
    return mesh, rules, is_main


def make_data(config: ml_collections.ConfigDict, kind: str):
    """grain loader of `kind` (pair | sequence), sharded per process and resumable -> (iterator, tokenize)."""
    tokenize = te.make_tokenize_fn(config.text.max_length)
    loader = pipeline.make_loader(make_source(config.data), kind=kind,
                                  batch_size=config.batch_size // jax.process_count(), seed=config.seed,
                                  tokenize=tokenize, first_turn_only=config.data.first_turn_only,
                                  worker_count=config.data.worker_count,
                                  num_turns=config.data.num_turns if kind == "sequence" else None)
    return iter(loader), tokenize


def load_model_and_encoders(config: ml_collections.ConfigDict):
    """-> (DiTConfig, WanDiT, Encoders, frozen encoder params); checks that they fit together."""
    mcfg = model_config(config)
    model = WanDiT(mcfg)
    enc, frozen = encoders.load_encoders(config)
    if mcfg.in_channels != enc.latent_channels or mcfg.text_dim != enc.text_dim:
        raise ConfigError(f"model expects {mcfg.in_channels} latent channels and text dim {mcfg.text_dim}; the "
                          f"encoders give {enc.latent_channels} and {enc.text_dim}")
    return mcfg, model, enc, frozen


def sharded_state(init_state, rng, mesh, rules):
    """State born sharded: eval_shape gives the logical names, jit(out_shardings) places it.

    -> (abstract state, state shardings, state).
    """
    abstract = jax.eval_shape(init_state, rng)
    state_sh = sharding.logical_shardings(abstract, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state = jax.jit(lambda r: nn.unbox(init_state(r)), out_shardings=state_sh)(rng)
    return nn.unbox(abstract), state_sh, state


def open_checkpoints(config, workdir: str, abstract, state_sh, data_iter):
    """The workdir's checkpoint manager and its latest state (data iterator restored in place)
    -> (manager, state or None, start step)."""
    manager = checkpointing.make_manager(workdir, max_to_keep=config.checkpoint.max_to_keep,
                                         async_save=config.checkpoint.async_save)
    restored, start = checkpointing.restore_latest(
        manager, checkpointing.abstract_with_shardings(abstract, state_sh), data_iter)
    if restored is not None:
        logging.info("resumed from step %d", start)
    return manager, restored, start


def masked_update(tx, params, opt_state, grads, ok):
    """One optax step that leaves params and optimiser state as they were where `ok` (a traced bool) is False."""
    updates, new_opt = tx.update(grads, opt_state, params)
    new = optax.apply_updates(params, updates)
    keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(ok, x, y), a, b)  # noqa: E731
    return keep(new, params), keep(new_opt, opt_state)


def guarded_update(state, tx, loss, grads, nan_at_step: int = -1):
    """Optimizer update that a non-finite loss or gradient turns into a no-op (remembered in bad_step).

    state: any state with step, params, opt_state, bad_step. -> (state, finite, grad_norm).
    """
    if nan_at_step >= 0:  # test hook: poison one step
        loss = jnp.where(state.step == nan_at_step, jnp.nan, loss)
        grads = jax.tree.map(lambda g: jnp.where(state.step == nan_at_step, jnp.nan, g), grads)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step changes nothing and is remembered; the host stops at the next check.
    params, opt_state = masked_update(tx, state.params, state.opt_state, grads, finite)
    bad = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
    return state.replace(params=params, opt_state=opt_state, bad_step=bad), finite, grad_norm


def run_loop(config, workdir, *, state, step_fn, next_batch, data_iter, manager, validate, is_main, start: int,
             tokens_per_step: int, flops_per_step: float, desc: str = "train") -> dict:
    """The training loop every stage shares: metrics, validation + best checkpoint, checkpoints,
    preemption (SIGTERM -> save and exit), NaN guard, progress bar, profiler trace (config.profile).
    -> the last logged metrics.

    step_fn(state, batch) -> (state, metrics); next_batch() -> global batch; validate(state, step) ->
    metrics with "val_loss" (the best checkpoint keeps state.params by it).
    """
    total_steps = config.num_steps
    # Data echoing (Choi et al. 2019): `echo` steps per batch when the input pipeline, not the
    # accelerator, sets the pace. Saves and preemption land on batch boundaries so resume stays exact.
    echo = int(config.data.get("echo", 1))
    if echo < 1 or config.checkpoint.every % echo or total_steps % echo:
        # num_steps too: a run that ended mid-batch could not be extended exactly (its batch is gone)
        raise ConfigError(f"config.data.echo={echo} must be >= 1 and divide config.checkpoint.every="
                          f"{config.checkpoint.every} and config.num_steps={total_steps}")
    if start % echo and start < total_steps:
        raise ConfigError(f"resuming at step {start}, which is not a multiple of config.data.echo={echo}: "
                          "resume with the echo the run was saved with")
    # eval_every = 0: no held-out loss and no best checkpoint (smoke runs, tests, throughput probes)
    def evaluates(done):
        return config.eval_every > 0 and (done % config.eval_every == 0 or done == total_steps)
    profiler = metrics.StepProfiler(config.get("profile"), os.path.join(workdir, "profile"), is_main, start)
    best = checkpointing.make_best_manager(workdir)
    writer = metrics.MetricWriter(workdir, enabled=is_main)
    peak = metrics.peak_flops_per_device(config.get("peak_flops_per_device"))
    preempt = checkpointing.PreemptionFlag()
    bar = tqdm(total=total_steps, initial=start, disable=not is_main or not config.progress_bar, desc=desc,
               dynamic_ncols=True)
    last, saved = {}, start
    t0, s0 = time.perf_counter(), start
    try:
        for step in range(start, total_steps):
            done = step + 1
            if step % echo == 0:
                batch = next_batch()
            profiler.before(done, state)
            with jax.profiler.StepTraceAnnotation(desc, step_num=done):  # the profile plugin's step boundaries
                state, m = step_fn(state, batch)
            profiler.after(done, state)
            bar.update(1)
            if done == config.debug.get("sigterm_at_step", -1):  # test hook: preemption on a given step
                os.kill(os.getpid(), signal.SIGTERM)
            if config.debug.step_sleep:  # test hook: leaves time to kill or preempt a run
                jax.block_until_ready(state.step)
                time.sleep(config.debug.step_sleep)
            boundary = (done % config.log_every == 0 or done == total_steps or done % config.checkpoint.every == 0
                        or evaluates(done))
            if boundary:
                bad = int(jax.device_get(state.bad_step))
                if bad >= 0:
                    raise NonFiniteError(f"non-finite loss or gradients at step {bad}; stopped without saving "
                                         f"(last checkpoint: step {manager.latest_step()})")
            if done % config.log_every == 0 or done == total_steps:
                m = jax.device_get(m)
                dt = time.perf_counter() - t0
                rate = (done - s0) / max(dt, 1e-9)
                m.update(steps_per_sec=rate, tokens_per_sec=rate * tokens_per_step)
                if peak:
                    m["mfu"] = rate * flops_per_step / (peak * jax.device_count())
                m.update({f"turn_loss/{i + 1}": v for i, v in enumerate(m.pop("turn_loss", []))})
                writer.write(done, m)
                bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")
                last = m
                t0, s0 = time.perf_counter(), done
            if evaluates(done):
                vm = validate(state, done)
                writer.write(done, vm)
                best.save(done, args=checkpointing.ocp.args.Composite(
                    params=checkpointing.ocp.args.StandardSave(state.params)), metrics={"val_loss": vm["val_loss"]})
                last.update(vm)
            if done % config.checkpoint.every == 0 or done == total_steps:
                checkpointing.save(manager, done, state, data_iter)
                saved = done
            if done % echo == 0 and preempt.should_stop(done):
                logging.warning("SIGTERM: saving step %d and exiting", done)
                if saved != done:  # the regular save may have just written this step
                    checkpointing.save(manager, done, state, data_iter, force=True)
                break
    finally:
        profiler.close(state)
        manager.wait_until_finished()
        bar.close()
        writer.close()
        preempt.restore()
    return {k: float(v) for k, v in last.items()}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    # 1. Distributed, mesh, input (grain, sharded per process, resumable), model and frozen encoders.
    if config.stage not in STAGES:
        raise ConfigError(f"config.stage must be one of {STAGES}, got {config.stage!r}")
    mesh, rules, is_main = setup_run(config, workdir)
    data_iter, tokenize = make_data(config, "pair" if config.stage == "stage1" else "sequence")
    mcfg, model, enc, frozen = load_model_and_encoders(config)
    tx, schedule = optim.make_optimizer(config.optim, config.num_steps // config.optim.grad_accum_steps)

    # 2. Sharded state: params are born sharded by jit.
    latent_hw = (config.data.resolution // enc.downsample,) * 2

    def init_state(rng):
        params = init_params(mcfg, rng, latent_hw=latent_hw)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          ema=params if config.ema_decay else None, rng=jax.random.PRNGKey(config.seed),
                          bad_step=jnp.full((), -1, jnp.int32))

    abstract, state_sh, state = sharded_state(init_state, jax.random.PRNGKey(config.seed), mesh, rules)
    frozen = jax.device_put(frozen, sharding.replicated(mesh))

    # 3. Restore (latest checkpoint), else optional init from pretrained weights.
    ema_warmup = config.get("ema_warmup", True)  # configs saved before the option have none
    manager, restored, start = open_checkpoints(config, workdir, abstract, state_sh, data_iter)
    if restored is not None:
        state = restored
    elif config.init_from:
        params = load_init_params(config.init_from, state.params, tuple(config.get("init_reinit", ())),
                                  state_sh.params, weights=config.get("init_weights", "ema"), config=config)
        # the EMA starts from the loaded weights too, not the random init (own buffers: the state is donated)
        state = state.replace(params=params, ema=None if state.ema is None else jax.tree.map(jnp.copy, params))
    elif config.ema_decay and not ema_warmup:
        logging.warning("config.ema_warmup=False without config.init_from: the EMA starts at the random "
                        "initialisation and still holds %.0f%% of it at the last step", 100 * config.ema_decay
                        ** config.num_steps)

    # 4. The update step: jit with explicit shardings, state donated.
    noop = (jax.jit(lambda fr: stage1.noop_instructions(enc, fr, tokenize))(frozen)
            if config.stage == "stage1" else None)

    def train_step(state: TrainState, frozen, batch, noop):
        rng = jax.random.fold_in(state.rng, state.step)
        loss_fn = stage_loss(config, model, enc, frozen, batch, rng, state.step, noop)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new, _, grad_norm = guarded_update(state, tx, loss, grads, config.debug.nan_at_step)
        ema = (optim.ema_update(state.ema, new.params, config.ema_decay, state.step, ema_warmup)
               if config.ema_decay else None)
        new = new.replace(step=state.step + 1, ema=ema)
        lr = schedule(state.step // config.optim.grad_accum_steps)
        return new, {"loss": loss, "grad_norm": grad_norm, "param_norm": optax.tree.norm(new.params),
                     "lr": lr, **aux}

    ranks = BATCH_RANKS[config.stage]
    batch_sh = {k: sharding.batch_sharding(mesh, r) for k, r in ranks.items()}
    repl = sharding.replicated(mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        jitted = jax.jit(train_step, in_shardings=(state_sh, repl, batch_sh, repl), out_shardings=(state_sh, repl),
                         donate_argnums=(0,))

    def step_fn(state, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jitted(state, frozen, batch, noop)

    next_batch = text_batches(enc, frozen, config, data_iter, ranks, batch_sh)
    val = samples.Stage1Validation(config, enc, tokenize, model)

    def validate(state, step):
        return val.run(state.params if state.ema is None else state.ema, frozen, step, workdir, is_main)

    # 5. Loop.
    n_tokens = (latent_hw[0] // mcfg.patch_size[1]) * (latent_hw[1] // mcfg.patch_size[2])
    frames_per_example = 2 if config.stage == "stage1" else config.data.num_turns + 1
    return run_loop(config, workdir, state=state, step_fn=step_fn, next_batch=next_batch, data_iter=data_iter,
                    manager=manager, validate=validate, is_main=is_main, start=start,
                    tokens_per_step=config.batch_size * frames_per_example * n_tokens,
                    flops_per_step=config.batch_size * stage_flops(config, mcfg, n_tokens))


def text_batches(enc, frozen, config, data_iter, ranks: dict, batch_sh: dict):
    """-> next_batch(): the loader's next batch with instructions embedded (host cache) and made global."""
    text_cache = encoders.TextEmbeddingCache(enc, frozen, config.text.cache_entries)

    def next_batch():
        b = next(data_iter)
        b["text"], b["text_mask"] = text_cache(b.pop("instruction_ids"), b.pop("instruction_mask"))
        return global_batch({k: b[k] for k in ranks}, batch_sh)

    return next_batch


def load_init_params(path: str, fresh: dict, reinit: tuple[str, ...], shardings, weights: str = "ema",
                     config: ml_collections.ConfigDict | None = None):
    """Params from a training workdir (its EMA), a release, a diffusers transformer folder or a params folder.

    Tensors named in `reinit` ("a/b/kernel" paths) keep their fresh initialisation (e.g. the text
    projection when the text encoder differs from the checkpoint's); every other tensor must match
    in shape, and the first one that does not is named. With `config`, a warning names the flags
    that would train on the same data as the source did (config_lib.data_differences).
    """
    if config is not None and (diffs := config_lib.data_differences(config, path)):
        logging.warning("%s was trained on other data than this config's; to train on the same, pass %s",
                        path, " ".join(diffs))
    from anchoredit_jax import interop, release

    # a training workdir (e.g. stage 1 for stage 2) or a release (e.g. weights/shapes_stage3): load_trained reads both
    try:
        if os.path.isdir(os.path.join(path, "checkpoints")) or release.is_release(path):
            _, _, loaded = checkpointing.load_trained(path, which=weights)
        elif os.path.exists(os.path.join(path, "params")):
            _, loaded = interop.load_jax_params(path)
        else:
            _, loaded = interop.load_diffusers_transformer(path)
    except FileNotFoundError as e:  # a folder that is none of those
        raise ConfigError(f"cannot initialise from {path}: not a training workdir, release or params "
                          f"folder, and as a diffusers transformer folder: {e}") from None
    flat_new = flax.traverse_util.flatten_dict(jax.device_get(fresh), sep="/")
    flat_old = flax.traverse_util.flatten_dict(loaded, sep="/")
    unknown = [k for k in reinit if k not in flat_new]
    if unknown:
        raise ConfigError(f"init_reinit names {unknown[0]!r}, which is not a parameter of this model")
    for key, value in flat_new.items():
        if key in reinit:
            continue
        if key not in flat_old or flat_old[key].shape != value.shape:
            got = flat_old[key].shape if key in flat_old else "nothing"
            raise ConfigError(f"init_from {path}: parameter {key!r} is {value.shape} in this model and {got} in "
                              "the checkpoint (list it in config.init_reinit to initialise it afresh)")
        flat_new[key] = flat_old[key]
    logging.info("initialised from %s (fresh: %s)", path, list(reinit) or "none")
    params = flax.traverse_util.unflatten_dict(flat_new, sep="/")
    return params if shardings is None else jax.device_put(params, shardings)


_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go; resumed if present.")


def run_cli(fn) -> None:
    """`python -m` entry of a training program (this one, distill): `fn(config, workdir)` under absl,
    its flags checked first, orbax's INFO kept out of the log, its result printed as JSON."""
    flags.mark_flags_as_required(["config", "workdir"])
    config_lib.check_config_flags(sys.argv)

    def main(argv):
        del argv
        checkpointing.quiet_logging(keep_info=flags.FLAGS["verbosity"].present)
        compile_cache.enable()
        try:
            result = fn(_CONFIG.value, _WORKDIR.value)
        except ConfigError as e:  # the user's to fix: one line, no traceback
            sys.exit(f"error: {e}")
        if jax.process_index() == 0:
            print(json.dumps(result))

    app.run(main)


if __name__ == "__main__":
    run_cli(train)
