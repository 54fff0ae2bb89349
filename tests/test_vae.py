"""Wan2.1 VAE (single frame): parity with diffusers' AutoencoderKLWan, loader checks, training step.

Run: nice python -m pytest -q -s tests/test_vae.py   (-s shows the parity figures)
"""
import functools
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anchoredit_jax import train_vae, vae
from runs import traced_steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_torch_vae(tmp_path, seed, **kw):
    """Random diffusers AutoencoderKLWan with every param perturbed, saved with save_pretrained."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    z = kw["z_dim"]
    m = diffusers.AutoencoderKLWan(latents_mean=[0.0] * z, latents_std=[1.0] * z, **kw).eval()
    with torch.no_grad():  # biases 0 / gammas 1 would hide transposition and scale bugs
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m.save_pretrained(str(tmp_path))
    return m


PARITY_CONFIGS = [
    # (name, AutoencoderKLWan kwargs, image H, W)
    ("3lvl-nrb1", dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                       temperal_downsample=[False, True]), 32, 48),
    ("wan-layout-nrb2", dict(base_dim=12, decoder_base_dim=16, z_dim=4, dim_mult=[1, 2, 4, 4],
                             num_res_blocks=2, temperal_downsample=[False, True, True]), 48, 32),
    ("enc-attention", dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                           attn_scales=[1.0, 0.5], temperal_downsample=[True, False]), 32, 48),
]


@pytest.mark.parametrize("name,kw,h,w", PARITY_CONFIGS, ids=[c[0] for c in PARITY_CONFIGS])
def test_parity_with_diffusers(tmp_path, name, kw, h, w):
    torch = pytest.importorskip("torch")
    m = _tiny_torch_vae(tmp_path, seed=len(name), **kw)
    config, params = vae.load_diffusers_vae(str(tmp_path))  # folder path: config.json + safetensors
    assert config.dim_mult == tuple(kw["dim_mult"])
    model = vae.WanVAE(config)

    rs = np.random.RandomState(0)
    x = rs.uniform(-1, 1, (2, h, w, 3)).astype(np.float32)
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2)[:, :, None])  # [B, C, T=1, H, W]
    with torch.no_grad():
        if kw.get("attn_scales"):
            # diffusers' cached encode() crashes on encoder attention blocks (they take no
            # feat_cache); the uncached encoder is the same single-frame computation.
            h_t = m.quant_conv(m.encoder(x_t))
            mean_t, logvar_t = h_t.chunk(2, dim=1)
            logvar_t = logvar_t.clamp(-30.0, 20.0)
        else:
            dist = m.encode(x_t).latent_dist
            mean_t, logvar_t = dist.mean, dist.logvar
        mean_t = mean_t[:, :, 0].numpy().transpose(0, 2, 3, 1)
        logvar_t = logvar_t[:, :, 0].numpy().transpose(0, 2, 3, 1)
        zl = rs.randn(*mean_t.shape).astype(np.float32)
        dec_t = m.decode(torch.from_numpy(zl.transpose(0, 3, 1, 2)[:, :, None])).sample
        dec_t = dec_t[:, :, 0].numpy().transpose(0, 2, 3, 1)

    # jitted as the encoders run them (op by op, XLA compiles every primitive on its own)
    mean, logvar = jax.jit(functools.partial(model.apply, method=vae.WanVAE.encode))(params, jnp.asarray(x))
    dec = jax.jit(functools.partial(model.apply, method=vae.WanVAE.decode))(params, jnp.asarray(zl))
    assert mean.shape == (2, h // config.spatial_compression, w // config.spatial_compression, 4)
    assert dec.shape == (2, h, w, 3)
    d_mean = float(np.abs(np.asarray(mean) - mean_t).max())
    d_logvar = float(np.abs(np.asarray(logvar) - logvar_t).max())
    d_dec = float(np.abs(np.asarray(dec) - dec_t).max())
    print(f"\n[vae parity {name} {h}x{w}] max|diff| encode mean {d_mean:.2e} "
          f"logvar {d_logvar:.2e} decode {d_dec:.2e}  (|mean|max {np.abs(mean_t).max():.2f})")
    assert d_mean <= 1e-4 and d_logvar <= 1e-4 and d_dec <= 1e-4


def test_loader_file_path_and_key_errors(tmp_path):
    kw = dict(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True])
    _tiny_torch_vae(tmp_path, seed=0, **kw)
    from safetensors.numpy import load_file
    f = os.path.join(str(tmp_path), "diffusion_pytorch_model.safetensors")
    config, params = vae.load_diffusers_vae(f)  # the file path works too
    state = load_file(f)
    assert any(".time_conv." in k for k in state)  # present in the file, unused on one frame

    bad = dict(state)
    bad["decoder.up_blocks.0.resnets.1.conv2.weight"] = np.zeros((16, 8, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"decoder\.up_blocks\.0\.resnets\.1\.conv2\.weight"):
        vae.convert_diffusers_state_dict(bad, config)
    missing = {k: v for k, v in state.items() if k != "encoder.norm_out.gamma"}
    with pytest.raises(KeyError, match=r"encoder\.norm_out\.gamma"):
        vae.convert_diffusers_state_dict(missing, config)
    extra = dict(state, **{"decoder.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="unexpected"):
        vae.convert_diffusers_state_dict(extra, config)


def test_loader_refuses_pickles_and_wan22(tmp_path):
    for name in ("vae.bin", "vae.pt", "vae.ckpt"):
        with pytest.raises(ValueError, match="pickle"):
            vae.load_diffusers_vae(str(tmp_path / name))
    # a folder holding only a pickled checkpoint is refused the same way
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"_class_name": "AutoencoderKLWan"}, f)
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickle"):
        vae.load_diffusers_vae(str(tmp_path))
    with pytest.raises(NotImplementedError, match="Wan2.2"):
        vae.WanVAEConfig.from_diffusers({"is_residual": True, "z_dim": 48})
    with pytest.raises(NotImplementedError, match="patch_size"):
        vae.WanVAEConfig.from_diffusers({"patch_size": 2})
    with pytest.raises(NotImplementedError, match="bogus"):
        vae.WanVAEConfig.from_diffusers({"bogus": 1})


def test_latent_normalisation_round_trip():
    z = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 16)) * 3.0 + 1.0
    mean, std = np.array(vae.WAN21_LATENTS_MEAN), np.array(vae.WAN21_LATENTS_STD)
    n = vae.normalize_latents(z, mean, std)
    np.testing.assert_allclose(vae.denormalize_latents(n, mean, std), z, atol=1e-5)
    np.testing.assert_allclose(n[0, 0, 0], (z[0, 0, 0] - mean) / std, rtol=1e-5)


def _load_config(arg=""):
    spec = importlib.util.spec_from_file_location("vae_shapes", os.path.join(REPO, "configs/vae_shapes.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def test_train_update_step_decreases_loss():
    cfg = _load_config("smoke")
    cfg.model.dim_mult = (1, 2)
    cfg.model.temperal_downsample = (False,)
    cfg.train.num_steps, cfg.train.warmup_steps, cfg.train.lr = 20, 1, 3e-3
    model = vae.WanVAE(train_vae.vae_config_from(cfg))
    tx = train_vae.make_optimizer(cfg)
    state = train_vae.init_state(model, tx, seed=0)
    update = train_vae.make_update_fn(model, tx, cfg.loss, train_vae.load_lpips(cfg.loss.lpips_net))
    # a fixed batch of blocky images (LPIPS' AlexNet needs >= 32 px)
    batch = np.kron(np.random.RandomState(0).randint(0, 256, (4, 4, 4, 3)),
                    np.ones((1, 8, 8, 1))).astype(np.uint8)
    losses = []
    for i in range(20):
        state, m = update(state, batch, jax.random.PRNGKey(i))
        losses.append(float(m["loss"]))
    assert all(np.isfinite(losses)), losses
    assert int(state.step) == 20
    print(f"\n[train_vae smoke] loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses


def _fake_images(num_sequences, num_turns, resolution, split, first_seed=0, desc=""):
    """Stand-in for train_vae.shapes_images: blocky random frames, a fixed set per split."""
    rs = np.random.RandomState(0 if split == "train" else 1)
    n = num_sequences * (1 + num_turns)
    return np.kron(rs.randint(0, 256, (n, 4, 4, 3)),
                   np.ones((1, resolution // 4, resolution // 4, 1))).astype(np.uint8)


def test_train_and_evaluate_smoke(tmp_path, monkeypatch):
    """End to end at toy size with stand-in data: checkpoint, latent stats, figure, reload, profile."""
    monkeypatch.setattr(train_vae, "shapes_images", _fake_images)
    cfg = _load_config("smoke")
    # smallest shapes that still run every stage (LPIPS is covered by the update-step test)
    cfg.model.dim_mult, cfg.model.temperal_downsample = (1, 2), (False,)
    cfg.data.resolution, cfg.loss.lpips_weight = 32, 0.0
    cfg.eval.figure_path = str(tmp_path / "fig" / "recon.png")
    cfg.profile.first_step, cfg.profile.num_steps = 2, 5  # past the last step (3): closed at the end
    result = train_vae.train_and_evaluate(cfg, str(tmp_path / "wd"))
    assert np.isfinite(result["heldout_psnr_db"])
    assert traced_steps(tmp_path / "wd", "train_vae") == [[2, 3]]
    assert os.path.exists(cfg.eval.figure_path)
    config, params, stats = train_vae.load_trained_vae(str(tmp_path / "wd"))
    assert len(stats["std"]) == config.z_dim and config.latents_std == tuple(stats["std"])
    x = jnp.zeros((1, 32, 32, 3))
    mean, _ = vae.WanVAE(config).apply(params, x, method=vae.WanVAE.encode)
    assert mean.shape == (1, 16, 16, config.z_dim)


def test_decoder_finetune_keeps_latent_space(tmp_path, monkeypatch):
    """trainable=decoder from a trained VAE: encoder and latent stats bit-identical, decoder learns."""
    monkeypatch.setattr(train_vae, "shapes_images", _fake_images)
    cfg = _load_config("smoke")
    cfg.model.dim_mult, cfg.model.temperal_downsample = (1, 2), (False,)
    cfg.data.resolution, cfg.loss.lpips_weight = 32, 0.0
    train_vae.train_and_evaluate(cfg, str(tmp_path / "base"))
    _, base, base_stats = train_vae.load_trained_vae(str(tmp_path / "base"))

    cfg.train.trainable = "decoder"
    with pytest.raises(ValueError, match="needs train.init_from"):
        train_vae.make_optimizer(cfg)
    cfg.train.init_from = str(tmp_path / "base")
    cfg.seed = 1  # a different init and data order, to show the weights come from init_from
    train_vae.train_and_evaluate(cfg, str(tmp_path / "ft"))
    _, ft, ft_stats = train_vae.load_trained_vae(str(tmp_path / "ft"))
    for k in ("encoder", "quant_conv"):
        jax.tree.map(np.testing.assert_array_equal, base["params"][k], ft["params"][k])
    assert ft_stats == base_stats
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                         base["params"]["decoder"], ft["params"]["decoder"]))
    assert max(moved) > 0

    cfg.model.base_dim = 16  # another architecture: refused by name
    with pytest.raises(ValueError, match="different VAE.*base_dim"):
        train_vae.train_and_evaluate(cfg, str(tmp_path / "bad"))
    cfg.model.base_dim, cfg.train.trainable = 8, "encoder"
    with pytest.raises(ValueError, match="'all' or 'decoder'"):
        train_vae.make_optimizer(cfg)


def test_cli_bad_init_from_is_one_line(tmp_path):
    """A missing init_from stops train_vae with one line naming it, before any data is made."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "anchoredit_jax.train_vae", "--config",
                        os.path.join(REPO, "configs/vae_shapes.py:smoke"), "--workdir", str(tmp_path / "wd"),
                        f"--config.train.init_from={tmp_path / 'none'}"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: train.init_from=") and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "wd")  # nothing created for a run that never started
