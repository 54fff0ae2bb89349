"""MCIE (anchoredit_jax/mcie.py): controlled inversion/sampling, dual reference, attention highlighting.

Solver accuracy is checked on an analytic field whose flow is known exactly: data N(mu, s^2),
noise N(0, 1); the rectified-flow velocity is linear in x and x_t = (1-t) mu + sqrt((1-t)^2 s^2 + t^2) z.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anchoredit_jax import editor, mcie, sampler
from anchoredit_jax.model import DiTConfig, WanDiT, init_params

MU, S = 0.5, 0.3
B, H, W, C, L, D = 2, 4, 4, 4, 6, 8


def gaussian_velocity(x, t):
    """Exact rectified-flow velocity between N(MU, S^2) data (t=0) and N(0, 1) noise (t=1)."""
    a, b = 1.0 - t, t
    return (b - a * S * S) * (x - a * MU) / (a * a * S * S + b * b) - MU


@pytest.fixture(scope="module")
def data():
    x0 = MU + S * jax.random.normal(jax.random.key(0), (64,))
    return x0, (x0 - MU) / S  # a data point and its exact noise


def test_mirrored_grid_is_the_sampling_grid_reversed():
    for shift in (1.0, 3.0, 0.5):
        np.testing.assert_allclose(1.0 - sampler.timestep_grid(7, 1.0 / shift),
                                   sampler.timestep_grid(7, shift)[::-1], atol=1e-6)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_inversion_reconstructs_and_second_order_beats_euler(data, shift):
    x0, z = data
    inv_err, rec_err = {}, {}
    for n in (8, 16):
        for m in mcie.SOLVERS:
            x1 = mcie.invert(gaussian_velocity, x0, n, method=m, shift=shift)
            rec = mcie.controlled_sample(gaussian_velocity, x1, n, method=m, shift=shift)
            inv_err[m, n] = float(jnp.abs(x1 - z).max())
            rec_err[m, n] = float(jnp.abs(rec - x0).max())
    print({k: f"{inv_err[k]:.1e}/{rec_err[k]:.1e}" for k in inv_err})
    for n in (8, 16):
        for m in ("midpoint", "fireflow"):
            assert inv_err[m, n] < 0.25 * inv_err["euler", n] and rec_err[m, n] < 0.25 * rec_err["euler", n], (m, n)
        assert rec_err["midpoint", n] < 2e-2  # no edit, same grid: back to the image
    # first order vs (close to) second order: doubling the steps halves Euler's error, divides midpoint's by ~4+
    assert 1.5 < inv_err["euler", 8] / inv_err["euler", 16] < 2.5
    assert inv_err["midpoint", 8] / inv_err["midpoint", 16] > 3.5


def test_lqr_endpoints_are_exact(data):
    """gamma = 1 inverts onto y1 and eta = 1 on every step samples onto the reference, for any field
    and solver (the controlled field is then the straight line, which every solver integrates exactly)."""
    x0, _ = data
    y1 = jax.random.normal(jax.random.key(1), x0.shape)
    ref = jnp.linspace(-1, 1, x0.shape[0])
    weird = lambda x, t: jnp.sin(3 * x) + t  # noqa: E731
    for m in mcie.SOLVERS:
        np.testing.assert_allclose(mcie.invert(weird, x0, 5, method=m, gamma=1.0, y1=y1), y1, atol=1e-5)
        out = mcie.controlled_sample(weird, y1, 5, method=m, eta=1.0, reference=ref, guided_steps=5)
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_lqr_gate_covers_exactly_the_first_steps():
    """With v = 0 only the controller moves x: n guided steps of eta = 1 put x on the line to the
    reference at t = grid[n], and it stays there."""
    x1, ref = jnp.full((3,), 2.0), jnp.zeros(3)
    ts = sampler.timestep_grid(8, 2.0)
    for n in (0, 2, 5, 8):
        for m in mcie.SOLVERS:
            out = mcie.controlled_sample(lambda x, t: jnp.zeros_like(x), x1, 8, method=m, shift=2.0, eta=1.0,
                                         reference=ref, guided_steps=n)
            np.testing.assert_allclose(out, ref + (x1 - ref) * ts[n], atol=1e-5, err_msg=f"{m} n={n}")


def test_controlled_inversion_and_sampling_help_reconstruction(data):
    """RF-Inversion's pairing: inversion pulled toward y1 (gamma) is repaired by the sampling LQR toward the image."""
    x0, _ = data
    y1 = jax.random.normal(jax.random.key(2), x0.shape)
    x1 = mcie.invert(gaussian_velocity, x0, 8, method="fireflow", gamma=0.5, y1=y1)
    x1_free = mcie.invert(gaussian_velocity, x0, 8, method="fireflow")
    assert jnp.abs(x1 - y1).mean() < jnp.abs(x1_free - y1).mean()
    errs = {eta: float(jnp.abs(mcie.controlled_sample(gaussian_velocity, x1, 8, method="fireflow", eta=eta,
                                                      reference=x0, guided_steps=2) - x0).mean())
            for eta in (0.0, 0.5, 0.9)}
    assert errs[0.9] < errs[0.5] < errs[0.0], errs


def test_eta_zero_is_the_plain_sampler():
    x = jax.random.normal(jax.random.key(3), (2, 5))
    fn = lambda x, t: jnp.tanh(x) * (1 + t)  # noqa: E731
    for m in mcie.SOLVERS:
        plain = sampler.sample(fn, x, 6, method=m, shift=2.0)
        ctrl = mcie.controlled_sample(fn, x, 6, method=m, shift=2.0, eta=0.0, reference=x * 3, guided_steps=6)
        np.testing.assert_array_equal(ctrl, plain)


def test_dual_reference():
    src, prev = jnp.array([0.0, 2.0]), jnp.array([1.0, -2.0])
    np.testing.assert_array_equal(mcie.dual_reference(src, prev, 0.0), src)
    np.testing.assert_array_equal(mcie.dual_reference(src, prev, 1.0), prev)
    np.testing.assert_allclose(mcie.dual_reference(src, prev, 0.7), 0.3 * src + 0.7 * prev, atol=1e-7)


def test_settings_validation():
    assert mcie.MCIESettings().validate().guided_steps == 2 and mcie.MCIESettings(num_steps=15).guided_steps == 4
    assert mcie.MCIESettings().rank_range(19) == (9, 14)  # the paper's 10th-14th of FLUX's 19 blocks
    assert mcie.MCIESettings().rank_range(2) == (1, 2) and mcie.MCIESettings().rank_range(1) == (0, 1)
    for bad, msg in ((dict(method="consistency"), "deterministic"), (dict(eta=1.5), "eta"),
                     (dict(highlight_ranks=(0.8, 0.2)), "highlight_ranks"), (dict(highlight_out=0.0), "factors")):
        with pytest.raises(ValueError, match=msg):
            dataclasses.replace(mcie.MCIESettings(), **bad).validate()


def test_content_token_weights_and_highlight_scale():
    mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], bool)  # [CLS] a b [SEP]; the null instruction
    np.testing.assert_allclose(mcie.content_token_weights(mask), [[0, .5, .5, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    # 4 blocks with mean activations 0.4, 0.1, 0.3, 0.2: rank_range(4) = (2, 3) picks the 3rd, block 3
    n = 8
    pattern = jnp.array([0, 0, 1, 1, 0, 0, 0, 1], jnp.float32)
    maps = jnp.stack([jnp.full(n, 0.4), jnp.full(n, 0.1), 0.3 + 0.01 * jnp.roll(pattern, 3),
                      0.2 + 0.05 * (pattern - pattern.mean())])[:, None]  # [L=4, B=1, N]
    settings = mcie.MCIESettings()
    scale = mcie.highlight_scale(maps, settings)
    np.testing.assert_array_equal(scale[0], jnp.where(pattern > 0, 2.0, 0.8))


# ----------------------------------------------------------------------------- on a tiny random DiT
@pytest.fixture(scope="module")
def tiny():
    cfg = DiTConfig(num_layers=2, num_heads=2, head_dim=12, ffn_dim=32, in_channels=C, out_channels=C, text_dim=D,
                    freq_dim=32)
    params = nn.unbox(init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: p + 0.1 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    null_text, null_mask = jnp.zeros((B, L, D)), jnp.broadcast_to(jnp.arange(L) == 0, (B, L))
    text = jnp.asarray(rng.standard_normal((B, L, D)), jnp.float32)
    mask = jnp.arange(L)[None] < jnp.array([[5], [3]])
    source = jnp.asarray(rng.standard_normal((B, H, W, C)), jnp.float32)
    return WanDiT(cfg), params, null_text, null_mask, text, mask, source


def _apply(model, params, x, text, mask, **kw):
    b = x.shape[0]
    return model.apply({"params": params}, x[:, None], jnp.full((b, 1), 0.7), text[:, None], mask[:, None],
                       jnp.ones((b, 1), jnp.int32), mode="block_causal", **kw)


def test_attention_maps_and_scale_in_the_model(tiny):
    model, params, _, _, text, mask, source = tiny
    n = (H // 2) * (W // 2)
    v = _apply(model, params, source, text, mask)
    # a scale of 1 is no scale, bit for bit; asking for maps leaves the velocity untouched
    np.testing.assert_array_equal(_apply(model, params, source, text, mask, xattn_scale=jnp.ones((B, 1, n))), v)
    v_p, aux = _apply(model, params, source, text, mask, xattn_probe=mask[:, None].astype(jnp.float32))
    np.testing.assert_array_equal(v_p, v)
    maps = aux["xattn_maps"]
    assert maps.shape == (2, B, 1, n)
    np.testing.assert_allclose(maps, 1.0, atol=1e-5)  # weight 1 on every valid token: probabilities sum to 1
    per_token = [_apply(model, params, source, text, mask, xattn_probe=jax.nn.one_hot(
        jnp.full((B, 1), i), L))[1]["xattn_maps"] for i in range(L)]
    np.testing.assert_allclose(sum(per_token), 1.0, atol=1e-5)
    assert all(float(m.min()) >= 0 for m in per_token)
    np.testing.assert_array_equal(per_token[4][:, 1], 0.0)  # padding of the 3-token instruction gets nothing
    # a real scale changes the output only through the cross-attention, and more for a larger factor
    d1 = jnp.abs(_apply(model, params, source, text, mask, xattn_scale=jnp.full((B, 1, n), 1.5)) - v).mean()
    d2 = jnp.abs(_apply(model, params, source, text, mask, xattn_scale=jnp.full((B, 1, n), 2.0)) - v).mean()
    assert 0 < d1 < d2
    with pytest.raises(ValueError, match="teacher_forcing"):
        model.apply({"params": params}, source[:, None], jnp.ones((B, 1)), text[:, None], mask[:, None],
                    jnp.zeros((B, 1), jnp.int32), mode="teacher_forcing", clean=source[:, None],
                    xattn_scale=jnp.ones((B, 1, n)))


@functools.cache  # one jitted turn per settings: each new jit traces the turn again
def _turn_fn(model, settings):
    return jax.jit(functools.partial(mcie.edit_turn, model, settings))


def _turn(model, settings, params, state, text, mask, null_text, null_mask, seed=0):
    return _turn_fn(model, settings)(params, state, text, mask, null_text, null_mask, jax.random.key(seed))


def test_no_edit_turn_reconstructs_on_the_model(tiny):
    """Null instruction, no guidance, no control, no highlighting: inversion then sampling returns the
    previous frame, closer with the second-order solvers than with Euler at the same step count."""
    model, params, null_text, null_mask, _, _, source = tiny
    state = mcie.start(model, params, source, null_text, null_mask)
    err = {}
    for m in mcie.SOLVERS:
        s = mcie.MCIESettings(num_steps=8, method=m, guidance=1.0, gamma=0.0, eta=0.0, highlight_in=1.0,
                              highlight_out=1.0)
        latent, _ = _turn(model, s, params, state, null_text, null_mask, null_text, null_mask)
        err[m] = float(jnp.abs(latent - source).mean() / jnp.abs(source).mean())
    print(f"no-edit relative reconstruction error, 8 steps: {err}")
    assert err["midpoint"] < 0.02 and err["fireflow"] < 0.5 * err["euler"] and err["midpoint"] < 0.5 * err["euler"]


def test_full_control_lands_on_the_dual_reference_across_turns(tiny):
    """eta = 1 on every step makes each turn's output X_dual = X_src + lam (X_prev - X_src), whatever the
    model and the instruction: checks the reference, the gate and the state carried across turns."""
    model, params, null_text, null_mask, text, mask, source = tiny
    s = mcie.MCIESettings(num_steps=4, method="euler", eta=1.0, guided_frac=1.0, lam=0.7)
    state = mcie.start(model, params, source, null_text, null_mask, window=2, keep_anchor=True)
    prev = source + 1.0
    state = state.replace(prev=prev)
    out1, state = _turn(model, s, params, state, text, mask, null_text, null_mask)
    np.testing.assert_allclose(out1, source + 0.7 * (prev - source), atol=1e-4)
    out2, state = _turn(model, s, params, state, text, mask, null_text, null_mask)
    np.testing.assert_allclose(out2, source + 0.7 * (out1 - source), atol=1e-4)
    np.testing.assert_array_equal(state.prev, out2)
    np.testing.assert_array_equal(state.source, source)
    assert int(state.memory.count) == 3 and state.memory.keep_anchor


def test_edit_sequence_is_the_turns_and_highlight_identity(tiny):
    model, params, null_text, null_mask, text, mask, source = tiny
    s = mcie.MCIESettings(num_steps=3, guided_frac=0.34)
    state = mcie.start(model, params, source, null_text, null_mask)
    texts, masks = jnp.stack([text, text[::-1]]), jnp.stack([mask, mask[::-1]])
    rng = jax.random.key(5)
    latents, final = jax.jit(functools.partial(mcie.edit_sequence, model, s))(
        params, state, texts, masks, null_text, null_mask, rng)
    st, fn = state, _turn_fn(model, s)
    for k in range(2):
        lat, st = fn(params, st, texts[k], masks[k], null_text, null_mask, jax.random.fold_in(rng, k))
        np.testing.assert_allclose(latents[k], lat, atol=1e-5)
    assert latents.shape == (2, B, H, W, C) and bool(jnp.isfinite(latents).all())
    # highlighting with in = out = 1 is no highlighting, exactly: the mask is all ones and a ones scale
    # leaves the turn's velocity bit-identical (mcie then also skips the probe pass)
    ones = dataclasses.replace(s, highlight_in=1.0, highlight_out=1.0)
    maps = mcie.attention_maps(model, params, state.memory, source, 1.0, text, mask)
    assert maps.shape == (2, B, (H // 2) * (W // 2)) and not ones.highlight
    scale = mcie.highlight_scale(maps, ones)
    np.testing.assert_array_equal(scale, 1.0)
    args = (model, params, state.memory, text, mask, null_text, null_mask)
    plain = editor.velocity_fn(*args)(source, 0.4)
    scaled = editor.velocity_fn(*args, model_kwargs={"xattn_scale": jnp.concatenate([scale, scale])[:, None]})(
        source, 0.4)
    np.testing.assert_array_equal(scaled[0], plain[0])
    np.testing.assert_array_equal(scaled[1], plain[1])
    off, _ = _turn(model, ones, params, state, text, mask, null_text, null_mask)
    on, _ = _turn(model, s, params, state, text, mask, null_text, null_mask)
    assert float(jnp.abs(on - off).max()) > 1e-4  # and highlighting does act
