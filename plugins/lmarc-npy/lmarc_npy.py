"""An lmarc format plugin for NumPy .npy files, and the template for writing your own.

The header (magic, version, dtype/shape dictionary) is kept verbatim in a binary stream. The array
data is regrouped into byte planes: all the most significant bytes of every element first, then the
next, and so on. Neighbouring elements of smooth data share their high bytes, so the planes are far
more predictable than interleaved multi-byte numbers.
"""

from __future__ import annotations

import numpy as np

from archiver.formats import Split, Stream
from archiver.hookspecs import hookimpl

MAGIC = b"\x93NUMPY"


def _header_end(data: bytes) -> int:
    major = data[6]
    if major == 1:
        return 10 + int.from_bytes(data[8:10], "little")
    return 12 + int.from_bytes(data[8:12], "little")


class Npy:
    name = "npy"
    version = "1"
    priority = 30  # above text and raw, below the built-in image/audio formats
    description = "NumPy .npy arrays, data as byte planes (most significant first)"

    def detect(self, path: str, head: bytes) -> bool:
        return head.startswith(MAGIC) and len(head) >= 10

    def split(self, data: bytes) -> Split:
        end = _header_end(data)
        header = data[:end].decode("latin1")
        descr = header[header.index("'descr':") :].split("'")[3]
        itemsize = np.dtype(descr).itemsize
        little = descr[0] in "<|" or itemsize == 1
        body = np.frombuffer(data[end : end + (len(data) - end) // itemsize * itemsize], dtype=np.uint8)
        planes = body.reshape(-1, itemsize)
        if little:
            planes = planes[:, ::-1]  # most significant byte first
        tail = data[end + body.size :]
        return Split([Stream("binary", data[:end] + tail), Stream("binary", planes.T.tobytes())],
                     {"header": end, "itemsize": itemsize, "little": little})

    def join(self, streams: list[bytes], recipe: dict) -> bytes:
        head_tail, planes = streams
        n = recipe["itemsize"]
        arr = np.frombuffer(planes, dtype=np.uint8).reshape(n, -1).T
        if recipe["little"]:
            arr = arr[:, ::-1]
        end = recipe["header"]
        return head_tail[:end] + arr.tobytes() + head_tail[end:]


@hookimpl
def register_formats(register):
    register(Npy())
