"""Anchor memory and the turn loop: equivalence with recomputation, fixed size, one compilation."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anchoredit_jax import editor
from anchoredit_jax import memory as mem_lib
from anchoredit_jax.model import DiTConfig, WanDiT, init_params

B, H, W, C, L, D = 2, 4, 4, 4, 5, 8


@pytest.fixture(scope="module")
def setup():
    cfg = DiTConfig(num_layers=2, num_heads=2, head_dim=12, ffn_dim=32, in_channels=C, out_channels=C, text_dim=D,
                    freq_dim=32, turn_stride=4)
    params = nn.unbox(init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: p + 0.2 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    null_text, null_mask = jnp.zeros((B, L, D)), jnp.broadcast_to(jnp.arange(L) == 0, (B, L))
    return WanDiT(cfg), params, null_text, null_mask


def _texts(rng, k):
    return (jnp.asarray(rng.standard_normal((k, B, L, D)), jnp.float32),
            jnp.asarray(np.arange(L)[None, None] < rng.integers(1, L + 1, (k, B))[..., None]))


def test_memory_equals_block_causal_recomputation_within_window(setup):
    model, params, null_text, null_mask = setup
    rng = np.random.default_rng(1)
    k_hist = 3
    frames = jnp.asarray(rng.standard_normal((B, k_hist + 1, H, W, C)), jnp.float32)  # source + 3 accepted
    texts, masks = _texts(rng, k_hist + 1)  # turn 1..3 instructions and the query's
    x, t = jnp.asarray(rng.standard_normal((B, H, W, C)), jnp.float32), 0.6

    @jax.jit  # one program: op by op, XLA compiles each primitive of the model on its own
    def both(params, frames, texts, masks, x):
        mem = editor.start(model, params, frames[:, 0], null_text, null_mask, window=4)
        for k in range(1, k_hist + 1):
            mem = mem_lib.update(model, params, mem, frames[:, k], texts[k - 1], masks[k - 1])
        v_mem, _ = editor.velocity_fn(model, params, mem, texts[k_hist], masks[k_hist], null_text, null_mask)(x, t)
        seq = jnp.concatenate([frames, x[:, None]], axis=1)
        all_texts = jnp.concatenate([null_text[None], texts]).transpose(1, 0, 2, 3)
        all_masks = jnp.concatenate([null_mask[None], masks]).transpose(1, 0, 2)
        times = jnp.concatenate([jnp.zeros((B, k_hist + 1)), jnp.full((B, 1), t)], axis=1)
        pos = jnp.broadcast_to(jnp.arange(k_hist + 2), (B, k_hist + 2))
        return v_mem, model.apply({"params": params}, seq, times, all_texts, all_masks, pos, mode="block_causal")[:, -1]

    v_mem, v_full = both(params, frames, texts, masks, x)
    err = float(jnp.abs(v_mem - v_full).max())
    print(f"memory vs block-causal recomputation: max abs diff {err:.1e}")
    assert err <= 2e-5 and float(jnp.abs(v_full).max()) > 0.1


def test_positions_and_eviction():
    cfg = DiTConfig(num_layers=1, num_heads=1, head_dim=12, in_channels=C, out_channels=C)
    for keep_anchor in (True, False):
        mem = mem_lib.init_memory(cfg, 1, (H, W), window=3, keep_anchor=keep_anchor)
        qpos = []
        for i in range(7):
            qpos.append(int(mem_lib.query_position(mem)[0]))
            kv = jnp.full((1, 1, 4, 1, 12), float(i))
            mem = mem_lib.write(mem, kv, kv)
        stored = [float(mem.k[0, 0, s, 0, 0, 0]) for s in range(mem.num_slots)]
        if keep_anchor:  # anchor frame 0 forever; window = last 3; positions saturate at W+1 = 4
            assert qpos == [0, 1, 2, 3, 4, 4, 4] and stored == [0.0, 4.0, 5.0, 6.0]
            assert mem_lib.read(mem)["positions"][0].tolist() == [0, 1, 2, 3]
        else:  # plain rolling window: the source is evicted
            assert qpos == [0, 1, 2, 3, 3, 3, 3] and stored == [4.0, 5.0, 6.0]
        assert bool(mem.valid.all()) and int(mem.count) == 7


def test_anchor_weight_biases_only_the_anchor_slot(setup):
    """memory.read: weight 1 reads the memory as trained (no bias); w adds log w to the anchor slot
    only, and nothing without an anchor; a turn at weight 1 equals the default turn bit for bit."""
    model, params, null_text, null_mask = setup
    cfg = model.config
    mem = mem_lib.init_memory(cfg, B, (H, W), window=2)
    assert "bias" not in mem_lib.read(mem, 1.0)
    bias = mem_lib.read(mem, 0.25)["bias"]
    np.testing.assert_allclose(bias, np.broadcast_to([np.log(0.25), 0.0, 0.0], (B, 3)), rtol=1e-6)
    assert "bias" not in mem_lib.read(mem_lib.init_memory(cfg, B, (H, W), window=2, keep_anchor=False), 0.25)
    with pytest.raises(ValueError, match="anchor_weight must be > 0"):
        mem_lib.read(mem, 0.0)
    rng = np.random.default_rng(3)
    src = jnp.asarray(rng.standard_normal((B, H, W, C)), jnp.float32)
    text, mask = (x[0] for x in _texts(rng, 1))
    m = editor.start(model, params, src, null_text, null_mask, window=2)
    def turn(settings):
        return editor.edit_turn(model, settings, params, m, text, mask, null_text, null_mask, jax.random.key(0))[0]

    base = turn(editor.SamplerSettings(num_steps=2))
    weighed = lambda w: turn(editor.SamplerSettings(num_steps=2, anchor_weight=w))  # noqa: E731
    assert float(jnp.abs(weighed(1.0) - base).max()) == 0.0 and float(jnp.abs(weighed(0.25) - base).max()) > 1e-4


def test_anchor_gate_weighs_only_the_anchor_tokens_the_newest_frame_left(setup):
    """memory.update records the source and, per token, the newest frame's mean squared distance from
    it; read's gate puts log w on the anchor's unchanged tokens only. A gate above every change is the
    ungated weight, a gate below every change weight 1 (same turn, to float rounding)."""
    model, params, null_text, null_mask = setup
    rng = np.random.default_rng(4)
    src = jnp.asarray(rng.standard_normal((B, H, W, C)), jnp.float32)
    m = editor.start(model, params, src, null_text, null_mask, window=2)
    np.testing.assert_array_equal(m.source, src)
    assert m.change.shape == (B, (H // 2) * (W // 2)) and not np.asarray(m.change).any()
    frame = (src + 0.02).at[:, :2, :2].add(3.0).at[:, 2:, 2:].add(0.1)  # token 0 edited, all drifted a little
    text, mask = (x[0] for x in _texts(rng, 1))
    m = mem_lib.update(model, params, m, frame, text, mask)
    np.testing.assert_array_equal(m.source, src)  # the source stays
    np.testing.assert_allclose(m.change, np.broadcast_to([3.02**2, 4e-4, 4e-4, 0.12**2], (B, 4)), rtol=1e-4)
    bias = np.asarray(mem_lib.read(m, 4.0, 0.5)["bias"])  # [B, S, N]
    np.testing.assert_allclose(bias, np.broadcast_to([[0.0, np.log(4.0), np.log(4.0), np.log(4.0)]] + [[0.0] * 4] * 2,
                                                     (B, 3, 4)), rtol=1e-6)
    with pytest.raises(ValueError, match="anchor_gate must be >= 0"):
        mem_lib.read(m, 4.0, -1.0)

    def turn(**kw):
        return editor.edit_turn(model, editor.SamplerSettings(num_steps=2, **kw), params, m, text, mask, null_text,
                                null_mask, jax.random.key(0))[0]

    np.testing.assert_allclose(turn(anchor_weight=4.0, anchor_gate=100.0), turn(anchor_weight=4.0), atol=1e-5)
    np.testing.assert_allclose(turn(anchor_weight=4.0, anchor_gate=1e-4), turn(), atol=1e-5)
    assert float(jnp.abs(turn(anchor_weight=4.0, anchor_gate=0.5) - turn(anchor_weight=4.0)).max()) > 1e-4


def test_latest_weight_biases_the_newest_window_frame(setup):
    """memory.read's latest_weight puts log w on the newest window slot (wherever the window has got
    to, with or without the anchor), on top of the anchor's bias; with the source alone in memory
    there is no newest frame to weigh, so the first turn is the unweighed one."""
    model, params, null_text, null_mask = setup
    cfg, lw = model.config, np.log(2.0)
    rng = np.random.default_rng(5)
    src = jnp.asarray(rng.standard_normal((B, H, W, C)), jnp.float32)
    text, mask = (x[0] for x in _texts(rng, 1))
    m = editor.start(model, params, src, null_text, null_mask, window=2)  # slots: anchor, 2 window
    np.testing.assert_array_equal(mem_lib.read(m, latest_weight=2.0)["bias"], np.zeros((B, 3)))

    def turn(mem, **kw):
        return editor.edit_turn(model, editor.SamplerSettings(num_steps=2, **kw), params, mem, text, mask, null_text,
                                null_mask, jax.random.key(0))[0]

    np.testing.assert_allclose(turn(m, latest_weight=2.0), turn(m), atol=1e-5)
    expect = [[0, lw, 0], [0, 0, lw], [0, 0, lw]]  # after 1, 2 and 3 edits (the window then shifts)
    for k in range(3):
        m = mem_lib.update(model, params, m, src + k + 1, text, mask)
        np.testing.assert_allclose(mem_lib.read(m, latest_weight=2.0)["bias"], np.broadcast_to(expect[k], (B, 3)),
                                   atol=1e-6)
    np.testing.assert_allclose(mem_lib.read(m, 4.0, latest_weight=2.0)["bias"],
                               np.broadcast_to([np.log(4.0), 0, lw], (B, 3)), atol=1e-6)
    gated = np.asarray(mem_lib.read(m, 4.0, 1e9, latest_weight=2.0)["bias"])  # [B, S, N]: every token unchanged
    np.testing.assert_allclose(gated, np.broadcast_to(np.array([np.log(4.0), 0, lw])[:, None], gated.shape),
                               atol=1e-6)
    no_anchor = mem_lib.init_memory(cfg, B, (H, W), window=2, keep_anchor=False)
    no_anchor = mem_lib.update(model, params, no_anchor, src, text, mask)
    np.testing.assert_allclose(mem_lib.read(no_anchor, latest_weight=2.0)["bias"], np.broadcast_to([lw, 0], (B, 2)),
                               atol=1e-6)
    assert float(jnp.abs(turn(m, latest_weight=2.0) - turn(m)).max()) > 1e-4
    with pytest.raises(ValueError, match="latest_weight must be > 0"):
        mem_lib.read(m, latest_weight=0.0)


def test_edit_region_keeps_the_previous_frame_outside_the_changed_tokens(setup):
    """SamplerSettings.edit_region: a token takes the new sample only where it differs from the null
    instruction's sample (same noise) by more than the threshold; elsewhere the previous frame's
    latent, exactly. Threshold 0 (off) and a huge one (every turn returns the source) bound it."""
    model, params, null_text, null_mask = setup
    rng = np.random.default_rng(5)
    src = jnp.asarray(rng.standard_normal((B, H, W, C)), jnp.float32)
    texts, masks = _texts(rng, 2)
    key = jax.random.key(3)
    off = editor.SamplerSettings(num_steps=2, guidance=2.0)

    def turns(settings):
        return jax.jit(lambda p: editor.edit_sequence(model, settings, p, editor.start(
            model, p, src, null_text, null_mask, window=2), texts, masks, null_text, null_mask, key))(params)

    plain, _ = turns(off)
    mem0 = editor.start(model, params, src, null_text, null_mask, window=2)
    # the reference: the first turn sampled with the null instruction (guidance 1: unconditional)
    ref, _ = jax.jit(functools.partial(editor.edit_turn, model, dataclasses.replace(off, guidance=1.0)))(
        params, mem0, null_text, null_mask, null_text, null_mask, jax.random.fold_in(key, 0))
    dist = np.asarray(mem_lib.token_change(plain[0], ref, (1, 1)))  # [B, H, W]
    thr = float(np.median(dist))
    lat, mem = turns(dataclasses.replace(off, edit_region=thr))
    inside = np.asarray(editor.region_mask(plain[0], ref, thr))
    assert 0 < inside.sum() < inside.size
    np.testing.assert_array_equal(np.asarray(lat[0])[inside], np.asarray(plain[0])[inside])
    np.testing.assert_array_equal(np.asarray(lat[0])[~inside], np.asarray(src)[~inside])  # turn 1 keeps the source
    same_as_prev = np.all(np.asarray(lat[1]) == np.asarray(lat[0]), axis=-1)  # turn 2: the rest is turn 1's, exactly
    assert 0 < same_as_prev.sum() < same_as_prev.size
    np.testing.assert_array_equal(np.asarray(mem.latest), np.asarray(lat[1]))  # the memory holds the newest frame
    mixed, _ = turns(dataclasses.replace(off, edit_region=thr, outside_mix=0.25))  # a quarter of the way outside
    np.testing.assert_array_equal(np.asarray(mixed[0])[inside], np.asarray(plain[0])[inside])
    np.testing.assert_allclose(np.asarray(mixed[0])[~inside],
                               np.asarray(src + 0.25 * (plain[0] - src))[~inside], atol=1e-6)
    never, _ = turns(dataclasses.replace(off, edit_region=1e9))
    np.testing.assert_array_equal(np.asarray(never), np.broadcast_to(np.asarray(src), never.shape))
    always, _ = turns(dataclasses.replace(off, edit_region=1e-30))
    np.testing.assert_allclose(np.asarray(always), np.asarray(plain), atol=1e-6)


def test_fixed_size_and_one_compilation_over_30_turns(setup):
    model, params, null_text, null_mask = setup
    rng = np.random.default_rng(2)
    settings = editor.SamplerSettings(num_steps=2, guidance=2.0)
    turn = jax.jit(functools.partial(editor.edit_turn, model, settings))
    mem = editor.start(model, params, jnp.asarray(rng.standard_normal((B, H, W, C)), jnp.float32), null_text,
                       null_mask, window=3)
    texts, masks = _texts(rng, 30)
    sizes = {}
    for k in range(30):
        _, mem = turn(params, mem, texts[k], masks[k], null_text, null_mask, jax.random.key(k))
        if k + 1 in (2, 30):
            sizes[k + 1] = (mem.nbytes, jax.tree.map(lambda x: x.shape, mem))
    assert sizes[2] == sizes[30]
    assert turn._cache_size() == 1  # turn 30 ran the program compiled for turn 1
    print(f"memory: {sizes[30][0]} bytes at turn 2 and at turn 30")


def test_scan_equals_turn_by_turn_and_is_deterministic(setup):
    model, params, null_text, null_mask = setup
    rng = np.random.default_rng(3)
    settings = editor.SamplerSettings(num_steps=3, method="midpoint", guidance=3.0)
    src = jnp.asarray(rng.standard_normal((B, H, W, C)), jnp.float32)
    texts, masks = _texts(rng, 5)
    mem0 = editor.start(model, params, src, null_text, null_mask, window=2)
    key = jax.random.key(7)
    scan = jax.jit(functools.partial(editor.edit_sequence, model, settings))
    lat_scan, mem_scan = scan(params, mem0, texts, masks, null_text, null_mask, key)
    turn = jax.jit(functools.partial(editor.edit_turn, model, settings))
    mem, lat_loop = mem0, []
    for k in range(5):
        lat, mem = turn(params, mem, texts[k], masks[k], null_text, null_mask, jax.random.fold_in(key, k))
        lat_loop.append(lat)
    err = float(jnp.abs(lat_scan - jnp.stack(lat_loop)).max())
    print(f"scan vs loop over 5 turns: max abs diff {err:.1e}")
    assert err <= 1e-4
    again, _ = scan(params, mem0, texts, masks, null_text, null_mask, key)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(lat_scan))  # same seed, same result
