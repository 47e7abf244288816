"""Chunked LM coding of streams: many chunks, decoded in several lockstep batches."""

from __future__ import annotations

from archiver import intmodel, streamcoder
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
