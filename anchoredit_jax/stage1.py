"""Stage 1: identity-preserving single-turn pretraining on [clean source, noisy target] pairs.

The pair runs block-causally: frame 0 is the clean source at t=0 reading the null instruction
(the source has none, as in the memory at inference), frame 1 the noisy target reading its
instruction; frame 1 sees the source and itself, which is the teacher-forcing pattern for one turn
(tests/test_train.py checks it equals mode="teacher_forcing"). The loss is the rectified-flow
velocity error on frame 1 only. A share of pairs become no-op edits (target = source, reading a
no-op instruction such as "leave it alone" in place of their own: an identity pair that kept the
edit's instruction would teach the model to ignore instructions), a share of instructions are
dropped to the null embedding (for classifier-free guidance), and where the data has an edit mask
the error outside it is up-weighted (keep what the instruction did not touch).
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from anchoredit_jax import flow
from anchoredit_jax.config_lib import check_values, number_in, one_of
from anchoredit_jax.data.shapes_phrasing import TEMPLATES
from anchoredit_jax.model import WanDiT

# What identity pairs read: ShapesEdit's training no-op phrasings (its held-out ones stay held out).
NOOP_INSTRUCTIONS = tuple(TEMPLATES["noop"][0])

# config.stage1 values the loss would otherwise take silently (a negative weight trains away from the data)
SETTINGS = {"noop_prob": number_in(0, 1), "cfg_drop_prob": number_in(0, 1), "outside_mask_weight": number_in(0),
            "timestep_sampling": one_of(flow.TIMESTEP_SAMPLING), "timestep_shift": number_in(0, open_lo=True)}


def check_settings(cfg) -> None:
    """Raises config_lib.ConfigError naming the first config.stage1 value outside SETTINGS."""
    check_values("stage1", cfg, SETTINGS)


def noop_instructions(enc, frozen, tokenize):
    """NOOP_INSTRUCTIONS embedded -> (text [P, L, D], mask [P, L]); traceable (the ids are constants)."""
    ids, mask = tokenize(list(NOOP_INSTRUCTIONS))
    return enc.embed_text(frozen, ids, mask)


def loss_fn(params, model: WanDiT, rng, **batch_and_cfg):
    """Stage-1 loss: the mean of `per_example_loss` (same arguments) -> (loss, aux)."""
    per_example, aux = per_example_loss(params, model, rng, **batch_and_cfg)
    return jnp.mean(per_example), aux


def per_example_loss(params, model: WanDiT, rng, *, source, target, text, text_mask, null_text, null_mask,
                     noop_text, noop_mask, edit_mask, has_mask, cfg):
    """Stage-1 loss per example.

    Args:
      source, target: normalised latents [B, h, w, C].
      text, text_mask: instruction embeddings [B, L, D], [B, L]; null_text/null_mask: [L, D], [L].
      noop_text, noop_mask: no-op instructions [P, L, D], [P, L] (`noop_instructions`); each identity
        pair reads one of them, drawn at random.
      edit_mask: [B, h, w] in {0, 1} on the latent grid; has_mask: [B] (1 where the mask is known).
      cfg: noop_prob, cfg_drop_prob, outside_mask_weight, timestep sampling fields.
    Returns: (loss [B], aux dict of per-batch diagnostics).
    """
    b = source.shape[0]
    chex.assert_equal_shape([source, target])
    k_noop, k_phrase, k_drop, k_t, k_noise = jax.random.split(rng, 5)
    noop = jax.random.uniform(k_noop, (b,)) < cfg.noop_prob
    target = jnp.where(noop[:, None, None, None], source, target)
    edit_mask = jnp.where(noop[:, None, None], 0.0, edit_mask)  # nothing may change
    has_mask = jnp.where(noop, 1.0, has_mask)
    phrase = jax.random.randint(k_phrase, (b,), 0, noop_text.shape[0])
    text = jnp.where(noop[:, None, None], jnp.asarray(noop_text)[phrase], text)
    text_mask = jnp.where(noop[:, None], jnp.asarray(noop_mask)[phrase], text_mask)

    drop = jax.random.uniform(k_drop, (b,)) < cfg.cfg_drop_prob
    text = jnp.where(drop[:, None, None], null_text[None], text)
    text_mask = jnp.where(drop[:, None], null_mask[None], text_mask)

    t = flow.sample_timesteps(k_t, (b,), kind=cfg.timestep_sampling, shift=cfg.timestep_shift)
    noise = jax.random.normal(k_noise, target.shape)
    x_t = flow.add_noise(target, noise, t)

    v = pair_velocity(params, model, source, x_t, t, text, text_mask, null_text, null_mask)
    per_example, mse = weighted_velocity_error(v, flow.velocity_target(target, noise), edit_mask, has_mask,
                                               cfg.outside_mask_weight)
    return per_example, {"mse": mse, "noop_frac": jnp.mean(noop), "drop_frac": jnp.mean(drop)}


def pair_velocity(params, model: WanDiT, source, x_t, t, text, text_mask, null_text, null_mask):
    """The velocity of frame 1 of the block-causal pair [clean source at t=0 reading the null
    instruction, x_t at t reading `text`].

    source, x_t: [B, h, w, C]; t [B]; text [B, L, D], text_mask [B, L]; null_text/null_mask
    broadcastable to text/text_mask. -> [B, h, w, C].
    """
    frames = jnp.stack([source, x_t], axis=1)  # [B, 2, h, w, C]
    times = jnp.stack([jnp.zeros_like(t), t], axis=1)
    texts = jnp.stack([jnp.broadcast_to(null_text, text.shape), text], axis=1)
    masks = jnp.stack([jnp.broadcast_to(null_mask, text_mask.shape), text_mask], axis=1)
    positions = jnp.broadcast_to(jnp.arange(2), (source.shape[0], 2))
    return model.apply({"params": params}, frames, times, texts, masks, positions, mode="block_causal")[:, 1]


def weighted_velocity_error(v, target_v, edit_mask, has_mask, outside_weight: float, kept=None,
                            kept_scale: float = 1.0):
    """Per-example velocity MSE with the error outside a known edit mask weighted `outside_weight`,
    and on `kept` [B, h, w] in {0, 1} outside the mask (stage 2: what earlier turns edited and this
    one does not) weighted `outside_weight * kept_scale`.

    v, target_v: [B, h, w, C]; edit_mask [B, h, w] in {0, 1}; has_mask [B] -> ([B], unweighted mean).
    """
    err = jnp.mean(jnp.square(v - target_v), axis=-1)  # [B, h, w]
    outside = has_mask[:, None, None] * (1.0 - edit_mask)
    weight = 1.0 + (outside_weight - 1.0) * outside
    if kept is not None and kept_scale != 1.0:
        weight = jnp.where(outside * kept > 0, outside_weight * kept_scale, weight)
    return jnp.sum(weight * err, axis=(1, 2)) / jnp.sum(weight, axis=(1, 2)), jnp.mean(err)
