"""Stage 2: ratio 0 is teacher forcing, no gradient through the memory, one compile, exact resume."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from anchoredit_jax import flow, stage2
from anchoredit_jax import train as train_lib
from anchoredit_jax.config_lib import load_config
from anchoredit_jax.metrics import read_jsonl
from anchoredit_jax.model import DiTConfig, WanDiT, init_params
from runs import rewind

B, K, H, W, C, L, D = 2, 3, 4, 4, 4, 5, 8
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(**kw):
    base = dict(window=4, keep_anchor=True, rollout_steps=2, rollout_method="euler", rollout_guidance=2.0,
                turn_weight_alpha=1.0, outside_mask_weight=2.0, cfg_drop_prob=0.0, timestep_sampling="logit_normal",
                timestep_shift=1.0, degrade=dict(prob=0.0, colour=0.2, field=0.3, laplace=0.1, blur=1.0))
    base.update(kw)
    return ml_collections.ConfigDict(base)


@pytest.fixture(scope="module")
def setup():
    cfg = DiTConfig(num_layers=2, num_heads=2, head_dim=12, ffn_dim=32, in_channels=C, out_channels=C, text_dim=D,
                    freq_dim=32)
    params = nn.unbox(init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: p + 0.2 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    batch = dict(frames=jnp.asarray(rng.standard_normal((B, K + 1, H, W, C)), jnp.float32),
                 texts=jnp.asarray(rng.standard_normal((B, K, L, D)), jnp.float32),
                 text_masks=jnp.asarray(np.arange(L)[None, None] < rng.integers(1, L + 1, (B, K))[..., None]),
                 null_text=jnp.zeros((L, D)), null_mask=jnp.arange(L) == 0,
                 edit_masks=jnp.asarray(rng.uniform(size=(B, K, H, W)) > 0.5, jnp.float32),
                 has_mask=jnp.ones((B, K)), turn_valid=jnp.ones((B, K)))
    return WanDiT(cfg), params, batch


def _teacher_forcing(model, params, batch, d, kept_scale=1.0):
    """The stage-2 turns of `batch` with draws `d` through mode="teacher_forcing" (clean frames 0..K,
    noisy targets 1..K): returns (x_t [B, K+1, h, w, C], turns) where turns(clean [B, K+1, ...]) ->
    (v [B, K, h, w, C], per-turn loss [K]) with the memory holding `clean`. The loss weights are
    built here from the masks: outside a known mask 2 (_cfg's outside_mask_weight), and 2 * kept_scale
    where earlier turns' known masks edited and this turn's does not."""
    texts = jnp.concatenate([jnp.broadcast_to(batch["null_text"], (B, 1, L, D)), batch["texts"]], 1)
    masks = jnp.concatenate([jnp.broadcast_to(batch["null_mask"], (B, 1, L)), batch["text_masks"]], 1)
    t = jnp.concatenate([jnp.zeros((B, 1)), d["t"]], 1)
    noise = jnp.concatenate([jnp.zeros((B, 1, H, W, C)), d["noise"]], 1)
    x_t = flow.add_noise(batch["frames"], noise, t)
    known = batch["edit_masks"] * batch["has_mask"][..., None, None]  # [B, K, h, w]
    outside = batch["has_mask"][..., None, None] * (1.0 - batch["edit_masks"])
    earlier = jnp.cumsum(known, 1) - known > 0
    weight = jnp.where((outside > 0) & earlier, 2.0 * kept_scale, 1.0 + outside)
    apply = jax.jit(lambda clean: model.apply({"params": params}, x_t, t, texts, masks,
                                             jnp.broadcast_to(jnp.arange(K + 1), (B, K + 1)),
                                             mode="teacher_forcing", clean=clean)[:, 1:])

    def turns(clean):
        v = apply(clean)
        err = jnp.mean(jnp.square(v - flow.velocity_target(batch["frames"][:, 1:], d["noise"])), -1)
        return v, (jnp.sum(weight * err, (2, 3)) / jnp.sum(weight, (2, 3))).mean(0)

    return x_t, turns


@pytest.mark.parametrize("kept_scale", [1.0, 5.0])
def test_ratio_zero_equals_teacher_forcing(setup, kept_scale):
    """Also with kept_scale: the error where earlier turns' masks edited and this turn's does not
    weighs outside_mask_weight * kept_scale (reference built here from the masks)."""
    model, params, batch = setup
    rng = jax.random.key(3)
    loss, aux = jax.jit(lambda p: stage2.loss_fn(p, model, rng, ratio=0.0, cfg=_cfg(kept_scale=kept_scale),
                                                 **batch))(params)
    earlier = jnp.cumsum(batch["edit_masks"], 1) - batch["edit_masks"] > 0  # [B, K, h, w]
    assert bool(jnp.any(earlier & (batch["edit_masks"] == 0)))  # the kept case is exercised
    _, turns = _teacher_forcing(model, params, batch, stage2.draw(rng, B, K, (H, W, C), _cfg()), kept_scale)
    ref = turns(batch["frames"])[1]  # [K]
    diff = float(jnp.abs(aux["turn_loss"] - ref).max())
    print(f"stage-2 ratio 0 vs teacher forcing, per turn: {np.asarray(aux['turn_loss'])} vs {np.asarray(ref)}, "
          f"max diff {diff:.1e}")
    assert diff <= 1e-5


@pytest.mark.parametrize("max_t", [0.0, 1.0])
def test_own_estimate_writes_the_one_step_estimate(setup, max_t):
    """own_estimate=1: the memory of turn k holds x_t - t v of turns 1..k-1 (v from the loss's own call)
    instead of the truth; checked against teacher forcing with those frames swapped in, one turn at a
    time. max_t=0: nothing is swapped, so the loss is teacher forcing's."""
    model, params, batch = setup
    rng = jax.random.key(5)
    cfg = _cfg(own_estimate=1.0, own_estimate_max_t=max_t)
    _, aux = jax.jit(lambda p: stage2.loss_fn(p, model, rng, ratio=0.0, cfg=cfg, **batch))(params)
    d = stage2.draw(rng, B, K, (H, W, C), cfg)
    x_t, turns = _teacher_forcing(model, params, batch, d)
    clean, ref = batch["frames"], []
    for k in range(1, K + 1):  # turn k's velocity depends on frames 0..k-1 only, so k passes suffice
        v, loss = turns(clean)
        ref.append(float(loss[k - 1]))
        if max_t > 0:
            clean = clean.at[:, k].set(flow.predict_x0(x_t[:, k], v[:, k - 1], d["t"][:, k - 1]))
    diff = float(jnp.abs(aux["turn_loss"] - jnp.asarray(ref)).max())
    assert diff <= 1e-5, (np.asarray(aux["turn_loss"]), ref)
    assert float(aux["own_frac"]) == (1.0 if max_t > 0 else 0.0)
    if max_t > 0:  # the swap matters: the truth in memory gives other losses from turn 2 on
        _, tf_aux = jax.jit(lambda p: stage2.loss_fn(p, model, rng, ratio=0.0, cfg=_cfg(), **batch))(params)
        assert float(tf_aux["turn_loss"][0]) == pytest.approx(float(aux["turn_loss"][0]), abs=1e-6)
        assert float(jnp.abs(tf_aux["turn_loss"][1:] - aux["turn_loss"][1:]).min()) > 1e-4


def test_untouched_only_degrades_only_what_no_edit_touched(setup):
    """degrade.untouched_only: turn k's memory holds frames 1..k-1 degraded (degrade.py, the turn's own
    key) only where no mask of turns 1..j has touched; checked against teacher forcing with those
    frames swapped in. A sequence with a turn of unknown mask is never degraded from that turn on."""
    from anchoredit_jax import degrade as degrade_lib
    model, params, batch = setup
    batch = {**batch, "has_mask": batch["has_mask"].at[1, 1].set(0.0)}  # sequence 1, turn 2: mask unknown
    rng = jax.random.key(7)
    deg = dict(prob=1.0, colour=0.5, field=0.5, laplace=0.3, blur=1.0, untouched_only=True)
    _, aux = jax.jit(lambda p: stage2.loss_fn(p, model, rng, ratio=0.0, cfg=_cfg(degrade=deg), **batch))(params)
    d = stage2.draw(rng, B, K, (H, W, C), _cfg())
    clean = batch["frames"]
    em = batch["edit_masks"] * batch["has_mask"][..., None, None]
    for j in range(1, K):  # frame j as turn j writes it
        k_deg = jax.random.split(d["turn_keys"][j - 1])[1]
        bad = degrade_lib.degrade(k_deg, clean[:, j], ml_collections.ConfigDict(deg))
        spare = (jnp.max(em[:, :j], 1) > 0) | (jnp.prod(batch["has_mask"][:, :j], 1) < 1)[:, None, None]
        clean = clean.at[:, j].set(jnp.where(spare[..., None], clean[:, j], bad))
    assert bool(jnp.all(clean[1, 2:] == batch["frames"][1, 2:]))  # unknown mask: left alone
    assert float(jnp.abs(clean[0, 1] - batch["frames"][0, 1]).max()) > 0.1  # the rest is degraded ...
    assert bool(jnp.any(jnp.all(clean[0, 1] == batch["frames"][0, 1], -1)))  # ... but not where turn 1 edited
    ref = _teacher_forcing(model, params, batch, d)[1](clean)[1]
    assert float(jnp.abs(aux["turn_loss"] - ref).max()) <= 1e-5, (np.asarray(aux["turn_loss"]), np.asarray(ref))


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_no_gradient_through_memory_or_rollouts(setup, ratio):
    model, params, batch = setup
    valid = batch["turn_valid"].at[:, 0].set(0.0)  # turn 1 is not a loss target ...

    def f(frames):
        return stage2.loss_fn(params, model, jax.random.key(1), ratio=ratio, cfg=_cfg(window=1),
                              **{**batch, "frames": frames, "turn_valid": valid})[0]

    g = jax.jit(jax.grad(f))(batch["frames"])  # one program, not op-by-op dispatch
    # ... so frames 0 (anchor) and 1 reach the loss only through the memory: no gradient at all
    assert float(jnp.abs(g[:, 0]).max()) == 0.0 and float(jnp.abs(g[:, 1]).max()) == 0.0
    assert float(jnp.abs(g[:, 2]).max()) > 0.0  # a target does get gradient


def test_compiles_once_with_eviction_and_degradation(setup):
    model, params, batch = setup
    fn = jax.jit(lambda p, r, ratio: stage2.loss_fn(p, model, r, ratio=ratio, cfg=_cfg(window=1, cfg_drop_prob=0.2,
                                                    degrade=dict(prob=1.0, colour=0.2, field=0.3, laplace=0.1,
                                                                 blur=1.0)), **batch)[0])
    losses = [float(fn(params, jax.random.key(i), r)) for i, r in enumerate([0.0, 0.5, 1.0])]
    assert all(np.isfinite(losses)) and fn._cache_size() == 1


def test_resume_is_exact(tmp_path):
    cfg = load_config(os.path.join(ROOT, "configs/stage2_shapes.py"), "test",
                      **{"num_steps": 3, "val.sample_every": 0, "eval_every": 0, "checkpoint.every": 1,
                         "checkpoint.async_save": False, "mesh.num_devices": 1})
    train_lib.train(cfg, str(tmp_path / "full"))
    split = rewind(tmp_path / "full", tmp_path / "split", 1)  # as if stopped after step 1 (tests/runs.py)
    train_lib.train(cfg, split)  # resumes from step 1: rollout ratios 1/3, 2/3
    loss = lambda d: {r["step"]: r["loss"] for r in read_jsonl(str(d / "metrics.jsonl")) if "loss" in r}  # noqa: E731
    assert sorted(loss(tmp_path / "split")) == [1, 2, 3]  # steps 2 and 3 written by the resumed run
    assert loss(tmp_path / "full") == loss(tmp_path / "split")
