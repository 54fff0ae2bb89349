"""Stage 3: consistency distillation of a stage-2 teacher into a few-step editor (its own optax loop).

    python -m anchoredit_jax.distill --config configs/stage3_shapes.py --workdir runs/stage3_shapes

State (DistillState): the student (trained; initialised from the teacher), the EMA target
theta^- (what editing uses: load_trained(which="ema")), the frozen teacher, the optimiser state.
Consistency function f(x, t) = x - t v(x, t) (sampler.consistency_fn): f(x, 0) = x exactly.

One loss = a lax.scan over the K turns of a sequence, carrying three anchor memories of the same
frames (keys/values depend on the network that writes them, and at inference the student writes
its own): teacher, student (no gradient) and target. At turn k, on a grid 0 = s_0 < ... < s_N = 1:
  1. the teacher samples frame k from its memory (a few CFG Euler steps, no gradient): the rollout;
     or, with cfg.rollout_from = "student", the student does, with its own few-step consistency
     sampler from its own memory — the frames it will be conditioned on when it edits;
  2. x_hi = noise the data target (or the rollout) to t_hi = s_{n+1}; one teacher ODE step with
     classifier-free guidance baked in (scale cfg.guidance) gives x_lo at t_lo = s_n;
  3. loss d(f_student(x_hi, t_hi), stop_gradient f_target(x_lo, t_lo)), conditional branch only;
  4. all three memories append the rollout, so later turns are conditioned on generated history
     (the teacher's or the student's), never the ground truth (the anchor is the real source).
The loop machinery (mesh, grain input, checkpoints, resume, SIGTERM, NaN guard, metrics) is train.py's.
"""
from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from anchoredit_jax import editor, flow, metrics, optim, sampler, samples, sharding
from anchoredit_jax import memory as mem_lib
from anchoredit_jax import train as train_lib
from anchoredit_jax.config_lib import ConfigError
from anchoredit_jax.model import WanDiT, init_params

BATCH_RANKS = dict(frames=5, turn_valid=2, text=4, text_mask=3)
LOSSES = ("l2", "huber")
CHOICES = {"loss": LOSSES, "x0_from": ("data", "rollout"), "rollout_from": ("teacher", "student")}


def check_config(cfg) -> None:
    """config.distill's choices, a wrong one named (distill() calls it before anything is loaded or written)."""
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise ConfigError(f"config.distill.{key} must be one of {allowed}, got {cfg[key]!r}")


class DistillState(flax.struct.PyTreeNode):
    step: jax.Array
    params: dict      # the student
    opt_state: optax.OptState
    ema: dict         # the EMA target theta^-; the weights to edit with
    teacher: dict     # frozen
    rng: jax.Array
    bad_step: jax.Array


def grid(num_points: int, shift: float = 1.0):
    """[N + 1] ascending times 0 = s_0 < ... < s_N = 1 (the sampler's grid, reversed)."""
    return sampler.timestep_grid(num_points, shift)[::-1]


def distance(a, b, kind: str, c: float):
    """Per-example distance [B] between [B, ...] arrays: mean squared error or pseudo-Huber."""
    d2 = jnp.mean(jnp.square(a - b), axis=tuple(range(1, a.ndim)))
    if kind == "l2":
        return d2
    if kind == "huber":
        return jnp.sqrt(d2 + c * c) - c
    raise ConfigError(f"config.distill.loss must be one of {LOSSES}, got {kind!r}")


def teacher_step(velocity, x_hi, t_hi, t_lo, solver: str):
    """One teacher ODE step from t_hi to t_lo (per example, [B]) with velocity(x, t) -> x_lo."""
    dt = (t_lo - t_hi)[:, None, None, None]
    vel = velocity(x_hi, t_hi)
    if solver == "euler":
        return x_hi + dt * vel
    if solver == "midpoint":
        return x_hi + dt * velocity(x_hi + 0.5 * dt * vel, t_hi + 0.5 * (t_lo - t_hi))
    raise ConfigError(f"config.distill.teacher_solver must be 'euler' or 'midpoint', got {solver!r}")


def loss_fn(params, model: WanDiT, rng, *, target, teacher, frames, texts, text_masks, null_text, null_mask,
            turn_valid, cfg):
    """Consistency-distillation loss of one batch of sequences.

    Args:
      params, target, teacher: student, EMA target and teacher DiT params.
      frames: latents [B, K+1, h, w, C] (frame 0 = source); texts [B, K, L, D], text_masks [B, K, L];
      null_text/null_mask [L, D], [L]; turn_valid [B, K].
      cfg: config.distill (guidance, grid_points, grid_shift, teacher_solver, loss, huber_c, x0_from,
        rollout_from, rollout_steps, rollout_guidance, window, keep_anchor).
    Returns: (loss, aux) with per-turn losses aux["turn_loss"] [K].
    """
    b, k1 = frames.shape[:2]
    k = k1 - 1
    sg = jax.lax.stop_gradient
    kn, ke, kr = jax.random.split(rng, 3)
    s = grid(cfg.grid_points, cfg.grid_shift)
    n = jax.random.randint(kn, (b, k), 0, cfg.grid_points)
    noise = jax.random.normal(ke, frames[:, 1:].shape)
    nt, nm = jnp.broadcast_to(null_text, (b,) + null_text.shape), jnp.broadcast_to(null_mask, (b,) + null_mask.shape)
    start = functools.partial(editor.start, model, source=frames[:, 0], null_text=nt, null_mask=nm, window=cfg.window,
                              keep_anchor=cfg.keep_anchor)
    student = sg(params)
    mems = sg((start(params=teacher), start(params=student), start(params=target)))

    def body(mems, xs):
        t_mem, s_mem, e_mem = mems
        z, text, mask, n_k, eps, key = xs
        v = functools.partial(editor.guided_velocity_fn, model, text=text, text_mask=mask, null_text=nt, null_mask=nm)
        # 1. this turn's generated frame (the memory's next entry): the teacher's, or the student's own
        if cfg.rollout_from == "teacher":
            gen = sg(sampler.sample(v(teacher, t_mem, scale=cfg.rollout_guidance), jax.random.normal(key, z.shape),
                                    cfg.rollout_steps, method="euler"))
        else:  # guidance is baked into the student: its conditional branch, as when it edits
            k_noise, k_steps = jax.random.split(key)
            gen = sg(sampler.sample(v(student, s_mem, scale=1.0), jax.random.normal(k_noise, z.shape),
                                    cfg.rollout_steps, method="consistency", rng=k_steps))
        # 2. a point on the teacher's guided trajectory and one ODE step down
        x0 = z if cfg.x0_from == "data" else gen
        t_hi, t_lo = s[n_k + 1], s[n_k]
        x_hi = flow.add_noise(x0, eps, t_hi)
        x_lo = sg(teacher_step(v(teacher, t_mem, scale=cfg.guidance), x_hi, t_hi, t_lo, cfg.teacher_solver))
        # 3. student at t_hi vs EMA target at t_lo, conditional branch only (f = x - t v; x_lo at t_lo = 0)
        f_student = flow.predict_x0(x_hi, v(params, s_mem, scale=1.0)(x_hi, t_hi), t_hi)
        f_target = sg(flow.predict_x0(x_lo, v(target, e_mem, scale=1.0)(x_lo, t_lo), t_lo))
        per_example = distance(f_student, f_target, cfg.loss, cfg.huber_c)
        # 4. every memory appends the generated frame, written by its own network
        mems = sg((mem_lib.update(model, teacher, t_mem, gen, text, mask),
                   mem_lib.update(model, student, s_mem, gen, text, mask),
                   mem_lib.update(model, target, e_mem, gen, text, mask)))
        return mems, per_example

    check_config(cfg)
    swap = lambda x: jnp.moveaxis(x, 1, 0)  # noqa: E731
    xs = (swap(frames[:, 1:]), swap(texts), swap(text_masks), swap(n), swap(noise), jax.random.split(kr, k))
    _, per_turn = jax.lax.scan(body, mems, xs)  # [K, B]
    w = swap(turn_valid)
    loss = jnp.sum(w * per_turn) / jnp.maximum(jnp.sum(w), 1e-8)
    return loss, {"turn_loss": jnp.sum(per_turn * w, 1) / jnp.maximum(jnp.sum(w, 1), 1e-8)}


def distill_flops(config, mcfg, n_tokens):
    """Model FLOPs of one sequence: per turn a rollout (the teacher's with CFG, or the student's), a
    guided teacher step, student forward + backward, target forward and three memory writes."""
    c = config.distill
    fwd = functools.partial(metrics.dit_forward_flops, mcfg, tokens_per_frame=n_tokens, text_len=config.text.max_length,
                            num_frames=1, keys_per_frame=c.window + int(c.keep_anchor) + 1)
    teacher = 2 * (2 if c.teacher_solver == "midpoint" else 1)
    rollout = (2 if c.rollout_from == "teacher" else 1) * c.rollout_steps
    per_turn = (rollout + teacher + 3 + 1 + 3) * fwd()
    return config.data.num_turns * per_turn + 3 * fwd()


def load_teacher(cfg, fresh: dict, shardings, config: ml_collections.ConfigDict | None = None):
    """Teacher params from a training workdir (cfg.teacher, weights cfg.teacher_weights), or for
    cfg.teacher == "random" (tests) the fresh initialisation with every tensor perturbed (the init
    zeroes the output projection, and a teacher that predicts v = 0 has nothing to distil). With
    `config`, a teacher trained on other data than config.data is named in a warning."""
    if cfg.teacher == "random":
        leaves, tree = jax.tree.flatten(fresh)
        keys = jax.random.split(jax.random.PRNGKey(17), len(leaves))
        noisy = [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
        return jax.device_put(jax.tree.unflatten(tree, noisy), shardings)
    if not cfg.teacher:
        raise ConfigError("config.distill.teacher is empty: give a stage-2 workdir (or 'random' for tests)")
    return train_lib.load_init_params(cfg.teacher, fresh, (), shardings, weights=cfg.teacher_weights,
                                      config=config)


def run_loop(config, workdir, step_impl, *, state, state_sh, mesh, rules, is_main, model, mcfg, enc, frozen, tokenize,
             data_iter, manager, start, latent_hw, flops_per_sequence, desc):
    """A distillation's loop (stage 3 here, DMD in dmd.py) on train.py's: step_impl(state, frozen, batch) ->
    (state, metrics) jitted with the state's shardings and donated; validation on the state's EMA;
    flops_per_sequence(n_tokens) -> model FLOPs of one sequence."""
    batch_sh = {k: sharding.batch_sharding(mesh, r) for k, r in BATCH_RANKS.items()}
    repl = sharding.replicated(mesh)
    with jax.set_mesh(mesh), flax.linen.logical_axis_rules(rules):
        jitted = jax.jit(step_impl, in_shardings=(state_sh, repl, batch_sh), out_shardings=(state_sh, repl),
                         donate_argnums=(0,))

    def step_fn(state, batch):
        with jax.set_mesh(mesh), flax.linen.logical_axis_rules(rules):
            return jitted(state, frozen, batch)

    next_batch = train_lib.text_batches(enc, frozen, config, data_iter, BATCH_RANKS, batch_sh)
    val = samples.Stage1Validation(config, enc, tokenize, model)
    n_tokens = (latent_hw[0] // mcfg.patch_size[1]) * (latent_hw[1] // mcfg.patch_size[2])
    return train_lib.run_loop(
        config, workdir, state=state, step_fn=step_fn, next_batch=next_batch, data_iter=data_iter, manager=manager,
        validate=lambda st, step: val.run(st.ema, frozen, step, workdir, is_main), is_main=is_main, start=start,
        tokens_per_step=config.batch_size * (config.data.num_turns + 1) * n_tokens,
        flops_per_step=config.batch_size * flops_per_sequence(n_tokens), desc=desc)


def distill(config: ml_collections.ConfigDict, workdir: str) -> dict:
    if config.stage != "stage3":
        raise ConfigError(f"anchoredit_jax.distill runs config.stage='stage3' configs, got {config.stage!r}")
    cfg = config.distill
    check_config(cfg)
    mesh, rules, is_main = train_lib.setup_run(config, workdir)
    data_iter, tokenize = train_lib.make_data(config, "sequence")
    mcfg, model, enc, frozen = train_lib.load_model_and_encoders(config)
    tx, schedule = optim.make_optimizer(config.optim, config.num_steps // config.optim.grad_accum_steps)
    latent_hw = (config.data.resolution // enc.downsample,) * 2

    def init_state(rng):
        p = init_params(mcfg, rng, latent_hw=latent_hw)
        return DistillState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p), ema=p, teacher=p,
                            rng=jax.random.PRNGKey(config.seed), bad_step=jnp.full((), -1, jnp.int32))

    abstract, state_sh, state = train_lib.sharded_state(init_state, jax.random.PRNGKey(config.seed), mesh, rules)
    frozen = jax.device_put(frozen, sharding.replicated(mesh))
    manager, restored, start = train_lib.open_checkpoints(config, workdir, abstract, state_sh, data_iter)
    if restored is not None:
        state = restored
    else:  # student = target = teacher at step 0
        teacher = load_teacher(cfg, state.params, state_sh.params, config)
        copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731  (three buffers: the state is donated)
        state = state.replace(params=copy(teacher), ema=copy(teacher), teacher=teacher, opt_state=jax.jit(
            tx.init, out_shardings=state_sh.opt_state)(teacher))

    def distill_step(state: DistillState, frozen, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        null_text, null_mask = enc.null_text()
        loss_f = functools.partial(
            loss_fn, model=model, rng=rng, target=state.ema, teacher=state.teacher,
            frames=enc.encode_images(frozen, batch["frames"]), texts=batch["text"], text_masks=batch["text_mask"],
            null_text=null_text, null_mask=null_mask, turn_valid=batch["turn_valid"], cfg=cfg)
        (loss, aux), grads = jax.value_and_grad(loss_f, has_aux=True)(state.params)
        new, _, grad_norm = train_lib.guarded_update(state, tx, loss, grads, config.debug.nan_at_step)
        new = new.replace(step=state.step + 1, ema=optim.ema_update(state.ema, new.params, cfg.target_decay,
                                                                    state.step))
        return new, {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step // config.optim.grad_accum_steps),
                     **aux}

    return run_loop(config, workdir, distill_step, state=state, state_sh=state_sh, mesh=mesh, rules=rules,
                    is_main=is_main, model=model, mcfg=mcfg, enc=enc, frozen=frozen, tokenize=tokenize,
                    data_iter=data_iter, manager=manager, start=start, latent_hw=latent_hw,
                    flops_per_sequence=functools.partial(distill_flops, config, mcfg), desc="distill")


if __name__ == "__main__":
    train_lib.run_cli(distill)  # --config and --workdir are train.py's flags (defined when it is imported)
