"""optax: AdamW with warmup + cosine decay, global-norm clipping, gradient accumulation, EMA."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup to cfg.lr over cfg.warmup_steps, then cosine decay to cfg.lr * cfg.end_lr_factor."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
        decay_steps=max(total_steps, cfg.warmup_steps + 1), end_value=cfg.lr * cfg.end_lr_factor)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                             optax.Schedule]:
    """cfg: lr, warmup_steps, end_lr_factor, weight_decay, b1, b2, grad_clip, grad_accum_steps.

    With grad_accum_steps > 1 (optax.MultiSteps) the parameters change every that many micro-steps;
    the schedule counts optimizer updates, so total_steps is in updates.
    """
    schedule = learning_rate_schedule(cfg, total_steps)
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip else optax.identity(),
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay),
    )
    if cfg.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps)
    return tx, schedule


def ema_update(ema, params, decay: float, step, warmup: bool = True):
    """ema <- d * ema + (1 - d) * params with d = min(decay, (1 + step) / (10 + step)), or d = decay
    from the first step when warmup is False.

    The warm-up keeps early EMAs from being mostly the initialisation (0.999^500 is still 0.6); when
    the initialisation is itself a trained average (a run continued with init_from), that is what
    one wants, hence warmup=False.
    """
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)) if warmup else jnp.asarray(decay, jnp.float32)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
