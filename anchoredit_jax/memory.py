"""Anchor memory: a fixed-size key/value cache of earlier turns (anchor slot + rolling window).

State (a pytree of fixed shape, so it is the carry of `lax.scan` over turns):
  k, v   [L, B, S, N, H, hd]  per layer keys (RMS-normalised, WITHOUT RoPE) and values
  valid  [B, S]               slots holding a frame; always a prefix (what cuDNN's key lengths need)
  count  []                   frames written so far (the source is frame 0)
  source [B, h, w, C]         the source latent (float32), kept to tell what later frames changed
  change [B, N]               per token, the newest frame's mean squared latent distance from the
                              source (0 until a second frame): what `read`'s anchor gate looks at
  latest [B, h, w, C]         the newest frame's latent (float32): what the editor's edit region
                              keeps outside the region a turn's instruction changes
with S = 1 + W when the anchor is kept (slot 0 = the source, forever) and S = W without it.

RoPE positions are assigned when the memory is read, by slot: anchor at 0, window slots 1..W,
the frame being generated right after the last valid slot. Until the window fills, that is
simply turn numbering 0..k (so memory equals full block-causal recomputation); afterwards turn 30
sits where turn W+1 sat in training. Training (stage 2) and inference share this numbering.
`update` runs the DiT once at t=0 on the accepted frame with that turn's own instruction.
"""
from __future__ import annotations

import chex
import einops
import flax
import jax
import jax.numpy as jnp
import numpy as np

from anchoredit_jax.model import DiTConfig, WanDiT


@flax.struct.dataclass
class AnchorMemory:
    k: jax.Array
    v: jax.Array
    valid: jax.Array
    count: jax.Array
    source: jax.Array
    change: jax.Array
    latest: jax.Array
    window: int = flax.struct.field(pytree_node=False)
    keep_anchor: bool = flax.struct.field(pytree_node=False)
    latent_shape: tuple[int, int, int] = flax.struct.field(pytree_node=False)  # (h, w, C) of one frame

    @property
    def num_slots(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self))


def init_memory(config: DiTConfig, batch: int, latent_hw: tuple[int, int], *, window: int, keep_anchor: bool = True,
                dtype=None) -> AnchorMemory:
    """An empty memory for frames of latent_hw = (h, w). dtype defaults to the model's compute dtype."""
    if window < 1:
        raise ValueError(f"memory window must be >= 1, got {window}")
    slots = window + int(keep_anchor)
    h, w = latent_hw
    tokens = (h // config.patch_size[1]) * (w // config.patch_size[2])
    shape = (config.num_layers, batch, slots, tokens, config.num_heads, config.head_dim)
    dtype = jnp.dtype(dtype or config.dtype)
    return AnchorMemory(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), valid=jnp.zeros((batch, slots), bool),
                        count=jnp.zeros((), jnp.int32),
                        source=jnp.zeros((batch, h, w, config.in_channels), jnp.float32),
                        change=jnp.zeros((batch, tokens), jnp.float32),
                        latest=jnp.zeros((batch, h, w, config.in_channels), jnp.float32), window=window,
                        keep_anchor=keep_anchor,
                        latent_shape=(h, w, config.in_channels))


def _offset(mem: AnchorMemory):
    """Position of window slot 0: 1 behind a written anchor, else 0."""
    return jnp.where(mem.keep_anchor & (mem.count > 0), 1, 0).astype(jnp.int32)


def query_position(mem: AnchorMemory):
    """[B] RoPE turn position of the next frame: right after the last valid slot."""
    n_window = mem.valid.sum(-1) - jnp.where(mem.keep_anchor & (mem.count > 0), 1, 0)
    return (_offset(mem) + n_window).astype(jnp.int32)


def check_weights(anchor_weight: float = 1.0, anchor_gate: float = 0.0, latest_weight: float = 1.0) -> None:
    """ValueError naming the first of read's weights out of range (the PyTorch serving path checks
    its own with this too)."""
    for name, w in (("anchor_weight", anchor_weight), ("latest_weight", latest_weight)):
        if not w > 0:
            raise ValueError(f"{name} must be > 0, got {w}")
    if not anchor_gate >= 0:
        raise ValueError(f"anchor_gate must be >= 0, got {anchor_gate}")


def read(mem: AnchorMemory, anchor_weight: float = 1.0, anchor_gate: float = 0.0, latest_weight: float = 1.0) -> dict:
    """The model's `memory=` argument: k, v, slot positions [B, S] and validity [B, S].

    anchor_weight (static, > 0): 1 reads the memory as trained; w != 1 adds log w to the attention
    logits of the anchor's keys (a "bias" entry), so the anchor's share of every query's attention
    is weighed by w before renormalising: below 1 the source counts less against the recent turns.
    anchor_gate (static, >= 0; 0: off): the weight goes only to the anchor's keys at tokens the
    newest frame has not changed, `change < anchor_gate` (bias [B, S, N]), so weighing the anchor up
    holds untouched regions to the source without drawing back what earlier turns edited.
    latest_weight (static, > 0): likewise log w on the newest window frame's keys (once there is one
    besides the anchor): above 1 the last output counts more against the older frames and the
    anchor, so what the last turn edited is kept more (and its errors are carried on).
    (On a GPU that bias goes to cuDNN's attention with the key lengths, spelled out over the
    queries as cuDNN needs: attention.cudnn_bias; not yet run on one.)
    """
    check_weights(anchor_weight, anchor_gate, latest_weight)
    b, s = mem.valid.shape
    slot = jnp.arange(s, dtype=jnp.int32)
    if mem.keep_anchor:
        pos = jnp.where(slot == 0, 0, slot)  # anchor 0, window slots 1..W
    else:
        pos = slot
    out = {"k": mem.k, "v": mem.v, "positions": jnp.broadcast_to(pos, (b, s)), "valid": mem.valid}
    if mem.keep_anchor and anchor_weight != 1.0:
        per_slot = jnp.where(slot == 0, np.log(anchor_weight), 0.0).astype(jnp.float32)
        if anchor_gate:
            unchanged = (mem.change < anchor_gate)[:, None, :]  # [B, 1, N]
            out["bias"] = jnp.where(unchanged, per_slot[None, :, None], 0.0)  # [B, S, N]
        else:
            out["bias"] = jnp.broadcast_to(per_slot, (b, s))
    if latest_weight != 1.0:
        newest = mem.valid.sum(-1, keepdims=True) - 1  # [B, 1]: valid is a prefix
        is_latest = (slot == newest) & (newest >= int(mem.keep_anchor))  # not the anchor itself
        latest = jnp.where(is_latest, np.log(latest_weight), 0.0).astype(jnp.float32)  # [B, S]
        bias = out.get("bias", jnp.zeros((b, s), jnp.float32))
        out["bias"] = bias + (latest[:, :, None] if bias.ndim == 3 else latest)
    return out


def write(mem: AnchorMemory, k_new, v_new) -> AnchorMemory:
    """Appends one frame's keys/values [L, B, N, H, hd]: the anchor slot first (if kept), then the
    window; a full window drops its oldest frame (shift left) and writes at the end."""
    chex.assert_equal_shape([k_new, v_new])
    chex.assert_shape(k_new, mem.k.shape[:2] + mem.k.shape[3:])
    a = int(mem.keep_anchor)
    if a:
        to_anchor = mem.count == 0
    else:
        to_anchor = jnp.zeros((), bool)
    n_window = mem.valid[:, a:].sum(-1)[0]  # batch elements move in lockstep
    full = n_window >= mem.window

    def shifted(x):  # window part shifted left by one slot when full
        win = x[:, :, a:]
        win = jnp.where(full, jnp.roll(win, -1, axis=2), win)
        return jnp.concatenate([x[:, :, :a], win], axis=2) if a else win

    k, v = shifted(mem.k), shifted(mem.v)
    slot = jnp.where(to_anchor, 0, a + jnp.minimum(n_window, mem.window - 1))
    k = jax.lax.dynamic_update_slice_in_dim(k, k_new[:, :, None].astype(k.dtype), slot, axis=2)
    v = jax.lax.dynamic_update_slice_in_dim(v, v_new[:, :, None].astype(v.dtype), slot, axis=2)
    valid = mem.valid.at[:, slot].set(True)
    return mem.replace(k=k, v=v, valid=valid, count=mem.count + 1)


def token_change(frame, source, patch: tuple[int, int]):
    """Per token, the mean squared latent distance of `frame` from `source` (what `change` holds):
    frame, source [..., h, w, C] -> [..., h // ph, w // pw] for patch (ph, pw)."""
    sq = jnp.mean(jnp.square(frame.astype(jnp.float32) - source.astype(jnp.float32)), axis=-1)
    return einops.reduce(sq, "... (h p1) (w p2) -> ... h w", "mean", p1=patch[0], p2=patch[1])


def update(model: WanDiT, params, mem: AnchorMemory, clean, text, text_mask) -> AnchorMemory:
    """Writes an accepted frame: one DiT pass at t=0, in memory mode, with its own instruction.

    clean: [B, h, w, C] latent; text [B, L, D], text_mask [B, L] (the null instruction for the source).
    """
    b = clean.shape[0]
    _, kv = model.apply({"params": params}, clean[:, None], jnp.zeros((b, 1)), text[:, None], text_mask[:, None],
                        query_position(mem)[:, None], mode="memory", memory=read(mem), return_kv=True)
    source = jnp.where(mem.count == 0, clean.astype(jnp.float32), mem.source)
    change = token_change(clean, source, model.config.patch_size[1:]).reshape(b, -1)  # [B, N], row-major tokens
    return write(mem, kv["k"][:, :, 0], kv["v"][:, :, 0]).replace(source=source, change=change,
                                                                  latest=clean.astype(jnp.float32))
