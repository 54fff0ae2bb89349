"""Configs load, validate, and the Wan2.1-1.3B config has exactly diffusers' parameter count."""
import math

import jax
import pytest

from anchoredit_jax import interop
from anchoredit_jax.config_lib import check_config_flags, load_config, model_config
from anchoredit_jax.model import abstract_params


def _count(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def test_wan_1_3b_shapes_and_param_count():
    cfg = model_config(load_config("configs/wan2_1_1_3b.py"))
    assert (cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.num_heads, cfg.text_dim, cfg.freq_dim, cfg.in_channels,
            cfg.patch_size) == (1536, 8960, 30, 12, 4096, 256, 16, (1, 2, 2))
    ours = _count(abstract_params(cfg))  # eval_shape: nothing allocated
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):  # no allocation on the PyTorch side either
        peer = diffusers.WanTransformer3DModel(**{k: v for k, v in interop.config_to_diffusers(cfg).items()
                                                  if not k.startswith("_")})
    theirs = sum(p.numel() for p in peer.parameters())
    print(f"Wan2.1-1.3B: {ours:,} params here, {theirs:,} in diffusers")
    assert ours == theirs
    # and the key table covers every diffusers parameter, one to one
    table = {row[0] for row in interop.key_table(cfg)}
    assert table == set(peer.state_dict().keys())


def test_tiny_config_loads_and_overrides():
    config = load_config("configs/tiny.py", **{"model.dtype": "bfloat16"})
    assert model_config(config).dtype == "bfloat16"
    with pytest.raises(KeyError, match="model.nonexistent"):
        load_config("configs/tiny.py", **{"model.nonexistent": 1})
    with pytest.raises(ValueError, match="unknown model config keys"):
        config = load_config("configs/tiny.py")
        config.model.bogus = 1
        model_config(config)


@pytest.mark.parametrize("flag, message", [
    ("--config.optim.lrr=1", "no key 'lrr' under optim; did you mean lr?"),
    ("--config.data.edit_weights.blob=2", "no key 'blob' under data.edit_weights; data.edit_weights has add,"),
    ("--config.nosuch.x=1", "no key 'nosuch' under the top level"),
    ("--config.seed.x=1", "seed in configs/stage1_shapes.py is a value, not a section"),
])
def test_a_bad_config_flag_is_one_line_naming_the_key(flag, message):
    with pytest.raises(SystemExit) as e:
        check_config_flags(["train", "--config", "configs/stage1_shapes.py:test", "--workdir", "w", flag])
    assert message in str(e.value) and str(e.value).startswith(f"error: {flag.split('=')[0]}:")
    # good keys, another spelling of --config, or no --config at all: nothing to say
    check_config_flags(["train", "--config=configs/stage1_shapes.py", "--config.optim.lr=1", "--config.seed", "3"])
    check_config_flags(["train", "--config.optim.lrr=1"])


def test_train_cli_reports_a_bad_config_key_before_touching_the_workdir(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "anchoredit_jax.train", "--config", "configs/stage1_shapes.py:test",
                        "--workdir", str(tmp_path / "w"), "--config.data.bogus=1"], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "no key 'bogus' under data" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("flag, message", [
    ("--config.val.loss_examples=2", "error: config.val.num_examples (4, the preview pairs) must not exceed"),
    ("--config.data.edit_weights.add=-1", "error: config.data.edit_weights: edit_weights must be finite, >= 0"),
    ("--config.mesh.data=3", "error: config.mesh: mesh (data=3, fsdp=1, tensor=1) needs 3 devices, 1 are"),
    ("--config.eval_every=-1", "error: config.eval_every must be >= 0 (0: no held-out evaluation), got -1"),
    ("--config.init_from=no/such/run", "error: config.init_from='no/such/run': no such directory"),
    ("--config.stage1.outside_mask_weight=-2", "error: config.stage1.outside_mask_weight must be a number >= 0"),
])
def test_train_cli_reports_a_bad_config_value_in_one_line_before_touching_the_workdir(tmp_path, flag, message):
    import os
    import subprocess
    import sys
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    r = subprocess.run([sys.executable, "-m", "anchoredit_jax.train", "--config", "configs/stage1_shapes.py:test",
                        "--workdir", str(tmp_path / "w"), flag], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("key, value, message", [
    ("kept_scale", -1.0, "config.stage2.kept_scale must be a number >= 0, got -1.0"),
    ("outside_mask_weight", float("nan"), "config.stage2.outside_mask_weight must be a number >= 0, got nan"),
    ("window", 0, "config.stage2.window must be an integer >= 1, got 0"),
    ("rollout_steps", 0, "config.stage2.rollout_steps must be an integer >= 1, got 0"),
    ("ratio_end", 1.5, "config.stage2.ratio_end must be a number in [0, 1], got 1.5"),
    ("rollout_method", "rk4", "config.stage2.rollout_method must be one of ('euler', 'midpoint', 'fireflow',"),
    ("turn_weight_alpha", -2.0, "config.stage2.turn_weight_alpha must be a number >= -1, got -2.0"),
    ("cfg_drop_prob", -0.1, "config.stage2.cfg_drop_prob must be a number in [0, 1], got -0.1"),
    ("own_estimate", 2.0, "config.stage2.own_estimate must be a number in [0, 1], got 2.0"),
    ("own_estimate_max_t", -0.5, "config.stage2.own_estimate_max_t must be a number in [0, 1], got -0.5"),
])
def test_stage2_settings_the_loss_would_take_silently_are_refused_by_name(key, value, message):
    from anchoredit_jax import stage2
    from anchoredit_jax.config_lib import ConfigError
    config = load_config("configs/stage2_shapes.py", "test")
    stage2.check_settings(config.stage2)  # the shipped values pass
    config.stage2[key] = value
    with pytest.raises(ConfigError) as e:
        stage2.check_settings(config.stage2)
    assert str(e.value).startswith(message)


def test_every_shipped_config_passes_the_stage_settings_checks():
    import glob
    from anchoredit_jax import stage1, stage2
    checked = 0
    for path in sorted(glob.glob("configs/*.py")):
        config = load_config(path)
        for section, module in (("stage1", stage1), ("stage2", stage2)):
            if section in config:
                module.check_settings(config[section])
                checked += 1
    assert checked >= 8  # stage 1 (2 configs), stage 2, 3 and DMD (both sections each)
