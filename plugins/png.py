"""PNG: pixels to the image stream, every other chunk verbatim, the IDAT zlib stream rebuilt exactly.

On extraction the pixels are re-filtered with the file's own per-row filter types and re-compressed
with zlib settings found by search (window and level hinted by the zlib header). A PNG whose deflate
stream no zlib setting reproduces (optimizers such as zopfli write those) is left to other formats:
the core then codes its bytes.

Bit depths: 8-bit images are decoded by Pillow (fast); 16-bit and 1/2/4-bit ones are unfiltered
here, because Pillow has no 16-bit RGB mode. 16-bit samples stay as their two bytes (high byte
first, as stored), so a pixel is 2 x channels bytes; sub-byte pixels are unpacked to one byte each.
Interlaced (Adam7) PNGs are not handled and fall back.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

from archiver.formats import Split, Stream
from archiver.hookspecs import hookimpl

from . import pixels

PNG_SIG = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
PIL_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}


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


def png_unfilter(rows: np.ndarray, types: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG filtering: (H, rowbytes) filtered rows -> raw rows. Sub/up are vectorised; average
    and Paeth depend on the byte just decoded, so those rows run byte by byte (slow, but only used
    for the depths Pillow cannot give us)."""
    h, n = rows.shape
    out = np.zeros((h, n), dtype=np.uint8)
    prev = np.zeros(n, dtype=np.int64)
    for y in range(h):
        cur, t = rows[y].astype(np.int64), int(types[y])
        if t == 0:
            r = cur
        elif t == 2:
            r = (cur + prev) & 0xFF
        elif t == 1 and n % bpp == 0:
            r = np.cumsum(cur.reshape(-1, bpp), axis=0).reshape(-1) & 0xFF
        else:
            c, p, o = cur.tolist(), prev.tolist(), [0] * n
            for i in range(n):
                a = o[i - bpp] if i >= bpp else 0
                if t == 1:
                    o[i] = (c[i] + a) & 0xFF
                elif t == 3:
                    o[i] = (c[i] + ((a + p[i]) >> 1)) & 0xFF
                else:
                    b, ul = p[i], p[i - bpp] if i >= bpp else 0
                    est = a + b - ul
                    pa, pb, pc = abs(est - a), abs(est - b), abs(est - ul)
                    o[i] = (c[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else ul)) & 0xFF
            r = np.array(o, dtype=np.int64)
        out[y] = r
        prev = r
    return out


def unpack_bits(raw: np.ndarray, width: int, depth: int) -> np.ndarray:
    """(H, rowbytes) packed rows of `depth`-bit samples -> (H, width) uint8 sample values."""
    bits = np.unpackbits(raw, axis=1).reshape(raw.shape[0], -1, depth)
    weights = (1 << np.arange(depth - 1, -1, -1)).astype(np.uint8)
    return (bits * weights).sum(axis=2, dtype=np.uint8)[:, :width]


def pack_bits(values: np.ndarray, rowbytes: int, depth: int) -> np.ndarray:
    """Inverse of unpack_bits; row padding bits are zero (files with other padding fall back)."""
    h, w = values.shape
    bits = np.zeros((h, rowbytes * 8 // depth, depth), dtype=np.uint8)
    bits[:, :w] = (values[:, :, None] >> np.arange(depth - 1, -1, -1).astype(np.uint8)) & 1
    return np.packbits(bits.reshape(h, -1), axis=1)


ZLIB_STRATEGIES = (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE)
FLEVEL_LEVELS = {0: (1, 0), 1: (5, 4, 3, 2), 2: (6,), 3: (9, 8, 7)}
PROBE = 1 << 16


def _zlib_matches(raw: bytes, target: bytes, params: tuple[int, int, int, int]) -> bool:
    """Compress piece by piece and stop at the first byte that differs: most misses cost little."""
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


def _geometry(w: int, depth: int, chans: int) -> tuple[int, int]:
    """(bytes per pixel for filtering, bytes per row) as the PNG spec defines them."""
    bits = depth * chans
    return max(1, bits // 8), (w * bits + 7) // 8


class Png:
    name = "png"
    version = "2"
    priority = 40
    description = "PNG (1/2/4/8/16-bit gray, RGB, RGBA, palette; not interlaced) with exact IDAT rebuild"

    def detect(self, path: str, head: bytes) -> bool:
        return head.startswith(PNG_SIG)

    def split(self, data: bytes) -> Split:
        chunks = list(_chunks(data))
        w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][3])
        if interlace or depth not in PNG_DEPTHS.get(ctype, ()):
            raise ValueError("unsupported PNG layout")
        idat = [c for c in chunks if c[2] == b"IDAT"]
        first, last = chunks.index(idat[0]), chunks.index(idat[-1])
        if last - first + 1 != len(idat):
            raise ValueError("IDAT chunks are not consecutive")
        zdata = b"".join(c[3] for c in idat)
        filtered = zlib.decompress(zdata)
        chans = PNG_CHANNELS[ctype]
        bpp, rowbytes = _geometry(w, depth, chans)
        if len(filtered) != h * (rowbytes + 1):
            raise ValueError("unexpected IDAT size")
        rows = np.frombuffer(filtered, dtype=np.uint8).reshape(h, rowbytes + 1)
        types = rows[:, 0].copy()
        if types.max(initial=0) > 4:
            raise ValueError("bad filter type")
        if depth == 8:
            pix = self._pillow_pixels(data, ctype, (h, w, chans))
        else:
            raw = png_unfilter(rows[:, 1:], types, bpp)
            pix = raw.reshape(h, w, chans * 2) if depth == 16 else unpack_bits(raw, w, depth)[:, :, None]
        if not np.array_equal(png_filter(self._raw_rows(pix, depth, rowbytes), types, bpp), rows[:, 1:]):
            raise ValueError("pixels do not re-filter to the stored rows")
        params = find_zlib_params(filtered, zdata)
        if params is None:
            raise ValueError("no zlib setting reproduces the IDAT stream")
        a, b = idat[0][0], idat[-1][1]
        stream, layout = pixels.to_stream(pix)
        recipe = {
            "shape": list(pix.shape),
            "depth": depth,
            "rowbytes": rowbytes,
            "bpp": bpp,
            "layout": layout,
            "filters": types.tobytes().hex(),
            "zlib": list(params),
            "idat_sizes": [len(c[3]) for c in idat],
            "idat_at": a,
        }
        return Split([Stream("binary", data[:a] + data[b:]), stream], recipe)

    @staticmethod
    def _pillow_pixels(data: bytes, ctype: int, shape: tuple[int, int, int]) -> np.ndarray:
        from PIL import Image

        im = Image.open(io.BytesIO(data))
        if im.mode != PIL_MODES[ctype]:
            raise ValueError(f"Pillow mode {im.mode} is not the file's layout")
        return np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(shape)

    @staticmethod
    def _raw_rows(pix: np.ndarray, depth: int, rowbytes: int) -> np.ndarray:
        """Pixels (as the stream holds them) -> unfiltered PNG rows."""
        h = pix.shape[0]
        return pix.reshape(h, -1) if depth >= 8 else pack_bits(pix[:, :, 0], rowbytes, depth)

    def join(self, streams: list[bytes], recipe: dict) -> bytes:
        other, stream = streams
        pix = pixels.from_stream(stream, recipe["shape"], recipe.get("layout"))
        depth = recipe.get("depth", 8)
        rowbytes = recipe.get("rowbytes", pix.shape[1] * pix.shape[2])
        types = np.frombuffer(bytes.fromhex(recipe["filters"]), dtype=np.uint8)
        rows = png_filter(self._raw_rows(pix, depth, rowbytes), types, recipe.get("bpp", pix.shape[2]))
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


@hookimpl
def register_formats(register):
    register(Png())
