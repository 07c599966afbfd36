"""Host-side image transforms on uint8/float32 NCHW batches: normalisation, crop + flip augmentation, bilinear resize."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [B, C, H, W] -> float32 (x / 255 - mean) / std per channel (ToTensor + Normalize)."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    if images.shape[1] != m.shape[1]:
        raise ValueError(f"images have {images.shape[1]} channels but the normalisation has {m.shape[1]}")
    return (images.astype(np.float32) / np.float32(255.0) - m) / s


def random_crop_flip(images: np.ndarray, gen: np.random.Generator, padding: int = 4) -> np.ndarray:
    """RandomCrop(size, padding) with zero fill, then RandomHorizontalFlip(0.5), per image."""
    b, c, h, w = images.shape
    padded = np.zeros((b, c, h + 2 * padding, w + 2 * padding), dtype=images.dtype)
    padded[:, :, padding:padding + h, padding:padding + w] = images
    tops = gen.integers(0, 2 * padding + 1, size=b)
    lefts = gen.integers(0, 2 * padding + 1, size=b)
    flips = gen.random(b) < 0.5
    out = np.empty_like(images)
    for i in range(b):
        crop = padded[i, :, tops[i]:tops[i] + h, lefts[i]:lefts[i] + w]
        out[i] = crop[:, :, ::-1] if flips[i] else crop
    return out


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 and weight of i1 for half-pixel bilinear sampling (align_corners=False)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """float32 [B, C, H, W] -> [B, C, size, size], bilinear with half-pixel centres (torch's align_corners=False)."""
    b, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    r0, r1, rw = _axis_weights(h, size)
    c0, c1, cw = _axis_weights(w, size)
    x = images.astype(np.float32, copy=False)
    rows = x[:, :, r0, :] * (1 - rw)[:, None] + x[:, :, r1, :] * rw[:, None]
    return rows[:, :, :, c0] * (1 - cw) + rows[:, :, :, c1] * cw
