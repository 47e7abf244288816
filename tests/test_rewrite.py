"""`lmarc delete` and `compact` (archiver.rewrite): the kept entries come back byte for byte, the
room of everything else is gone, and a failure at any point leaves the archive as it was."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from archiver import rewrite
from archiver.archive import Settings, compact, delete, extract, listing
from archiver.container import HEADER_LEN, TRAILER, ArchiveReader, ArchiveWriter
from archiver.progress import Reporter
from tests.conftest import SAMPLES


@pytest.fixture
def tree(tmp_path) -> Path:
    """The samples, a subdirectory and a symlink, under tmp_path/s."""
    s = tmp_path / "s"
    shutil.copytree(SAMPLES, s)
    (s / "sub").mkdir()
    (s / "sub" / "deep.txt").write_text("a file under a directory that is deleted with it\n" * 20)
    (s / "link").symlink_to("notes.txt")
    return s


def _archive(cli, tiny, tmp_path: Path, tree: Path) -> Path:
    arc = tmp_path / "a.lma"
    os.chdir(tmp_path)
    cli("add", "-q", "--no-progress", "-a", arc, "--model", tiny, "s")
    return arc


def _no_dead_bytes(arc: Path) -> None:
    """The file is the header, the payloads its entries reference (each once), one index and its trailer."""
    with ArchiveReader(arc) as r:
        chunks = [c for o in r.index.objects.values() for s in o["streams"] for c in s["chunks"]]
        payload = sum(n for _, n in {(c["offset"], c["length"]) for c in chunks})
        assert r.data_end == HEADER_LEN + payload
        assert r.end == arc.stat().st_size and r.end - r.data_end - TRAILER.size > 0
        assert set(r.index.objects) == {e["sha256"] for e in r.index.entries if e["type"] == "file"}
        assert rewrite.unreferenced(r) == 0


def _extracted_equal(cli, arc: Path, tmp_path: Path, tree: Path, gone: set[str]) -> None:
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    cli("extract", "-q", "--no-progress", "-C", out, arc)
    want = {p.relative_to(tree.parent).as_posix() for p in [tree, *tree.rglob("*")]} - gone
    got = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert got == want
    for name in want:
        src, dst = tree.parent / name, out / name
        if src.is_symlink():
            assert os.readlink(dst) == os.readlink(src)
        elif src.is_file():
            assert dst.read_bytes() == src.read_bytes(), name


def test_delete_keeps_the_rest_byte_for_byte_and_frees_the_room(cli, tiny, tmp_path, tree):
    arc = _archive(cli, tiny, tmp_path, tree)
    before = arc.stat().st_size
    with ArchiveReader(arc) as r:
        lm = {e["path"] for e in r.index.entries if e["type"] == "file" and any(
            c["codec"] == "lm" for s in r.index.objects[e["sha256"]]["streams"] for c in s["chunks"])}
        assert len(r.index.models) == 1 and {"s/notes.txt", "s/records.bin"} <= lm
    out, _ = cli("delete", arc, "s/notes.txt", "s/sub/")
    assert out == f"deleted 3 entries; archive {before:,} -> {arc.stat().st_size:,} bytes\n"
    assert arc.stat().st_size < before
    _no_dead_bytes(arc)
    _extracted_equal(cli, arc, tmp_path, tree, {"s/notes.txt", "s/sub", "s/sub/deep.txt"})
    cli("test", "-q", arc)

    cli("delete", "-q", arc, *sorted(lm - {"s/notes.txt"}))  # the last entries the model coded
    with ArchiveReader(arc) as r:
        assert r.index.models == {}  # a reader is no longer told it needs the model
        assert not any(c["codec"] == "lm" for o in r.index.objects.values() for s in o["streams"] for c in s["chunks"])
    _no_dead_bytes(arc)
    cli("test", "-q", arc)


def _blocks(arc: Path) -> dict[str, tuple[str, int, int]]:
    """Each solid member's path -> (codec, payload length, block size) of its block."""
    with ArchiveReader(arc) as r:
        return {e["path"]: (c["codec"], c["length"], c["part"][1]) for e in r.index.entries if e["type"] == "file"
                for s in r.index.objects[e["sha256"]]["streams"] for c in s["chunks"] if "part" in c}


def test_a_solid_block_is_coded_again_without_the_deleted_members(cli, tiny, tmp_path, tree):
    """As 7z does: a block that kept entries use only part of is re-coded with its codec."""
    arc = _archive(cli, tiny, tmp_path, tree)
    before = _blocks(arc)
    assert before["s/chord.wav"] == before["s/gradient.png"]  # their header streams share a cm block
    cli("delete", "-q", arc, "s/chord.wav")
    codec, length, size = _blocks(arc)["s/gradient.png"]
    assert codec == before["s/gradient.png"][0] and length < before["s/gradient.png"][1] and size < before[
        "s/gradient.png"][2]
    _no_dead_bytes(arc)
    _extracted_equal(cli, arc, tmp_path, tree, {"s/chord.wav"})


def test_image_and_audio_blocks_keep_their_structured_codecs(cli, tmp_path):
    """A cm2d block (icons of one size, one tall image) and a cmpcm block (recordings, one long
    channel) re-coded without half their members: still cm2d and cmpcm, and every kept file exact."""
    os.chdir(tmp_path)
    d = tmp_path / "media"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        y, x = np.mgrid[0:24, 0:24]
        px = np.stack([(x * (5 + i)) % 256, (y * 7) % 256, (x + y + 40 * i) % 256], -1).astype(np.uint8)
        Image.fromarray(px).save(d / f"icon{i}.png")
        t = np.arange(6000)
        samples = (3000 * np.sin(t * (0.05 + 0.01 * i)) + rng.normal(0, 30, t.size)).astype("<i2")
        with wave.open(str(d / f"tone{i}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(samples.tobytes())
    cli("add", "-q", "-a", "m.lma", "--model", "none", "media")
    before = _blocks(tmp_path / "m.lma")
    assert {before[f"media/icon{i}.png"][0] for i in range(4)} == {"cm2d"}
    assert {before[f"media/tone{i}.wav"][0] for i in range(4)} == {"cmpcm"}
    cli("delete", "-q", "m.lma", "media/icon1.png", "media/icon2.png", "media/tone0.wav", "media/tone3.wav")
    after = _blocks(tmp_path / "m.lma")
    for kept, gone in (("media/icon0.png", "media/icon1.png"), ("media/tone1.wav", "media/tone0.wav")):
        assert after[kept][0] == before[kept][0] and after[kept][1] < before[kept][1]
        assert gone not in after
    _no_dead_bytes(tmp_path / "m.lma")
    out = tmp_path / "out"
    cli("extract", "-q", "-C", out, "m.lma")
    assert sorted(p.name for p in (out / "media").iterdir()) == ["icon0.png", "icon3.png", "tone1.wav", "tone2.wav"]
    for p in (out / "media").iterdir():
        assert p.read_bytes() == (d / p.name).read_bytes()


def test_compact_leaves_what_one_add_of_the_last_contents_would(cli, tmp_path):
    """A file added, changed and added again, then added unchanged: three indexes and two versions.
    Compacted, the archive is byte for byte the one a single add of the final file makes."""
    os.chdir(tmp_path)
    f = tmp_path / "f.txt"
    f.write_bytes((SAMPLES / "notes.txt").read_bytes())
    cli("add", "-q", "-a", "a.lma", "--model", "none", "f.txt")
    f.write_bytes((SAMPLES / "weather.json").read_bytes())
    cli("add", "-q", "-a", "a.lma", "--model", "none", "f.txt")
    cli("add", "-q", "-a", "a.lma", "--model", "none", "f.txt")
    cli("add", "-q", "-a", "fresh.lma", "--model", "none", "f.txt")
    grown = (tmp_path / "a.lma").stat().st_size
    (tmp_path / "a.lma").chmod(0o600)
    out, _ = cli("compact", "a.lma")
    assert out == f"compacted 1 entries; archive {grown:,} -> {(tmp_path / 'fresh.lma').stat().st_size:,} bytes\n"
    assert (tmp_path / "a.lma").read_bytes() == (tmp_path / "fresh.lma").read_bytes()
    assert (tmp_path / "a.lma").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.lma", "f.txt", "fresh.lma"]  # no temporary left
    (tmp_path / ".a.lma.x1y2.lmarc-tmp").write_bytes(b"the debris of a compact killed before its rename")
    (tmp_path / ".b.lma.x1y2.lmarc-tmp").write_bytes(b"another archive's: not ours to remove")
    cli("compact", "-q", "a.lma")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.lma.x1y2.lmarc-tmp", "a.lma", "f.txt", "fresh.lma"]


def test_a_damaged_kept_payload_is_refused_and_the_archive_unchanged(cli, tiny, tmp_path, tree):
    arc = _archive(cli, tiny, tmp_path, tree)
    with ArchiveReader(arc) as r:
        e = next(e for e in r.index.entries if e["path"] == "s/README.md")
        c = r.index.objects[e["sha256"]]["streams"][0]["chunks"][0]
    raw = bytearray(arc.read_bytes())
    raw[c["offset"]] ^= 0x40
    arc.write_bytes(raw)
    _, err = cli("delete", arc, "s/notes.txt", code=2)
    assert "CRC mismatch" in err and "the archive is as it was" in err
    assert arc.read_bytes() == raw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.lma", "s"]
    cli("delete", "-q", arc, "s/README.md")  # deleting the damaged entry itself carries nothing damaged
    cli("test", "-q", arc)


@pytest.mark.parametrize("failure, message", [(KeyboardInterrupt, "interrupted: the archive is as it was"),
                                              (OSError(28, "No space left on device"), "No space left on device")])
def test_a_rewrite_that_fails_midway_changes_nothing(cli, tiny, tmp_path, tree, monkeypatch, failure, message):
    arc = _archive(cli, tiny, tmp_path, tree)
    raw = arc.read_bytes()
    write, calls = ArchiveWriter.write_chunk, []

    def failing(self, payload):
        calls.append(1)
        if len(calls) == 3:
            raise failure
        return write(self, payload)

    monkeypatch.setattr(ArchiveWriter, "write_chunk", failing)
    _, err = cli("compact", arc, code=2)
    assert message in err and len(calls) == 3
    assert arc.read_bytes() == raw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.lma", "s"]


def test_missing_members_or_archive_are_errors_that_change_nothing(cli, tiny, tmp_path, tree):
    arc = _archive(cli, tiny, tmp_path, tree)
    raw = arc.read_bytes()
    _, err = cli("delete", arc, "s/notes.txt", "s/nothere", code=2)
    assert "not in the archive: s/nothere" in err and arc.read_bytes() == raw
    _, err = cli("compact", tmp_path / "none.lma", code=2)
    assert "cannot open archive" in err and not (tmp_path / "none.lma").exists()


@pytest.mark.parametrize("how", ["replaced", "removed"])
def test_a_writer_waiting_for_the_lock_follows_a_replaced_archive(cli, tiny, tmp_path, tree, how):
    """An add that waits while a rewrite holds the lock must append to the new file, not to the old
    one the rename unlinked (where its files would be lost); the same when a failed first add
    removed the archive it had created."""
    arc = _archive(cli, tiny, tmp_path, tree)
    other = tmp_path / "other.lma"
    w = ArchiveWriter(other)
    w.index.entries.append({"path": "x", "type": "dir"})
    w.commit()
    w.close()
    holder = ArchiveWriter(arc)
    got = {}
    waiter = threading.Thread(target=lambda: got.setdefault("w", ArchiveWriter(arc)))
    waiter.start()
    time.sleep(0.3)
    if how == "replaced":
        os.replace(other, arc)
    else:
        arc.unlink()
    holder.close()
    waiter.join(10)
    w = got["w"]
    try:
        assert os.fstat(w._f.fileno()).st_ino == arc.stat().st_ino
        assert w.index.entries == ([{"path": "x", "type": "dir"}] if how == "replaced" else [])
        w.index.entries.append({"path": "y", "type": "dir"})
        w.commit()
    finally:
        w.close()
    with ArchiveReader(arc) as r:
        assert [e["path"] for e in r.index.entries] == (["x", "y"] if how == "replaced" else ["y"])


def test_rewrite_copies_each_shared_payload_once(tmp_path, cli):
    """Two entries of the same content share one object, and solid parts share one payload: both
    are copied once (the structure check in _no_dead_bytes counts every region once)."""
    os.chdir(tmp_path)
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_bytes((SAMPLES / "notes.txt").read_bytes())
    cli("add", "-q", "-a", "x.lma", "--model", "none", "a.txt", "b.txt")
    done = rewrite.rewrite(tmp_path / "x.lma", list, Reporter())
    assert (done.entries_before, done.entries_after) == (2, 2) and done.bytes_after == done.bytes_before
    _no_dead_bytes(tmp_path / "x.lma")



def test_list_tells_what_compact_would_free_and_an_unchanged_add_appends_nothing(cli, tmp_path):
    os.chdir(tmp_path)
    f = tmp_path / "f.txt"
    f.write_bytes((SAMPLES / "notes.txt").read_bytes())
    (tmp_path / "g.txt").write_text("another file\n")
    cli("add", "-q", "-a", "a.lma", "--model", "none", "f.txt", "g.txt")
    raw = (tmp_path / "a.lma").read_bytes()
    out, _ = cli("list", "a.lma")
    assert "compact" not in out
    cli("add", "-q", "-a", "a.lma", "--model", "none", "f.txt", "g.txt")
    assert (tmp_path / "a.lma").read_bytes() == raw  # the same files again: no new index
    f.write_bytes(f.read_bytes() + b"one more line\n")
    cli("add", "-q", "-a", "a.lma", "--model", "none", "f.txt")
    grown = (tmp_path / "a.lma").stat().st_size
    with ArchiveReader(tmp_path / "a.lma") as r:
        free = rewrite.unreferenced(r)
    assert free > 0
    out, _ = cli("list", "a.lma", "f.txt")
    assert [line.split()[-1] for line in out.splitlines()[1:-1]] == ["f.txt", "entries"]
    assert out.splitlines()[-1] == f"`lmarc compact` would free {free:,} bytes or more (replaced data, old indexes)"
    cli("compact", "-q", "a.lma")
    assert (tmp_path / "a.lma").stat().st_size <= grown - free  # (and the index no longer names the old data)
    assert "compact" not in cli("list", "a.lma")[0]


def test_a_symlinked_archive_is_rewritten_where_it_lies(cli, tmp_path):
    os.chdir(tmp_path)
    (tmp_path / "f.txt").write_text("kept\n")
    (tmp_path / "g.txt").write_text("deleted\n")
    (tmp_path / "store").mkdir()
    cli("add", "-q", "-a", "store/real.lma", "--model", "none", "f.txt", "g.txt")
    (tmp_path / "link.lma").symlink_to("store/real.lma")
    cli("delete", "-q", "link.lma", "g.txt")
    assert (tmp_path / "link.lma").is_symlink()
    assert [r["path"] for r in listing(tmp_path / "store" / "real.lma")[0]] == ["f.txt"]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["real.lma"]


def _build(path: Path, contents: list[bytes], solid: list[bool]) -> None:
    """An archive written directly: file i holds contents[i]; files flagged solid share one stored
    block (chunks with parts), the others have their own chunk, and equal contents one object."""
    w = ArchiveWriter(path)
    block = b"".join(dict.fromkeys(c for c, s in zip(contents, solid, strict=True) if s))
    loc = w.write_chunk(block) if block else None
    for i, (data, in_block) in enumerate(zip(contents, solid, strict=True)):
        digest = hashlib.sha256(data).hexdigest()
        if digest not in w.index.objects:
            if in_block:
                chunk = loc | {"codec": "store", "size": len(data), "tokens": 0,
                               "part": [block.index(data), len(block)]}
            else:
                chunk = w.write_chunk(data) | {"codec": "store", "size": len(data), "tokens": 0}
            w.index.objects[digest] = {"format": "raw", "format_version": 1, "recipe": {},
                                       "streams": [{"kind": "binary", "size": len(data), "chunks": [chunk]}]}
        w.index.entries.append({"path": f"f{i}", "type": "file", "mode": 0o644, "mtime": 0, "size": len(data),
                                "sha256": digest})
    w.commit()
    w.close()


@settings(max_examples=40, deadline=None)
@given(files=st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.booleans()), min_size=1, max_size=12))
def test_any_deletion_keeps_exactly_the_rest(files):
    """Files of a few distinct contents (so objects are shared), some in a solid block, any subset
    deleted: the rest read back byte for byte and verify, and nothing unreferenced is left."""
    contents = [bytes([k]) * (100 + 37 * k) + f"content {k}".encode() for k, _, _ in files]
    with tempfile.TemporaryDirectory() as d:
        arc = Path(d) / "a.lma"
        _build(arc, contents, [s for _, s, _ in files])
        gone = [f"f{i}" for i, (_, _, drop) in enumerate(files) if drop]
        if gone:
            delete(arc, gone, Reporter())
        else:
            compact(arc, Reporter())
        _no_dead_bytes(arc)
        kept = [i for i, (_, _, drop) in enumerate(files) if not drop]
        out = io.BytesIO()
        res = extract(arc, Path(d), None, False, Settings(model="none"), Reporter(), to=out)
        assert res.ok == len(kept) and not res.problems
        assert out.getvalue() == b"".join(contents[i] for i in kept)
