"""Every add leaves the archive's earlier states readable (until a compact): `list --versions`
names them and `--until N` lists, tests or extracts the archive as its Nth add left it."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from archiver.container import TRAILER_MAGIC
from tests.conftest import SAMPLES


@pytest.fixture
def three_adds(cli, tmp_path) -> tuple[Path, list[bytes]]:
    """f.txt added three times with new content each time, notes.txt joining at the third add."""
    os.chdir(tmp_path)
    contents = [b"the first version\n" * 40, b"the second version\n" * 30, b"the third\n" * 50]
    for i, data in enumerate(contents):
        (tmp_path / "f.txt").write_bytes(data)
        extra = ["notes.txt"] if i == 2 else []
        if extra:
            (tmp_path / "notes.txt").write_bytes((SAMPLES / "notes.txt").read_bytes())
        cli("add", "-q", "-a", "a.lma", "--model", "none", "f.txt", *extra)
    return tmp_path / "a.lma", contents


def test_each_add_is_a_version_that_reads_as_it_was(cli, three_adds):
    arc, contents = three_adds
    rows = json.loads(cli("list", "--versions", "--json", arc)[0])
    assert [(r["version"], r["entries"], r["added"], r["changed"]) for r in rows] == [(1, 1, 1, 0), (2, 1, 0, 1),
                                                                                     (3, 2, 1, 1)]
    assert [r["size"] for r in rows[:2]] == [len(contents[0]), len(contents[1])]
    assert rows[0]["archive_bytes"] < rows[1]["archive_bytes"] < rows[2]["archive_bytes"] == arc.stat().st_size
    for n, data in enumerate(contents, 1):
        assert cli("extract", "-q", "-O", "--until", n, arc, "f.txt")[0].encode() == data
        cli("test", "-q", "--until", n, arc)
    out, _ = cli("list", "--until", 1, arc)
    assert "notes.txt" not in out and "compact" not in out  # an old version: no hint about the latest
    assert "notes.txt" in cli("list", arc)[0]
    assert cli("extract", "-q", "-O", arc, "f.txt")[0].encode() == contents[2]  # the latest by default
    _, err = cli("extract", "--until", 4, arc, code=2)
    assert "the archive has versions 1 to 3, not 4" in err


def test_compact_keeps_the_latest_version_only(cli, three_adds):
    arc, contents = three_adds
    cli("compact", "-q", arc)
    assert [r["entries"] for r in json.loads(cli("list", "--versions", "--json", arc)[0])] == [2]
    assert cli("extract", "-q", "-O", "--until", 1, arc, "f.txt")[0].encode() == contents[2]
    cli("test", "-q", "--until", 2, arc, code=2)


def test_a_truncated_last_add_leaves_the_versions_before_it(cli, three_adds):
    arc, contents = three_adds
    ends = [r["archive_bytes"] for r in json.loads(cli("list", "--versions", "--json", arc)[0])]
    arc.write_bytes(arc.read_bytes()[: ends[2] - 10])  # the last trailer is cut
    rows = json.loads(cli("list", "--versions", "--json", arc)[0])
    assert [r["archive_bytes"] for r in rows] == ends[:2]
    assert cli("extract", "-q", "-O", arc, "f.txt")[0].encode() == contents[1]


def test_trailer_bytes_inside_a_file_are_not_a_version(cli, tmp_path):
    """A stored file may hold the trailer's magic bytes: only a trailer whose CRCs and index check
    out counts."""
    os.chdir(tmp_path)
    noise = np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes()
    head = TRAILER_MAGIC + struct.pack("<QQI", 16, 100, 0)
    fake = head + struct.pack("<I", zlib.crc32(head))  # a trailer whose own CRC checks out
    (tmp_path / "n.bin").write_bytes(noise[:4000] + fake + noise[4000:])
    cli("add", "-q", "-a", "a.lma", "--model", "none", "n.bin")
    assert fake in (tmp_path / "a.lma").read_bytes()  # stored as it is
    assert len(json.loads(cli("list", "--versions", "--json", "a.lma")[0])) == 1
