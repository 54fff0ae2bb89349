"""A forward pass sharded over a (data, fsdp, tensor) mesh of 8 CPU devices equals one device's."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anchoredit_jax import sharding
from anchoredit_jax.config_lib import load_config, model_config
from anchoredit_jax.model import WanDiT, abstract_params, init_params


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 4, 2), (8, 1, 1)])
def test_sharded_forward_equals_single_device(mesh_shape):
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    config = load_config("configs/tiny.py")
    cfg = model_config(config)
    model = WanDiT(cfg)
    params = nn.unbox(init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: p + 0.1 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    b, k, h, w, L = 8, 3, 4, 4, 6
    batch = (jnp.asarray(rng.standard_normal((b, k, h, w, cfg.in_channels)), jnp.float32),
             jnp.asarray(rng.uniform(size=(b, k)), jnp.float32),
             jnp.asarray(rng.standard_normal((b, k, L, cfg.text_dim)), jnp.float32),
             jnp.ones((b, k, L), bool), jnp.tile(jnp.arange(k)[None], (b, 1)))

    def fwd(p, *xs):
        return model.apply({"params": p}, *xs, mode="block_causal")

    ref = jax.jit(fwd)(params, *batch)

    mesh = sharding.make_mesh(*mesh_shape)
    rules = sharding.rules_from_config(config.sharding_rules)
    p_shard = sharding.logical_shardings(abstract_params(cfg), mesh, rules)
    x_shard = tuple(sharding.batch_sharding(mesh, x.ndim) for x in batch)
    sharded_params = jax.device_put(params, p_shard)
    # the weights really are split: FSDP over 'embed', tensor parallel over 'heads'/'mlp'
    kernel = sharded_params["blocks"]["attn1"]["to_q"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        out = jax.jit(fwd, in_shardings=(p_shard, *x_shard), out_shardings=x_shard[0])(
            sharded_params, *jax.device_put(batch, x_shard))
    assert out.sharding.spec[0] == ("data", "fsdp")
    err = float(jnp.abs(out - ref).max())
    print(f"mesh {mesh_shape}: max abs diff vs one device {err:.1e}")
    assert err <= 1e-5


def test_mesh_errors_are_clear():
    with pytest.raises(ValueError, match="devices"):
        sharding.make_mesh(3, 1, 1)
    with pytest.raises(ValueError, match="-1"):
        sharding.make_mesh(-1, -1, 1)
