"""Images: decoded pixels as a patch-flattened byte stream, everything else kept verbatim.

PNG: non-pixel chunks are kept byte for byte; the IDAT zlib stream is rebuilt on extraction by
re-filtering the pixels with the file's own per-row filter types and re-compressing with zlib
settings found by search (window and level hinted by the zlib header). A PNG whose deflate stream
no zlib setting reproduces is left to other formats (the core then codes its bytes).
PPM/PGM/PBM (binary) and uncompressed BMP: the pixel region is reordered, headers kept verbatim.

Patch flattening puts each pixel's upper and left neighbours a few dozen bytes back, well inside the
model's context, which a plain raster scan of a wide image would not.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np

from archiver.formats import Split, Stream
from archiver.hookspecs import hookimpl

PATCH = 16
PNG_SIG = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
PIL_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}


def patch_flatten(pix: np.ndarray, patch: int = PATCH) -> bytes:
    """(H, W, C) uint8 -> bytes, patch by patch in raster order, pixels inside each patch in raster order."""
    h, w, _ = pix.shape
    parts = [
        pix[y : y + patch, x : x + patch].tobytes() for y in range(0, h, patch) for x in range(0, w, patch)
    ]
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


# ---- PNG ---------------------------------------------------------------------------------------
def _chunks(data: bytes):
    pos = 8
    while pos + 12 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + n
        if end > len(data):
            raise ValueError("truncated PNG chunk")
        yield pos, end, ctype, data[pos + 8 : pos + 8 + n]
        pos = end
        if ctype == b"IEND":
            break


def png_filter(raw: np.ndarray, types: np.ndarray, bpp: int) -> np.ndarray:
    """Apply PNG filter types (one per row) to raw rows (H, rowbytes); returns filtered rows."""
    r = raw.astype(np.int16)
    left = np.zeros_like(r)
    left[:, bpp:] = r[:, :-bpp]
    up = np.zeros_like(r)
    up[1:] = r[:-1]
    ul = np.zeros_like(r)
    ul[1:, bpp:] = r[:-1, :-bpp]
    p = left + up - ul
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - ul)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
    preds = [np.zeros_like(r), left, up, (left + up) // 2, paeth]
    pred = np.choose(types[:, None].astype(np.int64), preds)
    return ((r - pred) & 0xFF).astype(np.uint8)


ZLIB_STRATEGIES = (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE)
FLEVEL_LEVELS = {0: (1, 0), 1: (5, 4, 3, 2), 2: (6,), 3: (9, 8, 7)}
PROBE = 1 << 16


def _zlib_matches(raw: bytes, target: bytes, params: tuple[int, int, int, int]) -> bool:
    level, mem, strategy, wbits = params
    c = zlib.compressobj(level, zlib.DEFLATED, wbits, mem, strategy)
    out = 0
    for i in range(0, len(raw), PROBE):
        piece = c.compress(raw[i : i + PROBE])
        if piece != target[out : out + len(piece)]:
            return False
        out += len(piece)
    piece = c.flush()
    return piece == target[out:] and out + len(piece) == len(target)


def find_zlib_params(raw: bytes, target: bytes) -> tuple[int, int, int, int] | None:
    """zlib settings that reproduce target from raw exactly, or None."""
    if len(target) < 2:
        return None
    wbits = (target[0] >> 4) + 8
    levels = FLEVEL_LEVELS[target[1] >> 6]
    for strategy in ZLIB_STRATEGIES:
        for mem in (8, 9, 7, 6, 5, 4, 3, 2, 1):
            for level in levels:
                params = (level, mem, strategy, wbits)
                if _zlib_matches(raw, target, params):
                    return params
    return None


class Png:
    name = "png"
    version = "1"
    priority = 40
    description = "PNG (8-bit gray/RGB/RGBA/palette, not interlaced) with exact IDAT rebuild"

    def detect(self, path: str, head: bytes) -> bool:
        return head.startswith(PNG_SIG)

    def split(self, data: bytes) -> Split:
        from PIL import Image

        chunks = list(_chunks(data))
        ihdr = chunks[0][3]
        w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
        if depth != 8 or interlace or ctype not in PNG_CHANNELS:
            raise ValueError("unsupported PNG layout")
        idat = [c for c in chunks if c[2] == b"IDAT"]
        first, last = chunks.index(idat[0]), chunks.index(idat[-1])
        if last - first + 1 != len(idat):
            raise ValueError("IDAT chunks are not consecutive")
        zdata = b"".join(c[3] for c in idat)
        filtered = zlib.decompress(zdata)
        chans = PNG_CHANNELS[ctype]
        rowbytes = w * chans
        if len(filtered) != h * (rowbytes + 1):
            raise ValueError("unexpected IDAT size")
        rows = np.frombuffer(filtered, dtype=np.uint8).reshape(h, rowbytes + 1)
        types = rows[:, 0].copy()
        if types.max(initial=0) > 4:
            raise ValueError("bad filter type")
        im = Image.open(io.BytesIO(data))
        if im.mode != PIL_MODES[ctype]:
            raise ValueError(f"Pillow mode {im.mode} is not the file's layout")
        pix = np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(h, w, chans)
        if not np.array_equal(png_filter(pix.reshape(h, rowbytes), types, chans), rows[:, 1:]):
            raise ValueError("pixels do not re-filter to the stored rows")
        params = find_zlib_params(filtered, zdata)
        if params is None:
            raise ValueError("no zlib setting reproduces the IDAT stream")
        a, b = idat[0][0], idat[-1][1]
        recipe = {
            "shape": [h, w, chans],
            "filters": types.tobytes().hex(),
            "zlib": list(params),
            "idat_sizes": [len(c[3]) for c in idat],
            "idat_at": a,
        }
        return Split([Stream("binary", data[:a] + data[b:]), Stream("image", patch_flatten(pix))], recipe)

    def join(self, streams: list[bytes], recipe: dict) -> bytes:
        other, pixels = streams
        h, w, c = recipe["shape"]
        pix = patch_unflatten(pixels, (h, w, c))
        types = np.frombuffer(bytes.fromhex(recipe["filters"]), dtype=np.uint8)
        rows = png_filter(pix.reshape(h, w * c), types, c)
        filtered = np.concatenate([types[:, None], rows], axis=1).tobytes()
        level, mem, strategy, wbits = recipe["zlib"]
        co = zlib.compressobj(level, zlib.DEFLATED, wbits, mem, strategy)
        zdata = co.compress(filtered) + co.flush()
        out, pos = [], 0
        for n in recipe["idat_sizes"]:
            body = b"IDAT" + zdata[pos : pos + n]
            out.append(struct.pack(">I", n) + body + struct.pack(">I", zlib.crc32(body)))
            pos += n
        at = recipe["idat_at"]
        return other[:at] + b"".join(out) + other[at:]


# ---- PPM / PGM / PBM ---------------------------------------------------------------------------
PNM_HEADER = re.compile(rb"\A(P[456])(?:\s|#[^\n]*\n)+(\d+)(?:\s|#[^\n]*\n)+(\d+)(?:(?:\s|#[^\n]*\n)+(\d+))?\s")


class Pnm:
    name = "pnm"
    version = "1"
    priority = 40
    description = "binary PPM/PGM/PBM (8-bit), pixels patch-flattened"

    def detect(self, path: str, head: bytes) -> bool:
        return PNM_HEADER.match(head) is not None

    def split(self, data: bytes) -> Split:
        m = PNM_HEADER.match(data)
        magic, w, h = m.group(1), int(m.group(2)), int(m.group(3))
        if magic == b"P4":
            shape = [h, (w + 7) // 8, 1]  # packed bits, one byte column per 8 pixels
        else:
            if int(m.group(4) or 0) > 255:
                raise ValueError("16-bit PNM")
            shape = [h, w, 3 if magic == b"P6" else 1]
        start = m.end()
        end = start + shape[0] * shape[1] * shape[2]
        if end > len(data):
            raise ValueError("truncated PNM")
        pix = np.frombuffer(data[start:end], dtype=np.uint8).reshape(shape)
        return Split(
            [Stream("binary", data[:start] + data[end:]), Stream("image", patch_flatten(pix))],
            {"shape": shape, "at": start},
        )

    def join(self, streams: list[bytes], recipe: dict) -> bytes:
        other, pixels = streams
        pix = patch_unflatten(pixels, tuple(recipe["shape"]))
        at = recipe["at"]
        return other[:at] + pix.tobytes() + other[at:]


# ---- BMP ---------------------------------------------------------------------------------------
class Bmp:
    name = "bmp"
    version = "1"
    priority = 40
    description = "uncompressed BMP (8/24/32-bit), rows top-down in RGB order, patch-flattened"

    def detect(self, path: str, head: bytes) -> bool:
        return head[:2] == b"BM" and len(head) >= 54

    def split(self, data: bytes) -> Split:
        off = struct.unpack("<I", data[10:14])[0]
        w, h, planes, bpp, comp = struct.unpack("<iiHHI", data[18:34])
        if comp != 0 or bpp not in (8, 24, 32) or w <= 0 or h == 0:
            raise ValueError("unsupported BMP")
        c = bpp // 8
        stride = (w * c + 3) & ~3
        rows = abs(h)
        end = off + stride * rows
        if end > len(data):
            raise ValueError("truncated BMP")
        px = np.frombuffer(data[off:end], dtype=np.uint8).reshape(rows, stride)[:, : w * c].reshape(rows, w, c)
        if h > 0:
            px = px[::-1]
        if c >= 3:
            px = px[:, :, [2, 1, 0] + list(range(3, c))]
        recipe = {"shape": [rows, w, c], "at": off, "stride": stride, "bottom_up": h > 0}
        return Split([Stream("binary", data[:off] + data[end:]), Stream("image", patch_flatten(px))], recipe)

    def join(self, streams: list[bytes], recipe: dict) -> bytes:
        other, pixels = streams
        rows, w, c = recipe["shape"]
        px = patch_unflatten(pixels, (rows, w, c))
        if c >= 3:
            px = px[:, :, [2, 1, 0] + list(range(3, c))]
        if recipe["bottom_up"]:
            px = px[::-1]
        buf = np.zeros((rows, recipe["stride"]), dtype=np.uint8)
        buf[:, : w * c] = px.reshape(rows, w * c)
        at = recipe["at"]
        return other[:at] + buf.tobytes() + other[at:]


@hookimpl
def register_formats(register):
    register(Png())
    register(Pnm())
    register(Bmp())
