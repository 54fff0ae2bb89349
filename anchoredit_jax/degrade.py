"""History degradation (stage 2): corrupt the latents of earlier turns so the model learns to repair.

The reference release degrades history frames with, each with probability 0.1-0.2 and a random
strength: a VAE decode/encode round trip, per-channel colour scale and bias, a smooth
low-frequency field, block average-pooling, multiplicative Laplace noise and a small blur. All of
them but the VAE round trip act on latents here (cheap, jittable, per example); the round trip
takes the encoders and is applied by the caller when enabled.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _blur(z, sigma):
    """Separable 3-tap Gaussian-ish blur on [B, h, w, C] with per-example strength sigma [B]."""
    a = jnp.exp(-1.0 / (2.0 * jnp.maximum(sigma, 1e-3) ** 2))[:, None, None, None]
    norm = 1.0 + 2.0 * a
    zp = jnp.pad(z, ((0, 0), (1, 1), (0, 0), (0, 0)), mode="edge")
    z = (zp[:, :-2] * a + zp[:, 1:-1] + zp[:, 2:] * a) / norm
    zp = jnp.pad(z, ((0, 0), (0, 0), (1, 1), (0, 0)), mode="edge")
    return (zp[:, :, :-2] * a + zp[:, :, 1:-1] + zp[:, :, 2:] * a) / norm


def _block_pool(z, block: int = 2):
    b, h, w, c = z.shape
    if h % block or w % block:
        return z
    p = z.reshape(b, h // block, block, w // block, block, c).mean(axis=(2, 4))
    return jnp.repeat(jnp.repeat(p, block, axis=1), block, axis=2)


def _low_freq_field(rng, shape, strength):
    """A smooth random field: a coarse 2x2 grid of values bilinearly upsampled."""
    b, h, w, c = shape
    coarse = jax.random.normal(rng, (b, 2, 2, c)) * strength[:, None, None, None]
    return jax.image.resize(coarse, (b, h, w, c), method="linear")


def degrade(rng, z, cfg):
    """Randomly degraded copy of latents z [B, h, w, C]; each op fires per example.

    cfg: prob (per op), colour (max scale/bias deviation), field (max low-frequency amplitude),
    laplace (max multiplicative noise scale), blur (max sigma in latent pixels).
    """
    b = z.shape[0]
    keys = jax.random.split(rng, 13)
    fire = lambda k: (jax.random.uniform(k, (b,)) < cfg.prob)[:, None, None, None]  # noqa: E731
    strength = lambda k, hi: jax.random.uniform(k, (b,), maxval=hi)  # noqa: E731

    s = strength(keys[0], cfg.colour)
    scale = 1.0 + s[:, None, None, None] * jax.random.uniform(keys[1], (b, 1, 1, z.shape[-1]), minval=-1, maxval=1)
    bias = s[:, None, None, None] * jax.random.uniform(keys[2], (b, 1, 1, z.shape[-1]), minval=-1, maxval=1)
    z = jnp.where(fire(keys[3]), z * scale + bias, z)
    z = jnp.where(fire(keys[4]), z + _low_freq_field(keys[5], z.shape, strength(keys[6], cfg.field)), z)
    z = jnp.where(fire(keys[7]), _block_pool(z), z)
    lap = strength(keys[8], cfg.laplace)[:, None, None, None] * jax.random.laplace(keys[9], z.shape)
    z = jnp.where(fire(keys[10]), z * (1.0 + lap), z)
    z = jnp.where(fire(keys[11]), _blur(z, strength(keys[12], cfg.blur) + 0.3), z)
    return z
