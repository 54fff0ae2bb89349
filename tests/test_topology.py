"""Weights saved under one device topology load under another (a CPU-trained VAE on a GPU, a
GPU-trained release on a laptop): orbax must be given the target sharding, not reuse the saved one."""
import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from anchoredit_jax import interop, model, train_vae
from anchoredit_jax import vae as vae_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOAD = """
import sys, jax, numpy as np
from anchoredit_jax import interop, train_vae
_, dit = interop.load_jax_params(sys.argv[1])
_, vae, _ = train_vae.load_trained_vae(sys.argv[2])
print(len(jax.devices()), sum(float(np.abs(x).sum()) for x in jax.tree.leaves((dit, vae))))
"""


def _on_all_devices(tree):
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("d",))
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def test_weights_saved_on_8_devices_load_on_1(tmp_path):
    if jax.device_count() < 8:
        pytest.skip("needs 8 simulated devices")
    mcfg = model.DiTConfig(num_layers=1, num_heads=2, head_dim=8, ffn_dim=16, in_channels=4, out_channels=4,
                           text_dim=8, freq_dim=16, patch_size=(1, 2, 2)).validate()
    dit = _on_all_devices(nn.unbox(model.init_params(mcfg, jax.random.PRNGKey(0))))
    interop.save_jax_params(mcfg, dit, str(tmp_path / "dit"))

    vcfg = vae_lib.WanVAEConfig(base_dim=8, z_dim=16, dim_mult=(1, 2), num_res_blocks=1, attn_scales=(),
                                temperal_downsample=(False,))
    vparams = vae_lib.init_params(vcfg, seed=1)  # drawn on the host: WanVAE.init op by op compiles ~100 programs
    vdir = tmp_path / "vae"
    with train_vae._manager(str(vdir)) as mngr:
        mngr.save(1, args=ocp.args.StandardSave(_on_all_devices(vparams)))
    (vdir / "vae_config.json").write_text(json.dumps(dataclasses.asdict(vcfg)))
    (vdir / "latent_stats.json").write_text(json.dumps({"mean": [0.0] * 16, "std": [1.0] * 16}))

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "dit"), str(vdir)], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    n, total = r.stdout.split()[-2:]
    want = sum(float(np.abs(np.asarray(x)).sum()) for x in jax.tree.leaves((dit, vparams)))
    assert n == "1" and np.isclose(float(total), want, rtol=1e-6)
