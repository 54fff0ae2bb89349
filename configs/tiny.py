"""Tiny DiT for tests and laptops: runs a forward in well under a second on 2 CPU cores.

    python -m anchoredit_jax.train --config configs/tiny.py
"""
import ml_collections

from anchoredit_jax import sharding


def get_config():
    config = ml_collections.ConfigDict()
    # Same architecture as Wan2.1, scaled down: 2 blocks of width 64 (2 heads x 32).
    config.model = ml_collections.ConfigDict(dict(
        num_layers=2, num_heads=2, head_dim=32, ffn_dim=128,
        in_channels=16, out_channels=16,  # the VAE's latent channels
        text_dim=384,  # MiniLM-L6's hidden size (the offline text encoder)
        freq_dim=256, patch_size=(1, 2, 2), cross_attn_norm=True, eps=1e-6,
        rope_max_seq_len=1024, rope_theta=10000.0,
        turn_stride=4,  # turn k sits at RoPE position 4k, as in the reference release
        timestep_scale=1000.0,
        dtype="float32", attention_backend="auto", attention_strategy="loop", remat_policy="none",
    ))
    # All devices data-parallel by default (tests also run a (2, 2, 2) mesh on 8 CPU devices).
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Logical axis -> mesh axes (anchoredit_jax/sharding.py explains each group); edit here to re-shard.
    config.sharding_rules = [list(rule) for rule in sharding.DEFAULT_RULES]
    return config
