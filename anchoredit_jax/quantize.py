"""int8 copies of weights for transfer-limited machines (the lent GPU: 64 MiB with the whole tree).

Each run of `group` consecutive values along a tensor's last axis shares one float16 scale (its
largest magnitude / 127), so the error of a value is at most half a step of its own group's scale:
about 0.5% of a Gaussian tensor's standard deviation for groups of 64. A flat {name: array} dict is
stored with `name.int8` + `name.scale` for the tensors that are quantised and `name` for the rest
(safetensors-friendly); `expand` turns either kind back into float32 arrays. The compact MiniLM
(text_encoder.compact_state_dict) and the kit's stage-1 weights (launch/gpu_kit.py) use this.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

INT8, SCALE = ".int8", ".scale"


def int8_groups(x: np.ndarray, group: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """x [..., n] (n % group == 0) -> (int8 [..., n], float16 scales [..., n / group])."""
    x = np.asarray(x, np.float32)
    if x.ndim == 0 or x.shape[-1] % group:
        raise ValueError(f"last axis of {x.shape} is not a multiple of the group size {group}")
    g = x.reshape(x.shape[:-1] + (-1, group))
    scale = (np.maximum(np.abs(g).max(axis=-1, keepdims=True), 1e-12) / 127.0).astype(np.float16)
    q = np.round(g / scale.astype(np.float32)).astype(np.int8)
    return q.reshape(x.shape), scale[..., 0]


def from_int8_groups(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of int8_groups, as float32."""
    s = np.asarray(scale, np.float32)
    return (q.reshape(s.shape + (-1,)).astype(np.float32) * s[..., None]).reshape(q.shape)


def compact(flat: Mapping[str, np.ndarray], group: int = 64, min_size: int = 0,
            rest_dtype=np.float32) -> dict[str, np.ndarray]:
    """{name: array} -> compact dict: int8 for tensors of two or more axes, the last a multiple of
    `group`, and at least `min_size` values; the rest stored as `rest_dtype`."""
    out = {}
    for k, v in flat.items():
        v = np.asarray(v, np.float32)
        if v.ndim >= 2 and v.shape[-1] % group == 0 and v.size >= min_size:
            out[k + INT8], out[k + SCALE] = int8_groups(v, group)
        else:
            out[k] = v.astype(rest_dtype)
    return out


def expand(compacted: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A compact dict back to float32 arrays; other entries are returned as they are."""
    out = {}
    for k, v in compacted.items():
        if k.endswith(INT8):
            base = k.removesuffix(INT8)
            out[base] = from_int8_groups(v, compacted[base + SCALE])
        elif not k.endswith(SCALE):
            out[k] = v
    return out
