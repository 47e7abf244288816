"""Formats turn a file into typed byte streams and back; the core only trusts verified round trips.

A format plugin's `split` may be as clever as it likes (decode pixels, reorder samples); the core
runs `join(split(x)) == x` on every file before coding and falls back to the raw-bytes format when
that fails or raises. That is the guarantee behind "every extracted file has the original's bytes".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from archiver.plugins import format_by_name, formats

KINDS = ("text", "image", "audio", "binary", "stored")
"""Stream kinds. text/image/audio/binary are coded by the LM (with a per-kind BOS token);
stored streams are already-compressed data that only the classic codecs may try."""

HEAD_BYTES = 4096
RAW = "raw"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stream:
    kind: str
    data: bytes
    geometry: tuple[int, int] | None = None
    """For an image stream in raster order: (bytes per row, bytes per pixel), which lets the `cm2d`
    codec use the rows above. For an audio stream of 16-bit sample codes, one channel after another:
    (bytes per channel, 2), which lets `cmpcm` rebuild the samples. The archive does not record it
    (those codecs' payloads carry what they need)."""


@dataclass
class Split:
    """What a format makes of a file: streams plus a small JSON-able recipe to join them."""

    streams: list[Stream]
    recipe: dict = field(default_factory=dict)


class Format(Protocol):
    name: str
    version: str
    priority: int  # higher is tried first; raw bytes is 0
    description: str

    def detect(self, path: str, head: bytes) -> bool: ...

    def split(self, data: bytes) -> Split: ...

    def join(self, streams: list[bytes], recipe: dict) -> bytes: ...


@dataclass
class Chosen:
    format: Format
    split: Split


def split_file(data: bytes, path: str = "", only: str | None = None) -> Chosen:
    """Pick the first format that detects the file and round-trips it exactly; else raw bytes."""
    head = data[:HEAD_BYTES]
    candidates = [format_by_name(only)] if only else list(formats())
    for fmt in candidates:
        if fmt is None or fmt.name == RAW:
            continue
        try:
            if not fmt.detect(path, head):
                continue
            sp = fmt.split(data)
            if fmt.join([s.data for s in sp.streams], sp.recipe) == data:
                return Chosen(fmt, sp)
            log.info("%s: format %s does not restore the exact bytes; falling back", path, fmt.name)
        except Exception as e:  # a plugin bug must never lose data: fall back to raw bytes
            log.info("%s: format %s failed (%s); falling back", path, fmt.name, e)
    raw = format_by_name(RAW)
    return Chosen(raw, raw.split(data))


def join_streams(format_name: str, streams: list[bytes], recipe: dict) -> bytes:
    fmt = format_by_name(format_name)
    if fmt is None:
        raise LookupError(f"format plugin {format_name!r} is not installed")
    return fmt.join(streams, recipe)


def training_streams(path: str | Path) -> list[tuple[str, bytes]]:
    """(kind, data) of every LM-coded stream the archiver would make of this file."""
    data = Path(path).read_bytes()
    chosen = split_file(data, str(path))
    return [(s.kind, s.data) for s in chosen.split.streams if s.kind != "stored" and s.data]
