"""The pixel convention shared by data, training, editing and evaluation: uint8 <-> float in [-1, 1]."""
import numpy as np


def to_float(images_u8):
    """uint8 [..., H, W, 3] -> float32 in [-1, 1] (numpy or jax arrays alike)."""
    return images_u8.astype(np.float32) / 127.5 - 1.0


def to_uint8(images) -> np.ndarray:
    """float in [-1, 1] -> uint8 numpy array (clipped, rounded)."""
    return np.asarray(np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255).round(), np.uint8)
