"""Multi-turn editing in latent space: one turn = sample a frame from the memory, then write it.

    mem = editor.start(model, params, source_latent, null_text, null_mask, window=4)
    turn = jax.jit(functools.partial(editor.edit_turn, model, settings))  # compiled once
    latent, mem = turn(params, mem, text, text_mask, null_text, null_mask, rng)
    latents, mem = editor.edit_sequence(model, settings, params, mem, texts, masks, null_text, null_mask, rng)

A turn generates its frame in `memory` mode (it sees the anchor, the window and itself) with a
rectified-flow sampler and classifier-free guidance (both branches in one batch), then runs the
DiT once at t=0 on the result with the turn's own instruction to append it to the memory. The
memory has a fixed shape, so every turn, the 2nd or the 30th, runs the same compiled program.

Edit region (SamplerSettings.edit_region > 0; off by default): the turn is sampled a second time
from the same noise with the null instruction, and only the latent positions (the tokens, at patch
1) where the two samples differ by more than the threshold take the new frame; every other position
keeps the previous frame's latent (DiffEdit's mask, Couairon et al. 2022, applied to the result as
in Blended Latent Diffusion). Why: the model undoes the edits of earlier turns (it reads them from
one frame against the anchor and the older window frames); the reference sample undoes them too,
so they cancel out of the mask and stay. The price: whatever the model gets wrong inside a region stays as well.
SamplerSettings.outside_mix (0 to 1; 0 by default) lets that much of the new sample in outside the
region, so what a turn got wrong there fades over the next turns as the anchor draws it back, and
so do earlier edits, more slowly than without the region.
"""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from anchoredit_jax import memory as mem_lib
from anchoredit_jax import sampler
from anchoredit_jax.model import WanDiT


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """How a turn is sampled (static: part of the compiled program)."""

    num_steps: int = 20
    method: str = "euler"  # euler | midpoint | fireflow | consistency (a distilled model, guidance 1)
    shift: float = 1.0
    guidance: float = 3.0  # classifier-free guidance on the instruction; 1.0 = none
    anchor_weight: float = 1.0  # memory.read: < 1 weighs the anchor's attention share down (1: as trained)
    anchor_gate: float = 0.0  # memory.read: > 0 weighs only the anchor tokens the newest frame left unchanged
    latest_weight: float = 1.0  # memory.read: > 1 weighs the newest frame's attention share up (1: as trained)
    edit_region: float = 0.0  # > 0: positions changed less than this (vs the null instruction) keep the last frame
    outside_mix: float = 0.0  # with edit_region: the share of the new sample taken outside the region (1: no region)

    @property
    def read_kw(self) -> dict:
        """memory.read's keywords: how the memory is weighed when read."""
        return dict(anchor_weight=self.anchor_weight, anchor_gate=self.anchor_gate, latest_weight=self.latest_weight)


def start(model: WanDiT, params, source, null_text, null_mask, *, window: int, keep_anchor: bool = True):
    """A memory holding the source frame, written with the null instruction.

    source: [B, h, w, C] latents; null_text [B, L, D], null_mask [B, L].
    """
    b, h, w, _ = source.shape
    mem = mem_lib.init_memory(model.config, b, (h, w), window=window, keep_anchor=keep_anchor)
    return mem_lib.update(model, params, mem, source, null_text, null_mask)


def _times(t, b: int):
    """A scalar time or per-example times [B] -> [B, 1] (the model's per-frame timesteps)."""
    return jnp.broadcast_to(jnp.reshape(jnp.asarray(t, jnp.float32), (-1, 1)), (b, 1))


def velocity_fn(model: WanDiT, params, mem: mem_lib.AnchorMemory, text, text_mask, null_text, null_mask, *,
                model_kwargs=None, read_kw: dict | None = None):
    """(x [B, h, w, C], t) -> (v_cond, v_uncond) for the next frame; both branches in one batch.
    t: a scalar (samplers) or per-example times [B] (distillation).

    model_kwargs: optional extra model.apply arguments for the batched [cond; uncond] call (leading
    dim 2B), e.g. MCIE's xattn_scale. read_kw: memory.read's weights (SamplerSettings.read_kw).
    """
    b = text.shape[0]
    two = lambda x, axis=0: jnp.concatenate([x, x], axis=axis)  # noqa: E731
    m = mem_lib.read(mem, **(read_kw or {}))
    m2 = {name: two(x, 1 if name in ("k", "v") else 0) for name, x in m.items()}
    pos = two(mem_lib.query_position(mem))[:, None]
    texts = jnp.concatenate([text, null_text])[:, None]
    masks = jnp.concatenate([text_mask, null_mask])[:, None]

    def fn(x, t):
        v = model.apply({"params": params}, two(x)[:, None], two(_times(t, b)), texts, masks, pos,
                        mode="memory", memory=m2, **(model_kwargs or {}))[:, 0]
        return v[:b], v[b:]

    return fn


def guided_velocity_fn(model: WanDiT, params, mem: mem_lib.AnchorMemory, text, text_mask, null_text, null_mask,
                       scale: float, read_kw: dict | None = None):
    """(x, t) -> v with CFG at `scale`; at scale 1 (e.g. a distilled model, guidance baked in) only the
    conditional branch is run, so a turn costs one DiT pass per step instead of two."""
    if scale != 1.0:
        return sampler.guided(velocity_fn(model, params, mem, text, text_mask, null_text, null_mask,
                                          read_kw=read_kw), scale)
    m = mem_lib.read(mem, **(read_kw or {}))
    pos = mem_lib.query_position(mem)[:, None]
    b = text.shape[0]
    return lambda x, t: model.apply({"params": params}, x[:, None], _times(t, b), text[:, None],
                                    text_mask[:, None], pos, mode="memory", memory=m)[:, 0]


def region_mask(latent, reference, threshold: float):
    """[B, h, w] bool: the latent positions where latent and reference [B, h, w, C] are further apart
    than `threshold` in mean squared distance over channels (memory.token_change's units at patch 1)."""
    chex.assert_equal_shape([latent, reference])
    return mem_lib.token_change(latent, reference, (1, 1)) > threshold


def edit_turn(model: WanDiT, settings: SamplerSettings, params, mem, text, text_mask, null_text, null_mask, rng):
    """One turn: text [B, L, D], text_mask [B, L] -> (latent [B, h, w, C], memory with the latent)."""
    noise = jax.random.normal(rng, (text.shape[0],) + mem.latent_shape)

    def sample(txt, msk, guidance):
        fn = guided_velocity_fn(model, params, mem, txt, msk, null_text, null_mask, guidance, settings.read_kw)
        return sampler.sample(fn, noise, settings.num_steps,
                              method=settings.method, shift=settings.shift, rng=jax.random.fold_in(rng, 1))

    latent = sample(text, text_mask, settings.guidance)
    if settings.edit_region > 0:
        # guidance 1: with the null instruction on both branches, CFG is the unconditional velocity
        reference = sample(null_text, null_mask, 1.0)
        inside = region_mask(latent, reference, settings.edit_region)
        prev = mem.latest.astype(latent.dtype)  # the previous turn's frame (the source on the first turn)
        latent = jnp.where(inside[..., None], latent, prev + settings.outside_mix * (latent - prev))
    return latent, mem_lib.update(model, params, mem, latent, text, text_mask)


def scan_turns(turn_fn, carry, texts, text_masks, rng):
    """Turns as one lax.scan: turn_fn(carry, text, mask, rng) -> (latent, carry).

    texts [K, B, L, D], text_masks [K, B, L] -> (latents [K, B, h, w, C], final carry).
    Turn k uses jax.random.fold_in(rng, k), as an interactive session does.
    """
    def body(carry, xs):
        k, text, mask = xs
        latent, carry = turn_fn(carry, text, mask, jax.random.fold_in(rng, k))
        return carry, latent

    carry, latents = jax.lax.scan(body, carry, (jnp.arange(texts.shape[0]), texts, text_masks))
    return latents, carry


def edit_sequence(model: WanDiT, settings: SamplerSettings, params, mem, texts, text_masks, null_text, null_mask,
                  rng):
    """All turns as one lax.scan with the memory as the carry (scan_turns over edit_turn).

    texts [K, B, L, D], text_masks [K, B, L] -> (latents [K, B, h, w, C], final memory).
    """
    def turn(mem, text, mask, key):
        return edit_turn(model, settings, params, mem, text, mask, null_text, null_mask, key)

    return scan_turns(turn, mem, texts, text_masks, rng)
