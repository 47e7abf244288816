"""The classic codecs the LM falls back to, and the index version that records which were used."""

from __future__ import annotations

import json
import threading
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver import classic
from archiver.container import ArchiveError, Index, validate_index
from tests.conftest import SAMPLES


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=3000) | st.text(max_size=1500).map(str.encode),
       geometry=st.tuples(st.integers(1, 200), st.integers(1, 4)))
def test_every_codec_round_trips(data, geometry):
    """Any geometry, even one that does not fit the data, only changes how well cm2d or cmpcm codes it."""
    for codec in classic.CODECS:
        assert classic.decompress(codec, classic.compress(codec, data, geometry), len(data)) == data


@pytest.mark.parametrize("codec", classic.STRUCTURED.values())
def test_structured_codecs_need_a_geometry_and_best_tries_them_only_with_their_kind(codec, monkeypatch):
    data = bytes(range(256)) * 8
    with pytest.raises(ValueError, match="geometry"):
        classic.compress(codec, data)
    tried = []
    real = classic.compress
    monkeypatch.setattr(classic, "compress", lambda c, d, g=None: tried.append(c) or real(c, d, g))
    kind = next(k for k, c in classic.STRUCTURED.items() if c == codec)
    classic.best(data)
    classic.best(data, cm=False, geometry=(64, 4), kind=kind)
    classic.best(data, geometry=(64, 4), kind="text")
    assert codec not in tried
    classic.best(data, geometry=(64, 4), kind=kind)
    assert tried.count(codec) == 1 and set(classic.STRUCTURED.values()) & set(tried) == {codec}


@pytest.mark.parametrize("codec", classic.CODECS[1:])
def test_damaged_or_oversized_chunks_are_refused(codec):
    data = (SAMPLES / "notes.txt").read_bytes()
    packed = classic.compress(codec, data, (80, 1))
    with pytest.raises(ValueError):
        classic.decompress(codec, packed[: len(packed) // 2], len(data))
    with pytest.raises(ValueError):  # a chunk may not decode to more than its record says
        classic.decompress(codec, packed, len(data) - 1)


def test_brotli_wins_on_a_small_text_file():
    """Its built-in dictionary is why it is in the set: short prose and code, where xz and zstd
    have no history to match against."""
    data = (SAMPLES / "notes.txt").read_bytes()[:1500]
    codec, packed = classic.best(data)
    assert codec == "brotli"
    assert len(packed) < min(len(classic.compress(c, data)) for c in ("zstd", "xz"))


def _index(codec: str, version: int = 1) -> Index:
    chunk = {"codec": codec, "size": 10, "tokens": 0, "offset": 16, "length": 5, "crc32": 0}
    obj = {"format": "raw", "recipe": {}, "streams": [{"kind": "binary", "size": 10, "chunks": [chunk]}]}
    return Index([], {"a" * 64: obj}, {}, version)


def test_index_version_rises_only_with_a_new_codec():
    """An archive that uses no brotli or cm chunk keeps index version 1 (older lmarc reads it); one
    with brotli says 2, one with cm 3, one with cm2d 5, one with cmpcm 6, and an index naming a codec
    newer than its version, or an unknown version, is refused."""
    assert Index.from_bytes(_index("xz").to_bytes()).version == 1
    for codec, version in (("brotli", 2), ("cm", 3), ("cm2d", 5), ("cmpcm", 6)):
        index = Index.from_bytes(_index(codec).to_bytes())
        assert index.version == version
        validate_index(index, 100)
        with pytest.raises(ArchiveError, match="chunk codec"):
            validate_index(_index(codec, version=version - 1), 100)
    newer = {"format": "lmarc", "version": 7, "entries": [], "objects": {}, "models": {}}
    with pytest.raises(ArchiveError, match="newer lmarc"):
        Index.from_bytes(zlib.compress(json.dumps(newer).encode()))


def test_brotli_is_not_tried_on_large_blocks(monkeypatch):
    """It would only add time there (2.5x xz's, for ~2%)."""
    tried = []
    real = classic.compress
    monkeypatch.setattr(classic, "compress", lambda c, d, g=None: tried.append((c, len(d))) or real(c, d, g))
    classic.best(bytes(classic.BROTLI_MAX + 1))
    classic.best(bytes(1000))
    assert sorted(c for c, n in tried if n > classic.BROTLI_MAX) == ["cm", "xz", "zstd"]  # (trials run side by side)
    assert sorted(c for c, n in tried if n == 1000) == ["brotli", "cm", "xz", "zstd"]


def _tried(monkeypatch) -> list[tuple[str, int]]:
    tried: list[tuple[str, int]] = []
    real = classic.compress
    monkeypatch.setattr(classic, "compress", lambda c, d, g=None: tried.append((c, len(d))) or real(c, d, g))
    real_cm = classic.contextmix.compress
    monkeypatch.setattr(classic.contextmix, "compress", lambda d: tried.append(("cm probe", len(d))) or real_cm(d))
    return tried


def test_incompressible_blocks_are_stored_after_a_probe(monkeypatch):
    """Random bytes: cm codes one probe, and no codec the whole block (17 s of cm per 4 MiB saved)."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 2 * classic.PROBE, dtype=np.uint8).tobytes()
    tried = _tried(monkeypatch)
    assert classic.best(noise) == ("store", noise)
    assert tried == [("cm probe", classic.PROBE)]


def test_near_uniform_blocks_with_structure_are_still_coded(monkeypatch):
    """Blocks whose bytes are near-uniform, which the probe must not mistake for noise: a random
    walk (cm predicts each byte from the one before), noise written twice, near and 600 KiB apart
    (a distance past zstd level 1's own window), and noise that the audio codec is asked about (its
    structure is in samples)."""
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.integers(0, 48, 2 * classic.PROBE)).astype(np.uint8).tobytes()
    half = rng.integers(0, 256, classic.PROBE, dtype=np.uint8).tobytes()
    assert min(classic.order0_bits(walk), classic.order0_bits(half)) > classic.NEAR_UNIFORM
    codec, packed = classic.best(walk)
    assert codec == "cm" and len(packed) < 0.8 * len(walk)
    assert classic.best(half + half)[0] != "store"
    far = rng.integers(0, 256, 600 << 10, dtype=np.uint8).tobytes()
    real = classic.compress
    monkeypatch.setattr(classic, "compress", lambda c, d, g=None: d if c == "cm" else real(c, d, g))  # (5 s)
    codec, packed = classic.best(far + far)
    assert codec in ("xz", "zstd") and len(packed) < 0.51 * len(far + far)
    monkeypatch.undo()
    tried = _tried(monkeypatch)
    classic.best(half + half[::-1], geometry=(len(half), 2), kind="audio")
    assert ("cmpcm", 2 * classic.PROBE) in tried and all(c != "cm probe" for c, _ in tried)


@pytest.mark.parametrize("threads", [1, 3])
def test_parallel_trials_choose_what_one_thread_chooses(threads, codec_threads):
    """Blocks of text, repeats, a random walk and noise: each block's choice and bytes are those of
    best() on it alone, whatever the thread count, and in order."""
    rng = np.random.default_rng(2)
    text = (SAMPLES / "notes.txt").read_bytes()
    blocks = [text, bytes(5000), np.cumsum(rng.integers(0, 48, 40_000)).astype(np.uint8).tobytes(),
              rng.integers(0, 256, 3 * classic.PROBE, dtype=np.uint8).tobytes(), b"tiny", text[::-1] * 3]
    alone = [classic.best(b) for b in blocks]
    codec_threads(threads)
    assert list(classic.best_each(iter(blocks))) == alone
    assert len({c for c, _ in alone}) >= 3


def test_a_blocks_trials_run_side_by_side(monkeypatch, codec_threads):
    """cm and xz of one block meet at a barrier: they can only pass it running at the same time."""
    meet = threading.Barrier(2, timeout=20)
    real = classic.compress

    def compress(codec, data, geometry=None):
        if codec in ("cm", "xz"):
            meet.wait()  # BrokenBarrierError if the other one is not running now
        return real(codec, data, geometry)

    monkeypatch.setattr(classic, "compress", compress)
    codec_threads(2)
    text = (SAMPLES / "notes.txt").read_bytes()
    assert classic.best(text)[0] != "store"


def test_work_not_started_is_cancelled_when_the_caller_stops(monkeypatch, codec_threads):
    """Ctrl-C (or any error) while blocks are coded: the trials not yet started are dropped, so the
    process can exit after the running ones instead of after every queued one."""
    started = []
    real = classic.compress
    monkeypatch.setattr(classic, "compress", lambda c, d, g=None: started.append(c) or real(c, d, g))
    codec_threads(1)
    blocks = [bytes([i]) * 20_000 for i in range(40)]
    gen = classic.best_each(iter(blocks), cm=False)
    assert next(gen)[0] != "store"
    gen.close()
    classic._submit(lambda: None).result()  # every trial that was going to run has run
    assert len(started) <= 2 * 3  # the first two blocks' trials at most (of 40 blocks x 3 codecs)
    assert not classic.busy()


def test_busy_while_a_job_runs(codec_threads):
    codec_threads(2)
    go = threading.Event()
    fut = classic._submit(go.wait)
    assert classic.busy()
    go.set()
    fut.result()
    assert not classic.busy()


def test_damaged_items_are_reported_in_place():
    text = (SAMPLES / "notes.txt").read_bytes()
    codec, payload = classic.best(text)
    out = list(classic.decompress_each([(codec, payload, len(text)), (codec, payload[:-9], len(text)),
                                        ("zstd", classic.compress("zstd", text), len(text))]))
    assert out[0] == text and isinstance(out[1], ValueError) and out[2] == text


def test_byte_entropy_is_counted_in_little_memory():
    """order0_bits over a block of several MiB: the histogram's, not an int64 copy of the input."""
    import tracemalloc

    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, 8 << 20, dtype=np.uint8).tobytes() + bytes(1000)
    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    p = counts[counts > 0] / len(data)
    tracemalloc.start()
    got = classic.order0_bits(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got == pytest.approx(float(-(p * np.log2(p)).sum()), abs=1e-12)
    assert peak < 16 << 20  # an int64 copy of the input would be 64 MiB
    assert classic.order0_bits(bytes(10)) == 0.0
