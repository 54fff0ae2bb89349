"""The pixel conventions shared by data, training, editing and evaluation: uint8 <-> float in [-1, 1],
and a resolution (int or (H, W)) as (H, W)."""
import numpy as np


def to_float(images_u8):
    """uint8 [..., H, W, 3] -> float32 in [-1, 1] (numpy or jax arrays alike)."""
    return images_u8.astype(np.float32) / 127.5 - 1.0


def to_uint8(images) -> np.ndarray:
    """float in [-1, 1] -> uint8 numpy array (clipped, rounded)."""
    return np.asarray(np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255).round(), np.uint8)


def resolution_hw(resolution) -> tuple[int, int] | None:
    """64 -> (64, 64); (48, 64) -> (48, 64); None stays None (keep the size)."""
    if resolution is None:
        return None
    return (int(resolution), int(resolution)) if np.isscalar(resolution) else tuple(map(int, resolution))
