"""Stage 3 (consistency distillation): boundary condition, EMA target, loss decreases, exact resume,
and the consistency sampler."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from anchoredit_jax import distill, editor, flow, sampler
from anchoredit_jax import memory as mem_lib
from anchoredit_jax.config_lib import load_config
from anchoredit_jax.metrics import read_jsonl
from anchoredit_jax.model import DiTConfig, WanDiT, init_params
from runs import rewind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20


def _config(**overrides):
    base = {"num_steps": STEPS, "eval_every": 0, "val.sample_every": 0, "checkpoint.every": 1,
            "checkpoint.max_to_keep": STEPS + 1, "checkpoint.async_save": False, "mesh.num_devices": 1,
            "mesh.data": 1}
    return load_config(os.path.join(ROOT, "configs/stage3_shapes.py"), "test", **{**base, **overrides})


def _tiny_model():
    cfg = DiTConfig(num_layers=2, num_heads=2, head_dim=8, ffn_dim=32, in_channels=4, out_channels=4, text_dim=8,
                    freq_dim=16, rope_max_seq_len=64)
    return WanDiT(cfg), _perturbed(init_params(cfg, jax.random.PRNGKey(0), latent_hw=(4, 4), text_len=3))


@jax.jit  # op by op, each leaf's shape is a new little XLA program to compile
def _perturbed(params):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _state(workdir, step):
    with ocp.StandardCheckpointer() as ck:
        return ck.restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in r}


def _max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)))


def test_boundary_condition_and_grid():
    model, params = _tiny_model()
    b = 2
    rng = jax.random.PRNGKey(3)
    x = jax.random.normal(rng, (b, 4, 4, 4))
    text, mask = jax.random.normal(rng, (b, 3, 8)), jnp.ones((b, 3), bool)

    @jax.jit  # one program: op by op, XLA compiles each primitive of the model on its own
    def velocity_at_zero(params, x):
        mem = editor.start(model, params, x, text, mask, window=2)
        v = editor.guided_velocity_fn(model, params, mem, text, mask, text, mask, 1.0)
        return v(x, jnp.zeros(b))  # per-example t

    v0 = velocity_at_zero(params, x)
    assert float(jnp.abs(v0).max()) > 1e-2  # the model is not trivially zero ...
    np.testing.assert_array_equal(flow.predict_x0(x, v0, jnp.zeros(b)), x)  # ... yet f(x, 0) = x exactly
    np.testing.assert_array_equal(sampler.consistency_fn(lambda x, t: v0, x, 0.0), x)
    s = np.asarray(distill.grid(48, 3.0))
    assert s[0] == 0.0 and s[-1] == 1.0 and np.all(np.diff(s) > 0) and len(s) == 49


def test_consistency_sampler_steps():
    """4 steps = predict x0 at t = 1, .75, .5, .25, re-noising with fresh noise in between."""
    def v_fn(x, t):
        return jnp.sin(x) * (1.0 + t)

    noise = jax.random.normal(jax.random.PRNGKey(0), (2, 3))
    rng = jax.random.PRNGKey(5)
    got = sampler.sample(v_fn, noise, 4, method="consistency", rng=rng)
    x = noise
    for i, t in enumerate([1.0, 0.75, 0.5, 0.25]):
        x0 = x - t * v_fn(x, t)
        t_next = [0.75, 0.5, 0.25, 0.0][i]
        x = (1 - t_next) * x0 + t_next * jax.random.normal(jax.random.fold_in(rng, i), x.shape) if i < 3 else x0
    np.testing.assert_allclose(got, x, atol=1e-6)
    with pytest.raises(ValueError, match="rng"):
        sampler.sample(v_fn, noise, 4, method="consistency")


def test_edit_turn_with_consistency_sampler_is_deterministic_and_uses_memory():
    model, params = _tiny_model()
    b = 1
    src = jax.random.normal(jax.random.PRNGKey(2), (b, 4, 4, 4))
    text, mask = jax.random.normal(jax.random.PRNGKey(4), (b, 3, 8)), jnp.ones((b, 3), bool)
    null_t, null_m = jnp.zeros((b, 3, 8)), jnp.zeros((b, 3), bool).at[:, 0].set(True)
    settings = editor.SamplerSettings(num_steps=4, method="consistency", guidance=1.0)
    start = jax.jit(lambda p, s: editor.start(model, p, s, null_t, null_m, window=2))
    mem = start(params, src)
    turn = jax.jit(lambda p, m, r: editor.edit_turn(model, settings, p, m, text, mask, null_t, null_m, r))
    a, mem_a = turn(params, mem, jax.random.PRNGKey(9))
    a2, _ = turn(params, mem, jax.random.PRNGKey(9))
    np.testing.assert_array_equal(a, a2)
    assert int(mem_a.count) == 2
    other = start(params, src + 1.0)
    c, _ = turn(params, other, jax.random.PRNGKey(9))
    assert float(jnp.abs(a - c).max()) > 1e-4  # the anchor conditions the consistency sample
    assert mem_lib.query_position(mem_a).tolist() == [2]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("distill") / "full")
    distill.distill(_config(), workdir)
    return workdir


def test_ema_target_and_frozen_teacher(full_run):
    cfg = _config()
    s10, s11 = _state(full_run, 10), _state(full_run, 11)
    d = min(cfg.distill.target_decay, (1.0 + 10) / (10.0 + 10))  # optim.ema_update's warm-up at step 10
    want = jax.tree.map(lambda e, p: d * e + (1 - d) * p, s10["ema"], s11["params"])
    assert _max_diff(want, s11["ema"]) < 1e-6
    assert _max_diff(s10["params"], s11["params"]) > 1e-5  # the student moves ...
    assert _max_diff(s10["teacher"], s11["teacher"]) == 0.0  # ... the teacher does not
    assert _max_diff(_state(full_run, 1)["teacher"], s11["teacher"]) == 0.0


def test_loss_decreases(full_run):
    losses = _losses(full_run)
    first = np.mean([losses[i] for i in range(1, 6)])
    last = np.mean([losses[i] for i in range(STEPS - 4, STEPS + 1)])
    print(f"distillation loss: steps 1-5 {first:.4f}, steps {STEPS - 4}-{STEPS} {last:.4f}")
    assert last < 0.8 * first


def test_resume_is_exact(full_run, tmp_path):
    workdir = rewind(full_run, tmp_path / "resumed", 10)  # as if stopped after step 10 (tests/runs.py)
    distill.distill(_config(), workdir)
    a, b = _losses(full_run), _losses(workdir)
    assert sorted(b) == list(range(1, STEPS + 1))  # steps 11.. written by the resumed run
    assert [a[i] for i in range(11, STEPS + 1)] == [b[i] for i in range(11, STEPS + 1)]
    sa, sb = _state(full_run, STEPS), _state(workdir, STEPS)
    assert _max_diff(sa["params"], sb["params"]) == 0.0 and _max_diff(sa["ema"], sb["ema"]) == 0.0


def test_bad_config_is_named(tmp_path):
    with pytest.raises(ValueError, match="distill.loss"):
        distill.distill(_config(**{"distill.loss": "l3"}), str(tmp_path / "x"))
    with pytest.raises(ValueError, match="stage3"):
        distill.distill(_config(stage="stage2"), str(tmp_path / "y"))
    with pytest.raises(ValueError, match="distill.rollout_from"):  # named before the workdir is made
        distill.distill(_config(**{"distill.rollout_from": "target"}), str(tmp_path / "z"))
    assert not os.path.exists(tmp_path / "z")


def test_student_rollouts_fill_the_memory():
    """distill.rollout_from="student": later turns are conditioned on the student's own consistency
    samples, and the teacher's rollout settings no longer matter; with one turn nothing is conditioned
    on a rollout, so both choices give the same loss."""
    model, student = _tiny_model()
    teacher = jax.tree.map(lambda x: 1.1 * x, student)
    b, k, rng = 2, 3, jax.random.PRNGKey(5)
    frames = jax.random.normal(jax.random.PRNGKey(6), (b, k + 1, 4, 4, 4))
    texts, masks = jax.random.normal(jax.random.PRNGKey(7), (b, k, 3, 8)), jnp.ones((b, k, 3), bool)
    null_t, null_m = jnp.zeros((3, 8)), jnp.zeros((3,), bool).at[0].set(True)

    def loss(first_turn_only=False, **cfg):
        c = _config().distill.copy_and_resolve_references()
        c.update(cfg)
        def f(s, t, valid):
            return distill.loss_fn(s, model, rng, target=s, teacher=t, frames=frames, texts=texts, text_masks=masks,
                                   null_text=null_t, null_mask=null_m, turn_valid=valid, cfg=c)[0]
        key = tuple(sorted(cfg.items()))
        if key not in programs:
            programs[key] = jax.jit(f)  # one program, not op-by-op dispatch; valid is an argument
        valid = jnp.ones((b, k)).at[:, 1:].set(0.0 if first_turn_only else 1.0)
        return float(programs[key](student, teacher, valid))

    programs = {}
    teacher3 = loss(rollout_from="teacher", rollout_guidance=3.0)
    student3 = loss(rollout_from="student", rollout_guidance=3.0)
    assert teacher3 != loss(rollout_from="teacher", rollout_guidance=1.0)
    assert student3 == loss(rollout_from="student", rollout_guidance=1.0)
    assert abs(student3 - teacher3) > 1e-6
    # the loss of turn 1 alone: its memory holds the source only, whichever network rolls out
    one_s = loss(True, rollout_from="student", rollout_guidance=3.0)
    assert one_s == loss(True, rollout_from="teacher", rollout_guidance=3.0) and one_s != student3
    with pytest.raises(ValueError, match="rollout_from"):
        loss(rollout_from="target")
