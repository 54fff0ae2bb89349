"""Numerical parity of the Flax DiT with diffusers' WanTransformer3DModel (PyTorch, CPU, fp32).

Random tiny configs, random weights (every tensor perturbed so no bias or norm is trivially 0/1),
weights passed through safetensors folders so the file path is exercised in both directions.
"""
import functools
import json
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from anchoredit_jax import interop  # noqa: E402
from anchoredit_jax.model import DiTConfig, WanDiT, init_params  # noqa: E402

TOL = 1e-4

CONFIGS = [  # (diffusers kwargs, latent h, w)
    (dict(num_attention_heads=2, attention_head_dim=12, ffn_dim=40, num_layers=2, text_dim=20, freq_dim=32,
          in_channels=4, out_channels=4), 4, 6),
    (dict(num_attention_heads=3, attention_head_dim=16, ffn_dim=72, num_layers=3, text_dim=24, freq_dim=16,
          in_channels=8, out_channels=8, cross_attn_norm=False), 6, 4),
    (dict(num_attention_heads=2, attention_head_dim=24, ffn_dim=48, num_layers=1, text_dim=16, freq_dim=64,
          in_channels=16, out_channels=16), 2, 8),
]


def _random_diffusers(kwargs, seed):
    torch.manual_seed(seed)
    model = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), rope_max_seq_len=64, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def _inputs(rng, b, k, h, w, c, L, dt):
    x = rng.standard_normal((b, k, h, w, c)).astype(np.float32)
    text = rng.standard_normal((b, L, dt)).astype(np.float32)
    return x, text


def _torch_velocity(model, x, t_per_turn, text, n_tokens):
    """diffusers takes [B, C, F, H, W] and timesteps in [0, 1000], per token when they vary per frame."""
    b, k = t_per_turn.shape
    hs = torch.from_numpy(x).permute(0, 4, 1, 2, 3)
    ts = torch.from_numpy(np.repeat(t_per_turn * 1000.0, n_tokens, axis=1)) if k > 1 else \
        torch.from_numpy(t_per_turn[:, 0] * 1000.0)
    with torch.no_grad():
        out = model(hs, ts, torch.from_numpy(text), return_dict=False)[0]
    return out.permute(0, 2, 3, 4, 1).numpy()


def _jax_velocity(model, params, x, t, text):
    b, k = t.shape
    text_k = np.repeat(text[:, None], k, axis=1)  # every turn reads the same instruction here
    return np.asarray(_bidirectional(model, params, jnp.asarray(x), jnp.asarray(t), jnp.asarray(text_k),
                                     jnp.ones(text_k.shape[:3], bool), jnp.tile(jnp.arange(k)[None], (b, 1))))


@functools.partial(jax.jit, static_argnums=0)  # one program: op by op, XLA compiles every primitive on its own
def _bidirectional(model, params, *args):
    return model.apply({"params": params}, *args, mode="bidirectional")


@pytest.mark.parametrize("ci", range(len(CONFIGS)))
@pytest.mark.parametrize("k", [1, 3])
def test_from_diffusers_parity(tmp_path, ci, k):
    kwargs, h, w = CONFIGS[ci]
    tmodel = _random_diffusers(kwargs, seed=ci)
    tmodel.save_pretrained(tmp_path / "dit", safe_serialization=True)
    model, params = interop.load_diffusers_transformer(str(tmp_path / "dit"), turn_stride=1)
    rng = np.random.default_rng(ci * 10 + k)
    b, L = 2, 7
    x, text = _inputs(rng, b, k, h, w, kwargs["in_channels"], L, kwargs["text_dim"])
    t = rng.uniform(0.05, 0.95, (b, k)).astype(np.float32)  # per-turn timesteps
    ref = _torch_velocity(tmodel, x, t, text, (h // 2) * (w // 2))
    out = _jax_velocity(model, params, x, t, text)
    err = float(np.abs(out - ref).max())
    print(f"diffusers -> jax, config {ci}, K={k}, latents {h}x{w}: max abs diff {err:.2e} "
          f"(output scale {np.abs(ref).max():.2f})")
    assert err <= TOL


@pytest.mark.parametrize("ci", [0, 1])
def test_to_diffusers_parity(tmp_path, ci):
    kwargs, h, w = CONFIGS[ci]
    cfg = interop.config_from_diffusers(dict(kwargs, patch_size=(1, 2, 2), rope_max_seq_len=64), turn_stride=1)
    params = jax.tree.map(np.asarray, init_params(cfg, jax.random.key(ci)))
    params = jax.tree.map(lambda p: p.unbox() if hasattr(p, "unbox") else p, params,
                          is_leaf=lambda p: hasattr(p, "unbox"))
    rng = np.random.default_rng(ci)
    params = jax.tree.map(lambda p: (p + 0.2 * rng.standard_normal(p.shape)).astype(np.float32), params)
    interop.save_diffusers_transformer(cfg, params, str(tmp_path / "out"))
    tmodel = diffusers.WanTransformer3DModel.from_pretrained(str(tmp_path / "out")).eval()
    b, k, L = 2, 3, 5
    x, text = _inputs(rng, b, k, h, w, cfg.in_channels, L, cfg.text_dim)
    t = rng.uniform(0.05, 0.95, (b, k)).astype(np.float32)
    ref = _torch_velocity(tmodel, x, t, text, (h // 2) * (w // 2))
    out = _jax_velocity(WanDiT(cfg), params, x, t, text)
    err = float(np.abs(out - ref).max())
    print(f"jax -> diffusers, config {ci}: max abs diff {err:.2e}")
    assert err <= TOL


def test_round_trip_bit_exact(tmp_path):
    kwargs, _, _ = CONFIGS[1]
    tmodel = _random_diffusers(kwargs, seed=5)
    tmodel.save_pretrained(tmp_path / "a", safe_serialization=True)
    model, params = interop.load_diffusers_transformer(str(tmp_path / "a"))
    interop.save_diffusers_transformer(model.config, params, str(tmp_path / "b"), max_shard_bytes=20_000)
    assert os.path.exists(tmp_path / "b" / interop.INDEX_NAME)  # sharded on purpose
    a, b = interop.read_safetensors(str(tmp_path / "a")), interop.read_safetensors(str(tmp_path / "b"))
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key
    # and diffusers loads the sharded folder
    diffusers.WanTransformer3DModel.from_pretrained(str(tmp_path / "b"))


def test_bf16_checkpoint_round_trip(tmp_path):
    tmodel = _random_diffusers(CONFIGS[0][0], seed=2).to(torch.bfloat16)
    tmodel.save_pretrained(tmp_path / "a", safe_serialization=True)
    model, params = interop.load_diffusers_transformer(str(tmp_path / "a"))
    assert jax.tree.leaves(params)[0].dtype == jnp.float32
    interop.save_diffusers_transformer(model.config, params, str(tmp_path / "b"), dtype=jnp.bfloat16)
    a, b = interop.read_safetensors(str(tmp_path / "a")), interop.read_safetensors(str(tmp_path / "b"))
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key


def test_pickle_refused(tmp_path):
    d = tmp_path / "pt"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match="pickle"):
        interop.load_diffusers_transformer(str(d))
    with pytest.raises(ValueError, match="pickle"):
        interop.read_safetensors(str(d / "diffusion_pytorch_model.bin"))


def test_mismatched_checkpoint_names_tensor(tmp_path):
    kwargs, _, _ = CONFIGS[0]
    _random_diffusers(kwargs, seed=0).save_pretrained(tmp_path / "a", safe_serialization=True)
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg["ffn_dim"] = 44  # config no longer matches the weights
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"blocks\.0\.ffn\.net\.0\.proj\.weight"):
        interop.load_diffusers_transformer(str(tmp_path / "a"))


def test_applying_weights_of_another_shape_names_the_parameter():
    """layers.StoredParams reads stored weights without flax's per-trace eval_shape, but still checks
    their shapes: params of a wider FFN given to a narrower model name the parameter and both shapes."""
    small = DiTConfig(num_layers=2, num_heads=2, head_dim=12, ffn_dim=40, in_channels=4, out_channels=4,
                      text_dim=20, freq_dim=32)
    wide = DiTConfig(**{**small.__dict__, "ffn_dim": 44})
    params = jax.tree.map(np.asarray, nn.unbox(init_params(wide, jax.random.PRNGKey(0))))
    x, t = jnp.zeros((1, 1, 4, 4, 4)), jnp.zeros((1, 1))
    args = (x, t, jnp.zeros((1, 1, 3, 20)), jnp.ones((1, 1, 3), bool), jnp.zeros((1, 1), jnp.int32))
    assert _bidirectional(WanDiT(wide), params, *args).shape == x.shape
    with pytest.raises(flax.errors.ScopeParamShapeError,
                       match=r'"kernel" in "/scan\(blocks\)/ffn_in".*\(24, 40\).*\(24, 44\)'):
        _bidirectional(WanDiT(small), params, *args)


def test_unsupported_variant_refused():
    with pytest.raises(ValueError, match="image_dim"):
        interop.config_from_diffusers(dict(CONFIGS[0][0], patch_size=(1, 2, 2), image_dim=1280))


def test_output_dir_not_overwritten(tmp_path):
    cfg = DiTConfig()
    params = jax.tree.map(np.asarray, jax.device_get(
        jax.tree.map(lambda p: p.unbox() if hasattr(p, "unbox") else p, init_params(cfg, jax.random.key(0)),
                     is_leaf=lambda p: hasattr(p, "unbox"))))
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        interop.save_diffusers_transformer(cfg, params, str(tmp_path))
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_convert_cli_round_trip(tmp_path):
    """convert/ scripts: diffusers -> jax params folder -> diffusers, bit-exact."""
    import subprocess
    import sys

    _random_diffusers(CONFIGS[0][0], seed=7).save_pretrained(tmp_path / "a", safe_serialization=True)
    for script, src, out in (("convert/diffusers_to_jax.py", "a", "j"), ("convert/jax_to_diffusers.py", "j", "b")):
        subprocess.run([sys.executable, script, "--src", str(tmp_path / src), "--out", str(tmp_path / out)],
                       check=True, env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
    a, b = interop.read_safetensors(str(tmp_path / "a")), interop.read_safetensors(str(tmp_path / "b"))
    assert all(a[k].tobytes() == b[k].tobytes() for k in a) and set(a) == set(b)
    # refusing to overwrite leaves the user's folder alone
    r = subprocess.run([sys.executable, "convert/jax_to_diffusers.py", "--src", str(tmp_path / "j"),
                        "--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert r.returncode != 0 and "exists" in r.stderr
