"""The .lma container: a header, appended chunk data, and an index + trailer at the end.

Layout (all integers little-endian; see docs/format.md):
    header   16 bytes  MAGIC (8) | version u16 | reserved (6)
    chunks   ...       compressed chunk payloads, referenced by offset from the index
    index    n bytes   zlib-compressed JSON (entries, objects, chunk tables)
    trailer  32 bytes  TRAILER_MAGIC (8) | index offset u64 | index length u64 | index crc32 | trailer crc32

`add` appends chunks and a new index + trailer after the old one, so earlier data is never rewritten.
A reader takes the last valid trailer: an `add` killed half-way leaves the previous state readable.
"""

from __future__ import annotations

import itertools
import json
import lzma
import mmap
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from archiver import contextmix, crypt
from archiver.classic import CODECS
from archiver.formats import KINDS

try:
    import fcntl
except ImportError:  # Windows: archives can be read there, not written (see ArchiveWriter._lock)
    fcntl = None

if TYPE_CHECKING:
    from archiver.streamcoder import Coded

MAGIC = b"LMARC\r\n\x1a"
VERSION = 1
ENCRYPTED = 2  # the format version of an encrypted archive: its header is followed by a key record (archiver.crypt)
HEADER = MAGIC + struct.pack("<H", VERSION) + bytes(6)
ENCRYPTED_HEADER = MAGIC + struct.pack("<H", ENCRYPTED) + bytes(6)  # then the key record
HEADER_LEN = len(HEADER)
TRAILER_MAGIC = b"LMAIDX\x00\x01"
TRAILER = struct.Struct("<8sQQII")
MAX_INDEX = 1 << 30  # an index larger than this is not one we wrote
LOCK_TIMEOUT = float(os.environ.get("LMARC_LOCK_TIMEOUT", "30"))  # seconds to wait for another add


class ArchiveError(Exception):
    """The archive is missing, damaged, of another version, or cannot be written."""


# A preset dictionary for the index's zlib stream: the keys and common values of an index, so that a
# one-file archive does not pay for spelling them out (about 40% of a small index). Part of the
# format: an index compressed with it says so in its zlib header (FDICT + this dictionary's Adler-32).
# Never change these bytes; a different dictionary would need a new DICTID check below.
INDEX_DICT = (
    b'"format_version":"1","recipe":{"shape":[,"depth":8,"rowbytes":,"bpp":,"layout":{"patch":16,'
    b'"predictor":"med"},"filters":"0101040404","zlib":[9,8,0,15],"idat_sizes":[,"idat_at":,"at":,'
    b'"channels":1,"width":2,"little":true,"order":1,"zigzag":true},"strips":[[,"frames":[{"mcs":8,'
    b'"reset":4097,"blocks":[],"encoding":"utf-8","kind":"text","kind":"binary","kind":"stored",'
    b'"type":"dir","type":"symlink","link":null,"codec":"store","codec":"zstd","codec":"xz",'
    b'{"format":"lmarc","version":1,"entries":[{"path":"","mode":420,"mtime":17,"type":"file","size":'
    b',"sha256":"}],"objects":{"":{"format":"wav","format":"png","format":"raw","format":"text",'
    b'"streams":[{"kind":"image","kind":"audio","size":,"chunks":[{"codec":"lm","size":,"tokens":,'
    b'"model":"","offset":16,"length":,"crc32":}]}]}},"models":{"":"default"}}'
)
INDEX_DICT_ID = zlib.adler32(INDEX_DICT)


CM_INDEX, XZ_INDEX = b"\xffCM", b"\xffXZ"  # an index coded with cm or xz starts with one of these
# (0xFF is never a zlib stream's first byte), then the JSON's length (u32 little-endian)
INDEX_CM_MAX = 1 << 20  # cm codes indexes up to this size (about 2 s); larger ones try xz


def _index_json(raw: bytes) -> bytes:
    if raw[:3] in (CM_INDEX, XZ_INDEX) and len(raw) >= 7:
        size = int.from_bytes(raw[3:7], "little")
        if raw[:3] == CM_INDEX:
            if size > INDEX_CM_MAX:
                raise ValueError(f"a cm index of {size} bytes is not one we wrote")
            return contextmix.decompress(raw[7:], size)
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        out = d.decompress(raw[7:], max_length=min(size, MAX_INDEX) + 1)
        if len(out) != size or not d.eof:
            raise ValueError("xz index does not decode to its size")
        return out
    preset = len(raw) >= 6 and raw[1] & 0x20
    if preset and int.from_bytes(raw[2:6], "big") != INDEX_DICT_ID:
        raise ArchiveError("archive index needs a compression dictionary this lmarc does not have")
    d = zlib.decompressobj(zdict=INDEX_DICT) if preset else zlib.decompressobj()
    return d.decompress(raw, MAX_INDEX)


INDEX_VERSIONS = (1, 2, 3, 4, 5, 6)
# the index version that introduced a chunk codec (others: 1)
CODEC_SINCE = {"brotli": 2, "cm": 3, "cm2d": 5, "cmpcm": 6}
PART_SINCE = 4  # the index version that introduced solid blocks (chunks with a "part")


@dataclass
class Index:
    entries: list[dict] = field(default_factory=list)
    objects: dict[str, dict] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    version: int = 1

    def needed_version(self) -> int:
        """The oldest index version that has every codec and feature used: an archive that uses
        none that is new stays readable by older lmarc releases."""
        chunks = [c for o in self.objects.values() for st in o["streams"] for c in st["chunks"]]
        solid = [PART_SINCE] if any("part" in c for c in chunks) else []
        return max([1, *solid, *(CODEC_SINCE.get(c["codec"], 1) for c in chunks)])

    def to_bytes(self) -> bytes:
        """zlib with the preset dictionary (best for a few entries), or the JSON's length and its cm
        coding (up to INDEX_CM_MAX) or xz coding (beyond), whichever is smallest: an index of many
        small files is mostly paths, sizes and digests, which cm codes in about half of zlib's bytes."""
        doc = {"format": "lmarc", "version": self.needed_version(), "entries": self.entries,
               "objects": self.objects, "models": self.models}
        raw = json.dumps(doc, separators=(",", ":")).encode()
        c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, INDEX_DICT)
        size = struct.pack("<I", len(raw))
        if len(raw) <= INDEX_CM_MAX:
            other = CM_INDEX + size + contextmix.compress(raw)
        else:
            other = XZ_INDEX + size + lzma.compress(raw, format=lzma.FORMAT_XZ, preset=6)
        return min(c.compress(raw) + c.flush(), other, key=len)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Index:
        """Parse an index: zlib with or without the preset dictionary (indexes before it had none),
        cm or xz."""
        try:
            doc = json.loads(_index_json(raw))
        except (zlib.error, lzma.LZMAError, ValueError, RecursionError) as e:
            raise ArchiveError(f"archive index is unreadable: {e}") from e
        if not isinstance(doc, dict) or doc.get("format") != "lmarc":
            raise ArchiveError("archive index is not an lmarc index")
        version = doc.get("version")
        if version not in INDEX_VERSIONS:
            raise ArchiveError(f"archive index version {version!r} is not supported (this lmarc reads "
                               f"{INDEX_VERSIONS[0]} to {INDEX_VERSIONS[-1]}): made by a newer lmarc?")
        entries, objects, models = doc.get("entries"), doc.get("objects"), doc.get("models", {})
        if not isinstance(entries, list) or not isinstance(objects, dict) or not isinstance(models, dict):
            raise ArchiveError("archive index is malformed")
        return cls(entries, objects, models, version)


CHUNK_CODECS = ("lm", *CODECS)
MAX_CHUNK = 4 << 20  # no chunk decodes to more than this (streamcoder.CLASSIC_BLOCK)
_HEX = set("0123456789abcdef")


def _is_int(v, lo: int = 0, hi: int = 1 << 62) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def validate_index(index: Index, data_end: int, data_start: int = HEADER_LEN, overhead: int = 0) -> None:
    """Reject any index this code did not write: wrong types, absurd sizes, chunks outside the data
    area or overlapping each other. After this, readers may index the structure without guarding."""

    def bad(why: str):
        raise ArchiveError(f"archive index is malformed: {why}")

    regions = {}  # offset -> (length, crc32, codec, block size or None): solid parts share one payload
    for key, obj in index.objects.items():
        if not (isinstance(key, str) and len(key) == 64 and set(key) <= _HEX) or not isinstance(obj, dict):
            bad("object key")
        if not isinstance(obj.get("format"), str) or not isinstance(obj.get("recipe", {}), dict):
            bad("object format")
        streams = obj.get("streams")
        if not isinstance(streams, list):
            bad("object streams")
        for st in streams:
            if not isinstance(st, dict) or st.get("kind") not in KINDS or not _is_int(st.get("size")):
                bad("stream")
            chunks = st.get("chunks")
            if not isinstance(chunks, list):
                bad("chunk table")
            total = 0
            for c in chunks:
                if (not isinstance(c, dict) or c.get("codec") not in CHUNK_CODECS
                        or CODEC_SINCE.get(c["codec"], 1) > index.version):
                    bad("chunk codec")
                if not (_is_int(c.get("offset"), data_start, data_end) and _is_int(c.get("length"), 0, data_end)
                        and c["offset"] + c["length"] <= data_end and _is_int(c.get("crc32"), 0, 0xFFFFFFFF)
                        and _is_int(c.get("size"), 0, MAX_CHUNK) and _is_int(c.get("tokens"), 0, MAX_CHUNK)):
                    bad("chunk location or size")
                if c["codec"] == "lm" and (not isinstance(c.get("model"), str) or c["tokens"] > c["size"]
                                           or c["size"] > 64 * max(c["tokens"], 1)):
                    bad("LM chunk")
                part = c.get("part")
                if part is not None and not (
                        index.version >= PART_SINCE and c["codec"] != "lm" and isinstance(part, list)
                        and len(part) == 2 and _is_int(part[1], 0, MAX_CHUNK) and _is_int(part[0], 0, part[1])
                        and part[0] + c["size"] <= part[1]):
                    bad("solid part")
                decoded = c["size"] if part is None else part[1]
                if c["codec"] == "store" and decoded + overhead != c["length"]:
                    bad("stored chunk size")
                total += c["size"]
                region = (c["length"], c["crc32"], c["codec"], None if part is None else part[1])
                if c["offset"] in regions and (regions[c["offset"]] != region or (part is None and c["length"])):
                    bad("chunks overlap")  # only solid parts share a payload, and then all of its record
                regions[c["offset"]] = region
            if total != st["size"]:
                bad("stream size does not match its chunks")
    spans = sorted((a, n) for a, (n, *_rest) in regions.items())
    for (a, n), (b, _) in zip(spans, spans[1:], strict=False):
        if a + n > b:
            bad("chunks overlap")
    for e in index.entries:
        if not isinstance(e, dict) or not isinstance(e.get("path"), str) or e.get("type") not in ("file", "dir",
                                                                                                   "symlink"):
            bad("entry")
        if not (_is_int(e.get("mode", 0), 0, 0o7777) and _is_int(e.get("mtime", 0), -(1 << 62))
                and _is_int(e.get("size", 0))):
            bad("entry metadata")
        if e["type"] == "file" and e.get("sha256") not in index.objects:
            bad("entry without data")
        if e["type"] == "symlink" and not isinstance(e.get("link"), str):
            bad("symlink without target")
        if not isinstance(e.get("hardlink", ""), str):
            bad("hard link target")
        if not (_is_int(e.get("uid", 0), 0, 1 << 32) and _is_int(e.get("gid", 0), 0, 1 << 32)
                and isinstance(e.get("user", ""), str) and isinstance(e.get("group", ""), str)):
            bad("entry owner")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in index.models.items()):
        bad("model table")


def _trailers(mm, size: int) -> Iterator[tuple[int, int, int]]:
    """(index offset, index length, end) of each valid trailer, the last first: one per committed
    add. A trailer's add appended after the one before, so the next one back ends before its index."""
    end = size
    while end >= HEADER_LEN + TRAILER.size:
        pos = mm.rfind(TRAILER_MAGIC, HEADER_LEN, end - TRAILER.size + len(TRAILER_MAGIC))
        if pos < 0:
            return
        raw = mm[pos : pos + TRAILER.size]
        magic, off, length, icrc, tcrc = TRAILER.unpack(raw)
        if (
            zlib.crc32(raw[:-4]) == tcrc
            and off >= HEADER_LEN
            and off + length == pos
            and length <= MAX_INDEX
            and zlib.crc32(mm[off:pos]) == icrc
        ):
            yield off, length, pos + TRAILER.size
            end = off
        else:
            end = pos + TRAILER.size - 1


DAMAGED, UNFINISHED = "damaged", "unfinished"  # what can follow the last valid trailer (ArchiveReader.tail)


def _tail(mm, end: int, size: int) -> str | None:
    """What follows the last valid trailer, which ends at end: nothing (None); an add killed before
    its commit (UNFINISHED: payloads, perhaps part of an index), debris the next add may remove; or
    a committed add whose index or trailer is damaged (DAMAGED), whose payloads must not be
    written over. A commit ends the file with a trailer, and one damaged bit anywhere in it leaves
    at least its magic, its own CRC or its index's place (ending where the trailer starts) intact;
    a killed add's last bytes are payload, which matches none of the three but by a 2**-32 chance
    (or when that payload is an archive stored whole: then its bytes are only kept, not lost)."""
    if end == size:
        return None
    if size - end >= TRAILER.size:
        raw = mm[size - TRAILER.size : size]
        magic, off, length, _, tcrc = TRAILER.unpack(raw)
        placed = off >= end and off + length == size - TRAILER.size
        if magic == TRAILER_MAGIC or zlib.crc32(raw[:-4]) == tcrc or placed:
            return DAMAGED
    return UNFINISHED


class ArchiveReader:
    """Read-only view of an archive: its index, and bounds- and CRC-checked chunk payloads.

    `version` n reads the archive as its nth add left it (1 the first): an add never rewrites what
    is there, so until a `compact` every earlier index and the data it names are still in the file.
    Finding them reads the whole file, so only a reader given a version lists them all in
    `versions` (index offset, index length, end), the first add's first; others, only the last.
    `tail` says what follows the last valid trailer (`_tail`: None, UNFINISHED or DAMAGED), `busy`
    whether a writer is at work on it (then it is that writer's, so far; `locked`: the caller holds
    the lock, so none is), and `tail_note` says it to the user."""

    def __init__(self, path: str | Path, version: int | None = None, locked: bool = False):
        self.path = Path(path)
        self._last: tuple[tuple[int, int] | None, bytes | ArchiveError] = (None, b"")  # the last payload read
        try:
            self._f = open(self.path, "rb")
        except OSError as e:
            raise ArchiveError(f"cannot open archive {path}: {e.strerror}") from e
        try:
            self._open(version, locked)
        except ArchiveError:
            self._f.close()
            raise

    def _open(self, version: int | None, locked: bool) -> None:
        self.size = os.fstat(self._f.fileno()).st_size
        head = self._f.read(HEADER_LEN)
        if head[:8] != MAGIC:
            raise ArchiveError(f"{self.path} is not an lmarc archive")
        (fmt,) = struct.unpack("<H", head[8:10])
        if fmt not in (VERSION, ENCRYPTED):
            raise ArchiveError(f"archive format version {fmt} is not supported (this lmarc reads {VERSION} and "
                               f"{ENCRYPTED})")
        self.sealer: crypt.Sealer | None = None
        self.key_record = b""
        if fmt == ENCRYPTED:  # the key record, then sealed payloads and indexes (archiver.crypt)
            self.key_record = self._f.read(crypt.KEY_RECORD_LEN)
            if len(self.key_record) < crypt.KEY_RECORD_LEN:
                raise ArchiveError("archive is truncated")
            try:
                self.sealer = crypt.unlock(self.key_record, crypt.password())
            except crypt.CryptError as e:
                raise ArchiveError(f"{self.path}: {e}") from None
        self.data_start = HEADER_LEN + len(self.key_record)
        if self.size < self.data_start + TRAILER.size:
            raise ArchiveError("archive is truncated")
        with mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            found = _trailers(mm, self.size)
            self.versions = [*found][::-1] if version is not None else [*itertools.islice(found, 1)]
            if not self.versions:
                raise ArchiveError("no valid index found: the archive is truncated or damaged")
            self.tail = _tail(mm, self.versions[-1][2], self.size)
        self.busy = self.tail is not None and not locked and self._writer_at_work()
        if version is not None and not 1 <= version <= len(self.versions):
            raise ArchiveError(f"the archive has versions 1 to {len(self.versions)}, not {version}")
        n = len(self.versions) if version is None else version
        self.index = self.index_at(n)
        self.data_end, _, self.end = self.versions[n - 1]

    def _writer_at_work(self) -> bool:
        """Whether a writer holds the archive's lock (`ArchiveWriter`): then what follows the last
        trailer is what it has written so far. Tried with a shared lock, released at once (a writer
        that wants the lock in that instant retries 0.1 s later)."""
        if fcntl is None:
            return False
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # a file system without flock: nothing can be said
            return False
        fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
        return False

    def index_at(self, n: int) -> Index:
        """The index of `versions`' nth (1 the first), checked against the data before it."""
        off, length, _ = self.versions[n - 1]
        self._f.seek(off)
        raw = self._f.read(length)
        if self.sealer is not None:
            try:
                raw = self.sealer.open(raw, crypt.INDEX)
            except crypt.CryptError as e:
                raise ArchiveError(f"archive index {e}") from None
        index = Index.from_bytes(raw)
        validate_index(index, off, self.data_start, 0 if self.sealer is None else crypt.OVERHEAD)
        return index

    def tail_note(self) -> str | None:
        """What follows the last readable add, for the user (None when nothing does)."""
        n = self.size - self.versions[-1][2]
        if self.busy:
            return f"another lmarc is writing to this archive: the {n:,} bytes it has written so far are not read"
        if self.tail == DAMAGED:
            return (f"the last add's index is damaged: its {n:,} bytes are not read, so the files it added "
                    "or changed are missing here (the adds before it read as they were; `lmarc compact` "
                    "drops that add and makes the archive writable again)")
        if self.tail == UNFINISHED:
            return (f"{n:,} bytes of an add that did not finish follow the last complete one (not read; the next "
                    "add removes them)")
        return None

    def read_chunk(self, chunk: dict) -> bytes:
        off, length = chunk["offset"], chunk["length"]
        if self._last[0] != (off, length):  # the solid parts of one block follow each other: read once
            self._f.seek(off)
            data = self._f.read(length)
            ok = len(data) == length and zlib.crc32(data) == chunk["crc32"]
            result: bytes | ArchiveError = data if ok else ArchiveError("chunk CRC mismatch")
            if ok and self.sealer is not None:
                try:
                    result = self.sealer.open(data, crypt.CHUNK)
                except crypt.CryptError as e:
                    result = ArchiveError(f"chunk {e}")
            self._last = ((off, length), result)
        if isinstance(self._last[1], ArchiveError):
            raise self._last[1]
        return self._last[1]

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ArchiveWriter:
    """Appends to (or creates) an archive under an exclusive lock; rolls back on any failure.

    An archive whose last add is damaged (`ArchiveReader.tail`) is refused: appending would hide
    that add's data behind a valid index for good. Only a rewrite, which replaces the whole file and
    never appends here, locks it anyway (damaged_ok), leaving those bytes as they are.

    A new archive is encrypted when asked (encrypt: a new key from the password; key: an existing
    archive's key record and sealer, for a rewrite of it); an existing one is written as it is,
    with its own key (`archiver.crypt`). `key` is this archive's (record, sealer), None when plain."""

    def __init__(self, path: str | Path, damaged_ok: bool = False, encrypt: bool = False,
                 key: crypt.Key | None = None):
        self.path = Path(path)
        self.index = Index()
        if fcntl is None:
            raise ArchiveError("this platform has no flock, which lmarc needs to write an archive safely: here it "
                               "can list, test and extract archives, not add to them")
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise ArchiveError(f"cannot open archive {path} for writing: {e.strerror}") from e
            self._f = os.fdopen(fd, "r+b", buffering=0)  # unbuffered: a failed write fails here, not at close
            self._lock(deadline)
            if self._still_at_path():
                break
            self._unlock_close()  # a delete or compact put a new file there while we waited: lock that one
        size = os.fstat(fd).st_size
        self.key = key
        if size == 0:
            try:
                if encrypt and key is None:
                    self.key = crypt.new_key_record(crypt.password(new=True))
                if self.key is None:
                    self._write(HEADER)
                else:
                    self._write(ENCRYPTED_HEADER + self.key[0])
            except (crypt.CryptError, OSError, KeyboardInterrupt) as e:  # no password, full disk: no empty file left
                self.path.unlink(missing_ok=True)
                self._unlock_close()
                if isinstance(e, crypt.CryptError):
                    raise ArchiveError(str(e)) from None
                raise
            self.start = HEADER_LEN + (len(self.key[0]) if self.key else 0)
            self.created = True
        else:
            self.created = False
            try:
                reader = ArchiveReader(self.path, locked=True)
            except ArchiveError:
                self._unlock_close()
                raise
            reader.close()
            if reader.tail == DAMAGED and not damaged_ok:
                self._unlock_close()
                raise ArchiveError(f"{path}: not adding: {reader.tail_note()}")
            if encrypt and reader.sealer is None:
                self._unlock_close()
                raise ArchiveError(f"{path} exists and is not encrypted: encryption is chosen when an archive is "
                                   "created (add to a new archive, or extract this one and add it again)")
            self.key = None if reader.sealer is None else (reader.key_record, reader.sealer)
            self.index = reader.index
            # after the last valid trailer: a killed add's debris, removed here (or a damaged add, kept)
            self.start = size if reader.tail == DAMAGED else reader.end
        self._f.seek(self.start)
        self._f.truncate(self.start)
        self.pos = self.start

    def _lock(self, deadline: float) -> None:
        while True:
            try:
                fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._f.close()
                    raise ArchiveError(f"{self.path} is locked by another lmarc process") from None
                time.sleep(0.1)

    def _still_at_path(self) -> bool:
        """Whether the locked file is still the one the path names (`archiver.rewrite` replaces it)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self._f.fileno())
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self._f.write(view)
            if not n:
                raise OSError(28, "No space left on device")
            view = view[n:]

    def write_chunk(self, payload: bytes) -> dict:
        """Append a payload (sealed, in an encrypted archive); returns its location record for the
        chunk table."""
        if self.key is not None:
            payload = self.key[1].seal(payload, crypt.CHUNK)
        self._write(payload)
        rec = {"offset": self.pos, "length": len(payload), "crc32": zlib.crc32(payload)}
        self.pos += len(payload)
        return rec

    def write_coded(self, coded: list[Coded]) -> list[dict]:
        """Append coded chunks; returns their chunk table: each record with its payload's location."""
        return [c.record | self.write_chunk(c.payload) for c in coded]

    def drop_since(self, pos: int) -> None:
        """Take back what was written after pos (a position since the last commit): a file whose
        chunks were written as it was read, and which then proved unusable, leaves nothing behind."""
        if not self.start <= pos <= self.pos:
            raise ValueError("drop_since: not a position written since the last commit")
        self._f.truncate(pos)
        self._f.seek(pos)
        self.pos = pos

    def commit(self) -> None:
        raw = self.index.to_bytes()
        if self.key is not None:
            raw = self.key[1].seal(raw, crypt.INDEX)
        self._write(raw)
        head = TRAILER_MAGIC + struct.pack("<QQI", self.pos, len(raw), zlib.crc32(raw))
        self._write(head + struct.pack("<I", zlib.crc32(head)))
        os.fsync(self._f.fileno())
        self.start = self.pos = self._f.tell()

    def rollback(self) -> None:
        """Drop everything written since the last commit (the previous index stays the last one)."""
        self._f.truncate(self.start)

    def _unlock_close(self) -> None:
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
        finally:
            self._f.close()

    def close(self) -> None:
        self._unlock_close()
