"""Solid blocks: the streams of many small files, coded together as one fallback-codec block.

Why: an adaptive codec learns nothing from a 2 KB file alone. 124 small text files from Debian
packages took 72 KB coded one by one (best of xz, zstd, brotli, cm per file) and 37 KB as one cm
block. 7z, tar.xz and zpaq users expect this. The price is theirs too: extracting one member decodes
its whole block (at most SOLID_BLOCK bytes), and damage to a block loses every file in it;
`lmarc add --no-solid` codes each file on its own.

Streams are grouped by kind, so text is learned with text. A block is written only when it is
smaller than its members coded one by one (LM chunks included: on small text files a block beats
the LM that beat cm on the file alone); failing that, a block of the members that went wholly to
the fallback codecs is tried; every member left out keeps its own coding. Image streams of one
geometry (an icon set's 48x48 RGBA icons) may instead form a cm2d block, one tall image, and audio
streams a cmpcm block, one long channel; the packer keeps whichever plan is smaller in total.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from archiver import classic
from archiver.container import ArchiveWriter
from archiver.streamcoder import CLASSIC_BLOCK, TRACK_BYTES, TRACK_GAIN, Coded, Track

SOLID_BLOCK = CLASSIC_BLOCK  # bytes per block at most (the format's limit on a chunk's decoded size)
SOLID_MEMBER = 1 << 20  # streams up to this size are packed; a larger one is context enough alone


@dataclass
class _Member:
    stream: dict  # the object's stream record: its "chunks" are filled in when the block is written
    data: bytes
    alone: list[Coded]  # its own coding, written instead if the block does not pay
    geometry: tuple[int, int] | None = None  # an image's rows, an audio stream's channels (formats.Stream.geometry)

    @property
    def alone_size(self) -> int:
        return sum(len(c.payload) for c in self.alone)

    @property
    def lm(self) -> bool:
        """Whether the LM coded part of it on its own."""
        return any(c.record["codec"] == "lm" for c in self.alone)


@dataclass
class _Block:
    members: list[_Member]
    codec: str
    payload: bytes


class SolidPacker:
    def __init__(self, writer: ArchiveWriter, on_written: Callable[[int], None] | None = None,
                 tracks: dict[str, Track] | None = None):
        self.writer = writer
        self.on_written = on_written  # told the bytes written at each flush (progress: the running ratio)
        self.tracks = tracks  # the run's record of the LM per kind (streamcoder.Track), told what blocks do
        self.pending: dict[str, list[_Member]] = {}
        self.pending_bytes: dict[str, int] = {}  # the data bytes of each kind's pending members
        self.lm_bytes: dict[str, int] = {}  # those of its members the LM coded (kept as they come: a
        # sum over the members at each offer made adding 3,000 small files quadratic, 16% of its time)
        self.trial_at: dict[str, int] = {}  # LM-coded pending bytes at which a kind's next trial runs

    def offer(self, stream: dict, data: bytes, coded: list[Coded], geometry: tuple[int, int] | None = None) -> bool:
        """Take a stream into its kind's block (its chunks are written at a flush), or refuse it."""
        kind = stream["kind"]
        if not data or len(data) > SOLID_MEMBER:
            return False
        if self.pending_bytes.get(kind, 0) + len(data) > SOLID_BLOCK:
            self._flush(kind)
        member = _Member(stream, data, coded, geometry)
        self.pending.setdefault(kind, []).append(member)
        self.pending_bytes[kind] = self.pending_bytes.get(kind, 0) + len(data)
        self.lm_bytes[kind] = self.lm_bytes.get(kind, 0) + (len(data) if member.lm else 0)
        self._trial(kind)
        return True

    def _trial(self, kind: str) -> None:
        """Plan the kind's pending blocks as a flush would, without writing them, once its pending
        members hold TRACK_BYTES that the LM coded (and again each time that doubles). When the
        blocks take most of those bytes and leave the LM's own codings of them under TRACK_GAIN
        better, the kind's Track is told: the LM is no longer scored on its streams small enough
        for a block (up to SOLID_MEMBER) in this run.

        Why: the Track sees each stream alone, where the LM often wins (a 48x48 icon, a spoken
        digit), but the block that replaces those codings at the flush beats it; without this, the
        LM is scored on every small stream of the kind for nothing, which was most of the time of
        adding an icon set."""
        track = self.tracks.get(kind) if self.tracks is not None else None
        members, lm_bytes = self.pending[kind], self.lm_bytes[kind]
        if track is None or track.hopeless(SOLID_MEMBER) or lm_bytes < self.trial_at.get(kind, TRACK_BYTES):
            return
        self.trial_at[kind] = 2 * lm_bytes
        packed = alone = share = 0
        # the structured blocks alone where the kind has them: a trial that also tried every codec
        # on the whole pending block took 40% of adding 600 short recordings
        for b in self._shaped(kind, members) if kind in classic.STRUCTURED else self._plan(members):
            size = sum(len(m.data) for m in b.members)
            for m in (m for m in b.members if m.lm):
                packed += len(m.data)
                alone += m.alone_size
                share += len(b.payload) * len(m.data) / size
        if 2 * packed > lm_bytes and alone > (1 - TRACK_GAIN) * share:
            track.blocked_upto = SOLID_MEMBER

    def flush(self) -> None:
        """Write every pending block: before the index is committed."""
        for kind in list(self.pending):
            self._flush(kind)

    def _flush(self, kind: str) -> None:
        """Write the kind's pending members: in the blocks `_choose` picks, or alone."""
        members = self.pending.pop(kind, [])
        self.pending_bytes.pop(kind, None)
        self.lm_bytes.pop(kind, None)
        self.trial_at.pop(kind, None)
        blocks = self._choose(kind, members)
        written = 0
        for b in blocks:
            loc = self.writer.write_chunk(b.payload)
            size, start = sum(len(m.data) for m in b.members), 0
            for m in b.members:
                part = {"codec": b.codec, "size": len(m.data), "tokens": 0, "part": [start, size]}
                m.stream["chunks"] = [part | loc]
                start += len(m.data)
            written += len(b.payload)
        packed = {id(m) for b in blocks for m in b.members}
        for m in members:
            if id(m) not in packed:
                m.stream["chunks"] = self.writer.write_coded(m.alone)
                written += m.alone_size
        if self.on_written and written:
            self.on_written(written)

    def _choose(self, kind: str, members: list[_Member]) -> list[_Block]:
        """The smaller of two plans: the kind's blocks as below, or first a block of the
        kind's structured codec (classic.STRUCTURED) per shared geometry, then the same for the
        members left. Images share a cm2d block with images of their row length (48x48 icons:
        one tall image whose rows cm2d learns from; 24 dev GIMP icons took 28.4 KB so, 33.5 KB in a
        cm block, 36.5 KB with the LM one by one); audio streams of 16-bit samples share one cmpcm
        block, read as one long channel. The structured blocks are coded while the first plan's
        trials run, on the codec threads: cmpcm and cm each take 16-17 s of a 4 MiB block of audio,
        and the dev audio's blocks took 37 s of its add instead of 54 (the add 78 s against 92)."""
        started = self._start_shaped(kind, members)
        try:
            plans = [self._plan(members)]
        except BaseException:  # Ctrl-C: the codec threads would otherwise code them before exiting
            for _, job in started:
                job.cancel()
            raise
        shaped = self._paid(kind, started)
        if shaped:
            taken = {id(m) for b in shaped for m in b.members}
            plans.append(shaped + self._plan([m for m in members if id(m) not in taken]))
        return min(plans, key=lambda p: self._size(members, p))

    def _shaped(self, kind: str, members: list[_Member]) -> list[_Block]:
        """The blocks of the kind's structured codec that pay: images grouped by geometry (one tall
        image each), audio streams grouped by sample width and read as one long channel (the
        channels of recordings of other lengths do not line up)."""
        return self._paid(kind, self._start_shaped(kind, members))

    @staticmethod
    def _start_shaped(kind: str, members: list[_Member]) -> list[tuple[list[_Member], Future]]:
        """`_shaped`'s groups, each with its block being coded on the codec threads."""
        groups: dict[tuple[int, int] | int, list[_Member]] = {}
        for m in members:
            if m.geometry is not None:
                groups.setdefault(m.geometry if kind == "image" else m.geometry[1], []).append(m)
        started = []
        for key, ms in groups.items():
            if len(ms) > 1:
                geometry = key if kind == "image" else (sum(len(m.data) for m in ms), key)
                data = b"".join(m.data for m in ms)
                started.append((ms, classic.compress_later(classic.STRUCTURED[kind], data, geometry)))
        return started

    @classmethod
    def _paid(cls, kind: str, started: list[tuple[list[_Member], Future]]) -> list[_Block]:
        return [b for ms, job in started if (b := cls._paying(ms, classic.STRUCTURED[kind], job.result()))]

    def _plan(self, members: list[_Member]) -> list[_Block]:
        """One block of all the members if it pays; failing that, one of the members that went
        wholly to the fallback codecs (an LM-coded member can be worth more alone)."""
        fallback = [m for m in members if not m.lm]
        if len(members) > 1 and (b := self._block(members)):
            return [b]
        if len(fallback) < len(members) and len(fallback) > 1 and (b := self._block(fallback)):
            return [b]
        return []

    @classmethod
    def _block(cls, group: list[_Member]) -> _Block | None:
        """The group coded as one block by the best classic codec, if that is smaller than its
        members alone."""
        return cls._paying(group, *classic.best(b"".join(m.data for m in group)))

    @staticmethod
    def _paying(group: list[_Member], codec: str, payload: bytes) -> _Block | None:
        return _Block(group, codec, payload) if len(payload) < sum(m.alone_size for m in group) else None

    @staticmethod
    def _size(members: list[_Member], blocks: list[_Block]) -> int:
        packed = {id(m) for b in blocks for m in b.members}
        return sum(len(b.payload) for b in blocks) + sum(m.alone_size for m in members if id(m) not in packed)
