"""Chunked LM coding of streams: many chunks, decoded in several lockstep batches."""

from __future__ import annotations

import numpy as np
import pytest

from archiver import classic, intmodel, streamcoder
from tests.conftest import SAMPLES, TINY


def test_decode_batches_follow_the_cache_budget(monkeypatch):
    """A budget of two chunks' caches splits the decode into several batches, each exact."""
    pred = streamcoder.Predictor(intmodel.load(TINY))
    data = (SAMPLES / "notes.txt").read_bytes()[: 7 * pred.chunk_tokens]
    coded = streamcoder.encode_stream("text", data, pred)
    lm = [c for c in coded if c.record["codec"] == "lm"]
    assert len(lm) >= 4, "the tiny model should beat the classic codecs on these chunks"
    monkeypatch.setattr(streamcoder, "DECODE_MEMORY", 2 * pred.engine.cache_bytes())
    sizes = []
    real = streamcoder._decode_lm_batch
    monkeypatch.setattr(streamcoder, "_decode_lm_batch", lambda p, chunks: sizes.append(len(chunks)) or real(p, chunks))
    out = streamcoder.decode_chunks([("text", c.record, c.payload) for c in coded], lambda _id: pred)
    assert b"".join(out) == data
    assert max(sizes) == 2 and sum(sizes) == len(lm)


@pytest.mark.parametrize("size, repeat", [(2000, 40), (500, 4)])
def test_a_losing_lm_is_not_run_over_a_whole_stream(monkeypatch, size, repeat):
    """A stream whose probe chunks lose to the whole-stream classic coding goes classic after
    scoring only the probe: a long log, coded by xz, costs seconds instead of LM minutes, and so
    does a small one (16 of the tiny model's chunks here; a 40 KB source file for the default
    model, which scored 4 chunks of it instead of 39)."""
    pred = streamcoder.Predictor(intmodel.load(TINY))
    block = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    data = block * repeat  # xz finds the repeats; no 127-token chunk can
    assert len(data) > streamcoder.PROBE_CHUNKS * pred.chunk_tokens
    scored = []
    real = pred.engine.score
    monkeypatch.setattr(pred.engine, "score", lambda seqs, *a, **k: scored.append(len(seqs)) or real(seqs, *a, **k))
    done = []
    coded = streamcoder.encode_stream("binary", data, pred, on_progress=done.append)
    assert scored == [streamcoder.PROBE_CHUNKS]
    assert coded == streamcoder.classic_blocks(data) and sum(done) == len(data)


def test_a_probe_stage_is_scored_within_the_memory_bound(monkeypatch):
    """A probe stage of more chunks than SCORE_CELLS allows in one engine call is scored a group at
    a time: with SmolLM2 a chunk's tables are 0.8 GB, and a 72 KB file's first stage of four chunks
    held 4.2 GB at once."""
    pred = streamcoder.Predictor(intmodel.load(TINY))
    n = pred.chunk_tokens
    monkeypatch.setattr(streamcoder, "SCORE_CELLS", 2 * n * 256)  # two chunks' tables per call
    data = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes() * 40
    scored = []
    real = pred.engine.score
    monkeypatch.setattr(pred.engine, "score", lambda seqs, *a, **k: scored.append(len(seqs)) or real(seqs, *a, **k))
    coded = streamcoder.encode_stream("binary", data, pred)
    assert scored == [2, 2]  # the first stage's PROBE_CHUNKS, two by two; then the LM has lost
    assert coded == streamcoder.classic_blocks(data)


def test_probing_goes_on_in_stages_until_the_lm_loses(monkeypatch):
    """The first probe stage's four chunks can be the easy ones (a photo's sky): probing goes on
    with 4x more chunks per stage, spread among the rest, and stops scoring as soon as the LM's
    chunks cost more than their share of the classic coding, long before the whole stream."""
    pred = streamcoder.Predictor(intmodel.load(TINY))
    data = np.random.default_rng(1).integers(0, 16, 300_000, dtype=np.uint8).tobytes()
    stages = streamcoder.probe_stages(-(-len(data) // pred.chunk_tokens))
    assert [len(st) for st in stages[:3]] == [4, 16, 64]
    assert len({i for st in stages for i in st}) == sum(map(len, stages))  # no chunk twice
    easy = set(stages[0])
    scored = []

    def fake(kind, pieces, ids, predictor, on_progress):  # the LM wins on the first stage's chunks only
        scored.append(len(ids))
        return {i: streamcoder.Coded({"codec": "lm", "size": len(p)}, bytes(1 if i in easy else 2 * len(p)))
                for i, p in zip(ids, pieces, strict=True)}

    monkeypatch.setattr(streamcoder, "_code_pieces", fake)
    assert streamcoder.encode_stream("binary", data, pred) == streamcoder.classic_blocks(data)
    assert scored == [4, 16]


def test_probing_does_not_change_what_is_coded(monkeypatch):
    pred = streamcoder.Predictor(intmodel.load(TINY))
    data = (SAMPLES / "weather.json").read_bytes()  # the tiny model beats xz here: chunks are kept
    monkeypatch.setattr(classic, "CODECS", tuple(c for c in classic.CODECS if c != "cm"))  # cm would beat it
    monkeypatch.setattr(streamcoder, "PROBE_MARGIN", 1e9)
    probed = streamcoder.encode_stream("text", data, pred)
    monkeypatch.setattr(streamcoder, "probe_stages", lambda n: [])
    plain = streamcoder.encode_stream("text", data, pred)
    assert [(c.record, c.payload) for c in probed] == [(c.record, c.payload) for c in plain]
    assert len(plain) > 8 and {c.record["codec"] for c in plain} == {"lm"}


def test_a_kind_the_lm_keeps_losing_stops_being_scored(monkeypatch):
    """Streams of up to PROBE_CHUNKS chunks are scored whole before the LM can lose; once it has lost
    on enough of a kind's bytes in one run, the rest of that kind goes straight to the classic codecs
    (a folder of small text files with the default model). The record is per kind: another kind is
    still scored."""
    pred = streamcoder.Predictor(intmodel.load(TINY))
    monkeypatch.setattr(streamcoder, "TRACK_BYTES", 1000)
    scored = []
    real = pred.engine.score
    monkeypatch.setattr(pred.engine, "score", lambda seqs, *a, **k: scored.append(len(seqs)) or real(seqs, *a, **k))
    rng = np.random.default_rng(1)
    block = rng.integers(0, 256, 100, dtype=np.uint8).tobytes()
    files = [block * 4 + bytes([i]) for i in range(8)]  # 401 bytes each: xz finds the repeats, the LM cannot
    assert len(files[0]) <= streamcoder.PROBE_CHUNKS * pred.chunk_tokens
    track = streamcoder.Track()
    for i, data in enumerate(files):
        coded = streamcoder.encode_stream("binary", data, pred, track=track)
        assert coded == streamcoder.classic_blocks(data)
        assert bool(scored) and (len(scored) == i + 1 or track.hopeless())
    assert track.hopeless() and len(scored) == 3 and track.data == 3 * len(files[0]) and track.gain == 0
    streamcoder.encode_stream("binary", files[0], pred, track=streamcoder.Track())
    assert len(scored) == 4


def test_a_kind_the_lm_wins_keeps_being_scored(monkeypatch):
    pred = streamcoder.Predictor(intmodel.load(TINY))
    monkeypatch.setattr(classic, "CODECS", tuple(c for c in classic.CODECS if c != "cm"))  # cm would beat it
    monkeypatch.setattr(streamcoder, "TRACK_BYTES", 1000)
    data = (SAMPLES / "weather.json").read_bytes()
    track = streamcoder.Track()
    for _ in range(3):
        assert {c.record["codec"] for c in streamcoder.encode_stream("text", data, pred, track=track)} == {"lm"}
    assert track.data == 3 * len(data) and track.gain > 0.1 * track.classic and not track.hopeless()


def test_one_big_loss_does_not_switch_the_lm_off():
    """Near-silence that cm codes at half the LM's size, after recordings the LM wins on."""
    track = streamcoder.Track()
    track.add(20_000, 9_000, 10_000)
    track.add(50_000, 7_000, 3_000)
    assert track.data >= streamcoder.TRACK_BYTES and not track.hopeless()
    track.add(300_000, 200_000, 100_000)  # but a long run of losses does
    assert track.hopeless()


def test_a_chunk_decoded_alone_checks_guesses_in_one_pass(monkeypatch):
    """A chunk with no lockstep batch feeds guesses of its next tokens with each step: on data that
    repeats itself most steps decode several tokens, on random bytes few, and text has wrong
    guesses for the cache to forget; every token comes back, the same as decoding it in a batch."""
    from archiver.engine import Session

    pred = streamcoder.Predictor(intmodel.load(TINY))
    n = pred.chunk_tokens
    steps: list[int] = []
    forgotten: list[int] = []
    feed_run, rewind = Session.feed_run, Session.rewind
    monkeypatch.setattr(Session, "feed_run", lambda self, t: steps.append(t.shape[1]) or feed_run(self, t))
    monkeypatch.setattr(Session, "rewind", lambda self, k: forgotten.append(k) or rewind(self, k))
    text = (SAMPLES / "notes.txt").read_bytes()
    repeats = text[:10] * (n // 10 + 1)
    noise = np.random.default_rng(7).integers(0, 256, n).astype(np.uint8).tobytes()
    for data in (repeats, text, noise):
        symbols = pred.vocab.symbols("binary", data[:n])
        (freqs,) = pred.engine.score([[pred.vocab.bos("binary"), *pred.vocab.token_ids(symbols).tolist()]],
                                     pred.vocab.alphabet("binary"))
        enc = streamcoder.coder.Encoder()
        enc.encode(symbols, freqs)
        chunk = ("binary", {"codec": "lm", "tokens": len(symbols)}, enc.finish())
        steps.clear()
        forgotten.clear()
        (alone,) = streamcoder._decode_lm_batch(pred, [chunk])
        assert np.array_equal(alone, symbols)
        if data is repeats:
            assert len(steps) < len(symbols) / streamcoder.GUESSES and max(steps) == streamcoder.GUESSES + 1
        if data is text:
            assert sum(forgotten) > 0  # wrong guesses, and the decoding went on exactly
        if data is noise:
            assert len(steps) > 0.9 * len(symbols)  # random bytes hardly repeat a pair
        together = streamcoder._decode_lm_batch(pred, [chunk, chunk])
        assert all(np.array_equal(t, symbols) for t in together)
