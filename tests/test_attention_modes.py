"""The causal attention modes agree: block-causal recomputation, teacher forcing and KV memory.

Noisy frame k, given clean frames 0..k-1, must get the same velocity whichever way the history is
presented: as earlier frames of a block-causal sequence, as the clean half of a teacher-forcing
pass, or as a key/value memory filled from those clean frames (in one pass or frame by frame).
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anchoredit_jax.attention import (FrameLayout, cudnn_attention_calls, cudnn_bias, dot_product_attention,
                                     frame_attention)
from anchoredit_jax.model import DiTConfig, WanDiT, init_params

TOL = 2e-5
B, K, H, W, L = 2, 4, 4, 6, 5


def _setup(seed=0, **kw):
    cfg = DiTConfig(num_layers=2, num_heads=2, head_dim=12, ffn_dim=40, in_channels=4, out_channels=4,
                    text_dim=8, freq_dim=32, **kw)
    params = nn.unbox(init_params(cfg, jax.random.key(seed)))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: p + 0.2 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    data = dict(
        clean=jnp.asarray(rng.standard_normal((B, K, H, W, 4)), jnp.float32),
        noisy=jnp.asarray(rng.standard_normal((B, K, H, W, 4)), jnp.float32),
        t=jnp.asarray(rng.uniform(0.1, 0.9, (B, K)), jnp.float32),
        text=jnp.asarray(rng.standard_normal((B, K, L, 8)), jnp.float32),
        # ragged instruction lengths per turn
        text_mask=jnp.asarray(np.arange(L)[None, None] < rng.integers(1, L + 1, (B, K))[..., None]),
        pos=jnp.tile(jnp.arange(K)[None], (B, 1)),
    )
    return WanDiT(cfg), params, data


@functools.partial(jax.jit, static_argnums=0, static_argnames=("mode", "return_kv"))
def _run(model, params, *args, **kw):
    """One program per mode and shape: op by op, XLA compiles every primitive of the model on its own."""
    return model.apply({"params": params}, *args, **kw)


@pytest.mark.parametrize("strategy", ["loop", "dense"])
def test_three_causal_modes_agree(strategy):
    model, params, d = _setup(attention_strategy=strategy)
    model = WanDiT(dataclasses.replace(model.config, attention_strategy=strategy))
    v_tf = _run(model, params, d["noisy"], d["t"], d["text"], d["text_mask"], d["pos"],
                mode="teacher_forcing", clean=d["clean"])
    # memory filled in one block-causal pass over the clean frames at t=0
    _, kv = _run(model, params, d["clean"], jnp.zeros((B, K)), d["text"], d["text_mask"], d["pos"],
                 mode="block_causal", return_kv=True)
    n = (H // 2) * (W // 2)
    assert kv["k"].shape == (2, B, K, n, 2, 12)
    for k in range(K):
        seq = jnp.concatenate([d["clean"][:, :k], d["noisy"][:, k:k + 1]], axis=1)
        t = jnp.concatenate([jnp.zeros((B, k)), d["t"][:, k:k + 1]], axis=1)
        v_bc = _run(model, params, seq, t, d["text"][:, :k + 1], d["text_mask"][:, :k + 1], d["pos"][:, :k + 1],
                    mode="block_causal")[:, -1]
        # fixed-size memory of K slots; only the first k are valid (the rest is garbage on purpose)
        memory = dict(k=kv["k"], v=kv["v"], positions=d["pos"], valid=jnp.arange(K)[None].repeat(B, 0) < k)
        v_mem = _run(model, params, d["noisy"][:, k:k + 1], d["t"][:, k:k + 1], d["text"][:, k:k + 1],
                     d["text_mask"][:, k:k + 1], d["pos"][:, k:k + 1], mode="memory", memory=memory)[:, 0]
        e1 = float(jnp.abs(v_bc - v_tf[:, k]).max())
        e2 = float(jnp.abs(v_mem - v_tf[:, k]).max())
        print(f"[{strategy}] turn {k}: |block_causal - teacher_forcing| {e1:.1e}, |memory - teacher_forcing| {e2:.1e}")
        assert e1 <= TOL and e2 <= TOL
        assert float(jnp.abs(v_tf[:, k]).max()) > 0.1  # not vacuous


def test_frame_by_frame_memory_fill_equals_one_pass():
    """Filling the memory one accepted frame at a time (memory mode, t=0) gives the same keys/values."""
    model, params, d = _setup(seed=1)
    _, kv = _run(model, params, d["clean"], jnp.zeros((B, K)), d["text"], d["text_mask"], d["pos"],
                 mode="block_causal", return_kv=True)
    mem = dict(k=jnp.zeros_like(kv["k"]), v=jnp.zeros_like(kv["v"]), positions=d["pos"],
               valid=jnp.zeros((B, K), bool))
    for k in range(K):
        _, new = _run(model, params, d["clean"][:, k:k + 1], jnp.zeros((B, 1)), d["text"][:, k:k + 1],
                      d["text_mask"][:, k:k + 1], d["pos"][:, k:k + 1], mode="memory", memory=mem, return_kv=True)
        mem = dict(k=mem["k"].at[:, :, k].set(new["k"][:, :, 0]), v=mem["v"].at[:, :, k].set(new["v"][:, :, 0]),
                   positions=d["pos"], valid=mem["valid"].at[:, k].set(True))
    assert float(jnp.abs(mem["k"] - kv["k"]).max()) <= TOL
    assert float(jnp.abs(mem["v"] - kv["v"]).max()) <= TOL


def test_block_causal_is_causal_and_bidirectional_is_not():
    model, params, d = _setup(seed=2)
    args = (d["t"], d["text"], d["text_mask"], d["pos"])
    changed = d["noisy"].at[:, -1].add(1.0)  # perturb the last frame only
    for mode, should_change in (("block_causal", False), ("bidirectional", True)):
        a = _run(model, params, d["noisy"], *args, mode=mode)[:, :-1]
        b = _run(model, params, changed, *args, mode=mode)[:, :-1]
        assert (float(jnp.abs(a - b).max()) > 1e-3) == should_change, mode


def test_turn_positions_matter():
    """RoPE uses the given turn positions: renumbering the history changes the output."""
    model, params, d = _setup(seed=3)
    args = (d["noisy"], d["t"], d["text"], d["text_mask"])
    a = _run(model, params, *args, d["pos"], mode="block_causal")
    b = _run(model, params, *args, d["pos"] * 2, mode="block_causal")
    assert float(jnp.abs(a[:, 1:] - b[:, 1:]).max()) > 1e-3
    assert float(jnp.abs(a[:, 0] - b[:, 0]).max()) <= TOL  # frame 0 at position 0 either way


def test_layout_rules():
    tf = FrameLayout.teacher_forcing(3)  # [c0 c1 c2 n0 n1 n2]
    assert tf.keys_of(0) == (0,) and tf.keys_of(2) == (0, 1, 2)
    assert tf.keys_of(3) == (3,) and tf.keys_of(5) == (0, 1, 5)
    assert FrameLayout.block_causal(3).keys_of(1) == (0, 1)
    m = FrameLayout.block_causal(2).dense_mask(2)
    np.testing.assert_array_equal(m, [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])


def test_loop_and_dense_strategies_agree_with_memory():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 6 * 3, 2, 8)), jnp.float32) for _ in range(3))
    mk, mv = (jnp.asarray(rng.standard_normal((2, 4 * 3, 2, 8)), jnp.float32) for _ in range(2))
    lengths = jnp.asarray([3, 9])
    layout = FrameLayout.teacher_forcing(3)
    a = frame_attention(q, k, v, layout, 3, extra_k=mk, extra_v=mv, extra_lengths=lengths, strategy="loop")
    b = frame_attention(q, k, v, layout, 3, extra_k=mk, extra_v=mv, extra_lengths=lengths, strategy="dense")
    assert float(jnp.abs(a - b).max()) <= 1e-5


def test_memory_bias_weighs_the_memory_keys():
    """extra_bias: 0 changes nothing; both strategies agree; a very negative bias on every memory key
    is attention without the memory; log w on some keys is their softmax share times w, renormalised."""
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 6 * 3, 2, 8)), jnp.float32) for _ in range(3))
    mk, mv = (jnp.asarray(rng.standard_normal((2, 4 * 3, 2, 8)), jnp.float32) for _ in range(2))
    lengths, layout = jnp.asarray([6, 12]), FrameLayout.block_causal(3)
    kw = dict(extra_k=mk, extra_v=mv, extra_lengths=lengths)
    plain = frame_attention(q, k, v, layout, 6, **kw)
    zero = frame_attention(q, k, v, layout, 6, **kw, extra_bias=jnp.zeros((2, 12)))
    assert float(jnp.abs(plain - zero).max()) == 0.0
    bias = jnp.where(jnp.arange(12) < 3, np.log(0.5), 0.0)[None].repeat(2, 0)  # the first slot at weight 0.5
    a = frame_attention(q, k, v, layout, 6, **kw, extra_bias=bias, strategy="loop")
    b = frame_attention(q, k, v, layout, 6, **kw, extra_bias=bias, strategy="dense")
    assert float(jnp.abs(a - b).max()) <= 1e-5 and float(jnp.abs(a - plain).max()) > 1e-3
    gone = frame_attention(q, k, v, layout, 6, **kw, extra_bias=jnp.full((2, 12), -1e9))
    assert float(jnp.abs(gone - frame_attention(q, k, v, layout, 6)).max()) <= 1e-5
    # by hand for frame 0 of example 1 (its own 6 keys, then 12 memory keys), head 0
    qf, keys = q[1, :6, 0], jnp.concatenate([k[1, :6, 0], mk[1, :, 0]])
    vals = jnp.concatenate([v[1, :6, 0], mv[1, :, 0]])
    w = jax.nn.softmax(qf @ keys.T / np.sqrt(8) + jnp.concatenate([jnp.zeros(6), bias[1]]), -1)
    np.testing.assert_allclose(a[1, :6, 0], w @ vals, atol=1e-5)


def test_memory_bias_is_spelled_out_for_cudnn():
    """The memory's per-key bias [B, 1, 1, Tk] fails jax's cuDNN layout check (jax-ml/jax#28974: run on
    this CPU, the check is shape logic only); cudnn_bias broadcasts it over the queries, which passes
    and is the same logits."""
    fused = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
    q = jnp.zeros((2, 6, 2, 8), jnp.bfloat16)
    k = jnp.zeros((2, 18, 2, 8), jnp.bfloat16)
    bias = jnp.asarray(np.random.default_rng(0).standard_normal((2, 1, 1, 18)), jnp.bfloat16)
    check = lambda b: fused.check_layout(q, k, k, b, None, None, None, None, None, None,  # noqa: E731
                                         fused.AttentionLayout.BTNH)
    with pytest.raises(ValueError, match="Bias must have same seq length"):
        check(bias)
    full = cudnn_bias(bias, 2, 6, 18)
    check(full)
    assert full.shape == (2, 1, 6, 18) and bool((full == bias).all())
    with pytest.raises(ValueError, match="the cudnn path takes a bias"):
        cudnn_bias(jnp.zeros((2, 2, 1, 18)), 2, 6, 18)


def test_bad_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="cudnn"):
        from anchoredit_jax.attention import resolve_backend
        resolve_backend("cudnn", jnp.float32)
    with pytest.raises(ValueError, match="backend"):
        from anchoredit_jax.attention import resolve_backend
        resolve_backend("flash", jnp.float32)


def test_cudnn_attention_calls_are_counted_by_target():
    """The GPU check of train_throughput.py: cuDNN's fused attention is a custom call in compiled HLO."""
    line = ('  custom-call.{i} = (bf16[4,4,1024,64]{{3,1,2,0}}, f32[4,4,1024]{{2,1,0}}) custom-call(Arg_0.1, Arg_1.2), '
            'custom_call_target="{t}", api_version=API_VERSION_STATUS_RETURNING\n')
    text = "".join(line.format(i=i, t=t) for i, t in enumerate(
        ["__cudnn$fmhaSoftmax"] * 3 + ["__cudnn$fmhaSoftmaxBackward"] * 2 + ["__cublas$gemm", "__cudnn$convForward"]))
    assert cudnn_attention_calls(text) == {"__cudnn$fmhaSoftmax": 3, "__cudnn$fmhaSoftmaxBackward": 2}
    # on this CPU the same model step compiles to XLA's attention: no fused calls
    q = jnp.ones((1, 8, 2, 16), jnp.float32)
    hlo = jax.jit(lambda q: dot_product_attention(q, q, q)).lower(q).compile().as_text()
    assert cudnn_attention_calls(hlo) == {}
