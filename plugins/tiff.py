"""Uncompressed TIFF (strips, chunky or single-channel, 1 to 16 bits): strip data to the image
stream, the header, IFDs and every other byte verbatim.

Only the first image's strips are taken out; further pages, EXIF and the rest stay where they are.
Compressed (LZW, deflate, JPEG...) or tiled TIFFs fall back to coding the file's bytes, since
re-compressing them byte-exactly is not worth it for a rare case.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from archiver.formats import Split, Stream
from archiver.hookspecs import hookimpl

from . import pixels

WIDTH, HEIGHT, BITS, COMPRESSION, STRIP_OFFSETS, SAMPLES, STRIP_COUNTS, PLANAR = 256, 257, 258, 259, 273, 277, 279, 284


class Tiff:
    name = "tiff"
    version = "1"
    priority = 40
    description = "uncompressed TIFF (strips, 1-16 bits per sample), pixels patch-flattened"

    def detect(self, path: str, head: bytes) -> bool:
        return head[:4] in (b"II*\x00", b"MM\x00*")

    def split(self, data: bytes) -> Split:
        from PIL import Image

        with warnings.catch_warnings():  # a malformed tag is our fallback's business, not the user's
            warnings.simplefilter("ignore")
            tags = Image.open(io.BytesIO(data)).tag_v2
        w, h, spp = int(tags[WIDTH]), int(tags[HEIGHT]), int(tags.get(SAMPLES, 1))
        bits = tags.get(BITS, (1,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        if tags.get(COMPRESSION, 1) != 1 or len(set(bits)) != 1 or (spp > 1 and tags.get(PLANAR, 1) != 1):
            raise ValueError("compressed, mixed-depth or planar TIFF")
        offsets, counts = list(tags[STRIP_OFFSETS]), list(tags[STRIP_COUNTS])
        b = int(bits[0])
        rowbytes = (w * spp * b + 7) // 8
        if len(offsets) != len(counts) or sum(counts) != h * rowbytes:
            raise ValueError("strips do not hold exactly the image")
        spans = sorted(zip(offsets, counts, strict=True))
        ends = [o + c for o, c in spans]
        if any(e > o for e, (o, _) in zip(ends, spans[1:], strict=False)) or ends[-1] > len(data):
            raise ValueError("overlapping or truncated strips")
        raw = b"".join(data[o : o + c] for o, c in zip(offsets, counts, strict=True))
        shape = [h, w, spp * b // 8] if b % 8 == 0 else [h, rowbytes, 1]
        stream, layout = pixels.to_stream(np.frombuffer(raw, dtype=np.uint8).reshape(shape))
        other, pos = [], 0
        for o, c in spans:
            other.append(data[pos:o])
            pos = o + c
        other.append(data[pos:])
        recipe = {"shape": shape, "strips": [offsets, counts], "layout": layout}
        return Split([Stream("binary", b"".join(other)), stream], recipe)

    def join(self, streams: list[bytes], recipe: dict) -> bytes:
        other, stream = streams
        raw = pixels.from_stream(stream, recipe["shape"], recipe.get("layout")).tobytes()
        offsets, counts = recipe["strips"]
        strips, pos = {}, 0
        for o, c in zip(offsets, counts, strict=True):
            strips[o] = raw[pos : pos + c]
            pos += c
        out, taken, cut = [], 0, 0  # walk the file: verbatim bytes up to each strip, then the strip
        for o in sorted(strips):
            gap = o - cut
            out.append(other[taken : taken + gap])
            out.append(strips[o])
            taken += gap
            cut = o + len(strips[o])
        out.append(other[taken:])
        return b"".join(out)


@hookimpl
def register_formats(register):
    register(Tiff())
