"""Solid blocks: many small files coded as one block, decoded once, damage confined to the block."""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path

import numpy as np
import pytest

from archiver import classic, solid, streamcoder
from archiver.container import ArchiveError, ArchiveReader, Index, validate_index
from tests.conftest import SAMPLES, MemoryWriter, member


@pytest.fixture
def small_files(tmp_path: Path) -> Path:
    """Forty small text files that share most of their words, as a source tree's files do."""
    lines = (SAMPLES / "notes.txt").read_text().splitlines()
    src = tmp_path / "small"
    src.mkdir()
    rng = random.Random(7)
    for i in range(40):
        (src / f"f{i:02d}.txt").write_text("\n".join(rng.sample(lines, len(lines) // 2)) + f"\nfile {i}\n")
    return src


def _rows(cli, arc: Path) -> dict[str, dict]:
    out, _ = cli("list", arc, "--json")
    return {r["path"]: r for r in json.loads(out)}


def test_small_files_share_a_block_and_round_trip(cli, small_files, tmp_path, monkeypatch):
    monkeypatch.chdir(small_files.parent)
    cli("add", "-a", tmp_path / "s.lma", "--model", "none", "small")
    cli("add", "-a", tmp_path / "n.lma", "--model", "none", "--no-solid", "small")
    assert (tmp_path / "s.lma").stat().st_size < 0.7 * (tmp_path / "n.lma").stat().st_size
    rows = _rows(cli, tmp_path / "s.lma")
    assert {rows[f"small/f{i:02d}.txt"]["codec"] for i in range(40)} == {"solid cm"}
    assert "solid" not in str({r["codec"] for r in _rows(cli, tmp_path / "n.lma").values()})
    with ArchiveReader(tmp_path / "s.lma") as r:
        assert r.index.version == 4
    decoded = []
    real = classic.decompress
    monkeypatch.setattr(classic, "decompress", lambda c, d, n: decoded.append(n) or real(c, d, n))
    cli("extract", tmp_path / "s.lma", "-C", tmp_path / "out")
    assert len(decoded) == 1  # one block, decoded once for its forty members
    for f in small_files.iterdir():
        assert (tmp_path / "out" / "small" / f.name).read_bytes() == f.read_bytes()
    cli("extract", tmp_path / "s.lma", "small/f07.txt", "-C", tmp_path / "one")
    assert [p.name for p in (tmp_path / "one" / "small").iterdir()] == ["f07.txt"]


def test_appending_adds_a_new_block_and_keeps_the_old(cli, small_files, tmp_path, monkeypatch):
    monkeypatch.chdir(small_files.parent)
    arc = tmp_path / "a.lma"
    cli("add", "-a", arc, "--model", "none", *[f"small/f{i:02d}.txt" for i in range(20)])
    cli("add", "-a", arc, "--model", "none", *[f"small/f{i:02d}.txt" for i in range(20, 40)])
    with ArchiveReader(arc) as r:
        blocks = {c["offset"] for o in r.index.objects.values() for s in o["streams"] for c in s["chunks"]}
    assert len(blocks) == 2
    cli("extract", arc, "-C", tmp_path / "out")
    for f in small_files.iterdir():
        assert (tmp_path / "out" / "small" / f.name).read_bytes() == f.read_bytes()


def test_a_damaged_block_loses_its_members_only_and_is_decoded_once(cli, small_files, tmp_path, monkeypatch):
    monkeypatch.chdir(small_files.parent)
    (small_files / "big.bin").write_bytes(random.Random(1).randbytes(solid.SOLID_MEMBER + 1))  # never packed
    arc = tmp_path / "a.lma"
    cli("add", "-a", arc, "--model", "none", "small")
    with ArchiveReader(arc) as r:
        entry = next(e for e in r.index.entries if e["path"] == "small/f00.txt")
        chunk = r.index.objects[entry["sha256"]]["streams"][0]["chunks"][0]
    assert "part" in chunk
    data = bytearray(arc.read_bytes())
    data[chunk["offset"] + chunk["length"] // 2] ^= 0x01
    arc.write_bytes(bytes(data))
    checked = []
    real = zlib.crc32
    monkeypatch.setattr(zlib, "crc32", lambda d, *a: checked.append(len(d)) or real(d, *a))
    _, err = cli("test", arc, code=1)
    assert err.count("damaged") == 40 and "big.bin" not in err
    assert checked.count(chunk["length"]) == 1  # the block is read and checked once for its 40 members


def test_a_block_is_written_only_where_it_pays():
    """Random members: no block. An LM member much smaller than any block would make it: the block
    is retried without it, and it keeps its own coding."""
    w = MemoryWriter()
    packer = solid.SolidPacker(w)
    noise = [member("binary", random.Random(i).randbytes(3000), "store", b"") for i in range(3)]
    for stream, data, coded in noise:
        coded[0].payload = data
        assert packer.offer(stream, data, coded)
    text = (SAMPLES / "notes.txt").read_bytes()
    texts = [member("text", text + bytes([i]), "xz", classic.compress("xz", text)) for i in range(5)]
    lm = member("text", random.Random(9).randbytes(3000), "lm", b"x" * 10)  # no codec but this LM shrinks it
    for stream, data, coded in [*texts, lm]:
        assert packer.offer(stream, data, coded)
    assert not packer.offer({"kind": "text", "size": 0}, b"", [])
    packer.flush()
    assert all("part" not in c for s, _, _ in noise for c in s["chunks"])
    assert all("part" in s["chunks"][0] for s, _, _ in texts)
    assert [(c["codec"], "part" in c) for c in lm[0]["chunks"]] == [("lm", False)]


def test_images_of_one_geometry_share_a_cm2d_block(monkeypatch, codec_threads):
    """Four tiles of the sample image, coded as one tall image, cost less than each alone and than
    a cm block; a tile of another width stays out of that block. The cm2d block is coded while the
    cm block of all five is (they meet at a barrier: neither passes it alone)."""
    import threading

    from PIL import Image

    from lmarc_plugins.pixels import to_stream

    pix = np.asarray(Image.open(SAMPLES / "gradient.png"))
    tiles = [to_stream(np.ascontiguousarray(pix[y : y + 16]))[0] for y in range(0, pix.shape[0], 16)]
    odd, _ = to_stream(np.random.default_rng(0).integers(0, 4, (10, 30, 3), dtype=np.uint8))
    w = MemoryWriter()
    packer = solid.SolidPacker(w)
    members = []
    for s in [*tiles, odd]:
        codec, payload = classic.best(s.data, geometry=s.geometry, kind="image")
        members.append(member("image", s.data, codec, payload))
        assert packer.offer(*members[-1], geometry=s.geometry)
    meet, real, met = threading.Barrier(2, timeout=20), classic.compress, []

    def compress(codec, data, geometry=None):
        if (codec, len(data)) in (("cm2d", sum(len(s.data) for s in tiles)), ("cm", sum(len(m[1]) for m in members))):
            met.append(meet.wait())
        return real(codec, data, geometry)

    monkeypatch.setattr(classic, "compress", compress)
    codec_threads(2)
    packer.flush()
    assert sorted(met) == [0, 1]
    chunks = [m[0]["chunks"][0] for m in members]
    assert {c["codec"] for c in chunks[:4]} == {"cm2d"} and {c["offset"] for c in chunks[:4]} == {16}
    assert all("part" in c for c in chunks[:4]) and chunks[4]["offset"] != 16
    tall = b"".join(s.data for s in tiles)
    assert classic.decompress("cm2d", w.payloads[0], len(tall)) == tall
    assert len(w.payloads[0]) < min(sum(len(m[2][0].payload) for m in members[:4]), len(classic.best(tall)[1]))


def _lm_member(s, lm_size: int) -> tuple[dict, bytes, list]:
    """A stream the LM coded alone into lm_size bytes (the packer only weighs sizes)."""
    rec, data, coded = member(s.kind, s.data, "lm", bytes(lm_size))
    coded[0].record["model"] = "m"
    return rec, data, coded


@pytest.mark.parametrize("lm_share,blocked", [(1.05, True), (0.5, False)])
def test_a_block_that_beats_the_lm_stops_it_being_scored(lm_share, blocked):
    """Small images the LM coded alone, each better than the classic codecs alone: once 64 KiB of
    them are pending, the packer plans their block as a flush would. When the block beats what the
    LM made of them, the kind's Track is told (the LM is no longer scored on small images in this
    run); when the LM is far ahead, it is not, and another kind's record is left alone."""
    from lmarc_plugins.pixels import to_stream

    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(64), np.arange(64))[:, :, None] * np.array([1, 2, 3])
    tiles = [to_stream(((ramp + rng.integers(0, 9, (64, 64, 3))) & 255).astype(np.uint8))[0] for _ in range(8)]
    block = len(classic.best(b"".join(t.data for t in tiles), geometry=tiles[0].geometry, kind="image")[1])
    tracks = {"image": streamcoder.Track(), "text": streamcoder.Track()}
    packer = solid.SolidPacker(MemoryWriter(), tracks=tracks)
    for i, t in enumerate(tiles):
        assert not tracks["image"].hopeless(len(t.data))
        packer.offer(*_lm_member(t, round(lm_share * block / len(tiles))), geometry=t.geometry)
        if (i + 1) * len(t.data) >= streamcoder.TRACK_BYTES:
            break
    assert tracks["image"].hopeless(len(tiles[0].data)) == blocked and not tracks["text"].hopeless(1000)
    assert not tracks["image"].hopeless(solid.SOLID_MEMBER + 1)  # a stream too large for a block


def _index(chunks: list[dict], version: int = 4) -> Index:
    size = sum(c["size"] for c in chunks)
    obj = {"format": "raw", "recipe": {}, "streams": [{"kind": "binary", "size": size, "chunks": chunks}]}
    return Index([], {"a" * 64: obj}, {}, version)


def _part(start: int, size: int, block: int = 100, **kw) -> dict:
    return {"codec": "cm", "size": size, "tokens": 0, "part": [start, block], "offset": 16, "length": 30,
            "crc32": 5} | kw


def test_index_rules_for_solid_parts():
    validate_index(_index([_part(0, 60), _part(60, 40)]), 1000)
    assert Index.from_bytes(_index([_part(0, 60), _part(60, 40)]).to_bytes()).version == 4
    for chunks, version in (
        ([_part(0, 60)], 3),  # parts are new in version 4
        ([_part(50, 60)], 4),  # past the block's end
        ([_part(0, 60), _part(60, 40, crc32=6)], 4),  # one payload, two different records
        ([_part(0, 60), _part(60, 40, block=120)], 4),
        ([_part(0, 60) | {"codec": "lm", "model": "m"}], 4),  # LM chunks are never parts
        ([_part(0, 60), {"codec": "xz", "size": 40, "tokens": 0, "offset": 16, "length": 30, "crc32": 5}], 4),
        ([_part(0, 60) | {"part": [0]}], 4),
        ([_part(0, 60, block=solid.SOLID_BLOCK + 1)], 4),
    ):
        with pytest.raises(ArchiveError, match="malformed"):
            validate_index(_index(chunks, version), 1000)
