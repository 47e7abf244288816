"""Files too large to hold in memory: coded and decoded a segment at a time.

A file of LARGE_FILE bytes or more is never read whole (the format plugins would hold it about twice
over, and an 8 GB disk image would not fit a small machine's memory). It is stored as a raw object
whose one binary stream is coded SEGMENT bytes at a time, each segment's chunks written before the
next is read; the stream's chunks decode back, a batch at a time, into the file's bytes in order.
That is the format every raw object has (docs/format.md): nothing new for a reader, and a file
that was large when added extracts the same way on any machine. What it gives up is the format
plugins (a WAV this large is coded as bytes) and the solid blocks (it needs none).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from archiver import streamcoder
from archiver.container import ArchiveReader, ArchiveWriter
from archiver.formats import RAW
from archiver.plugins import format_by_name

if TYPE_CHECKING:
    from archiver.archive import Settings
    from archiver.progress import Reporter

LARGE_FILE = 1 << 30  # files this large are coded in segments; smaller ones are read whole
SEGMENT = 64 << 20  # bytes read and coded at a time (and decoded at most at a time)
READ_PIECE = 16 << 20  # bytes read at a time by the checksum pass


class ReadError(Exception):
    """The file could not be read while it was being coded (its chunks are taken back)."""


def digest(path: Path) -> tuple[str, int]:
    """The SHA-256 and size of a file, read a piece at a time."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while piece := f.read(READ_PIECE):
            h.update(piece)
            n += len(piece)
    return h.hexdigest(), n


def store(path: Path, sha256: str, writer: ArchiveWriter, settings: Settings, ui: Reporter) -> dict | None:
    """Code the file as a raw object segment by segment, writing each segment's chunks at once;
    returns the object, or None (its chunks taken back) if the bytes read are not those `digest`
    read before: the file changed in between, and its entry would not match its data."""
    fmt = format_by_name(RAW)
    mark = writer.pos
    chunks: list[dict] = []
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while True:
            try:
                segment = f.read(SEGMENT)
            except OSError as e:
                writer.drop_since(mark)
                raise ReadError(e.strerror or str(e)) from e
            if not segment:
                break
            h.update(segment)
            n += len(segment)
            chunks += writer.write_coded(settings.encode("binary", segment, ui.advance))
    if h.hexdigest() != sha256:
        writer.drop_since(mark)
        return None
    settings.name_models(writer.index, chunks)
    return {"format": fmt.name, "format_version": fmt.version, "recipe": {},
            "streams": [{"kind": "binary", "size": n, "chunks": chunks}]}


def is_segmented(obj: dict) -> bool:
    """Whether an object can be decoded a batch of chunks at a time: a raw object of one stream (the
    form `store` writes), large enough that holding it whole would matter."""
    streams = obj.get("streams")
    return (obj.get("format") == RAW and isinstance(streams, list) and len(streams) == 1
            and isinstance(streams[0], dict) and isinstance(streams[0].get("size"), int)
            and streams[0]["size"] >= LARGE_FILE)


def pieces(reader: ArchiveReader, sha256: str, obj: dict, settings: Settings, ui: Reporter) -> Iterator[bytes]:
    """The decoded bytes of a segmented object in order, about SEGMENT bytes at a time (LM chunks of
    a batch decode in lockstep, as in a group of small files). Raises ValueError after the last
    piece if the bytes are not the entry's (size or SHA-256): a caller writes them under a
    temporary name and renames it only when the whole iteration succeeded."""
    stream = obj["streams"][0]
    h, n = hashlib.sha256(), 0
    for batch in streamcoder.size_groups(stream["chunks"], lambda c: int(c.get("size", 0)), SEGMENT):
        jobs = [("binary", rec, reader.read_chunk(rec)) for rec in batch]
        for piece in streamcoder.decode_chunks(jobs, settings.reading(reader.index), ui.advance):
            h.update(piece)
            n += len(piece)
            yield piece
    if n != stream["size"]:
        raise ValueError("stream size mismatch")
    if h.hexdigest() != sha256:
        raise ValueError("checksum mismatch")
