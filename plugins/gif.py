"""GIF: every frame's palette indices to an image stream, all other bytes verbatim, the LZW data
rebuilt exactly on extraction.

LZW itself is deterministic, but encoders differ in when they reset the full code table (at 4096 or
4095 codes, or never: a "deferred clear"). Splitting decodes each frame, then re-encodes it under
each of those habits and keeps the one that gives back the stored bytes, sub-block sizes included;
a frame no habit reproduces sends the whole file back to byte coding. Pure Python, so very large
GIFs are slow to add; they are rare.
"""

from __future__ import annotations

import numpy as np

from archiver.formats import Split, Stream
from archiver.hookspecs import hookimpl

from . import pixels

MAX_CODES = 4096
# When the encoder emits a clear code: once its table reaches 4096 or 4095 codes, one code after it
# is full (4097: Pillow's habit), or never (a "deferred clear").
RESET_HABITS = (4097, 4096, 4095, None)


def lzw_decode(data: bytes, mcs: int, limit: int) -> bytes:
    """GIF LZW codes (LSB-first, growing code size) -> indices, at most `limit` of them."""
    clear, eoi = 1 << mcs, (1 << mcs) + 1
    table = [bytes([i]) for i in range(clear)] + [b"", b""]
    out, size, prev = bytearray(), mcs + 1, None
    acc = nbits = pos = 0
    while len(out) <= limit:
        while nbits < size:
            if pos >= len(data):
                raise ValueError("LZW data ends without an end code")
            acc |= data[pos] << nbits
            nbits, pos = nbits + 8, pos + 1
        code, acc, nbits = acc & ((1 << size) - 1), acc >> size, nbits - size
        if code == clear:
            table, size, prev = table[: clear + 2], mcs + 1, None
            continue
        if code == eoi:
            return bytes(out)
        if prev is None:
            if code >= clear:
                raise ValueError("bad first LZW code")
            entry = table[code]
        else:
            if code < len(table):
                entry = table[code]
                new = table[prev] + entry[:1]
            elif code == len(table):
                entry = new = table[prev] + table[prev][:1]
            else:
                raise ValueError("LZW code out of range")
            if len(table) < MAX_CODES:
                table.append(new)
        out += entry
        if len(table) == 1 << size and size < 12:
            size += 1
        prev = code
    raise ValueError("LZW data decodes to more pixels than the frame has")


def lzw_encode(indices: bytes, mcs: int, reset_at: int | None) -> bytes:
    """Greedy GIF LZW with a clear code first and an end code last, resetting at `reset_at` codes."""
    clear, eoi = 1 << mcs, (1 << mcs) + 1
    out = bytearray()
    acc = nbits = 0

    def emit(code: int, table_len: int) -> None:
        nonlocal acc, nbits
        size = min(12, max(mcs + 1, table_len.bit_length()))
        acc |= code << nbits
        nbits += size
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc, nbits = acc >> 8, nbits - 8

    table: dict[int, int] = {}
    nxt = clear + 2
    emit(clear, nxt)
    first = True  # the decoder adds no entry for the first code after a clear
    prefix = indices[0] if indices else None
    for k in indices[1:]:
        code = table.get((prefix << 8) | k)
        if code is not None:
            prefix = code
            continue
        emit(prefix, nxt if first else nxt - 1)
        first = False
        if nxt < MAX_CODES:
            table[(prefix << 8) | k] = nxt
            nxt += 1
            reset = nxt == reset_at
        else:
            reset = reset_at == MAX_CODES + 1
        if reset:
            emit(clear, nxt - 1)
            table, nxt, first = {}, clear + 2, True
        prefix = k
    if prefix is not None:
        emit(prefix, nxt if first else nxt - 1)
    emit(eoi, nxt)  # the decoder has added its entry for the last code by now
    if nbits:
        out.append(acc & 0xFF)
    return bytes(out)


def _sub_blocks(data: bytes, pos: int) -> tuple[bytes, list[int], int]:
    """Sub-blocks starting at pos -> (payload, block sizes, position after the 0 terminator)."""
    payload, sizes = bytearray(), []
    while True:
        if pos >= len(data):
            raise ValueError("truncated GIF")
        n = data[pos]
        if n == 0:
            return bytes(payload), sizes, pos + 1
        payload += data[pos + 1 : pos + 1 + n]
        sizes.append(n)
        pos += 1 + n


def _blocks(payload: bytes, sizes: list[int]) -> bytes:
    out, pos = bytearray(), 0
    for n in sizes:
        out.append(n)
        out += payload[pos : pos + n]
        pos += n
    return bytes(out + b"\x00")


def _usual(total: int) -> list[int]:
    """The sub-block sizes nearly every encoder writes: 255-byte blocks and a short last one."""
    return [255] * (total // 255) + ([total % 255] if total % 255 else [])


class Gif:
    name = "gif"
    version = "1"
    priority = 40
    description = "GIF87a/89a (every frame), LZW rebuilt exactly, indices patch-flattened"

    def detect(self, path: str, head: bytes) -> bool:
        return head[:6] in (b"GIF87a", b"GIF89a")

    def split(self, data: bytes) -> Split:
        pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
        other, images, frames, cut = [], [], [], 0
        while True:
            if pos >= len(data):
                raise ValueError("GIF without trailer")
            tag = data[pos]
            if tag == 0x3B:
                break
            if tag == 0x21:
                pos = _sub_blocks(data, pos + 2)[2]
            elif tag == 0x2C:
                w, h = (int.from_bytes(data[i : i + 2], "little") for i in (pos + 5, pos + 7))
                flags = data[pos + 9]
                pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
                mcs = data[pos]
                if not 2 <= mcs <= 8 or w * h == 0:
                    raise ValueError("unsupported LZW code size or empty frame")
                payload, sizes, end = _sub_blocks(data, pos + 1)
                idx = lzw_decode(payload, mcs, w * h)
                if len(idx) != w * h:
                    raise ValueError("frame has the wrong pixel count")
                habit = next((r for r in RESET_HABITS if lzw_encode(idx, mcs, r) == payload), "none")
                if habit == "none":
                    raise ValueError("no LZW habit reproduces the frame")
                other.append(data[cut : pos + 1])
                cut = end
                stream, layout = pixels.to_stream(np.frombuffer(idx, dtype=np.uint8).reshape(h, w, 1))
                images.append(stream)
                blocks = [] if sizes == _usual(len(payload)) else sizes
                frames.append({"shape": [h, w, 1], "mcs": mcs, "reset": habit, "layout": layout,
                               "blocks": blocks, "at": sum(map(len, other))})  # fmt: skip
                pos = end
            else:
                raise ValueError("unknown GIF block")
        other.append(data[cut:])
        return Split([Stream("binary", b"".join(other)), *images], {"frames": frames})

    def join(self, streams: list[bytes], recipe: dict) -> bytes:
        other, out, taken = streams[0], [], 0
        for f, stream in zip(recipe["frames"], streams[1:], strict=True):
            idx = pixels.from_stream(stream, f["shape"], f["layout"]).tobytes()
            payload = lzw_encode(idx, f["mcs"], f["reset"])
            out += [other[taken : f["at"]], _blocks(payload, f["blocks"] or _usual(len(payload)))]
            taken = f["at"]
        out.append(other[taken:])
        return b"".join(out)


@hookimpl
def register_formats(register):
    register(Gif())
