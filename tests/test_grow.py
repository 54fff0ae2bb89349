"""Growing a trained DiT deeper: same outputs (also through the anchor memory), new blocks trainable."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anchoredit_jax import editor, grow, interop
from anchoredit_jax import memory as mem_lib
from anchoredit_jax.model import DiTConfig, WanDiT, init_params

B, H, W, C, L, D = 2, 4, 4, 4, 5, 8


@pytest.fixture(scope="module")
def trained():
    cfg = DiTConfig(num_layers=2, num_heads=2, head_dim=12, ffn_dim=32, in_channels=C, out_channels=C, text_dim=D,
                    freq_dim=32, turn_stride=4)
    params = nn.unbox(init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)  # "trained": no zero or default-initialised tensor left
    params = jax.tree.map(lambda p: p + 0.2 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    return cfg, params


def _inputs(seed):
    rng = np.random.default_rng(seed)
    frames = jnp.asarray(rng.standard_normal((B, 3, H, W, C)), jnp.float32)
    times = jnp.asarray([[0.0, 0.0, 0.7], [0.0, 0.0, 0.2]])
    texts = jnp.asarray(rng.standard_normal((B, 3, L, D)), jnp.float32)
    masks = jnp.asarray(np.arange(L)[None, None] < rng.integers(1, L + 1, (B, 3))[..., None])
    return frames, times, texts, masks, jnp.broadcast_to(jnp.arange(3), (B, 3))


def _forward(cfg, params, args):
    return jax.jit(lambda p, a: WanDiT(cfg).apply({"params": p}, *a, mode="block_causal"))(params, args)


def test_grown_model_computes_the_same_and_new_blocks_learn(trained, tmp_path):
    cfg, params = trained
    grown, gcfg = grow.grow_depth(params, cfg, 5, jax.random.key(1))
    assert gcfg.num_layers == 5 and grow.trained_slots(2, 5).tolist() == [0, 2]
    args = _inputs(0)
    ref, out = _forward(cfg, params, args), _forward(gcfg, grown, args)
    assert float(jnp.abs(ref).max()) > 0.1
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5)

    # Through the anchor memory (each layer's K/V cached) the grown model also agrees.
    null_text, null_mask = jnp.zeros((B, L, D)), jnp.broadcast_to(jnp.arange(L) == 0, (B, L))
    frames, _, texts, masks, _ = args
    vs = []
    for m, p in ((WanDiT(cfg), params), (WanDiT(gcfg), grown)):
        @jax.jit  # one program each, not op-by-op dispatch
        def through_memory(p):
            mem = editor.start(m, p, frames[:, 0], null_text, null_mask, window=2)
            mem = mem_lib.update(m, p, mem, frames[:, 1], texts[:, 1], masks[:, 1])
            return editor.velocity_fn(m, p, mem, texts[:, 2], masks[:, 2], null_text, null_mask)(frames[:, 2], 0.5)[0]
        vs.append(through_memory(p))
    np.testing.assert_allclose(np.asarray(vs[1]), np.asarray(vs[0]), atol=2e-5)

    # New blocks are not dead: their zeroed output projections get gradient.
    def loss(p):
        return jnp.mean(jnp.square(WanDiT(gcfg).apply({"params": p}, *args, mode="block_causal")))

    g = jax.jit(jax.grad(loss))(grown)["blocks"]
    for path in (("attn1", "to_out", "kernel"), ("ffn_out", "kernel")):
        leaf = g[path[0]][path[1]][path[2]] if len(path) == 3 else g[path[0]][path[1]]
        per_layer = np.abs(np.asarray(leaf)).reshape(5, -1).max(-1)
        assert np.all(per_layer[[1, 3, 4]] > 0), (path, per_layer)

    # The CLI round trip: a params folder that load_jax_params reads back, the same numbers.
    src = tmp_path / "small"
    interop.save_jax_params(cfg, params, str(src))
    assert grow.main(["--from", str(src), "--num-layers", "4", "--out", str(tmp_path / "big")]) == 0
    module, loaded = interop.load_jax_params(str(tmp_path / "big"))
    assert module.config.num_layers == 4
    np.testing.assert_allclose(np.asarray(_forward(module.config, loaded, args)), np.asarray(ref), atol=2e-5)


def test_cannot_shrink(trained):
    cfg, params = trained
    with pytest.raises(ValueError, match="can only grow"):
        grow.grow_depth(params, cfg, 1, jax.random.key(0))


def test_cli_refuses_shrinking_and_a_missing_source_in_one_line(trained, tmp_path, capsys):
    cfg, params = trained
    src = str(tmp_path / "src")
    interop.save_jax_params(cfg, params, src)
    for argv, why in ((["--from", src, "--num-layers", "2"], "--num-layers 2: can only grow, and"),
                      (["--from", str(tmp_path / "nope"), "--num-layers", "4"], "nope: no such directory")):
        with pytest.raises(SystemExit) as e:
            grow.main(argv + ["--out", str(tmp_path / "out")])
        assert e.value.code == 2 and why in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
