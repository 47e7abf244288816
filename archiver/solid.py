"""Solid blocks: the streams of many small files, coded together as one fallback-codec block.

Why: an adaptive codec learns nothing from a 2 KB file alone. 124 small text files from Debian
packages took 72 KB coded one by one (best of xz, zstd, brotli, cm per file) and 37 KB as one cm
block. 7z, tar.xz and zpaq users expect this. The price is theirs too: extracting one member decodes
its whole block (at most SOLID_BLOCK bytes), and damage to a block loses every file in it;
`lmarc add --no-solid` codes each file on its own.

Streams are grouped by kind, so text is learned with text. A block is written only when it is
smaller than its members coded one by one (LM chunks included: on small text files a block beats
the LM that beat cm on the file alone); failing that, a block of the members that went wholly to
the fallback codecs is tried; every member left out keeps its own coding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from archiver import classic
from archiver.container import ArchiveWriter
from archiver.streamcoder import CLASSIC_BLOCK, Coded

SOLID_BLOCK = CLASSIC_BLOCK  # bytes per block at most (the format's limit on a chunk's decoded size)
SOLID_MEMBER = 1 << 20  # streams up to this size are packed; a larger one is context enough alone


@dataclass
class _Member:
    stream: dict  # the object's stream record: its "chunks" are filled in when the block is written
    data: bytes
    alone: list[Coded]  # its own coding, written instead if the block does not pay


class SolidPacker:
    def __init__(self, writer: ArchiveWriter, on_written: Callable[[int], None] | None = None):
        self.writer = writer
        self.on_written = on_written  # told the bytes written at each flush (progress: the running ratio)
        self.pending: dict[str, list[_Member]] = {}
        self.pending_bytes: dict[str, int] = {}  # the data bytes of each kind's pending members

    def offer(self, stream: dict, data: bytes, coded: list[Coded]) -> bool:
        """Take a stream into its kind's block (its chunks are written at a flush), or refuse it."""
        kind = stream["kind"]
        if not data or len(data) > SOLID_MEMBER:
            return False
        if self.pending_bytes.get(kind, 0) + len(data) > SOLID_BLOCK:
            self._flush(kind)
        self.pending.setdefault(kind, []).append(_Member(stream, data, coded))
        self.pending_bytes[kind] = self.pending_bytes.get(kind, 0) + len(data)
        return True

    def flush(self) -> None:
        """Write every pending block: before the index is committed."""
        for kind in list(self.pending):
            self._flush(kind)

    def _flush(self, kind: str) -> None:
        members = self.pending.pop(kind, [])
        self.pending_bytes.pop(kind, None)
        lm_coded = [m for m in members if any(c.record["codec"] == "lm" for c in m.alone)]
        fallback = [m for m in members if not any(c.record["codec"] == "lm" for c in m.alone)]
        written = 0
        if len(members) > 1 and (payload := self._block(members)):
            members, written = [], len(payload)
        elif lm_coded and len(fallback) > 1 and (payload := self._block(fallback)):
            members, written = lm_coded, len(payload)
        for m in members:
            m.stream["chunks"] = self.writer.write_coded(m.alone)
            written += sum(len(c.payload) for c in m.alone)
        if self.on_written and written:
            self.on_written(written)

    def _block(self, group: list[_Member]) -> bytes | None:
        """Write the group as one block if that is smaller than its members alone; the payload."""
        block = b"".join(m.data for m in group)
        codec, payload = classic.best(block)
        if len(payload) >= sum(len(c.payload) for m in group for c in m.alone):
            return None
        loc = self.writer.write_chunk(payload)
        start = 0
        for m in group:
            m.stream["chunks"] = [{"codec": codec, "size": len(m.data), "tokens": 0, "part": [start, len(block)]} | loc]
            start += len(m.data)
        return payload
