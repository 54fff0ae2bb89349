"""DMD (anchoredit_jax/dmd.py): the rollout is the consistency sampler, the distribution-matching
gradient vanishes when the two scores agree, the two-time-scale update, the EMA, exact resume."""
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from anchoredit_jax import checkpointing, dmd, optim, sampler
from anchoredit_jax.config_lib import load_config
from anchoredit_jax.metrics import read_jsonl
from runs import rewind
from test_distill import _max_diff, _tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4  # generator updates at steps 0 and 2 (gen_every 2)

pytestmark = pytest.mark.usefixtures("cache_small_programs")  # conftest.py


def _config(**overrides):
    base = {"num_steps": STEPS, "eval_every": 0, "val.sample_every": 0, "checkpoint.every": 1,
            "checkpoint.max_to_keep": STEPS + 1, "checkpoint.async_save": False, "mesh.num_devices": 1,
            "mesh.data": 1, "dmd.gen_every": 2}
    return load_config(os.path.join(ROOT, "configs/dmd_shapes.py"), "test", **{**base, **overrides})


def _state(workdir, step):
    with ocp.StandardCheckpointer() as ck:
        return ck.restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def _metrics(workdir):
    return {r["step"]: r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in r}


def test_rollout_run_to_the_end_is_the_consistency_sampler():
    def v_fn(x, t):
        return jnp.sin(x) * (1.0 + t)

    noise, rng = jax.random.normal(jax.random.PRNGKey(0), (2, 3)), jax.random.PRNGKey(5)
    want = sampler.sample(v_fn, noise, 4, method="consistency", rng=rng)
    np.testing.assert_allclose(dmd.rollout(v_fn, v_fn, noise, 4, jnp.asarray(3), rng), want, atol=1e-6)
    # Exit at step 0: one prediction from pure noise at t = 1.
    np.testing.assert_allclose(dmd.rollout(v_fn, v_fn, noise, 4, jnp.asarray(0), rng), noise - v_fn(noise, 1.0))
    # Only the exit step carries gradient: scaling the velocity the earlier steps use changes the
    # value but not d/d(scale) of the exit step's own velocity.
    grad = jax.grad(lambda s: jnp.sum(dmd.rollout(v_fn, lambda x, t: s * v_fn(x, t), noise, 4, jnp.asarray(2), rng)))
    x2 = noise
    ts = sampler.timestep_grid(4)
    for i in range(2):
        x0 = x2 - ts[i] * v_fn(x2, ts[i])
        x2 = (1 - ts[i + 1]) * x0 + ts[i + 1] * jax.random.normal(jax.random.fold_in(rng, i), x2.shape)
    np.testing.assert_allclose(grad(1.0), -ts[2] * jnp.sum(v_fn(x2, ts[2])), rtol=1e-5)


@functools.cache
def _jitted_loss():
    """value_and_grad of the generator's loss on a tiny model with the real score guided at 3, traced
    once (weights and instructions are arguments)."""
    model, _ = _tiny_model()
    b, k, rng = 2, 2, jax.random.PRNGKey(5)
    frames = jax.random.normal(jax.random.PRNGKey(6), (b, k + 1, 4, 4, 4))
    masks = jnp.ones((b, k, 3), bool)
    null_t, null_m = jnp.zeros((3, 8)), jnp.zeros((3,), bool).at[0].set(True)
    c = _config().dmd.copy_and_resolve_references()
    c.real_guidance = 3.0
    f = lambda p, fk, teacher, texts, masks: dmd.loss_fn(  # noqa: E731
        p, fk, model, rng, teacher=teacher, frames=frames, texts=texts, text_masks=masks, null_text=null_t,
        null_mask=null_m, turn_valid=jnp.ones((b, k)), cfg=c, train_generator=True)
    instructions = jax.random.normal(jax.random.PRNGKey(7), (b, k, 3, 8)), masks
    null = jnp.broadcast_to(null_t, (b, k, 3, 8)), jnp.broadcast_to(null_m, (b, k, 3))
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True)), instructions, null


def _loss(fake_scale=1.0, null_instructions=False):
    _, gen = _tiny_model()
    teacher = jax.tree.map(lambda x: 1.05 * x, gen)
    fake = jax.tree.map(lambda x: fake_scale * x, teacher)
    fn, instructions, null = _jitted_loss()
    (_, aux), (g_gen, g_fake) = fn(gen, fake, teacher, *(null if null_instructions else instructions))
    norm = lambda t: float(jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(t))))  # noqa: E731
    return aux, norm(g_gen), norm(g_fake)


def test_dmd_gradient_vanishes_when_the_scores_agree():
    """Fake score = teacher and the null instruction (so the real score's guidance, v_u + 3 (v_c - v_u)
    with v_c = v_u, changes nothing): real and fake x0 agree, so the generator gets no gradient; an
    instruction (guidance then acts) or a different fake score gives it one. The fake score always learns."""
    agree, g_agree, g_fake = _loss(null_instructions=True)
    assert g_fake > 0.0
    for kw in (dict(), dict(fake_scale=0.95, null_instructions=True)):
        aux, g_gen, _ = _loss(**kw)
        # (zero up to float rounding: XLA computes the teacher's batched guided pass and the fake score's
        # single one apart)
        assert float(agree["gen_loss"]) < 1e-9 * float(aux["gen_loss"]) and g_agree < 1e-5 * g_gen, kw


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("dmd") / "full")
    dmd.dmd(_config(), workdir)
    return workdir


def test_two_time_scales_ema_and_frozen_teacher(full_run):
    """The generator moves on every gen_every-th step only (there its EMA follows at full decay), the
    fake score on every step, the teacher never."""
    cfg = _config().dmd
    for step in range(1, STEPS):  # checkpoint s holds the state after s steps: step s goes from s to s + 1
        a, b = _state(full_run, step), _state(full_run, step + 1)
        moved = _max_diff(a["params"], b["params"]) > 0.0
        assert moved == (step % cfg.gen_every == 0), step
        assert _max_diff(a["fake"], b["fake"]) > 0.0 and _max_diff(a["teacher"], b["teacher"]) == 0.0
        want = jax.tree.map(lambda e, p: cfg.ema_decay * e + (1 - cfg.ema_decay) * p, a["ema"], b["params"])
        assert _max_diff(want if moved else a["ema"], b["ema"]) < 1e-6
    m = _metrics(full_run)
    assert [s for s in m if m[s]["generator_step"]] == [s + 1 for s in range(STEPS) if s % cfg.gen_every == 0]
    # The generator's lr schedule runs over its own updates (2 here), the fake score's over steps.
    n_gen = int(dmd.generator_updates(STEPS, cfg))
    assert n_gen == sum(bool(r["generator_step"]) for r in m.values())
    c = _config()
    gen_sched = optim.learning_rate_schedule(c.optim, n_gen)
    fake_optim = ml_collections.ConfigDict({**c.optim.to_dict(), "lr": cfg.fake_lr})
    fake_sched = optim.learning_rate_schedule(fake_optim, STEPS)
    for s in m:  # log step s is state step s - 1; its lr is the one the next generator update uses
        assert m[s]["lr"] == pytest.approx(float(gen_sched(dmd.generator_updates(s - 1, cfg)))), s
        assert m[s]["fake_lr"] == pytest.approx(float(fake_sched(s - 1))), s
    # Every log line carries the figures of the last generator update.
    assert all(m[s]["gen_loss"] == m[1 + cfg.gen_every * ((s - 1) // cfg.gen_every)]["gen_loss"] > 0 for s in m)
    # Editing loads the generator's EMA from the workdir.
    _, _, ema = checkpointing.load_trained(full_run)
    assert _max_diff(ema, _state(full_run, STEPS)["ema"]) == 0.0


def test_resume_is_exact(full_run, tmp_path):
    workdir = rewind(full_run, tmp_path / "resumed", 1)  # as if stopped mid-cycle: a fake-score step next
    dmd.dmd(_config(), workdir)
    a, b = _metrics(full_run), _metrics(workdir)
    assert sorted(b) == list(range(1, STEPS + 1))  # steps 2.. written by the resumed run (tests/runs.py)
    assert [a[i]["loss"] for i in range(2, STEPS + 1)] == [b[i]["loss"] for i in range(2, STEPS + 1)]
    sa, sb = _state(full_run, STEPS), _state(workdir, STEPS)
    for key in ("params", "ema", "fake"):
        assert _max_diff(sa[key], sb[key]) == 0.0, key


def test_bad_config_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"config.dmd.gen_every must be an integer >= 1, got 0"):
        dmd.dmd(_config(**{"dmd.gen_every": 0}), str(tmp_path / "x"))
    with pytest.raises(ValueError, match=r"config.dmd.fake_warmup must be an integer >= 0, got -1"):
        dmd.dmd(_config(**{"dmd.fake_warmup": -1}), str(tmp_path / "x"))
    with pytest.raises(ValueError, match="t_min < t_max"):
        dmd.dmd(_config(**{"dmd.t_min": 0.9, "dmd.t_max": 0.1}), str(tmp_path / "y"))
    with pytest.raises(ValueError, match="grad_accum_steps"):
        dmd.dmd(_config(**{"optim.grad_accum_steps": 2}), str(tmp_path / "w"))
    with pytest.raises(ValueError, match="stage='dmd'"):
        dmd.dmd(_config(stage="stage3"), str(tmp_path / "z"))
    assert not any(os.path.exists(tmp_path / n) for n in "wxyz")  # nothing written before the checks
