"""Uncompressed BMP (8/24/32-bit): pixels top-down in RGB order to the image stream, header verbatim.

BMP stores rows bottom-up, in BGR order and padded to 4 bytes; the stream uses the orientation and
channel order every other image format uses, so the model sees one kind of picture.
"""

from __future__ import annotations

import struct

import numpy as np

from archiver.formats import Split, Stream
from archiver.hookspecs import hookimpl

from . import pixels


class Bmp:
    name = "bmp"
    version = "2"
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
        stream, layout = pixels.to_stream(np.ascontiguousarray(px))
        recipe = {"shape": [rows, w, c], "at": off, "stride": stride, "bottom_up": h > 0, "layout": layout}
        return Split([Stream("binary", data[:off] + data[end:]), stream], recipe)

    def join(self, streams: list[bytes], recipe: dict) -> bytes:
        other, stream = streams
        rows, w, c = recipe["shape"]
        px = pixels.from_stream(stream, recipe["shape"], recipe.get("layout"))
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
    register(Bmp())
