"""Distribution matching distillation (DMD) of the few-step editor, after stage 3 (its own optax loop).

    python -m anchoredit_jax.dmd --config configs/dmd_shapes.py --workdir runs/dmd_shapes

The reference release's last step (DESIGN.md section 5; DMD: Yin et al. 2023, DMD2 2024, as
Self-Forcing runs it): the generator (the stage-3 consistency model, 4 steps at t = 1, .75, .5,
.25) is pulled toward the teacher's distribution by the difference of two scores on its own
samples, noised: the frozen teacher with classifier-free guidance ("real" score) and a "fake"
score model, initialised from the teacher and trained alongside on the generator's samples.

State (DMDState): generator params (trained) and their EMA (what editing uses), the fake score
model and its own optimiser state, the frozen teacher, rng. One step = a lax.scan over the K turns
of a sequence carrying three anchor memories (generator, teacher, fake: each network writes its
own keys/values), all holding the generator's own frames (self-rollout; the anchor is the real
source). At turn k:
  1. the generator samples frame k from its memory with its consistency sampler, stopped at a random
     exit step (backward simulation): the steps before it without gradient, the exit step's x0
     prediction with gradient — one step per turn carries the generator's gradient (Self-Forcing);
  2. generator loss (every cfg.gen_every-th step after cfg.fake_warmup steps of the fake score alone:
     DMD2's two-time-scale update): noise the frame to
     t ~ U(t_min, t_max); g = x0_fake - x0_real (teacher with guidance cfg.real_guidance), divided by
     the mean |x - x0_real| (DMD's normalisation); loss 0.5 |x - sg(x - g)|^2, whose gradient is g;
  3. fake-score loss (every step): flow matching on the frame (no gradient to the generator);
  4. the memories append the frame.
The loop machinery (mesh, grain input, checkpoints, resume, SIGTERM, NaN guard, metrics) is train.py's.
"""
from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from anchoredit_jax import config_lib, distill, editor, flow, metrics, optim, sampler, sharding
from anchoredit_jax import memory as mem_lib
from anchoredit_jax import train as train_lib
from anchoredit_jax.config_lib import ConfigError
from anchoredit_jax.model import WanDiT, init_params

BATCH_RANKS = distill.BATCH_RANKS


class DMDState(flax.struct.PyTreeNode):
    step: jax.Array
    params: dict      # the generator
    opt_state: optax.OptState
    ema: dict         # the generator's EMA: the weights to edit with
    fake: dict        # the fake score model
    fake_opt_state: optax.OptState
    teacher: dict     # frozen: the real score
    rng: jax.Array
    bad_step: jax.Array
    last_gen: jax.Array  # [3]: gen_loss, dmd_grad, grad_norm of the last generator update (logged every step)


GEN_METRICS = ("gen_loss", "dmd_grad", "grad_norm")


SETTINGS = {"gen_every": config_lib.number_in(1, integer=True), "fake_warmup": config_lib.number_in(0, integer=True),
            "num_steps": config_lib.number_in(1, integer=True), "t_min": config_lib.number_in(0, 1),
            "t_max": config_lib.number_in(0, 1)}


def check_config(config) -> None:
    """config.dmd's values and the optimiser settings DMD supports, a wrong one named (dmd() calls it
    before anything is loaded or written)."""
    cfg = config.dmd
    if config.optim.grad_accum_steps != 1:  # one generator update is already many fake-score steps
        raise ConfigError(f"DMD takes config.optim.grad_accum_steps=1, got {config.optim.grad_accum_steps}")
    config_lib.check_values("dmd", cfg, SETTINGS)  # each of t_min, t_max in [0, 1]
    if not cfg.t_min < cfg.t_max:
        raise ConfigError(f"config.dmd needs t_min < t_max, got {cfg.t_min}, {cfg.t_max}")


def generator_updates(step, cfg):
    """How many generator updates the first `step` steps make (steps fake_warmup, fake_warmup +
    gen_every, ...): the generator's optimiser, and so its lr schedule, counts these."""
    return jnp.maximum(0, step - cfg.fake_warmup + cfg.gen_every - 1) // cfg.gen_every


def rollout(v_sg, v_grad, noise, num_steps: int, exit_step, rng):
    """The consistency sampler (sampler.sample) stopped at `exit_step` (a traced scalar in [0, num_steps)).

    v_sg, v_grad: velocity fns (x, t) -> v of the generator without / with gradient. Steps before
    the exit run with v_sg (and their result is a constant); the exit step's x0 = x - t v_grad(x, t)
    is returned with gradient. noise [B, h, w, C] -> x0 [B, h, w, C].
    """
    ts = sampler.timestep_grid(num_steps)

    def step(i, x):
        x0 = sampler.consistency_fn(v_sg, x, ts[i])
        return (1.0 - ts[i + 1]) * x0 + ts[i + 1] * jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)

    x = jax.lax.stop_gradient(jax.lax.fori_loop(0, exit_step, step, noise))
    return sampler.consistency_fn(v_grad, x, ts[exit_step])


def loss_fn(params, fake, model: WanDiT, rng, *, teacher, frames, texts, text_masks, null_text, null_mask, turn_valid,
            cfg, train_generator: bool):
    """(generator loss + fake-score loss, aux) of one batch of sequences; differentiate w.r.t. (params, fake).

    The two losses touch disjoint parameters (each sees the other's network under stop_gradient),
    so one backward pass gives both gradients. frames [B, K+1, h, w, C] (frame 0 = source);
    texts [B, K, L, D]; text_masks [B, K, L]; null_text/null_mask [L, D], [L]; turn_valid [B, K].
    train_generator (static): False skips the generator loss (its gradient is then zero).
    aux: gen_loss, fake_loss, dmd_grad (mean |g| after normalisation), turn_loss [K] (fake score).
    """
    b, k1 = frames.shape[:2]
    k = k1 - 1
    sg = jax.lax.stop_gradient
    nt, nm = jnp.broadcast_to(null_text, (b,) + null_text.shape), jnp.broadcast_to(null_mask, (b,) + null_mask.shape)
    start = functools.partial(editor.start, model, source=frames[:, 0], null_text=nt, null_mask=nm, window=cfg.window,
                              keep_anchor=cfg.keep_anchor)
    mems = sg((start(params=params), start(params=teacher), start(params=fake)))

    def body(mems, xs):
        g_mem, t_mem, f_mem = mems
        text, mask, key = xs
        k_noise, k_exit, k_steps, k_t, k_eps, k_ft, k_feps = jax.random.split(key, 7)
        v = functools.partial(editor.guided_velocity_fn, model, text=text, text_mask=mask, null_text=nt, null_mask=nm)
        # 1. the generator's frame: its sampler stopped at a random step, gradient at that step only
        exit_step = jax.random.randint(k_exit, (), 0, cfg.num_steps)
        noise = jax.random.normal(k_noise, frames[:, 0].shape)
        x = rollout(v(sg(params), g_mem, scale=1.0), v(params, g_mem, scale=1.0), noise, cfg.num_steps, exit_step,
                    k_steps)
        frame = sg(x)
        # 2. distribution matching: real (teacher, guided) minus fake score, on the frame noised
        if train_generator:
            t = jax.random.uniform(k_t, (b,), minval=cfg.t_min, maxval=cfg.t_max)
            x_t = flow.add_noise(frame, jax.random.normal(k_eps, frame.shape), t)
            real = flow.predict_x0(x_t, v(teacher, t_mem, scale=cfg.real_guidance)(x_t, t), t)
            fake_x0 = flow.predict_x0(x_t, v(sg(fake), f_mem, scale=1.0)(x_t, t), t)
            norm = jnp.mean(jnp.abs(frame - real), axis=(1, 2, 3), keepdims=True)
            g = sg(jnp.nan_to_num((fake_x0 - real) / jnp.maximum(norm, 1e-8)))
            gen = 0.5 * jnp.mean(jnp.square(x - sg(x - g)), axis=(1, 2, 3))
            g_abs = jnp.mean(jnp.abs(g), axis=(1, 2, 3))
        else:
            gen = g_abs = jnp.zeros((b,))
        # 3. the fake score learns the generator's distribution (flow matching on its frames)
        t_f = flow.sample_timesteps(k_ft, (b,), kind=cfg.fake_timesteps)
        eps = jax.random.normal(k_feps, frame.shape)
        v_fake = v(fake, f_mem, scale=1.0)(flow.add_noise(frame, eps, t_f), t_f)
        fake_loss = jnp.mean(jnp.square(v_fake - flow.velocity_target(frame, eps)), axis=(1, 2, 3))
        # 4. each memory appends the frame, written by its own network
        mems = sg((mem_lib.update(model, params, g_mem, frame, text, mask),
                   mem_lib.update(model, teacher, t_mem, frame, text, mask),
                   mem_lib.update(model, fake, f_mem, frame, text, mask)))
        return mems, (gen, fake_loss, g_abs)

    swap = lambda a: jnp.moveaxis(a, 1, 0)  # noqa: E731
    _, (gen, fake_loss, g_abs) = jax.lax.scan(body, mems, (swap(texts), swap(text_masks), jax.random.split(rng, k)))
    w = swap(turn_valid)  # [K, B]
    mean = lambda a: jnp.sum(w * a) / jnp.maximum(jnp.sum(w), 1e-8)  # noqa: E731
    gen_loss, f_loss = mean(gen), mean(fake_loss)
    return gen_loss + f_loss, {"gen_loss": gen_loss, "fake_loss": f_loss, "dmd_grad": mean(g_abs),
                               "turn_loss": jnp.sum(fake_loss * w, 1) / jnp.maximum(jnp.sum(w, 1), 1e-8)}


def dmd_flops(config, mcfg, n_tokens):
    """Model FLOPs of one sequence on a generator step (an upper bound on fake-score-only steps): per
    turn up to num_steps generator passes plus its backward (3x) at the exit, the guided teacher (2),
    the fake score (1) and its training pass (3), three memory writes."""
    c = config.dmd
    fwd = functools.partial(metrics.dit_forward_flops, mcfg, tokens_per_frame=n_tokens, text_len=config.text.max_length,
                            num_frames=1, keys_per_frame=c.window + int(c.keep_anchor) + 1)
    per_turn = (c.num_steps + 2 + 2 + 1 + 3 + 3) * fwd()
    return config.data.num_turns * per_turn + 3 * fwd()


def dmd(config: ml_collections.ConfigDict, workdir: str) -> dict:
    if config.stage != "dmd":
        raise ConfigError(f"anchoredit_jax.dmd runs config.stage='dmd' configs, got {config.stage!r}")
    check_config(config)
    cfg = config.dmd
    mesh, rules, is_main = train_lib.setup_run(config, workdir)
    data_iter, tokenize = train_lib.make_data(config, "sequence")
    mcfg, model, enc, frozen = train_lib.load_model_and_encoders(config)
    # The generator's schedule (warm-up, decay) is in its own updates; the fake score's in steps.
    tx, schedule = optim.make_optimizer(config.optim, int(generator_updates(config.num_steps, cfg)))
    fake_optim = ml_collections.ConfigDict(config.optim.to_dict())
    fake_optim.lr = cfg.fake_lr
    tx_fake, fake_schedule = optim.make_optimizer(fake_optim, config.num_steps)
    latent_hw = (config.data.resolution // enc.downsample,) * 2

    def init_state(rng):
        p = init_params(mcfg, rng, latent_hw=latent_hw)
        return DMDState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p), ema=p, fake=p,
                        fake_opt_state=tx_fake.init(p), teacher=p, rng=jax.random.PRNGKey(config.seed),
                        bad_step=jnp.full((), -1, jnp.int32), last_gen=jnp.zeros((len(GEN_METRICS),)))

    abstract, state_sh, state = train_lib.sharded_state(init_state, jax.random.PRNGKey(config.seed), mesh, rules)
    frozen = jax.device_put(frozen, sharding.replicated(mesh))
    manager, restored, start = train_lib.open_checkpoints(config, workdir, abstract, state_sh, data_iter)
    if restored is not None:
        state = restored
    else:  # generator (and its EMA) from stage 3; teacher and fake score from the teacher
        load = functools.partial(distill.load_teacher, fresh=state.params, shardings=state_sh.params, config=config)
        generator = load(ml_collections.ConfigDict(dict(teacher=cfg.generator, teacher_weights=cfg.generator_weights)))
        teacher = load(ml_collections.ConfigDict(dict(teacher=cfg.teacher, teacher_weights=cfg.teacher_weights)))
        copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731  (separate buffers: the state is donated)
        state = state.replace(params=copy(generator), ema=copy(generator), teacher=teacher, fake=copy(teacher),
                              opt_state=jax.jit(tx.init, out_shardings=state_sh.opt_state)(generator),
                              fake_opt_state=jax.jit(tx_fake.init, out_shardings=state_sh.fake_opt_state)(teacher))

    def dmd_step(state: DMDState, frozen, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        null_text, null_mask = enc.null_text()
        args = dict(model=model, rng=rng, teacher=state.teacher, frames=enc.encode_images(frozen, batch["frames"]),
                    texts=batch["text"], text_masks=batch["text_mask"], null_text=null_text, null_mask=null_mask,
                    turn_valid=batch["turn_valid"], cfg=cfg)
        # the fake score first learns the generator's distribution alone (it starts as the teacher)
        is_gen = (state.step >= cfg.fake_warmup) & ((state.step - cfg.fake_warmup) % cfg.gen_every == 0)

        def grads(train_generator):
            f = functools.partial(loss_fn, train_generator=train_generator, **args)
            return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(state.params, state.fake)

        (loss, aux), (g_gen, g_fake) = jax.lax.cond(is_gen, lambda: grads(True), lambda: grads(False))
        if config.debug.nan_at_step >= 0:  # test hook: poison one step
            loss = jnp.where(state.step == config.debug.nan_at_step, jnp.nan, loss)
        gen_norm, fake_norm = optax.tree.norm(g_gen), optax.tree.norm(g_fake)
        finite = jnp.isfinite(loss) & jnp.isfinite(gen_norm) & jnp.isfinite(fake_norm)
        params, opt_state = train_lib.masked_update(tx, state.params, state.opt_state, g_gen, finite & is_gen)
        fake, fake_opt = train_lib.masked_update(tx_fake, state.fake, state.fake_opt_state, g_fake, finite)
        ema = optim.ema_update(state.ema, params, cfg.ema_decay, state.step, warmup=False)
        ema = jax.tree.map(lambda a, b: jnp.where(finite & is_gen, a, b), ema, state.ema)
        # the generator's figures exist on its steps only; a log step shows those of its last update
        last_gen = jnp.where(is_gen, jnp.stack([aux.pop("gen_loss"), aux.pop("dmd_grad"), gen_norm]), state.last_gen)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema, fake=fake,
                            fake_opt_state=fake_opt, last_gen=last_gen,
                            bad_step=jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step))
        return new, {"loss": loss, "fake_grad_norm": fake_norm, "generator_step": is_gen,
                     "lr": schedule(generator_updates(state.step, cfg)), "fake_lr": fake_schedule(state.step),
                     **dict(zip(GEN_METRICS, last_gen)), **aux}

    return distill.run_loop(config, workdir, dmd_step, state=state, state_sh=state_sh, mesh=mesh, rules=rules,
                            is_main=is_main, model=model, mcfg=mcfg, enc=enc, frozen=frozen, tokenize=tokenize,
                            data_iter=data_iter, manager=manager, start=start, latent_hw=latent_hw,
                            flops_per_sequence=functools.partial(dmd_flops, config, mcfg), desc="dmd")

if __name__ == "__main__":
    train_lib.run_cli(dmd)  # --config and --workdir are train.py's flags (defined when it is imported)
