"""Attention: one function picks the backend; block-causality from static frame layouts.

Every attention call in the DiT goes through `dot_product_attention`, which picks XLA or cuDNN by
a string (maxtext's `AttentionOp` idea, without the kernel zoo). Padding (text tokens, empty
memory slots) is expressed as per-row key lengths, never as a dense mask, because cuDNN takes
lengths natively and a dense mask halves its speed on H100.

Block-causal self-attention over frames (one latent frame per editing turn) is described by a
static `FrameLayout`. The default "loop" strategy issues one attention call per query frame over
the keys that frame may see (static slices, so no mask at all); the "dense" strategy builds one
boolean mask and makes one call. Both give the same numbers; "dense" is the readable reference
and the fast path for tiny CPU shapes, "loop" is what runs on GPUs (benchmarks/ measures both).

Layout: q/k/v are [B, T, H, D] (batch, tokens, heads, head_dim), as `jax.nn.dot_product_attention`.
"""
from __future__ import annotations

import collections
import dataclasses
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

BACKENDS = ("auto", "xla", "cudnn")
STRATEGIES = ("loop", "dense")


def resolve_backend(backend: str, dtype) -> str:
    """Maps "auto" to "cudnn" on GPUs for half precision, else "xla"; rejects bad combinations."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    platform = jax.default_backend()
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if backend == "auto":
        return "cudnn" if platform == "gpu" and half else "xla"
    if backend == "cudnn":
        if platform != "gpu":
            raise ValueError(f"attention backend 'cudnn' needs a GPU; this process runs on {platform!r}. "
                             "Use 'auto' or 'xla'.")
        if not half:
            raise ValueError(f"attention backend 'cudnn' needs bfloat16/float16 inputs, got {jnp.dtype(dtype)}; "
                             "set model.dtype='bfloat16' or use 'xla'.")
    return backend


def dot_product_attention(q, k, v, *, kv_lengths=None, mask=None, bias=None, backend: str = "auto"):
    """Scaled dot-product attention (scale 1/sqrt(D)).

    Args:
      q: [B, Tq, H, D]; k, v: [B, Tk, H, D].
      kv_lengths: optional [B] int32: only keys [0, kv_lengths[b]) are attended (padding at the end).
      mask: optional bool, broadcastable to [B, H, Tq, Tk] (True = attend). XLA backend only.
      bias: optional float, broadcastable to [B, H, Tq, Tk], added to the logits (the anchor weight).
      backend: "auto" | "xla" | "cudnn".
    Returns: [B, Tq, H, D] in q's dtype.
    """
    impl = resolve_backend(backend, q.dtype)
    if impl == "cudnn" and mask is not None:
        raise ValueError("the cudnn attention path takes key lengths, not a dense mask (it halves cuDNN's speed); "
                         "use attention_strategy='loop'")
    if kv_lengths is not None:
        kv_lengths = kv_lengths.astype(jnp.int32)
    if bias is not None:
        bias = bias.astype(q.dtype)
        if impl == "cudnn":
            bias = cudnn_bias(bias, q.shape[0], q.shape[1], k.shape[1])
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, key_value_seq_lengths=kv_lengths,
                                        implementation=impl)


def cudnn_bias(bias, batch: int, q_len: int, k_len: int):
    """A logit bias broadcastable to [B, H, Tq, Tk] -> [B or 1, 1, Tq, Tk]: cuDNN's fused attention takes
    a bias shared by the heads but not one broadcast over the query or key positions (it raises "Bias
    must have same seq length as QKV", jax-ml/jax#28974), so the memory's per-key bias [B, 1, 1, Tk]
    is spelled out over the queries."""
    bias = jnp.asarray(bias)
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    if bias.shape[0] not in (1, batch) or bias.shape[1] != 1:
        raise ValueError(f"the cudnn path takes a bias [B or 1, 1, Tq or 1, Tk or 1], got shape {bias.shape}")
    return jnp.broadcast_to(bias, (bias.shape[0], 1, q_len, k_len))


def cudnn_attention_calls(hlo_text: str) -> dict[str, int]:
    """cuDNN fused-attention custom calls in compiled HLO text (`jax.jit(f).lower(...).compile().as_text()`),
    counted by target, e.g. {"__cudnn$fmhaSoftmax": 24, "__cudnn$fmhaSoftmaxBackward": 24}. The check that
    a GPU step's attention really is cuDNN's: empty means XLA's ran (5-8x slower on an H100)."""
    return dict(collections.Counter(re.findall(r'custom_call_target="(__cudnn\$fmha[^"]*)"', hlo_text)))


def attention_weights(q, k, *, kv_lengths=None):
    """softmax(q k^T / sqrt(D)) computed explicitly in fp32 (XLA): [B, H, Tq, Tk].

    For inspecting attention (MCIE's cross-attention maps) only: fused kernels (cuDNN) never
    materialise the probabilities, so this is a separate, slower path run only when maps are asked
    for. q: [B, Tq, H, D]; k: [B, Tk, H, D]; kv_lengths: optional [B] (keys past it get weight 0).
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) / np.sqrt(q.shape[-1])
    if kv_lengths is not None:
        valid = jnp.arange(k.shape[1])[None, :] < kv_lengths.astype(jnp.int32)[:, None]  # [B, Tk]
        logits = jnp.where(valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1)


@dataclasses.dataclass(frozen=True)
class FrameLayout:
    """Which frames of a self-attention sequence see which (static, hashable).

    Frame f attends frame g iff g == f, or g is `visible` and order[g] < order[f]. With every frame
    visible this is block-causal attention (frame k sees frames <= k). Teacher forcing lays out
    [clean 0..K-1, noisy 0..K-1] with only clean frames visible, so noisy frame k sees clean
    frames < k and itself, and clean frame k sees clean frames <= k. `bidirectional` frames see
    every frame.
    """

    order: tuple[int, ...]
    visible: tuple[bool, ...]
    bidirectional: bool = False

    @staticmethod
    def block_causal(num_frames: int) -> "FrameLayout":
        return FrameLayout(tuple(range(num_frames)), (True,) * num_frames)

    @staticmethod
    def full(num_frames: int) -> "FrameLayout":
        return FrameLayout(tuple(range(num_frames)), (True,) * num_frames, bidirectional=True)

    @staticmethod
    def teacher_forcing(num_turns: int) -> "FrameLayout":
        order = tuple(range(num_turns)) * 2
        return FrameLayout(order, (True,) * num_turns + (False,) * num_turns)

    @property
    def num_frames(self) -> int:
        return len(self.order)

    def keys_of(self, f: int) -> tuple[int, ...]:
        """Frame indices that query frame f attends, ascending."""
        if self.bidirectional:
            return tuple(range(self.num_frames))
        return tuple(g for g in range(self.num_frames)
                     if g == f or (self.visible[g] and self.order[g] < self.order[f]))

    def dense_mask(self, tokens_per_frame: int) -> np.ndarray:
        """Boolean [F*N, F*N] mask (True = attend); the reference for the loop strategy."""
        frame_mask = np.zeros((self.num_frames, self.num_frames), bool)
        for f in range(self.num_frames):
            frame_mask[f, list(self.keys_of(f))] = True
        return np.kron(frame_mask, np.ones((tokens_per_frame, tokens_per_frame), bool))


def _runs(frames: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous runs [(start, stop)) of sorted frame indices, so keys are gathered as slices."""
    runs: list[tuple[int, int]] = []
    for g in frames:
        if runs and runs[-1][1] == g:
            runs[-1] = (runs[-1][0], g + 1)
        else:
            runs.append((g, g + 1))
    return runs


def _keys_bias(extra_bias, own: int):
    """Memory bias [B, M] -> logit bias [B, 1, 1, own + M] over (own keys, memory keys); None stays None."""
    if extra_bias is None:
        return None
    zeros = jnp.zeros((extra_bias.shape[0], own), extra_bias.dtype)
    return jnp.concatenate([zeros, extra_bias], -1)[:, None, None, :]


def frame_attention(q, k, v, layout: FrameLayout, tokens_per_frame: int, *, extra_k=None, extra_v=None,
                    extra_lengths=None, extra_bias=None, backend: str = "auto", strategy: str = "loop"):
    """Self-attention over F frames of N tokens each, following `layout`.

    Args:
      q, k, v: [B, F*N, H, D] (RoPE already applied to q and k).
      layout: static FrameLayout with F frames.
      tokens_per_frame: N.
      extra_k, extra_v: optional [B, M, H, D] keys/values every frame also sees (the anchor memory),
        valid on a prefix of length extra_lengths [B] (int32).
      extra_bias: optional [B, M] float added to the logits of the memory keys (0: as they are; log a
        weighs a key's softmax share by a before normalising: the anchor weight).
    Returns: [B, F*N, H, D].
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"attention strategy must be one of {STRATEGIES}, got {strategy!r}")
    n = tokens_per_frame
    b, t = q.shape[:2]
    if t != layout.num_frames * n:
        raise ValueError(f"frame_attention: {t} tokens is not {layout.num_frames} frames x {n} tokens")
    has_extra = extra_k is not None

    if layout.bidirectional and not has_extra:
        return dot_product_attention(q, k, v, backend=backend)

    if strategy == "dense":
        mask = jnp.asarray(layout.dense_mask(n))[None, None]  # [1, 1, T, T]
        if has_extra:
            m = extra_k.shape[1]
            extra_mask = (jnp.arange(m)[None, :] < extra_lengths[:, None])[:, None, None, :]  # [B, 1, 1, M]
            mask = jnp.concatenate([jnp.broadcast_to(mask, (b, 1, t, t)),
                                    jnp.broadcast_to(extra_mask, (b, 1, t, m))], axis=-1)
            k = jnp.concatenate([k, extra_k], axis=1)
            v = jnp.concatenate([v, extra_v], axis=1)
        return dot_product_attention(q, k, v, mask=mask, bias=_keys_bias(extra_bias, t), backend=backend)

    # "loop": one call per query frame over static key slices; own keys first, memory after, so
    # that validity is a per-row key length (what cuDNN takes natively).
    outs = []
    for f in range(layout.num_frames):
        runs = _runs(layout.keys_of(f))
        ks = [k[:, a * n:z * n] for a, z in runs]
        vs = [v[:, a * n:z * n] for a, z in runs]
        own = sum(z - a for a, z in runs) * n
        lengths, bias = None, None
        if has_extra:
            ks.append(extra_k)
            vs.append(extra_v)
            lengths, bias = own + extra_lengths, _keys_bias(extra_bias, own)
        kf = ks[0] if len(ks) == 1 else jnp.concatenate(ks, axis=1)
        vf = vs[0] if len(vs) == 1 else jnp.concatenate(vs, axis=1)
        outs.append(dot_product_attention(q[:, f * n:(f + 1) * n], kf, vf, kv_lengths=lengths, bias=bias,
                                          backend=backend))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
