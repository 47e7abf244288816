"""How decoded pixels become the byte stream the model sees, shared by every image format.

Each sample is first replaced by its prediction residual (a reversible, per-channel predictor from
its decoded neighbours, as in lossless JPEG / PNG filters), then the residuals are written out in
raster order or patch by patch. Measured with `benchmarks/stream_choices.py` (table in
docs/benchmarks.md): MED beats the other predictors by far, and once MED has folded each pixel's
upper neighbour into its residual, plain raster rows beat 8/16/32-pixel patches, so raster it is
(`patch` 0). Patches only paid before the residual, when they kept the upper row in context.

A format stores the returned `layout` in its recipe; a recipe without one means the first layout
(16x16 patches, no transform), so archives written before a layout change keep decoding.
"""

from __future__ import annotations

import numpy as np

from archiver.formats import Stream

PATCH = 0  # 0: raster rows, no patches
PREDICTOR = "med"  # "none", "left", "up" or "med"


def patch_flatten(pix: np.ndarray, patch: int = PATCH) -> bytes:
    """(H, W, C) uint8 -> bytes, patch by patch in raster order, pixels inside each patch in raster order
    (patch 0: the whole image is one patch, i.e. plain raster rows)."""
    h, w, _ = pix.shape
    patch = patch or max(h, w, 1)
    parts = [pix[y : y + patch, x : x + patch].tobytes() for y in range(0, h, patch) for x in range(0, w, patch)]
    return b"".join(parts)


def patch_unflatten(data: bytes, shape: tuple[int, int, int], patch: int = PATCH) -> np.ndarray:
    h, w, c = shape
    if len(data) != h * w * c:
        raise ValueError("pixel stream has the wrong length")
    patch = patch or max(h, w, 1)
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


def _med(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """LOCO-I's median edge detector: min(a, b) above an edge, max(a, b) below one, else a + b - c."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return np.where(c >= hi, lo, np.where(c <= lo, hi, a + b - c))


def predict(pix: np.ndarray, mode: str) -> np.ndarray:
    """(H, W, C) uint8 -> residual mod 256 of each sample against its left ("left"), upper ("up") or
    left, upper and upper-left neighbours ("med"), per channel; samples outside the image count as 0."""
    if mode == "none":
        return pix
    p = np.zeros((pix.shape[0] + 1, pix.shape[1] + 1, pix.shape[2]), dtype=np.int16)
    p[1:, 1:] = pix
    a, b, c = p[1:, :-1], p[:-1, 1:], p[:-1, :-1]
    pred = {"left": a, "up": b}.get(mode)
    pred = _med(a, b, c) if pred is None else pred
    return ((p[1:, 1:] - pred) & 0xFF).astype(np.uint8)


def unpredict(res: np.ndarray, mode: str) -> np.ndarray:
    """Inverse of predict. "left" is a running sum along rows; "med" needs each sample's decoded
    left and upper neighbours, so it walks the anti-diagonals (all samples on one are independent)."""
    if mode == "none":
        return res
    if mode in ("left", "up"):
        return np.cumsum(res, axis=1 if mode == "left" else 0, dtype=np.uint8)
    h, w, ch = res.shape
    p = np.zeros((h + 1, w + 1, ch), dtype=np.int16)
    for k in range(h + w - 1):
        i = np.arange(max(0, k - w + 1), min(k, h - 1) + 1)
        j = k - i
        pred = _med(p[i + 1, j], p[i, j + 1], p[i, j])
        p[i + 1, j + 1] = (res[i, j] + pred) & 0xFF
    return p[1:, 1:].astype(np.uint8)


def to_stream(pix: np.ndarray) -> tuple[Stream, dict]:
    """(H, W, C) uint8 pixels -> (image stream with its row geometry, layout for the recipe)."""
    data = patch_flatten(predict(pix, PREDICTOR))
    geometry = (pix.shape[1] * pix.shape[2], pix.shape[2]) if PATCH == 0 else None
    return Stream("image", data, geometry), {"patch": PATCH, "predictor": PREDICTOR}


def from_stream(data: bytes, shape: tuple[int, int, int] | list[int], layout: dict | None) -> np.ndarray:
    """Inverse of to_stream for a recipe's shape and layout (no layout: 16x16 patches, no predictor)."""
    layout = layout or {"patch": 16}
    return unpredict(patch_unflatten(data, tuple(shape), layout["patch"]), layout.get("predictor", "none"))
