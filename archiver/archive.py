"""The archive operations behind the CLI: add, extract, test, list, delete, compact.

Data flows one way: file -> format plugin (streams) -> stream coder (predictor + range coder or
classic codec) -> container. Extraction runs it backwards and trusts nothing it reads: paths are
checked before anything is written, every file is written under a temporary name and only renamed
into place once its SHA-256 matched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import os
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from archiver import crypt, largefile, owners, registry, rewrite, streamcoder
from archiver.container import DAMAGED, ArchiveError, ArchiveReader, ArchiveWriter, Index
from archiver.formats import RAW, Stream, join_streams, split_file
from archiver.modelfile import ModelError
from archiver.plugins import format_by_name
from archiver.progress import Reporter
from archiver.solid import SolidPacker
from archiver.streamcoder import Predictor

EXTRACT_GROUP_BYTES = 64 << 20  # decode files in groups this large so LM chunks share batches
WHOLE_CM_MAX = 256 << 10  # an image or audio file up to this size is also tried whole with cm (see _store_object)


class LmarcError(Exception):
    """An error to report to the user as one line."""


@dataclass
class Settings:
    model: str = registry.DEFAULT
    device: str = "cpu"
    threads: int | None = None
    solid: bool = True  # code small files' streams together in blocks where that is smaller (archiver.solid)
    checksum: bool = False  # add: read every file, even one whose size, mtime and mode match its entry (see _add_one)
    _predictors: dict[str, Predictor] = field(default_factory=dict)
    tracks: dict[str, streamcoder.Track] = field(default_factory=dict)  # per kind, for this run (streamcoder.Track)

    def predictor(self, model_id: str | None = None, hint: str | None = None) -> Predictor:
        """The chosen model (`model_id` None) or the one an archive names by id."""
        if model_id is None:
            return self._named(self.model)
        return self._get(model_id, lambda: registry.by_id(model_id, hint))

    def reading(self, index: Index) -> Callable[[str | None], Predictor]:
        """The predictor of each model id an archive's LM chunks name, found through the name its
        index keeps for that id (the hint when the id is not installed under it)."""
        return lambda mid: self.predictor(mid, index.models.get(mid))

    def predictor_for(self, kind: str) -> Predictor:
        """The chosen model where its vocabulary codes this stream kind (a text model codes text),
        else the default byte-level model (images, audio and binary with a text model)."""
        main = self.predictor()
        return main if kind in main.vocab.kinds else self.byte_predictor()

    def byte_predictor(self) -> Predictor:
        """The fallback for streams the chosen model cannot code: the chosen model if byte-level."""
        main = self.predictor()
        return main if len(main.vocab.kinds) > 1 else self._named(registry.DEFAULT)

    def encode(self, kind: str, data: bytes, on_progress, geometry: tuple[int, int] | None = None) \
            -> list[streamcoder.Coded]:
        """`streamcoder.encode_stream` of one stream with this run's model for its kind (none for
        stored streams or `--model none`), the byte model as fallback, and the kind's Track."""
        pred = None if kind == "stored" or self.model == registry.NONE else self.predictor_for(kind)
        track = self.tracks.setdefault(kind, streamcoder.Track())
        return streamcoder.encode_stream(kind, data, pred, on_progress, self.byte_predictor, geometry, track)

    def name_models(self, index: Index, records: Iterable[dict]) -> None:
        """Record in the index the name of each model the LM chunks among records used (id -> name:
        the hint when a reader lacks it)."""
        for mid in {r["model"] for r in records if r["codec"] == "lm"}:
            index.models[mid] = self.predictor(mid).name

    def _named(self, name: str) -> Predictor:
        return self._get(f"name:{name}", lambda: registry.load(name), name)

    def _get(self, key: str, load, name: str | None = None) -> Predictor:
        if key not in self._predictors:
            pred = Predictor(load(), self.device, self.threads)
            pred.name = name or pred.name
            self._predictors[key] = self._predictors.setdefault(pred.model.model_id, pred)
        return self._predictors[key]


@dataclass
class Result:
    ok: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth telling, not a failure
    detail: str = ""  # said after the count of entries (add: how the archive grew)


def _check_tail(reader: ArchiveReader, res: Result) -> None:
    """What follows the archive's last readable add (`ArchiveReader.tail`): a damaged add is a
    problem of a test or an extraction (its files are missing); an unfinished one, or a writer's
    work in progress, only a note."""
    note = reader.tail_note()
    if note:
        (res.problems if reader.tail == DAMAGED and not reader.busy else res.notes).append(note)


# ---- names --------------------------------------------------------------------------------------
def archive_name(path: str) -> str:
    """The stored name of a path given on the command line: relative, no '..', POSIX separators."""
    parts = [p for p in PurePosixPath(Path(path).as_posix()).parts if p not in ("/", ".", "..")]
    return "/".join(parts) or "."


def safe_member_path(name: object) -> PurePosixPath:
    """Validate a stored name before extraction: relative, no '..', no drive letter, no NUL."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise ArchiveError(f"refusing unsafe member name {name!r}")
    p = PurePosixPath(name)
    if not p.parts or p.is_absolute() or ".." in p.parts or (len(p.parts[0]) >= 2 and p.parts[0][1] == ":"):
        raise ArchiveError(f"refusing unsafe member name {name!r}")
    return p


def excluded(name: str, patterns: list[str]) -> bool:
    """tar's --exclude: a pattern without '/' matches any one component of the stored name (`*.o`,
    `.git`), one with '/' the name or a directory above it (`src/build`); either way what lies under
    an excluded directory goes with it. Shell wildcards, case-sensitive."""
    parts = name.split("/")
    for pat in patterns:
        if "/" in pat:
            pat = pat.strip("/")
            if any(fnmatch.fnmatchcase("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)):
                return True
        elif any(fnmatch.fnmatchcase(part, pat) for part in parts):
            return True
    return False


def _walk(top: Path, base: str, exclude: list[str]) -> Iterator[tuple[Path, str]]:
    """top and, for a directory, what is under it (links not followed), in name order, each with its
    stored name (top's is base); a name an exclude pattern matches is left out (`excluded`), and a
    directory so matched is not entered."""

    def keep(name: str) -> bool:
        return name == "." or not excluded(name, exclude)

    def under(prefix: str, n: str) -> str:
        return n if prefix == "." else f"{prefix}/{n}"

    if not keep(base):
        return
    yield top, base
    if top.is_dir() and not top.is_symlink():
        for root, dirs, files in os.walk(top, followlinks=False):
            rel = Path(root).relative_to(top).as_posix()
            prefix = base if rel == "." else under(base, rel)
            dirs[:] = sorted(d for d in dirs if keep(under(prefix, d)))
            for n in dirs + sorted(f for f in files if keep(under(prefix, f))):
                yield Path(root) / n, under(prefix, n)


# ---- add ----------------------------------------------------------------------------------------
def add(archive: Path, paths: list[str], settings: Settings, ui: Reporter, exclude: list[str] | None = None,
        piped: tuple[str, BinaryIO] | None = None, remove: bool = False, encrypt: bool = False) -> Result:
    """Add the paths (directories with what is under them, except names matching an exclude
    pattern, see `excluded`) to the archive, creating it if needed; piped = (name, stream) adds one
    more file, of the bytes read from the stream (7z's -si: `pg_dump db | lmarc add - ...`).
    remove: then remove what was added (`_remove_added`), every file read first (`--checksum`):
    a file is never removed on the word of its size and mtime alone. encrypt: a new archive is
    encrypted (`archiver.crypt`; an existing one is written as it is, and must be encrypted too)."""
    if remove:
        settings = dataclasses.replace(settings, checksum=True)
    spool = None
    try:
        if piped is not None:
            name = archive_name(piped[0])
            if name == ".":
                raise LmarcError(f"{piped[0]!r} cannot name a file in the archive")
            try:
                spool = (_spool(piped[1], archive.absolute().parent), name)
            except OSError as e:
                raise LmarcError(f"cannot take in standard input: {e.strerror or e}; nothing was added") from e
        return _add(archive, paths, settings, ui, exclude or [], spool, remove, encrypt)
    except KeyboardInterrupt:
        raise LmarcError("interrupted: nothing was added, the archive is as it was") from None
    finally:
        if spool is not None:
            spool[0].unlink(missing_ok=True)


def _spool(stream: BinaryIO, directory: Path) -> Path:
    """A stream's bytes in a temporary file beside the archive (where the room for them must be
    anyway), so that they are added like any file: read whole, or a segment at a time when large
    (`largefile`), with the mode a new file gets here and the time they were read."""
    fd, tmp = tempfile.mkstemp(prefix=".lmarc-stdin-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(stream, f, 1 << 20)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _add(archive: Path, paths: list[str], settings: Settings, ui: Reporter, exclude: list[str],
         spool: tuple[Path, str] | None, remove: bool, encrypt: bool) -> Result:
    res = Result()
    items = []
    added: list[tuple[Path, dict]] = []  # for remove: each path this add stored, with its entry
    for arg in paths:
        top = Path(arg)
        if not top.exists() and not top.is_symlink():
            res.problems.append(f"{arg}: no such file or directory")
            continue
        for p, name in _walk(top, archive_name(arg), exclude):
            if name != ".":  # `lmarc add .` stores what is in the directory, not the directory itself
                items.append((p, name))
    archive_abs = archive.resolve()
    items = [(p, n) for p, n in items if p.resolve() != archive_abs] + ([spool] if spool else [])
    total = sum(p.lstat().st_size for p, _ in items if p.is_file() and not p.is_symlink())
    writer = ArchiveWriter(archive, encrypt=encrypt)
    packer = SolidPacker(writer, lambda n: ui.file_done(0, n), settings.tracks) if settings.solid else None
    committed = False
    size_before = 0 if writer.created else writer.start
    before = (list(writer.index.entries), dict(writer.index.objects), dict(writer.index.models))
    try:
        ui.start("adding", total)
        by_name = {e["path"]: i for i, e in enumerate(writer.index.entries)}
        inodes: dict[tuple[int, int], dict] = {}  # files of several names (hard links): the first one's entry
        for p, name in items:
            was = writer.index.entries[by_name[name]] if name in by_name else None
            entry = _add_one(p, name, writer, packer, settings, ui, res, inodes, was)
            if entry is None:
                continue
            if name in by_name:
                writer.index.entries[by_name[name]] = entry
            else:
                by_name[name] = len(writer.index.entries)
                writer.index.entries.append(entry)
            res.ok += 1
            if remove and (spool is None or p != spool[0]):
                added.append((p, entry))
        if packer:
            packer.flush()
        index = writer.index
        if writer.created or writer.pos > writer.start or (index.entries, index.objects, index.models) != before:
            writer.commit()  # (an add that changed nothing appends no index: the archive stays as it was)
            committed = True
        res.detail = f"archive {size_before:,} -> {writer.start:,} bytes"
    except OSError as e:  # (Ctrl-C: rolled back below, then said by add)
        raise LmarcError(f"cannot write {archive}: {e.strerror or e}; the archive is as it was") from e
    finally:
        ui.stop()
        if not committed:
            writer.rollback()
        writer.close()
        if not committed and writer.created:
            archive.unlink(missing_ok=True)
    if remove:
        _remove_added(added, res)
    return res


def _remove_added(added: list[tuple[Path, dict]], res: Result) -> None:
    """tar's --remove-files, once the add is committed and synced (or found to change nothing): each
    file and symlink still as it was read (type, size and mtime), then each directory that is
    empty by then, deepest first. One changed since it was read is kept and reported; a directory
    still holding something (excluded, unreadable or changed) is kept."""
    removed, dirs = 0, []
    for p, e in added:
        if e["type"] == "dir":
            dirs.append(p)
            continue
        try:
            st = p.lstat()
            if e["type"] == "symlink":
                same = stat.S_ISLNK(st.st_mode) and os.readlink(p) == e["link"]
            else:
                same = stat.S_ISREG(st.st_mode) and st.st_size == e["size"]
            if not same or st.st_mtime_ns != e["mtime"]:
                res.problems.append(f"{e['path']}: changed since it was read; not removed")
                continue
            p.unlink()
            removed += 1
        except FileNotFoundError:
            continue  # (named twice on the command line, or gone meanwhile: nothing to remove)
        except OSError as err:
            res.problems.append(f"{e['path']}: not removed ({err.strerror or err})")
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()
            removed += 1
    res.detail += f"; {removed} removed"


def _add_one(p: Path, name: str, writer: ArchiveWriter, packer: SolidPacker | None, settings: Settings, ui: Reporter,
             res: Result, inodes: dict[tuple[int, int], dict], was: dict | None = None) -> dict | None:
    """The entry of one walked path, its content stored if new. A file whose size, mtime and mode
    match its entry from an earlier add (`was`) keeps that entry without being read, as zpaq and
    rsync decide (`--checksum`, Settings.checksum, reads it anyway); another name of a file this add
    already stored (a hard link) is not read either."""
    st = p.lstat()
    entry = {"path": name, "mode": stat.S_IMODE(st.st_mode), "mtime": st.st_mtime_ns} | owners.recorded(st)
    if stat.S_ISLNK(st.st_mode):
        return entry | {"type": "symlink", "link": os.readlink(p), "size": 0}
    if stat.S_ISDIR(st.st_mode):
        return entry | {"type": "dir", "size": 0}
    if not stat.S_ISREG(st.st_mode):
        res.problems.append(f"{name}: not a regular file, directory or symlink; skipped")
        return None
    if (not settings.checksum and was is not None and was.get("type") == "file" and "hardlink" not in was
            and all(was.get(k) == entry[k] for k in ("mtime", "mode", "uid", "gid")) and was.get("size") == st.st_size
            and was.get("sha256") in writer.index.objects):
        _not_read(ui, name, st.st_size)
        if st.st_nlink > 1:
            inodes[(st.st_dev, st.st_ino)] = was
        return was
    first = inodes.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
    if first is not None and first["path"] != name:  # another name of a file this add stored: not read again
        _not_read(ui, name, first["size"])
        return entry | {"type": "file", "size": first["size"], "sha256": first["sha256"], "hardlink": first["path"]}
    try:
        if st.st_size >= largefile.LARGE_FILE:  # never read whole: coded as it is read (archiver.largefile)
            digest, size = largefile.digest(p)
            store = lambda: largefile.store(p, digest, writer, settings, ui)  # noqa: E731
        else:
            data = p.read_bytes()
            digest, size = hashlib.sha256(data).hexdigest(), len(data)
            store = lambda: _store_object(data, name, writer, packer, settings, ui)  # noqa: E731
    except OSError as e:
        res.problems.append(f"{name}: cannot read ({e.strerror}); skipped")
        return None
    entry |= {"type": "file", "size": size, "sha256": digest}
    ui.file(name, size)
    if digest not in writer.index.objects:
        try:
            obj = store()
        except largefile.ReadError as e:
            res.problems.append(f"{name}: cannot read ({e}); skipped")
            return None
        if obj is None:
            res.problems.append(f"{name}: changed while it was being read; skipped")
            return None
        writer.index.objects[digest] = obj
    else:
        ui.advance(size)
    # (streams waiting in a solid block have no chunks yet: the packer reports their bytes when written)
    ui.file_done(size, sum(c["length"] for s in writer.index.objects[digest]["streams"] for c in s.get("chunks", ())))
    if st.st_nlink > 1:
        inodes[(st.st_dev, st.st_ino)] = entry
    return entry


def _not_read(ui: Reporter, name: str, size: int) -> None:
    """Progress for a file whose stored content is taken as it is, unread."""
    ui.file(name, size)
    ui.advance(size)
    ui.file_done(size, 0)


def _store_object(data: bytes, name: str, writer: ArchiveWriter, packer: SolidPacker | None, settings: Settings,
                  ui: Reporter) -> dict:
    """Code a file's streams; if the classic codecs on the file's own bytes do better (a PNG whose
    pixels the model cannot beat its deflate on), keep those instead."""
    chosen = split_file(data, name)
    scale = len(data) / max(1, sum(len(s.data) for s in chosen.split.streams))  # progress in file bytes
    coded = []
    for s in chosen.split.streams:  # text to a text model, the rest (and text it cannot tokenize) to bytes
        coded.append((s, settings.encode(s.kind, s.data, lambda n: ui.advance(round(n * scale)), s.geometry)))
    fmt, recipe = chosen.format, chosen.split.recipe
    # (a format whose one stream is the file itself was already weighed against these bytes' classic coding)
    if fmt.name != RAW and [s.data for s in chosen.split.streams] != [data]:
        # Without cm where a stream has its structured codec (an image's rows, an audio stream's
        # samples) and the file is larger than WHOLE_CM_MAX: on 120 image and audio files sampled
        # from the corpus the whole file never won, while its classic coding took as long as the
        # streams' (4.1 s against 4.3), 2.3 s of it cm. On a small file cm costs little beside xz
        # (300 dev spoken digits, `--model none`: +2.5%), and it can win: an unseen 31 KB game sound
        # took 4,059 bytes whole under cm against 4,472 as cmpcm samples.
        structured = any(s.geometry is not None for s in chosen.split.streams)
        whole = streamcoder.classic_blocks(data, cm=not structured or len(data) <= WHOLE_CM_MAX)
        if sum(len(c.payload) for c in whole) < sum(len(c.payload) for _, cs in coded for c in cs):
            fmt, recipe = format_by_name(RAW), {}
            coded = [(Stream("binary", data), whole)]
    settings.name_models(writer.index, (c.record for _, cs in coded for c in cs))
    streams = []
    for s, cs in coded:
        rec = {"kind": s.kind, "size": len(s.data)}
        if not (packer and packer.offer(rec, s.data, cs, s.geometry)):
            rec["chunks"] = writer.write_coded(cs)
        streams.append(rec)
    return {"format": fmt.name, "format_version": fmt.version, "recipe": recipe, "streams": streams}


# ---- reading ------------------------------------------------------------------------------------
def select(entries: list[dict], members: list[str] | None, exclude: list[str] | None = None) -> list[dict]:
    """The entries named by members (each with what is under it; all when none), less those an
    exclude pattern matches (`excluded`). A member not in the archive is an error; one that is
    there but excluded is not."""
    chosen = list(entries)
    if members:
        wanted = [archive_name(m) for m in members]

        def under(e: dict, w: str) -> bool:
            path = str(e.get("path", ""))
            return path == w or path.startswith(w + "/")

        chosen = [e for e in entries if any(under(e, w) for w in wanted)]
        missing = [m for m, w in zip(members, wanted, strict=True) if not any(under(e, w) for e in chosen)]
        if missing:
            raise LmarcError(f"not in the archive: {', '.join(missing)}")
    return [e for e in chosen if not (exclude and excluded(str(e.get("path", "")), exclude))]


def _check_models(reader: ArchiveReader, entries: list[dict], settings: Settings) -> None:
    """Fail before writing anything when a needed model is missing or different."""
    for e in entries:
        obj = reader.index.objects.get(e.get("sha256", "")) if e.get("type") == "file" else None
        for s in (obj or {}).get("streams", []):
            for c in s.get("chunks", []):
                if c.get("codec") == "lm":
                    try:
                        settings.reading(reader.index)(c.get("model"))
                    except ModelError as err:
                        raise LmarcError(str(err)) from None


def _file_bytes(entries: list[dict]) -> int:
    """The bytes of the file entries: the progress bar's total."""
    return sum(int(e.get("size", 0)) for e in entries if e.get("type") == "file")


def _decode_files(reader: ArchiveReader, entries: list[dict], settings: Settings, ui: Reporter) \
        -> Iterator[tuple[dict, bytes | Iterator[bytes] | None, str | None]]:
    """Yield (entry, data, problem) for file entries in order, decoding in groups. data is the
    verified bytes, or for an object too large to hold (`largefile.is_segmented`) an iterator of its
    pieces that verifies them as it ends (read it through `_pieces`); None with a problem."""
    files = [e for e in entries if e.get("type") == "file"]
    group: list[dict] = []
    for e in [*files, None]:
        obj = None if e is None else reader.index.objects.get(e.get("sha256"))
        if e is not None and not (isinstance(obj, dict) and largefile.is_segmented(obj)):
            group.append(e)
            continue
        for f, data, problem in _decode_in_groups(reader, group, settings, ui):  # the files before it
            ui.file_done(int(f.get("size", 0)), 0)  # re-sync progress to file bytes (chunks count stream bytes)
            yield f, data, problem
        group = []
        if e is not None:
            yield e, largefile.pieces(reader, e["sha256"], obj, settings, ui), None
            ui.file_done(int(e.get("size", 0)), 0)


def _decode_in_groups(reader: ArchiveReader, files: list[dict], settings: Settings, ui: Reporter) \
        -> Iterator[tuple[dict, bytes | None, str | None]]:
    for group in streamcoder.size_groups(files, lambda e: int(e.get("size", 0)), EXTRACT_GROUP_BYTES):
        yield from _decode_group(reader, group, settings, ui, {})


def _decode_group(reader: ArchiveReader, group: list[dict], settings: Settings, ui: Reporter,
                  blocks: dict[int, bytes | ValueError]) -> Iterator[tuple[dict, bytes | None, str | None]]:
    """(entry, data, problem) of each file of the group, whose chunks are decoded together (LM chunks
    of several files share a batch). When that fails, the files are decoded again one by one, so
    that only the damaged ones are reported (`blocks` keeps solid blocks decoded once)."""
    jobs, owner_of = [], []
    plans = {}
    for gi, e in enumerate(group):
        try:
            obj = reader.index.objects[e["sha256"]]
            plan = []
            for s in obj["streams"]:
                ids = []
                for c in s["chunks"]:
                    jobs.append((s["kind"], c, reader.read_chunk(c)))
                    owner_of.append(gi)
                    ids.append(len(jobs) - 1)
                plan.append((ids, s["size"]))
            plans[gi] = (obj, plan)
        except (ArchiveError, KeyError, TypeError) as err:
            plans[gi] = err
    bad = {gi for gi, p in plans.items() if isinstance(p, Exception)}
    keep = [i for i, o in enumerate(owner_of) if o not in bad]
    try:
        decoded = dict(zip(keep, streamcoder.decode_chunks(
            [jobs[i] for i in keep], settings.reading(reader.index),
            ui.advance, blocks), strict=True))
    except (ValueError, KeyError, TypeError, ArchiveError) as err:
        if len(group) == 1:
            yield group[0], None, f"damaged ({err})"
            return
        for e in group:  # find the damaged file(s) one by one
            yield from _decode_group(reader, [e], settings, ui, blocks)
        return
    for gi, e in enumerate(group):
        p = plans[gi]
        if isinstance(p, Exception):
            yield e, None, f"damaged ({p})"
            continue
        obj, plan = p
        try:
            streams = [b"".join(decoded[i] for i in ids) for ids, _ in plan]
            if [len(s) for s in streams] != [n for _, n in plan]:
                raise ValueError("stream size mismatch")
            data = join_streams(obj["format"], streams, obj.get("recipe", {}))
        except Exception as err:  # a damaged recipe can make a plugin raise anything
            yield e, None, f"damaged ({err})"
            continue
        if hashlib.sha256(data).hexdigest() != e["sha256"]:
            yield e, None, "damaged (checksum mismatch)"
            continue
        yield e, data, None


def test(archive: Path, settings: Settings, ui: Reporter, version: int | None = None, quick: bool = False) -> Result:
    """Decode and verify every entry (of the archive as its `version`th add left it, see
    `ArchiveReader`), writing nothing; quick: check the stored bytes only (`_check_payloads`)."""
    with ArchiveReader(archive, version) as reader:
        entries = reader.index.entries
        if quick:
            res = _check_payloads(reader, entries, ui)
        else:
            res = _verify_files(reader, entries, settings, ui, "testing", lambda _piece: None)
        res.ok += sum(1 for e in entries if e.get("type") != "file")
        _check_tail(reader, res)
    return res


def _check_payloads(reader: ArchiveReader, entries: list[dict], ui: Reporter) -> Result:
    """`test --quick`: each payload the file entries' content lies in, read back against the CRC-32
    taken when it was written, nothing decoded and no model loaded. Bit rot or a bad copy is found
    at disk speed (a full test of 4 MB of LM-coded text decodes for minutes); what only the full
    test finds is a fault in decoding itself."""
    res = Result()
    files = [e for e in entries if e.get("type") == "file"]
    objects = {e["sha256"]: reader.index.objects[e["sha256"]] for e in files}
    todo = rewrite.payloads(rewrite.chunks_of(objects))
    bad: dict[int, str] = {}
    ui.start("checking", sum(c["length"] for c in todo))
    try:
        for c in todo:
            try:
                reader.read_chunk(c)
            except ArchiveError as err:
                bad[c["offset"]] = str(err)
            ui.advance(c["length"])
    finally:
        ui.stop()
    for e in files:
        chunks = rewrite.chunks_of({e["sha256"]: objects[e["sha256"]]})
        errors = sorted({bad[c["offset"]] for c in chunks if c["offset"] in bad})
        if errors:
            res.problems.append(f"{e['path']}: damaged ({'; '.join(errors)})")
        else:
            res.ok += 1
    return res


def _verify_files(reader: ArchiveReader, entries: list[dict], settings: Settings, ui: Reporter, verb: str,
                  write: Callable[[bytes], object]) -> Result:
    """Decode the file entries and verify them, handing each file's bytes to write a piece at a
    time (`test` drops them, `extract -O` writes them out); a problem per damaged file. A file too
    large to hold is verified as its last piece ends: a damaged one may have been written in part."""
    res = Result()
    _check_models(reader, entries, settings)
    ui.start(verb, _file_bytes(entries))
    try:
        for e, data, problem in _decode_files(reader, entries, settings, ui):
            try:
                for piece in _pieces(data) if problem is None else ():
                    write(piece)
            except _Damaged as err:
                problem = str(err)
            if problem:
                res.problems.append(f"{e.get('path')}: {problem}")
            else:
                res.ok += 1
    finally:
        ui.stop()
    return res


def extract(archive: Path, dest: Path, members: list[str] | None, overwrite: bool, settings: Settings,
            ui: Reporter, to: BinaryIO | None = None, exclude: list[str] | None = None,
            version: int | None = None, same_owner: bool | None = None, strip: int = 0) -> Result:
    """Restore the entries (or the members and what is under them, less what exclude matches) under
    dest; with `to`, write the files' bytes one after another to that stream instead, as `tar -O`
    does, and nothing to disk. `version`: the archive as its nth add left it (`ArchiveReader`).
    same_owner: give each its recorded owner (`archiver.owners`; by default when run as root).
    strip: leave out the first parts of each name (`_stripped`)."""
    owner = owners.may_restore() if same_owner is None else same_owner
    res = Result()
    with ArchiveReader(archive, version) as reader:
        entries = select(reader.index.entries, members, exclude)
        if to is not None:  # the files' bytes one after another, in archive order, each once verified
            res = _verify_files(reader, entries, settings, ui, "extracting", to.write)
            to.flush()
            _check_tail(reader, res)
            return res
        _check_tail(reader, res)
        entries = _stripped(entries, strip)
        for e in entries:
            safe_member_path(e.get("path"))
        _check_models(reader, entries, settings)
        dest.mkdir(parents=True, exist_ok=True)
        dest = dest.resolve()
        # another name of a file extracted here, with its content (tar's hard link), is linked to it;
        # one whose first name is not extracted, or whose checksum differs, is written as a file
        firsts = {e.get("path"): e.get("sha256") for e in entries if e.get("type") == "file" and "hardlink" not in e}
        linked = {id(e) for e in entries if e.get("type") == "file" and e.get("hardlink") in firsts
                  and firsts[e["hardlink"]] == e.get("sha256")}
        files = [e for e in entries if id(e) not in linked]
        written: set[str] = set()
        ui.start("extracting", _file_bytes(files))
        try:
            dirs = []
            for e in entries:
                if e.get("type") == "dir":
                    try:
                        target = _prepare_target(dest, e["path"], overwrite, is_dir=True)
                        target.mkdir(exist_ok=True)
                        dirs.append((target, e))
                        res.ok += 1
                    except (ArchiveError, OSError) as err:
                        res.problems.append(f"{e['path']}: {err}")
            for e, data, problem in _decode_files(reader, files, settings, ui):
                if problem:
                    res.problems.append(f"{e.get('path')}: {problem}")
                    continue
                try:
                    _write_file(dest, e, data, overwrite, owner)
                    written.add(e["path"])
                    res.ok += 1
                except (_Damaged, ArchiveError, OSError) as err:
                    res.problems.append(f"{e['path']}: {err}")
            for e in entries:
                try:
                    if e.get("type") == "symlink":
                        _write_symlink(dest, e, overwrite, owner)
                    elif id(e) in linked:
                        _write_hardlink(dest, e, written, overwrite)
                    else:
                        continue
                    res.ok += 1
                except (ArchiveError, OSError) as err:
                    res.problems.append(f"{e['path']}: {err}")
            for target, e in reversed(dirs):
                _apply_meta(target, e, owner)
        finally:
            ui.stop()
    return res


def _stripped(entries: list[dict], n: int) -> list[dict]:
    """tar's --strip-components: each entry named without its first n parts (`-C ~/src
    --strip-components 1` puts project-1.0/src/a.c at ~/src/src/a.c); an entry with no more parts
    than that is left out, and hard link targets are renamed alike."""

    def strip(name: object) -> str | None:
        parts = str(name).split("/")
        return "/".join(parts[n:]) if len(parts) > n else None

    if not n:
        return entries
    out = []
    for e in entries:
        name = strip(e.get("path"))
        if name is None:
            continue
        e = e | {"path": name}
        if "hardlink" in e:
            first = strip(e.pop("hardlink"))
            if first is not None:
                e["hardlink"] = first
        out.append(e)
    return out


def _prepare_target(dest: Path, name: str, overwrite: bool, is_dir: bool = False) -> Path:
    """dest/name, after checking no existing component is a symlink (never followed) and the
    target itself may be written."""
    rel = safe_member_path(name)
    cur = dest
    for part in rel.parts[:-1]:
        cur = cur / part
        if cur.is_symlink():
            raise ArchiveError(f"refusing to write through the existing symlink {cur}")
        cur.mkdir(exist_ok=True)
    target = dest / rel
    if target.is_symlink() or (target.exists() and not (is_dir and target.is_dir())):
        if not overwrite:
            raise ArchiveError("exists (use --overwrite to replace it)")
        if target.is_dir() and not target.is_symlink():
            raise ArchiveError("a directory is in the way")
        target.unlink()
    return target


def _apply_meta(target: Path, e: dict, owner: bool) -> None:
    if owner:
        owners.restore(target, e)  # (before the mode: a change of owner may clear mode bits)
    mode = e.get("mode")
    if isinstance(mode, int):
        os.chmod(target, mode & 0o777)  # never setuid, setgid or sticky
    mtime = e.get("mtime")
    if isinstance(mtime, int):
        os.utime(target, ns=(mtime, mtime))


class _Damaged(Exception):
    """A segmented object's pieces did not decode or verify (reported like a damaged file)."""


def _pieces(data: bytes | Iterator[bytes]) -> Iterator[bytes]:
    """The pieces of a file's data from _decode_files: verified bytes are one piece; a segmented
    object's are verified as they end, and their decoding errors are raised as _Damaged."""
    if isinstance(data, bytes):
        yield data
        return
    try:
        yield from data
    except (ValueError, KeyError, TypeError, ArchiveError) as err:
        raise _Damaged(f"damaged ({err})") from err


def _write_file(dest: Path, e: dict, data: bytes | Iterator[bytes], overwrite: bool, owner: bool) -> None:
    """Write the file under a temporary name, renamed into place only once all of it was written
    (and, for a segmented object, verified)."""
    target = _prepare_target(dest, e["path"], overwrite)
    fd, tmp = tempfile.mkstemp(prefix=".lmarc-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in _pieces(data):
                f.write(piece)
        _apply_meta(Path(tmp), e, owner)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_symlink(dest: Path, e: dict, overwrite: bool, owner: bool) -> None:
    link = e.get("link")
    if not isinstance(link, str) or not link or "\x00" in link:
        raise ArchiveError("bad symlink target")
    rel = safe_member_path(e["path"])
    resolved = os.path.normpath(os.path.join(str(rel.parent), link))
    if os.path.isabs(link) or resolved == ".." or resolved.startswith("../"):
        raise ArchiveError(f"refusing symlink that points outside the destination ({link})")
    target = _prepare_target(dest, e["path"], overwrite)
    os.symlink(link, target)
    if owner:
        owners.restore(target, e)


# ---- delete, compact ------------------------------------------------------------------------------
def delete(archive: Path, members: list[str], ui: Reporter) -> rewrite.Rewritten:
    """Remove the members (each with what is under it) and rewrite the archive without the room
    they and anything else no entry references took (`archiver.rewrite`)."""

    def choose(entries: list[dict]) -> list[dict]:
        gone = {id(e) for e in select(entries, members)}
        return [e for e in entries if id(e) not in gone]

    return _rewrite(archive, choose, ui)


def compact(archive: Path, ui: Reporter) -> rewrite.Rewritten:
    """Rewrite the archive with every entry but without what none references: the data of files
    re-added with new content, and the superseded indexes every add leaves behind."""
    return _rewrite(archive, list, ui)


def rename(archive: Path, pairs: list[tuple[str, str]]) -> int:
    """7z's rn: each OLD entry, with what is under it, takes the name NEW (hard link targets
    follow), in a new version of the index; no payload is touched, and `--until` still finds the
    old names. Returns how many entries were renamed. A NEW that is not a plain relative name, an
    OLD that is not in the archive, or a name that would be taken twice, is an error before
    anything is written."""
    writer = ArchiveWriter(archive)
    committed = False
    try:
        entries = writer.index.entries
        renamed: dict[str, str] = {}
        for old, new in pairs:
            if archive_name(new) != new.strip("/") or archive_name(new) == ".":
                raise LmarcError(f"{new!r} cannot name an entry (a relative name without '..')")
            base = archive_name(old)
            for e in select(entries, [old]):
                renamed[e["path"]] = archive_name(new) + e["path"][len(base) :]
        counts = Counter(renamed.get(e["path"], e["path"]) for e in entries)
        taken = sorted(n for n, k in counts.items() if k > 1)
        if taken:
            raise LmarcError(f"the archive already has {', '.join(taken)}; nothing was renamed")
        for e in entries:
            e["path"] = renamed.get(e["path"], e["path"])
            if e.get("hardlink") in renamed:
                e["hardlink"] = renamed[e["hardlink"]]
        writer.commit()
        committed = True
        return len(renamed)
    except KeyboardInterrupt:
        raise LmarcError("interrupted: nothing was renamed") from None
    finally:
        if not committed:
            writer.rollback()
        writer.close()


def passwd(archive: Path, ui: Reporter, remove: bool = False) -> rewrite.Rewritten:
    """A new password for an archive (`crypt.new_password`), or encryption for a plain one; remove:
    no more encryption. The archive is rewritten as `compact` does (one version, no dead room),
    encrypted payloads under their old data key, wrapped by the new password (`archiver.crypt`)."""

    def rekey(old: crypt.Key | None) -> crypt.Key | None:
        if remove:
            return None
        try:
            return crypt.new_key_record(crypt.new_password(), None if old is None else old[1].key)
        except crypt.CryptError as e:
            raise LmarcError(str(e)) from None

    return _rewrite(archive, lambda entries: entries, ui, rekey)


def _rewrite(archive: Path, choose: Callable[[list[dict]], list[dict]], ui: Reporter,
             rekey: Callable[[crypt.Key | None], crypt.Key | None] | None = None) -> rewrite.Rewritten:
    try:
        return rewrite.rewrite(archive, choose, ui, rekey)
    except KeyboardInterrupt:
        raise LmarcError("interrupted: the archive is as it was") from None
    except OSError as e:
        raise LmarcError(f"cannot rewrite {archive}: {e.strerror or e}; the archive is as it was") from e


def diff(archive: Path, dest: Path, members: list[str] | None = None, exclude: list[str] | None = None,
         version: int | None = None) -> tuple[list[tuple[str, str]], int, str | None]:
    """tar's --diff, for checking a backup against its source (or an extraction against its
    archive): how what lies under dest differs from the entries (or the members and what is under
    them, less what exclude matches), as (name, difference) in archive order. A file is compared by
    size, then SHA-256 against the one its entry keeps (so no model is loaded and nothing is
    decoded), then mode and mtime; a directory by mode and by the names in it that the archive does
    not have; a symlink by its target. Also returns how many entries were compared and what follows
    the archive's last readable add (`ArchiveReader.tail_note`)."""
    with ArchiveReader(archive, version) as reader:
        entries = select(reader.index.entries, members, exclude)
        note = reader.tail_note()
    names = {e.get("path") for e in entries}
    found: list[tuple[str, str]] = []
    for e in entries:
        name = str(e.get("path"))
        target = dest / safe_member_path(name)
        try:
            for what in _differences(target, e):
                found.append((name, what))
            if e.get("type") == "dir" and stat.S_ISDIR(target.lstat().st_mode):
                found += [(f"{name}/{n}", "not in the archive") for n in sorted(os.listdir(target))
                          if f"{name}/{n}" not in names and not excluded(f"{name}/{n}", exclude or [])]
        except FileNotFoundError:
            found.append((name, "missing"))
        except OSError as err:
            found.append((name, f"cannot read ({err.strerror or err})"))
    return found, len(entries), note


def _differences(target: Path, e: dict) -> Iterator[str]:
    """How the path differs from its entry (`diff`); raises OSError when it cannot be read."""
    st = target.lstat()
    kind = "symlink" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else \
        "file" if stat.S_ISREG(st.st_mode) else "special file"
    if kind != e.get("type"):
        yield f"a {kind} here, a {e.get('type')} in the archive"
        return
    if kind == "symlink":
        if os.readlink(target) != e.get("link"):
            yield f"links to {os.readlink(target)!r} here, to {e.get('link')!r} in the archive"
        return
    if (owner := owners.differs(st, e)) is not None:
        yield owner
    if "mode" in e and stat.S_IMODE(st.st_mode) != e["mode"]:
        yield f"mode {stat.S_IMODE(st.st_mode):o} here, {e['mode']:o} in the archive"
    if kind == "dir":
        return
    if st.st_size != e.get("size", 0):
        yield f"size {st.st_size:,} here, {e.get('size', 0):,} in the archive"
    elif largefile.digest(target)[0] != e.get("sha256"):
        yield "content differs (same size)"
    if "mtime" in e and st.st_mtime_ns != e["mtime"]:
        yield "mtime differs"


def _write_hardlink(dest: Path, e: dict, written: set[str], overwrite: bool) -> None:
    """Another name of a file this extraction wrote (tar's hard link): never of anything else."""
    first = e["hardlink"]
    if first not in written:
        raise ArchiveError(f"not extracted: {first}, of which it is another name, was not")
    target = _prepare_target(dest, e["path"], overwrite)
    os.link(dest / safe_member_path(first), target, follow_symlinks=False)


def _stored_share(chunk: dict) -> float:
    """A chunk's stored bytes; a solid part's share of its block, in proportion to its size."""
    if "part" in chunk:
        return chunk["length"] * chunk["size"] / max(1, chunk["part"][1])
    return chunk.get("length", 0)


def listing(archive: Path, members: list[str] | None = None, version: int | None = None) \
        -> tuple[list[dict], int, str | None]:
    """A row per entry (or per member and what is under it), the bytes `compact` would free (of the
    archive as its `version`th add left it: `ArchiveReader`) and what follows the last readable add
    (`ArchiveReader.tail_note`). Content stored once for
    several entries (equal files, hard links) counts as stored by the first of them only, so the
    stored column adds up to what the files take."""
    with ArchiveReader(archive, version) as reader:
        idx = reader.index
        rows, counted = [], set()
        for e in select(idx.entries, members):
            obj = idx.objects.get(e.get("sha256", ""), {}) if e.get("type") == "file" else {}
            chunks = [c for s in obj.get("streams", []) for c in s.get("chunks", [])]
            stored = 0 if e.get("sha256") in counted else round(sum(_stored_share(c) for c in chunks))
            counted.add(e.get("sha256"))
            codecs = sorted({("solid " if "part" in c else "") + c.get("codec", "?") for c in chunks})
            size = e.get("size", 0)
            rows.append({
                "path": e.get("path"), "type": e.get("type"), "size": size, "stored": stored,
                "ratio": round(stored / size, 4) if size else None, "plugin": obj.get("format"),
                "codec": "+".join(codecs) if codecs else None, "mode": e.get("mode"), "mtime_ns": e.get("mtime"),
                "sha256": e.get("sha256"), "link": e.get("link"), "hardlink": e.get("hardlink"),
                **{k: e.get(k) for k in ("uid", "gid", "user", "group")},
            })
        return rows, rewrite.unreferenced(reader), reader.tail_note()


def versions(archive: Path) -> tuple[list[dict], str | None]:
    """A row per committed add, the first first: what `--until N` reads (`ArchiveReader`), with the
    entries that add brought in (`added`) and those whose content or type it replaced (`changed`);
    and what follows the last readable add (`ArchiveReader.tail_note`)."""
    with ArchiveReader(archive, 1) as reader:  # (whose index is version 1's: read once)
        rows, seen = [], {}
        for n, (_, _, end) in enumerate(reader.versions, 1):
            entries = (reader.index if n == 1 else reader.index_at(n)).entries
            now = {e.get("path"): (e.get("type"), e.get("sha256"), e.get("link")) for e in entries}
            rows.append({"version": n, "entries": len(entries), "added": len(now.keys() - seen.keys()),
                         "changed": sum(1 for k, v in now.items() if k in seen and seen[k] != v),
                         "size": _file_bytes(entries), "archive_bytes": end})
            seen = now
        return rows, reader.tail_note()


def summary(archive: Path) -> dict:
    """What the archive holds and needs (`lmarc info ARCHIVE`): entries by type, file and stored
    bytes, the stored bytes per codec, each model its LM chunks use (installed or not), and what a
    compact would free. Reads the index only: no model is loaded."""
    with ArchiveReader(archive) as reader:
        idx = reader.index
        types = {t: sum(1 for e in idx.entries if e.get("type") == t) for t in ("file", "dir", "symlink")}
        chunks = rewrite.chunks_of(idx.objects)
        codecs: dict[str, int] = {}
        for c in rewrite.payloads(chunks):
            codecs[c["codec"]] = codecs.get(c["codec"], 0) + c["length"]
        models = []
        for mid in sorted({c["model"] for c in chunks if c["codec"] == "lm"}):
            found = registry.locate(mid, idx.models.get(mid))
            models.append({"id": mid, "name": idx.models.get(mid), "installed": str(found) if found else None,
                           "install": registry.install_hint(idx.models.get(mid)).removeprefix("; ") or None})
        return {"archive": str(archive), "bytes": reader.size, "index_version": idx.version, "entries": types,
                "file_bytes": _file_bytes(idx.entries), "stored_bytes": sum(codecs.values()),
                "codecs": dict(sorted(codecs.items(), key=lambda kv: -kv[1])), "models": models,
                "compact_frees": rewrite.unreferenced(reader), "warning": reader.tail_note(),
                "encrypted": reader.sealer is not None}
