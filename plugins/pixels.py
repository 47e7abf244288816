"""How decoded pixels become the byte stream the model sees, shared by every image format.

Patch flattening puts each pixel's upper and left neighbours a few dozen bytes back, well inside the
model's context, which a plain raster scan of a wide image would not. The layout was chosen by
measurement (`benchmarks/stream_choices.py`, table in docs/benchmarks.md).

A format stores the returned `layout` in its recipe; a recipe without one means the first layout
(16x16 patches, no transform), so archives written before a layout change keep decoding.
"""

from __future__ import annotations

import numpy as np

PATCH = 16


def patch_flatten(pix: np.ndarray, patch: int = PATCH) -> bytes:
    """(H, W, C) uint8 -> bytes, patch by patch in raster order, pixels inside each patch in raster order."""
    h, w, _ = pix.shape
    parts = [pix[y : y + patch, x : x + patch].tobytes() for y in range(0, h, patch) for x in range(0, w, patch)]
    return b"".join(parts)


def patch_unflatten(data: bytes, shape: tuple[int, int, int], patch: int = PATCH) -> np.ndarray:
    h, w, c = shape
    if len(data) != h * w * c:
        raise ValueError("pixel stream has the wrong length")
    pix = np.empty(shape, dtype=np.uint8)
    flat = np.frombuffer(data, dtype=np.uint8)
    pos = 0
    for y in range(0, h, patch):
        for x in range(0, w, patch):
            ph, pw = min(patch, h - y), min(patch, w - x)
            n = ph * pw * c
            pix[y : y + ph, x : x + pw] = flat[pos : pos + n].reshape(ph, pw, c)
            pos += n
    return pix


def to_stream(pix: np.ndarray) -> tuple[bytes, dict]:
    """(H, W, C) uint8 pixels -> (image stream, layout for the recipe)."""
    return patch_flatten(pix), {"patch": PATCH}


def from_stream(data: bytes, shape: tuple[int, int, int] | list[int], layout: dict | None) -> np.ndarray:
    """Inverse of to_stream for a recipe's shape and layout."""
    layout = layout or {"patch": PATCH}
    return patch_unflatten(data, tuple(shape), layout["patch"])
