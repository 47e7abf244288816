"""Rewrite an archive keeping only what some of its entries reference: `lmarc delete` and `compact`.

The format is append-only (`add` never rewrites a byte), so a deleted entry, a file re-added with
new content and every superseded index still take room. A rewrite copies the payloads the kept
entries reference, each once and in their old order, into a new file beside the archive, writes one
index, and renames the new file over the old only when all of it is on disk. Payloads are copied as
they are (disk speed), except a solid block that kept entries use only part of: that is decoded and
its kept members coded again with its codec, as 7z does (a few seconds per 4 MiB block with cm; no
model is needed, as blocks are never LM-coded). Until the rename the archive is untouched: an
interrupt, a full disk or a damaged payload leaves it as it was. The archive stays locked
throughout, and an `add` that was waiting for the lock appends to the new file (`ArchiveWriter`
reopens a path that was replaced while it waited).
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from archiver import classic, contextmix, imagemix
from archiver.container import ArchiveError, ArchiveReader, ArchiveWriter, Index
from archiver.crypt import Key
from archiver.progress import Reporter

TMP_SUFFIX = ".lmarc-tmp"  # the new archive's name until it is complete: .NAME.RANDOM.lmarc-tmp


@dataclass
class Rewritten:
    entries_before: int
    entries_after: int
    bytes_before: int
    bytes_after: int


def rewrite(archive: Path, choose: Callable[[list[dict]], list[dict]], ui: Reporter,
            rekey: Callable[[Key | None], Key | None] | None = None) -> Rewritten:
    """Replace the archive by one holding the entries `choose` keeps of its current ones (called
    under the lock), their objects' payloads and the names of the models those use; under the
    archive's own key (`archiver.crypt`), or the one rekey gives for it (`lmarc passwd`)."""
    ArchiveReader(archive).close()  # a missing or damaged archive is an error here, never created
    archive = Path(os.path.realpath(archive))  # through a symlink: replace the file, not the link
    lock = ArchiveWriter(archive, damaged_ok=True)  # held until the new file is in place: no add slips in
    try:
        old = lock.index
        entries = choose(old.entries)
        key = lock.key if rekey is None else rekey(lock.key)
        digests = {e["sha256"] for e in entries if e.get("type") == "file"}
        objects = {k: v for k, v in old.objects.items() if k in digests}
        chunks = chunks_of(objects)
        models = {c["model"] for c in chunks if c["codec"] == "lm"}
        for stale in archive.parent.glob(f".{glob.escape(archive.name)}.*{TMP_SUFFIX}"):
            stale.unlink(missing_ok=True)  # a rewrite killed before its rename (we hold the lock: none runs)
        fd, tmp = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=TMP_SUFFIX, dir=archive.parent)
        os.close(fd)
        try:
            _same_owner_and_mode(Path(tmp), os.stat(archive))
            out = ArchiveWriter(tmp, key=key)
            try:
                moved = _copy(archive, out, chunks, ui)
                out.index = Index(entries, {k: _relocated(v, moved) for k, v in objects.items()},
                                  {m: n for m, n in old.models.items() if m in models})
                out.commit()
            finally:
                out.close()
            os.replace(tmp, archive)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _sync_dir(archive.parent)
        return Rewritten(len(old.entries), len(entries), lock.start, os.stat(archive).st_size)
    finally:
        lock.close()


def unreferenced(reader: ArchiveReader) -> int:
    """The bytes of the file a compact would free at least: payloads no entry references, superseded
    indexes and trailers, and the debris of an add that was killed (the new index, without the
    objects no entry references, is smaller too)."""
    referenced = sum(c["length"] for c in payloads(chunks_of(reader.index.objects)))
    return reader.size - reader.data_start - referenced - (reader.end - reader.data_end)


def chunks_of(objects: dict[str, dict]) -> list[dict]:
    """Every chunk record of the objects (solid parts of one block each have their own)."""
    return [c for o in objects.values() for s in o["streams"] for c in s["chunks"]]


def payloads(chunks: list[dict]) -> list[dict]:
    """One chunk record per payload the chunks lie in (solid parts share one), in file order: where
    each payload is, its length, CRC and codec, counted once."""
    return sorted({c["offset"]: c for c in chunks}.values(), key=lambda c: c["offset"])


@dataclass
class _Repacked:
    """A solid block re-coded without the members no kept entry references."""

    codec: str
    payload: bytes
    size: int  # decoded bytes
    starts: dict[tuple[int, int], int]  # a kept part's (start, size) in the old block -> its start in this one


def _repack(codec: str, payload: bytes, data: bytes, kept: list[tuple[int, int]]) -> _Repacked | None:
    """The kept parts (start, size) of a block (payload, decoded: data), in their order, coded again
    with its codec (cm2d with its rows, cmpcm as one long channel, as the packer made them) and
    checked by decoding them back; None when that is no smaller. No model: solid blocks are never
    LM-coded."""
    starts, pos = {}, 0
    for start, n in kept:
        starts[(start, n)] = pos
        pos += n
    rest = b"".join(data[a : a + n] for a, n in kept)
    geometry = None
    if codec == "cm2d":
        geometry = contextmix.read_header("cm2d", imagemix.HEADER, payload, len(data))
    elif codec == "cmpcm":
        geometry = (len(rest), 2)  # (the packer's cmpcm blocks are one channel of 16-bit samples)
    out = classic.compress(codec, rest, geometry)
    if len(out) >= len(payload):
        return None
    if classic.decompress(codec, out, len(rest)) != rest:
        raise ArchiveError(f"re-coding a solid block with {codec} did not round-trip; the archive is as it was")
    return _Repacked(codec, out, len(rest), starts)


def _copy(archive: Path, out: ArchiveWriter, chunks: list[dict], ui: Reporter) -> dict[int, dict]:
    """Append each payload the chunks lie in to out, checking its CRC on the way (a damaged payload is refused,
    not carried over); a solid block that kept entries use only part of is re-coded without the
    rest (`_repack`), as 7z does. Returns old offset -> the new location record, with the
    `_Repacked` block under "repacked"."""
    kept: dict[int, set[tuple[int, int]]] = {}
    for c in chunks:
        if "part" in c:
            kept.setdefault(c["offset"], set()).add((c["part"][0], c["size"]))
    moved = {}
    todo = payloads(chunks)
    ui.start("copying", sum(c["length"] for c in todo))
    try:
        with ArchiveReader(archive) as reader:
            for c in todo:
                off = c["offset"]
                parts = sorted(kept.get(off, ()))
                block = c["part"][1] if "part" in c else 0
                repack = sum(n for _, n in parts) < block  # a block that kept entries use only part of
                try:
                    payload = reader.read_chunk(c)
                    data = classic.decompress(c["codec"], payload, block) if repack else b""
                except (ArchiveError, ValueError) as e:
                    raise ArchiveError(f"{e} at offset {off}: a kept entry is damaged; the archive is as it "
                                       "was (delete that entry too, or extract what you can first)") from None
                packed = _repack(c["codec"], payload, data, parts) if repack else None
                moved[off] = out.write_chunk(packed.payload if packed else payload) | {"repacked": packed}
                ui.advance(len(payload))
    finally:
        ui.stop()
    return moved


def _relocated(obj: dict, moved: dict[int, dict]) -> dict:
    """The object with its chunks' locations in the new file (and a re-coded block's codec and parts)."""

    def chunk(c: dict) -> dict:
        loc = moved[c["offset"]]
        new = c | {k: loc[k] for k in ("offset", "length", "crc32")}
        if (packed := loc["repacked"]) is not None:
            new |= {"codec": packed.codec, "part": [packed.starts[(c["part"][0], c["size"])], packed.size]}
        return new

    return obj | {"streams": [s | {"chunks": [chunk(c) for c in s["chunks"]]} for s in obj["streams"]]}


def _same_owner_and_mode(path: Path, like: os.stat_result) -> None:
    """Give the new file the old one's permissions and, where allowed (root), its owner."""
    try:
        os.chown(path, like.st_uid, like.st_gid)
    except PermissionError:
        pass  # not ours to give away: the file stays the rewriting user's, as a copy would
    os.chmod(path, like.st_mode & 0o7777)


def _sync_dir(path: Path) -> None:
    """Make the rename durable (the new file's bytes were synced by its commit)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
