"""Stage 2: causal AR forcing with self-rollout, one jitted lax.scan over turns.

For a K-turn sequence (latents z_0 = source, z_1..z_K targets), the scan carries the anchor memory
(memory.py, the same numbering as at inference; sequences longer than W+1 exercise eviction).
At turn k:
  1. loss: rectified flow on the ground-truth z_k given the memory (memory mode, query position
     from the memory), weighted w_k = 1 + alpha (k-1)/(K-1), masked by turn validity;
  2. rollout: the model samples frame k itself from the same memory in a few steps, under
     stop_gradient (params are stop-gradiented for everything but the loss call);
  3. the memory is updated with the generated frame (per example with probability `rollout_ratio`,
     scheduled from 0 = teacher forcing to 1 = full self-rollout), never the ground truth once
     the ratio is 1; history degradation (degrade.py) corrupts what is written (with
     `degrade.untouched_only`, only the pixels no known mask has touched so far: drift the anchor
     can repair, never an edit the memory alone holds). Where no rollout is written,
     `own_estimate` (a share, default 0) writes instead the model's one-step clean estimate
     x_t - t v from step 1's own call, when its t is below `own_estimate_max_t` and its text was
     not dropped: frames with the model's own small errors in them, at no extra model call
     (scheduled sampling), so that copying the latest frame is not always right.
The anchor is always the real source. Gradients flow only through step 1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from anchoredit_jax import degrade as degrade_lib
from anchoredit_jax import editor, flow, sampler
from anchoredit_jax import memory as mem_lib
from anchoredit_jax import stage1
from anchoredit_jax.config_lib import check_values, number_in, one_of
from anchoredit_jax.model import WanDiT
from anchoredit_jax.stage1 import weighted_velocity_error

# config.stage2 values the loss would otherwise take silently; turn weights 1 + alpha (k-1)/(K-1) stay >= 0
SETTINGS = {**stage1.SETTINGS, "window": number_in(1, integer=True), "rollout_steps": number_in(1, integer=True),
            "rollout_method": one_of(sampler.METHODS), "rollout_guidance": number_in(0),
            "ratio_start": number_in(0, 1), "ratio_end": number_in(0, 1),
            "ratio_ramp_start": number_in(0, integer=True), "ratio_ramp_end": number_in(0, integer=True),
            "turn_weight_alpha": number_in(-1), "kept_scale": number_in(0),
            "own_estimate": number_in(0, 1), "own_estimate_max_t": number_in(0, 1)}


def check_settings(cfg) -> None:
    """Raises config_lib.ConfigError naming the first config.stage2 value outside SETTINGS
    (and config.stage2.degrade.prob outside [0, 1])."""
    check_values("stage2", cfg, SETTINGS)
    if "degrade" in cfg:
        check_values("stage2.degrade", cfg.degrade, {"prob": number_in(0, 1)})


def rollout_ratio(step, cfg):
    """Linear ramp from cfg.ratio_start to cfg.ratio_end over [ratio_ramp_start, ratio_ramp_end) steps."""
    span = max(cfg.ratio_ramp_end - cfg.ratio_ramp_start, 1)
    frac = jnp.clip((step - cfg.ratio_ramp_start) / span, 0.0, 1.0)
    return cfg.ratio_start + (cfg.ratio_end - cfg.ratio_start) * frac


def draw(rng, b: int, k: int, latent_shape, cfg):
    """All randomness of one stage-2 loss, drawn up front: t [B, K], noise [B, K, h, w, C], ..."""
    kt, kn, kd, ku, kr = jax.random.split(rng, 5)
    ko = jax.random.fold_in(rng, 1)  # not a sixth split: the five draws above stay those of earlier runs
    return {"t": flow.sample_timesteps(kt, (b, k), kind=cfg.timestep_sampling, shift=cfg.timestep_shift),
            "noise": jax.random.normal(kn, (b, k) + tuple(latent_shape)),
            "drop": jax.random.uniform(kd, (b, k)) < cfg.cfg_drop_prob,
            "use_rollout_u": jax.random.uniform(ku, (b, k)),
            "own_estimate_u": jax.random.uniform(ko, (b, k)),
            "turn_keys": jax.random.split(kr, k)}


def turn_weights(k: int, alpha: float):
    return 1.0 + alpha * jnp.arange(k) / max(k - 1, 1)


def loss_fn(params, model: WanDiT, rng, *, frames, texts, text_masks, null_text, null_mask, edit_masks, has_mask,
            turn_valid, ratio, cfg):
    """Stage-2 loss.

    Args:
      frames: normalised latents [B, K+1, h, w, C] (frame 0 = source).
      texts, text_masks: [B, K, L, D], [B, K, L]; null_text/null_mask: [L, D], [L].
      edit_masks: [B, K, h, w] latent-grid masks; has_mask, turn_valid: [B, K].
      ratio: scalar in [0, 1], share of turns whose memory gets the model's own frame.
      cfg: window, keep_anchor, rollout_steps, rollout_method, rollout_guidance, turn_weight_alpha,
        outside_mask_weight, kept_scale (optional, default 1: where earlier turns' known masks edited
        and this turn's does not, the error weighs outside_mask_weight * kept_scale: what must stay
        as the latest frames have it, not as the source had it), own_estimate and own_estimate_max_t
        (optional, default 0 and 0.5: see the module docstring), cfg_drop_prob, timestep fields,
        degrade (prob, untouched_only (optional, default False), vae_roundtrip unused here, ...).
    Returns: (loss, aux) with per-turn losses in aux["turn_loss"] [K].
    """
    b, k1 = frames.shape[:2]
    k = k1 - 1
    d = draw(rng, b, k, frames.shape[2:], cfg)
    frozen = jax.lax.stop_gradient(params)
    nt, nm = jnp.broadcast_to(null_text, (b,) + null_text.shape), jnp.broadcast_to(null_mask, (b,) + null_mask.shape)
    mem = jax.lax.stop_gradient(editor.start(model, frozen, frames[:, 0], nt, nm, window=cfg.window,
                                             keep_anchor=cfg.keep_anchor))
    settings = editor.SamplerSettings(num_steps=cfg.rollout_steps, method=cfg.rollout_method,
                                      guidance=cfg.rollout_guidance)

    kept_scale = cfg.get("kept_scale", 1.0)
    own_share, own_max_t = cfg.get("own_estimate", 0.0), cfg.get("own_estimate_max_t", 0.5)

    def body(carry, xs):
        mem, edited = carry  # edited [B, h, w]: what the known masks of earlier turns cover
        z, text, mask, emask, hmask, known, t, noise, drop, use_u, own_u, key = xs
        # 1. loss on the ground-truth target given the memory
        text_in = jnp.where(drop[:, None, None], nt, text)
        mask_in = jnp.where(drop[:, None], nm, mask)
        x_t = flow.add_noise(z, noise, t)
        pos = mem_lib.query_position(mem)[:, None]
        v = model.apply({"params": params}, x_t[:, None], t[:, None], text_in[:, None], mask_in[:, None], pos,
                        mode="memory", memory=mem_lib.read(mem))[:, 0]
        per_example, _ = weighted_velocity_error(v, flow.velocity_target(z, noise), emask, hmask,
                                                 cfg.outside_mask_weight, edited, kept_scale)
        # 2. rollout from the same memory (no gradient), only if some example uses it
        use = use_u < ratio
        k_noise, k_deg = jax.random.split(key)

        def rollout(_):
            fn = editor.velocity_fn(model, frozen, mem, text, mask, nt, nm)
            return sampler.sample(sampler.guided(fn, settings.guidance), jax.random.normal(k_noise, z.shape),
                                  settings.num_steps, method=settings.method)

        gen = jax.lax.cond(jnp.any(use), rollout, lambda _: z, None)
        own = (own_u < own_share) & (t < own_max_t) & ~drop  # a text-dropped call's estimate ignores the edit
        frame = jnp.where(own[:, None, None, None], jax.lax.stop_gradient(flow.predict_x0(x_t, v, t)), z)
        frame = jnp.where(use[:, None, None, None], jax.lax.stop_gradient(gen), frame)
        # 3. degrade what the memory keeps, then write it with the turn's own instruction
        edited = jnp.maximum(edited, emask * hmask[:, None, None])
        if cfg.degrade.prob > 0:
            bad = degrade_lib.degrade(k_deg, frame, cfg.degrade)
            if cfg.degrade.get("untouched_only", False):  # only where the anchor still holds the truth
                spare = (edited > 0) | (known < 1)[:, None, None]
                bad = jnp.where(spare[..., None], frame, bad)
            frame = bad
        mem = jax.lax.stop_gradient(mem_lib.update(model, frozen, mem, frame, text, mask))
        share = lambda m: jnp.mean(m.astype(jnp.float32))  # noqa: E731
        return (mem, edited), (per_example, share(use), share(own & ~use))

    swap = lambda x: jnp.moveaxis(x, 1, 0)  # noqa: E731  ([B, K, ...] -> [K, B, ...] for the scan)
    known = jnp.cumprod(has_mask, axis=1)  # [B, K]: 1 while every turn so far has a known mask
    xs = (swap(frames[:, 1:]), swap(texts), swap(text_masks), swap(edit_masks), swap(has_mask), swap(known),
          swap(d["t"]), swap(d["noise"]), swap(d["drop"]), swap(d["use_rollout_u"]), swap(d["own_estimate_u"]),
          d["turn_keys"])
    edited = jnp.zeros(edit_masks.shape[:1] + edit_masks.shape[2:])  # nothing edited before turn 1
    _, (per_turn, used, owned) = jax.lax.scan(body, (mem, edited), xs)  # per_turn [K, B]
    w = turn_weights(k, cfg.turn_weight_alpha)[:, None] * swap(turn_valid)
    loss = jnp.sum(w * per_turn) / jnp.maximum(jnp.sum(w), 1e-8)
    turn_loss = jnp.sum(per_turn * swap(turn_valid), 1) / jnp.maximum(jnp.sum(swap(turn_valid), 1), 1e-8)
    return loss, {"turn_loss": turn_loss, "rollout_frac": jnp.mean(used), "own_frac": jnp.mean(owned),
                  "ratio": jnp.asarray(ratio, jnp.float32)}
