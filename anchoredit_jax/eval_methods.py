"""The methods `anchoredit_jax.evaluate` compares: how each one edits a batch of sequences.

A builder maps (model, encoders, Method) to a jitted fn(params, source_latent [B, h, w, C],
texts [K, B, L, D], text_masks [K, B, L], rng) -> latents [K, B, h, w, C]; every method is one
lax.scan over turns, so a method compiles once whatever K.
Presets (--methods): naive, anchor_wN, no_anchor_wN, mcie, mcie_anchor_wN, copy, truth.
`copy` is the do-nothing baseline: every turn returns the source's latent (no model call), decoded
by the same VAE as every method's, so its frames carry the VAE's loss too. An edit method
that does not beat it inside the edit masks (edit_psnr) is not carrying out the instructions.
`truth` is the ceiling: every turn returns the latent of its ground-truth target (the source's where
a turn has none), so it scores what a perfect model on this VAE would. Its fn takes the target
latents [K, B, h, w, C] as a sixth argument (TAKES_TARGETS).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

import jax
import jax.numpy as jnp

from anchoredit_jax import editor, encoders, mcie
from anchoredit_jax.model import WanDiT


@dataclasses.dataclass(frozen=True)
class Method:
    """What produces the outputs: a checkpoint, a memory layout and a sampler."""

    name: str  # "<checkpoint>/<preset>[/sN][/sampler]"
    checkpoint: str  # name of a --checkpoint
    kind: str = "anchoredit"  # key of METHODS
    window: int = 4
    keep_anchor: bool = True
    settings: editor.SamplerSettings = editor.SamplerSettings()


EditSequenceFn = Callable[..., jax.Array]


def _build_anchoredit(model: WanDiT, enc: encoders.Encoders, method: Method) -> EditSequenceFn:
    def fn(params, source, texts, text_masks, rng):
        null_text, null_mask = enc.null_text((source.shape[0],))
        mem = editor.start(model, params, source, null_text, null_mask, window=method.window,
                           keep_anchor=method.keep_anchor)
        return editor.edit_sequence(model, method.settings, params, mem, texts, text_masks, null_text, null_mask,
                                    rng)[0]
    return jax.jit(fn)


def _build_mcie(model: WanDiT, enc: encoders.Encoders, method: Method) -> EditSequenceFn:
    """MCIE with its paper defaults (8 FireFlow steps, LQR, highlighting); guidance/shift from the method."""
    settings = mcie.MCIESettings(guidance=method.settings.guidance, shift=method.settings.shift)

    def fn(params, source, texts, text_masks, rng):
        null_text, null_mask = enc.null_text((source.shape[0],))
        state = mcie.start(model, params, source, null_text, null_mask, window=method.window,
                           keep_anchor=method.keep_anchor)
        return mcie.edit_sequence(model, settings, params, state, texts, text_masks, null_text, null_mask, rng)[0]
    return jax.jit(fn)


def _build_copy(model: WanDiT, enc: encoders.Encoders, method: Method) -> EditSequenceFn:
    del model, enc, method

    def fn(params, source, texts, text_masks, rng):
        del params, text_masks, rng
        return jnp.broadcast_to(source, (texts.shape[0],) + source.shape)
    return jax.jit(fn)


def _build_truth(model: WanDiT, enc: encoders.Encoders, method: Method) -> EditSequenceFn:
    del model, enc, method

    def fn(params, source, texts, text_masks, rng, targets):
        del params, source, texts, text_masks, rng
        return targets
    return jax.jit(fn)


METHODS: dict[str, Callable[[WanDiT, encoders.Encoders, Method], EditSequenceFn]] = {
    "anchoredit": _build_anchoredit,
    "mcie": _build_mcie,
    "copy": _build_copy,
    "truth": _build_truth,
}
TAKES_TARGETS = ("truth",)  # kinds whose fn also takes the ground truth's latents


def parse_preset(preset: str) -> dict:
    """A --methods entry -> Method fields (kind, window, keep_anchor); ValueError if unknown."""
    if preset == "naive":
        return dict(kind="anchoredit", window=1, keep_anchor=False)
    if preset in ("copy", "truth"):
        return dict(kind=preset, window=1, keep_anchor=False)
    if preset == "mcie":
        return dict(kind="mcie", window=1, keep_anchor=False)  # MCIE alone: the previous frame only
    m = re.fullmatch(r"(no_|mcie_)?anchor_w(\d+)", preset)
    if m and int(m.group(2)) >= 1:
        kind = "mcie" if m.group(1) == "mcie_" else "anchoredit"
        return dict(kind=kind, window=int(m.group(2)), keep_anchor=m.group(1) != "no_")
    raise ValueError(f"unknown method {preset!r}; use naive, anchor_wN, no_anchor_wN, mcie, mcie_anchor_wN "
                     "(N >= 1), copy or truth")
