"""Rectified flow: x_t = (1 - t) x0 + t eps (t=1 noise, t=0 data), velocity target eps - x0.

Training-time timestep distributions live here; samplers (Euler, midpoint, FireFlow) build on the
same conventions in sampler.py.
"""
from __future__ import annotations

import jax

TIMESTEP_SAMPLING = ("uniform", "logit_normal", "shifted")


def shift_timesteps(t, shift: float):
    """Wan/SD3 timestep shift: t' = s t / (1 + (s - 1) t). s > 1 spends more time near noise."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_timesteps(rng, shape, *, kind: str = "logit_normal", shift: float = 1.0, mean: float = 0.0,
                     std: float = 1.0, t_min: float = 0.0, t_max: float = 1.0):
    """Training timesteps in [t_min, t_max].

    uniform: U(0, 1); logit_normal: sigmoid(N(mean, std)) (SD3); shifted: uniform then the Wan shift.
    `shift` applies after any of them (1.0 = none).
    """
    if kind == "uniform" or kind == "shifted":
        t = jax.random.uniform(rng, shape)
    elif kind == "logit_normal":
        t = jax.nn.sigmoid(mean + std * jax.random.normal(rng, shape))
    else:
        raise ValueError(f"timestep sampling must be one of {TIMESTEP_SAMPLING}, got {kind!r}")
    t = shift_timesteps(t, shift) if shift != 1.0 else t
    return t_min + (t_max - t_min) * t


def add_noise(x0, noise, t):
    """x_t for t broadcast over the trailing axes of x0: t [B, K] with x0 [B, K, h, w, C]."""
    t = t.reshape(t.shape + (1,) * (x0.ndim - t.ndim))
    return (1.0 - t) * x0 + t * noise


def velocity_target(x0, noise):
    return noise - x0


def predict_x0(x_t, v, t):
    """Clean estimate from a velocity: x0 = x_t - t v."""
    t = t.reshape(t.shape + (1,) * (x_t.ndim - t.ndim))
    return x_t - t * v
