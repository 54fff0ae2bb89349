"""Causal Wan2.1 DiT in Flax linen: one latent frame per editing turn.

The module and parameter names mirror diffusers' `WanTransformer3DModel` (transformer_wan.py), so
weights map one-to-one (see interop.py). Order of this file: config -> embeddings -> RoPE ->
attention -> block -> model.

Inputs are channels-last and per turn: latents [B, K, h, w, C], timesteps [B, K] in [0, 1]
(t=1 noise, t=0 data), instruction embeddings [B, K, L, Dt] with mask [B, K, L] (turn k
cross-attends only to its own instruction) and turn positions [B, K] (integers; RoPE uses
position * turn_stride, so memory can renumber turns). Self-attention modes (attention.py):
  bidirectional    all frames see each other (diffusers parity),
  block_causal     frame k sees frames <= k,
  teacher_forcing  `clean` frames and noisy frames in one pass: noisy frame k sees clean < k and itself,
  memory           the frames see themselves block-causally plus a fixed-size key/value memory.
With `return_kv` the model also returns every layer's keys (after RMSNorm, before RoPE) and values
for its frames: that is how the anchor memory is filled (run at t=0 on the accepted frame).

Two optional cross-attention hooks serve MCIE's adaptive attention highlighting (mcie.py); with
neither given, the computation is exactly the default one:
  xattn_probe  [B, K, L] weights over instruction tokens: also return every layer's cross-attention
               map (probabilities averaged over heads, weighted over tokens) as aux["xattn_maps"]
               [layers, B, K, N]. The probabilities come from an explicit XLA softmax computed beside
               the usual attention call (fused kernels do not expose them), so ask only when needed.
  xattn_scale  [B, K, N] per query token: softmax(QK^T/sqrt d) * M. M is constant along a query's row,
               so this is M times the attention output; it is NOT renormalised (that would cancel M).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import chex
import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anchoredit_jax.attention import FrameLayout, attention_weights, dot_product_attention, frame_attention
from anchoredit_jax.layers import Dense, LayerNorm, RMSNorm, StoredParams

MODES = ("bidirectional", "block_causal", "teacher_forcing", "memory")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


# 0. Config ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Shapes and numerics of the DiT. Field names follow diffusers where one exists."""

    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 16
    ffn_dim: int = 64
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 32
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    cross_attn_norm: bool = True
    eps: float = 1e-6
    rope_max_seq_len: int = 1024
    rope_theta: float = 10000.0
    turn_stride: int = 4  # RoPE turn position = turn x stride, where Wan saw latent frames (x4 temporal VAE).
    timestep_scale: float = 1000.0  # diffusers/Wan embed t in [0, 1000].
    dtype: str = "float32"  # compute dtype; params stay float32
    attention_backend: str = "auto"
    attention_strategy: str = "loop"
    remat_policy: str = "none"

    @property
    def dim(self) -> int:
        return self.num_heads * self.head_dim

    @classmethod
    def from_dict(cls, d: Any) -> "DiTConfig":
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        if "patch_size" in d:
            d["patch_size"] = tuple(d["patch_size"])
        return cls(**d)

    def validate(self) -> "DiTConfig":
        if self.patch_size[0] != 1:
            raise ValueError(f"one latent frame per turn needs a temporal patch of 1, got {self.patch_size}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy must be one of {list(REMAT_POLICIES)}, got {self.remat_policy!r}")
        if self.head_dim % 2 or (self.head_dim - 4 * (self.head_dim // 6)) % 2:
            raise ValueError(f"head_dim {self.head_dim} does not split into even RoPE parts")
        return self


def _dense(features, axes, name, dtype, kernel_init=nn.initializers.xavier_uniform()):
    """Linear layer whose kernel [in, out] and bias carry logical axis names (for sharding rules)."""
    return Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                 kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))


def _layer_norm(eps, affine=False, name=None):
    # fp32 island; exact variance, as torch's LayerNorm.
    return LayerNorm(epsilon=eps, use_bias=affine, use_scale=affine, dtype=jnp.float32,
                     param_dtype=jnp.float32, use_fast_variance=False, name=name,
                     scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


# 1. Embeddings -----------------------------------------------------------------------------------
def timestep_embedding(t, dim: int):
    """Sinusoidal embedding as diffusers' Timesteps(flip_sin_to_cos=True, shift=0): [...] -> [..., dim]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class MLP2(nn.Module):
    """linear_1 -> activation -> linear_2 (diffusers' TimestepEmbedding / PixArtAlphaTextProjection)."""

    features: int
    act: str
    axes: tuple[tuple[str, str], tuple[str, str]]
    dtype: Any

    @nn.compact
    def __call__(self, x):
        x = _dense(self.features, self.axes[0], "linear_1", self.dtype)(x)
        x = nn.silu(x) if self.act == "silu" else nn.gelu(x, approximate=True)
        return _dense(self.features, self.axes[1], "linear_2", self.dtype)(x)


class ConditionEmbedder(nn.Module):
    """Timesteps [B, F] -> (temb [B, F, D], modulation [B, F, 6, D]); text [B, K, L, Dt] -> [B, K, L, D]."""

    config: DiTConfig

    @nn.compact
    def __call__(self, t, text):
        c, dt = self.config, jnp.dtype(self.config.dtype)
        # The time path stays fp32 (diffusers keeps time_embedder in fp32 too).
        temb = MLP2(c.dim, "silu", (("freq", "embed"), ("mlp", "embed")), jnp.float32, name="time_embedder")(
            timestep_embedding(t * c.timestep_scale, c.freq_dim))
        mod = _dense(6 * c.dim, ("embed", "mlp"), "time_proj", jnp.float32)(nn.silu(temb))
        mod = mod.reshape(*mod.shape[:-1], 6, c.dim)
        ctx = MLP2(c.dim, "gelu", (("text_embed", "mlp"), ("mlp", "embed")), dt, name="text_embedder")(text)
        return temb, mod, ctx


# 2. RoPE -----------------------------------------------------------------------------------------
def rope_tables(head_dim: int, max_len: int, theta: float):
    """Per-axis (turn, row, col) angle tables, float64 then cast, as diffusers' WanRotaryPosEmbed."""
    hw = 2 * (head_dim // 6)
    tables = []
    for d in (head_dim - 2 * hw, hw, hw):
        freqs = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
        ang = np.outer(np.arange(max_len, dtype=np.float64), freqs)  # [max_len, d/2]
        tables.append((np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)))
    return tables


def rope_cos_sin(config: DiTConfig, turn_pos, h: int, w: int):
    """Rotary cos/sin for frames at integer turn positions, on an h x w token grid.

    turn_pos: [B, F] int -> (cos, sin) each [B, F*h*w, head_dim // 2].
    """
    (ct, st), (ch, sh), (cw, sw) = rope_tables(config.head_dim, config.rope_max_seq_len, config.rope_theta)
    b, f = turn_pos.shape
    idx = turn_pos.astype(jnp.int32) * config.turn_stride
    parts = []
    for (tab_t, tab_h, tab_w) in ((ct, ch, cw), (st, sh, sw)):
        at = jnp.take(jnp.asarray(tab_t), idx, axis=0)[:, :, None, None, :]  # [B, F, 1, 1, dt/2]
        ah = jnp.asarray(tab_h[:h])[None, None, :, None, :]
        aw = jnp.asarray(tab_w[:w])[None, None, None, :, :]
        shape = (b, f, h, w)
        full = jnp.concatenate([jnp.broadcast_to(at, shape + at.shape[-1:]),
                                jnp.broadcast_to(ah, shape + ah.shape[-1:]),
                                jnp.broadcast_to(aw, shape + aw.shape[-1:])], axis=-1)
        parts.append(full.reshape(b, f * h * w, -1))
    return parts[0], parts[1]


def apply_rope(x, cos, sin):
    """Rotates interleaved pairs (x[2i], x[2i+1]): x [B, T, H, D], cos/sin [B, T, D/2]."""
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., 0::2], x32[..., 1::2]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


# 3. Attention ------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Projections of diffusers' WanAttention (to_q/k/v, RMSNorm across heads on q and k, to_out)."""

    config: DiTConfig

    def setup(self):
        c, dt = self.config, jnp.dtype(self.config.dtype)
        self.to_q = _dense(c.dim, ("embed", "heads"), "to_q", dt)
        self.to_k = _dense(c.dim, ("embed", "heads"), "to_k", dt)
        self.to_v = _dense(c.dim, ("embed", "heads"), "to_v", dt)
        self.to_out = _dense(c.dim, ("heads", "embed"), "to_out", dt)
        rms = dict(epsilon=c.eps, dtype=jnp.float32, param_dtype=jnp.float32,
                   scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("heads",)))
        self.norm_q = RMSNorm(**rms, name="norm_q")
        self.norm_k = RMSNorm(**rms, name="norm_k")

    def heads(self, x):
        return x.reshape(*x.shape[:-1], self.config.num_heads, self.config.head_dim)

    def query(self, x):
        """[..., D] -> [..., H, hd], RMS-normalised, no RoPE."""
        return self.heads(self.norm_q(self.to_q(x)).astype(jnp.dtype(self.config.dtype)))

    def key_value(self, ctx):
        """[..., D] -> k, v [..., H, hd] (k RMS-normalised, no RoPE)."""
        k = self.norm_k(self.to_k(ctx)).astype(jnp.dtype(self.config.dtype))
        return self.heads(k), self.heads(self.to_v(ctx))

    def out(self, o):
        return self.to_out(o.reshape(*o.shape[:-2], self.config.dim))


# 4. Block ----------------------------------------------------------------------------------------
class Block(StoredParams, nn.Module):
    """One Wan block: modulated self-attention, cross-attention to the frame's instruction, modulated FFN.

    Called under nn.scan over layers: (hidden, memory_kv_of_this_layer) -> (hidden, (kv_out, xattn_map)).
    hidden [B, F*N, D]; ctx holds per-call constants (broadcast across layers).
    """

    config: DiTConfig
    layout: FrameLayout
    tokens_per_frame: int
    text_index: tuple[int, ...]  # turn whose instruction each frame reads
    return_kv: bool = False

    @nn.compact
    def __call__(self, hidden, ctx, mem):
        c, dt = self.config, jnp.dtype(self.config.dtype)
        b, t, d = hidden.shape
        f, n = self.layout.num_frames, self.tokens_per_frame
        table = self.param("scale_shift_table",
                           nn.with_logical_partitioning(lambda k, s: jax.random.normal(k, s) / c.dim ** 0.5,
                                                        ("modulation", "embed")), (6, c.dim))
        mod = table[None, None] + ctx["mod"]  # [B, F, 6, D] fp32
        shift, scale, gate, c_shift, c_scale, c_gate = [mod[:, :, i, None, :] for i in range(6)]
        per_frame = lambda x: x.reshape(b, f, n, d)  # noqa: E731  (modulation is per frame)

        # 1. Self-attention (block-causal per layout, plus the memory if given).
        attn1 = Attention(c, name="attn1")
        x = per_frame(_layer_norm(c.eps, name="norm1")(hidden)) * (1 + scale) + shift
        x = x.reshape(b, t, d).astype(dt)
        q, (k, v) = attn1.query(x), attn1.key_value(x)
        kv_out = (k.reshape(b, f, n, *k.shape[2:]), v.reshape(b, f, n, *v.shape[2:])) if self.return_kv else None
        cos, sin = ctx["rope"]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        extra = {}
        if mem is not None:
            mk, mv = mem  # [B, S, N, H, hd] each, stored without RoPE
            s = mk.shape[1]
            mk = apply_rope(mk.reshape(b, s * n, *mk.shape[3:]).astype(dt), *ctx["mem_rope"])
            extra = dict(extra_k=mk, extra_v=mv.reshape(b, s * n, *mv.shape[3:]).astype(dt),
                         extra_lengths=ctx["mem_lengths"], extra_bias=ctx.get("mem_bias"))
        o = frame_attention(q, k, v, self.layout, n, backend=c.attention_backend,
                            strategy=c.attention_strategy, **extra)
        o = attn1.out(o)
        hidden = (per_frame(hidden.astype(jnp.float32)) + per_frame(o) * gate).reshape(b, t, d).astype(dt)
        hidden = nn.with_logical_constraint(hidden, ("activation_batch", "activation_length", "activation_embed"))

        # 2. Cross-attention: frame f reads only its own turn's instruction.
        attn2 = Attention(c, name="attn2")
        x = _layer_norm(c.eps, affine=True, name="norm2")(hidden) if c.cross_attn_norm else hidden
        q = attn2.query(x.astype(dt))
        kt, vt = attn2.key_value(ctx["text"])  # per turn [B, K, L, H, hd], then gathered per frame
        idx = np.asarray(self.text_index)
        kt, vt, lengths = kt[:, idx], vt[:, idx], ctx["text_lengths"][:, idx]  # [B, F, L, H, hd], [B, F]
        q_f, kt_f = q.reshape(b * f, n, *q.shape[2:]), kt.reshape(b * f, *kt.shape[2:])
        o = dot_product_attention(q_f, kt_f, vt.reshape(b * f, *vt.shape[2:]), kv_lengths=lengths.reshape(b * f),
                                  backend=c.attention_backend)
        xattn_map = None
        if "xattn_probe" in ctx:  # explicit probabilities beside the (possibly fused) call: [B*F, H, N, L]
            probs = attention_weights(q_f, kt_f, kv_lengths=lengths.reshape(b * f))
            tokens = ctx["xattn_probe"].reshape(b * f, -1).astype(jnp.float32)
            xattn_map = jnp.einsum("bhql,bl->bq", probs, tokens).reshape(b, f, n) / c.num_heads
        o = o.reshape(b, t, *o.shape[2:])
        if "xattn_scale" in ctx:  # (softmax * M) V == M (softmax V) for a per-query M
            o = o * ctx["xattn_scale"].reshape(b, t)[:, :, None, None].astype(o.dtype)
        hidden = hidden + attn2.out(o).astype(dt)

        # 3. Feed-forward (GELU tanh), modulated and gated.
        x = per_frame(_layer_norm(c.eps, name="norm3")(hidden)) * (1 + c_scale) + c_shift
        y = _dense(c.ffn_dim, ("embed", "mlp"), "ffn_in", dt)(x.reshape(b, t, d).astype(dt))
        y = _dense(c.dim, ("mlp", "embed"), "ffn_out", dt)(nn.gelu(y, approximate=True))
        hidden = (per_frame(hidden.astype(jnp.float32)) + per_frame(y.astype(jnp.float32)) * c_gate)
        hidden = hidden.reshape(b, t, d).astype(dt)
        return hidden, (kv_out, xattn_map)


# 5. Model ----------------------------------------------------------------------------------------
class WanDiT(StoredParams, nn.Module):
    """The causal DiT. See the module docstring for modes and shapes."""

    config: DiTConfig

    @nn.compact
    def __call__(self, latents, timesteps, text, text_mask, positions, *, mode: str = "block_causal",
                 clean=None, memory=None, return_kv: bool = False, xattn_scale=None, xattn_probe=None):
        """Velocity for every frame of `latents`.

        Args:
          latents: [B, K, h, w, C] noisy latents (channels last).
          timesteps: [B, K] in [0, 1].
          text: [B, K, L, Dt] instruction embeddings; text_mask: [B, K, L] (valid tokens are a prefix).
          positions: [B, K] integer turn positions of the frames.
          mode: one of MODES.
          clean: teacher_forcing only: [B, K, h, w, C] clean frames at t=0 (same positions and text).
          memory: memory mode only: dict k, v [L, B, S, N, H, hd] (no RoPE), positions [B, S],
            valid [B, S] (valid slots first), optionally bias [B, S] or [B, S, N]: added to the
            self-attention logits of each slot's (or token's) keys (memory.read's anchor weight).
          return_kv: also return {"k", "v"}: [L, B, K, N, H, hd] of the frames in `latents`.
          xattn_scale: optional [B, K, N] per-token scale of the cross-attention probabilities.
          xattn_probe: optional [B, K, L] token weights: also return {"xattn_maps": [L, B, K, N]}.
          (N = tokens per frame; neither in teacher_forcing mode.)
        Returns: velocity [B, K, h, w, C_out]; with return_kv or xattn_probe also a dict of the extras.
        """
        c = self.config
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if (mode == "teacher_forcing") != (clean is not None):
            raise ValueError("`clean` frames are given exactly in mode 'teacher_forcing'")
        if (mode == "memory") != (memory is not None):
            raise ValueError("`memory` is given exactly in mode 'memory'")
        b, k_turns, h, w, ch = latents.shape
        chex.assert_shape(timesteps, (b, k_turns))
        chex.assert_shape(text, (b, k_turns, None, c.text_dim))
        chex.assert_shape(text_mask, text.shape[:3])
        chex.assert_shape(positions, (b, k_turns))
        if ch != c.in_channels:
            raise ValueError(f"latents have {ch} channels, the model expects {c.in_channels}")
        ph, pw = c.patch_size[1:]
        if h % ph or w % pw:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch {ph}x{pw}")
        hp, wp = h // ph, w // pw
        n = hp * wp
        dt = jnp.dtype(c.dtype)
        if mode == "teacher_forcing" and (xattn_scale is not None or xattn_probe is not None):
            raise ValueError("xattn_scale / xattn_probe are for generation modes, not 'teacher_forcing'")
        if xattn_scale is not None:
            chex.assert_shape(xattn_scale, (b, k_turns, n))
        if xattn_probe is not None:
            chex.assert_shape(xattn_probe, text_mask.shape)

        # Frames in attention order: teacher forcing runs [clean 0..K-1, noisy 0..K-1] in one pass.
        frames, t_f, pos_f, text_index = latents, timesteps, positions, tuple(range(k_turns))
        layout = {"bidirectional": FrameLayout.full, "block_causal": FrameLayout.block_causal,
                  "memory": FrameLayout.block_causal, "teacher_forcing": FrameLayout.teacher_forcing}[mode]
        layout = layout(k_turns)
        if mode == "teacher_forcing":
            chex.assert_equal_shape([clean, latents])
            frames = jnp.concatenate([clean, latents], axis=1)
            t_f = jnp.concatenate([jnp.zeros_like(timesteps), timesteps], axis=1)
            pos_f = jnp.concatenate([positions, positions], axis=1)
            text_index = text_index * 2
        f = layout.num_frames

        # 1. Patch embedding: [B, F, h, w, C] -> [B, F*N, D].
        x = einops.rearrange(frames, "b f (h p1) (w p2) c -> b (f h w) (p1 p2 c)", p1=ph, p2=pw)
        x = _dense(c.dim, ("patch", "embed"), "patch_embedding", dt)(x.astype(dt))
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))

        # 2. Conditions: per-frame time modulation, per-turn text.
        temb, mod, text_ctx = ConditionEmbedder(c, name="condition_embedder")(t_f, text.astype(dt))
        ctx = dict(mod=mod, text=text_ctx, text_lengths=text_mask.astype(jnp.int32).sum(-1),
                   rope=rope_cos_sin(c, pos_f, hp, wp))
        if xattn_scale is not None:
            ctx["xattn_scale"] = xattn_scale
        if xattn_probe is not None:
            ctx["xattn_probe"] = xattn_probe
        mem = None
        if memory is not None:
            chex.assert_rank(memory["k"], 6)
            if memory["k"].shape[3] != n:
                raise ValueError(f"memory holds {memory['k'].shape[3]} tokens per frame, the frames have {n}")
            ctx["mem_rope"] = rope_cos_sin(c, memory["positions"], hp, wp)
            ctx["mem_lengths"] = memory["valid"].astype(jnp.int32).sum(-1) * n
            if "bias" in memory:  # [B, S] per slot or [B, S, N] per token -> [B, S * N] per key
                bias = memory["bias"].astype(jnp.float32)
                s = memory["k"].shape[2]
                if bias.ndim == 2:
                    chex.assert_shape(bias, (b, s))
                    ctx["mem_bias"] = jnp.repeat(bias, n, axis=-1)
                else:
                    chex.assert_shape(bias, (b, s, n))
                    ctx["mem_bias"] = bias.reshape(b, s * n)
            mem = (memory["k"], memory["v"])

        # 3. Blocks, scanned over layers (stacked params, one compiled block).
        block = Block
        if c.remat_policy != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[c.remat_policy], prevent_cse=False)
        blocks = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(nn.broadcast, 0), length=c.num_layers,
                         metadata_params={nn.PARTITION_NAME: "layers"})
        x, (kv, xattn_maps) = blocks(c, layout, n, text_index, return_kv, name="blocks")(x, ctx, mem)

        # 4. Output norm (modulated per frame), projection, unpatchify.
        table = self.param("scale_shift_table",
                           nn.with_logical_partitioning(lambda k, s: jax.random.normal(k, s) / c.dim ** 0.5,
                                                        ("modulation", "embed")), (2, c.dim))
        shift, scale = [(table[None, None, i] + temb)[:, :, None, :] for i in range(2)]  # [B, F, 1, D]
        x = _layer_norm(c.eps, name="norm_out")(x).reshape(b, f, n, c.dim) * (1 + scale) + shift
        x = _dense(ph * pw * c.out_channels, ("embed", "patch"), "proj_out", dt,
                   kernel_init=nn.initializers.zeros)(x.astype(dt))
        v = einops.rearrange(x, "b f (h w) (p1 p2 c) -> b f (h p1) (w p2) c", h=hp, p1=ph, p2=pw)
        v = v[:, f - k_turns:].astype(jnp.float32)  # teacher forcing: velocity of the noisy frames only
        if not return_kv and xattn_probe is None:
            return v
        aux = {}
        if return_kv:
            kk, vv = kv  # [L, B, F, N, H, hd]
            aux.update(k=kk[:, :, f - k_turns:], v=vv[:, :, f - k_turns:])
        if xattn_probe is not None:
            aux["xattn_maps"] = xattn_maps  # [L, B, K, N]
        return v, aux


def init_params(config: DiTConfig, rng, *, latent_hw=(4, 4), text_len=4):
    """Initialises params (fp32, boxed with logical axis names) with dummy one-frame inputs; shapes do
    not depend on them. Jitted (cached per config): run op by op, XLA compiles every initialiser's
    primitives one at a time: ~8 s for a 2-block model on a CPU against ~3 s. The values are
    those of the jitted initialisation training does (train.py)."""
    return _init_fn(config, tuple(latent_hw), text_len)(rng)


@functools.lru_cache(maxsize=32)
def _init_fn(config: DiTConfig, latent_hw: tuple[int, int], text_len: int):
    model = WanDiT(config)
    h, w = latent_hw

    def init(rng):
        args = (jnp.zeros((1, 1, h, w, config.in_channels)), jnp.zeros((1, 1)),
                jnp.zeros((1, 1, text_len, config.text_dim)), jnp.ones((1, 1, text_len), bool),
                jnp.zeros((1, 1), jnp.int32))
        return model.init(rng, *args)["params"]

    return jax.jit(init)


def abstract_params(config: DiTConfig):
    """Param shapes without allocating (jax.eval_shape), boxed with logical axis names."""
    model = WanDiT(config)
    args = (jax.ShapeDtypeStruct((1, 1, 4, 4, config.in_channels), jnp.float32),
            jax.ShapeDtypeStruct((1, 1), jnp.float32), jax.ShapeDtypeStruct((1, 1, 4, config.text_dim), jnp.float32),
            jax.ShapeDtypeStruct((1, 1, 4), jnp.bool_), jax.ShapeDtypeStruct((1, 1), jnp.int32))
    return jax.eval_shape(lambda r, *a: model.init(r, *a), jax.random.key(0), *args)["params"]
