"""Files too large to hold in memory (archiver.largefile), with the limits made small: coded and
decoded a segment at a time, never read whole, and as safe as any other file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from archiver import container, largefile, streamcoder
from archiver.container import ArchiveReader

LIMIT = 150_000
SEGMENT = 40_000


@pytest.fixture
def big(monkeypatch, tmp_path):
    """LARGE_FILE and SEGMENT small enough for test files; returns a writer of large input files
    that Path.read_bytes refuses to read, so a test fails if the archiver reads one whole."""
    monkeypatch.setattr(largefile, "LARGE_FILE", LIMIT)
    monkeypatch.setattr(largefile, "SEGMENT", SEGMENT)
    watched: set[Path] = set()
    read_bytes = Path.read_bytes

    def guarded(self: Path) -> bytes:
        assert self.resolve() not in watched, f"{self} read whole"
        return read_bytes(self)

    def write(name: str, data: bytes) -> Path:
        assert len(data) >= LIMIT
        p = tmp_path / name
        p.write_bytes(data)
        watched.add(p.resolve())
        return p

    monkeypatch.setattr(Path, "read_bytes", guarded)
    return write


def _content(n: int, seed: int = 0) -> bytes:
    """Text the models can predict, then noise: both the LM (or cm) and the stored path."""
    rng = np.random.default_rng(seed)
    words = [b"archive", b"segment", b"model", b"bytes", b"the", b"of", b"round", b"trip", b"\n"]
    text = b" ".join(words[i] for i in rng.integers(0, len(words), n // 6))[: n // 2]
    return text + rng.integers(0, 256, n - len(text), dtype=np.uint8).tobytes()


def test_large_file_round_trips_a_segment_at_a_time(cli, tiny, tmp_path, big, monkeypatch):
    data = _content(3 * LIMIT)
    big("big.bin", data)
    (tmp_path / "small.txt").write_bytes(b"a small file beside it\n" * 50)
    arc = tmp_path / "a.lma"
    monkeypatch.chdir(tmp_path)
    seen = []
    encode = streamcoder.encode_stream
    monkeypatch.setattr(streamcoder, "encode_stream",
                        lambda kind, d, *a, **k: seen.append(len(d)) or encode(kind, d, *a, **k))
    cli("add", "-a", arc, "--model", tiny, "big.bin", "small.txt")
    assert max(seen) <= SEGMENT and sum(seen) >= len(data)  # the big file went through in segments
    with ArchiveReader(arc) as r:
        obj = r.index.objects[next(e["sha256"] for e in r.index.entries if e["path"] == "big.bin")]
    assert largefile.is_segmented(obj) and obj["streams"][0]["size"] == len(data)
    assert {c["codec"] for c in obj["streams"][0]["chunks"]} >= {"store"}  # the noise half
    decoded = []
    decode = streamcoder.decode_chunks
    monkeypatch.setattr(streamcoder, "decode_chunks",
                        lambda jobs, *a, **k: decoded.append(len(jobs)) or decode(jobs, *a, **k))
    cli("test", arc)
    assert len(decoded) > 2  # the big file's chunks in several batches, the small file in its group
    cli("extract", "-C", tmp_path / "out", arc)
    assert (tmp_path / "out" / "big.bin").read_bytes() == data
    assert (tmp_path / "out" / "small.txt").read_bytes() == (tmp_path / "small.txt").read_bytes()


def test_large_file_same_content_is_stored_once(cli, tmp_path, big, monkeypatch):
    data = _content(2 * LIMIT, seed=1)
    big("one", data)
    big("two", data)
    arc = tmp_path / "a.lma"
    monkeypatch.chdir(tmp_path)
    cli("add", "-a", arc, "--model", "none", "one")
    size = arc.stat().st_size
    cli("add", "-a", arc, "--model", "none", "two")
    assert arc.stat().st_size - size < 1000  # a new entry and index, no second copy


def test_large_file_changed_while_read_is_skipped_and_leaves_nothing(cli, tmp_path, big, monkeypatch):
    big("big", _content(2 * LIMIT, seed=2))
    (tmp_path / "ok.txt").write_bytes(b"kept\n")
    arc = tmp_path / "a.lma"
    monkeypatch.chdir(tmp_path)
    digest = largefile.digest
    monkeypatch.setattr(largefile, "digest", lambda p: ("0" * 64, digest(p)[1]))  # as if it changed after the checksum
    _, err = cli("add", "-a", arc, "--model", "none", "big", "ok.txt", code=1)
    assert "big: changed while it was being read; skipped" in err
    assert arc.stat().st_size < 1000  # its chunks were taken back
    out, _ = cli("list", arc)
    assert "ok.txt" in out and "big" not in out.replace("ok.txt", "")
    cli("test", arc)


def test_large_file_read_error_is_skipped_and_leaves_nothing(cli, tmp_path, big, monkeypatch):
    big("big", _content(2 * LIMIT, seed=3))
    (tmp_path / "ok.txt").write_bytes(b"kept\n")
    arc = tmp_path / "a.lma"
    monkeypatch.chdir(tmp_path)

    class Failing:
        """A file whose second read fails, as a disk read error would."""

        def __init__(self, path, mode):
            self.f, self.reads = open(path, mode), 0  # noqa: SIM115

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n):
            self.reads += 1
            if self.reads == 2:
                raise OSError(5, "Input/output error")
            return self.f.read(n)

    monkeypatch.setattr(largefile, "open", Failing, raising=False)
    _, err = cli("add", "-a", arc, "--model", "none", "big", "ok.txt", code=1)
    assert "big: cannot read (Input/output error); skipped" in err
    assert arc.stat().st_size < 1000
    cli("test", arc)


def test_damaged_large_file_is_reported_and_not_written(cli, tmp_path, big, monkeypatch):
    big("big", _content(3 * LIMIT, seed=4))
    arc = tmp_path / "a.lma"
    monkeypatch.chdir(tmp_path)
    cli("add", "-a", arc, "--model", "none", "big")
    with ArchiveReader(arc) as r:
        last = r.index.objects[r.index.entries[0]["sha256"]]["streams"][0]["chunks"][-1]
    raw = bytearray(arc.read_bytes())
    raw[last["offset"] + last["length"] // 2] ^= 0x40  # in the last batch: earlier pieces were already written
    arc.write_bytes(bytes(raw))
    _, err = cli("test", arc, code=1)
    assert "big: damaged" in err
    _, err = cli("extract", "-C", tmp_path / "out", arc, code=1)
    assert "big: damaged" in err
    assert os.listdir(tmp_path / "out") == []  # neither the file nor its temporary


def test_drop_since_refuses_positions_before_the_last_commit(tmp_path):
    w = container.ArchiveWriter(tmp_path / "a.lma")
    try:
        w.write_chunk(b"x" * 10)
        w.commit()
        mark = w.pos
        w.write_chunk(b"y" * 10)
        w.drop_since(mark)
        assert w.pos == mark and (tmp_path / "a.lma").stat().st_size == mark
        with pytest.raises(ValueError):
            w.drop_since(mark - 1)
    finally:
        w.close()


def test_to_stdout_keeps_archive_order_around_a_large_file(tmp_path, big, monkeypatch, capsysbinary):
    from archiver.cli import main

    monkeypatch.chdir(tmp_path)
    data = _content(2 * LIMIT, seed=5)
    big("big", data)
    (tmp_path / "a.txt").write_bytes(b"before\n")
    (tmp_path / "z.txt").write_bytes(b"after\n")
    assert main(["add", "-a", "x.lma", "--model", "none", "a.txt", "big", "z.txt"]) == 0
    capsysbinary.readouterr()
    assert main(["extract", "-O", "-q", "x.lma"]) == 0
    assert capsysbinary.readouterr().out == b"before\n" + data + b"after\n"
