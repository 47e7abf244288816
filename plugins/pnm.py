"""Binary PPM/PGM/PBM (8-bit): the pixel region goes to the image stream, the header stays verbatim.

PBM's packed bits are kept packed (one byte column per 8 pixels): unpacking would make the stream
8x longer for the model to walk through.
"""

from __future__ import annotations

import re

import numpy as np

from archiver.formats import Split, Stream
from archiver.hookspecs import hookimpl

from . import pixels

PNM_HEADER = re.compile(rb"\A(P[456])(?:\s|#[^\n]*\n)+(\d+)(?:\s|#[^\n]*\n)+(\d+)(?:(?:\s|#[^\n]*\n)+(\d+))?\s")


class Pnm:
    name = "pnm"
    version = "2"
    priority = 40
    description = "binary PPM/PGM/PBM (8-bit), pixels patch-flattened"

    def detect(self, path: str, head: bytes) -> bool:
        return PNM_HEADER.match(head) is not None

    def split(self, data: bytes) -> Split:
        m = PNM_HEADER.match(data)
        magic, w, h = m.group(1), int(m.group(2)), int(m.group(3))
        if magic == b"P4":
            shape = [h, (w + 7) // 8, 1]
        else:
            if int(m.group(4) or 0) > 255:
                raise ValueError("16-bit PNM")
            shape = [h, w, 3 if magic == b"P6" else 1]
        start = m.end()
        end = start + shape[0] * shape[1] * shape[2]
        if end > len(data):
            raise ValueError("truncated PNM")
        pix = np.frombuffer(data[start:end], dtype=np.uint8).reshape(shape)
        stream, layout = pixels.to_stream(pix)
        return Split(
            [Stream("binary", data[:start] + data[end:]), stream],
            {"shape": shape, "at": start, "layout": layout},
        )

    def join(self, streams: list[bytes], recipe: dict) -> bytes:
        other, stream = streams
        pix = pixels.from_stream(stream, recipe["shape"], recipe.get("layout"))
        at = recipe["at"]
        return other[:at] + pix.tobytes() + other[at:]


@hookimpl
def register_formats(register):
    register(Pnm())
