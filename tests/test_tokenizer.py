"""The default model's BPE tokenizer: trained by us, every byte string round trips, and a byte-level
model grows into it without changing what it predicts for image, audio and binary streams."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT))
from archiver.vocab import make_vocab  # noqa: E402
from training import tokenizer  # noqa: E402
from training.data import BOS  # noqa: E402
from training.export import BYTE_VOCAB  # noqa: E402

VOCAB = 512


@pytest.fixture(scope="module")
def spec() -> dict:
    docs = [(ROOT / "samples" / n).read_text() for n in ("notes.txt", "weather.json")]
    return tokenizer.train(docs, VOCAB)


@pytest.fixture(scope="module")
def vocab(spec):
    return make_vocab(dict(BYTE_VOCAB, tokenizer=spec))


def test_layout_bytes_then_stream_starts_then_merges(spec, vocab):
    assert len(spec["tokens"]) == VOCAB == 260 + len(spec["merges"])
    assert vocab.table[:256] == [bytes([b]) for b in range(256)]
    assert vocab.table[256:260] == [b""] * 4 and {vocab.bos(k) for k in BOS} == set(range(256, 260))
    assert all(len(t) >= 2 for t in vocab.table[260:])  # each merge is a new token of 2+ bytes
    assert vocab.kinds == set(BOS)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=300).map(str.encode), st.binary(max_size=300)))
def test_any_text_stream_round_trips(vocab, data):
    """Text the tokenizer cannot give back (not UTF-8) is coded as byte tokens, which are text
    tokens too: a multimodal BPE model codes every text stream."""
    ids = vocab.symbols("text", data)
    assert vocab.to_bytes("text", ids) == data
    assert ids.max(initial=0) < VOCAB and not np.isin(ids, list(range(256, 260))).any()


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(["image", "audio", "binary"]), st.binary(max_size=300))
def test_other_kinds_are_byte_tokens(vocab, kind, data):
    ids = vocab.symbols(kind, data)
    assert ids.tolist() == list(data) and vocab.to_bytes(kind, ids) == data
    assert torch.equal(vocab.alphabet(kind), torch.arange(256)) and vocab.alphabet("text") is None


def test_merges_shorten_text_and_runs_stay_bounded(vocab):
    """The merges pay on the text they were learned from, and no pre-token outgrows 32 letters:
    a 4.6 MB DNA sequence or a million digits of pi must not become one quadratic BPE word."""
    notes = (ROOT / "samples" / "notes.txt").read_bytes()
    assert len(vocab.symbols("text", notes)) < 0.8 * len(notes)
    for run in (b"acgt" * 5000, b"7" * 5000):
        ids = vocab.symbols("text", run)
        assert vocab.to_bytes("text", ids) == run and max(len(vocab.table[i]) for i in ids) <= 32


def test_a_byte_model_grows_into_the_vocabulary(tmp_path, vocab):
    """warm_start keeps the byte model's rows, ties the head, starts a merge at its bytes' mean, and
    a byte-kind row (scored over the bytes only, as the archiver codes it) loses exactly what it
    lost before."""
    from transformers import LlamaForCausalLM

    from training.export import tiny_fixture
    from training.train import row_nats, token_bytes, warm_start

    small = tiny_fixture(0, steps=1)
    small.save_pretrained(tmp_path / "byte")
    grown = warm_start(tmp_path / "byte", vocab)
    assert isinstance(grown, LlamaForCausalLM) and grown.config.vocab_size == VOCAB
    emb, old = grown.get_input_embeddings().weight, small.get_input_embeddings().weight
    assert torch.equal(emb[:260], old) and grown.get_output_embeddings().weight is emb
    merge = 260
    assert torch.allclose(emb[merge], old[list(vocab.table[merge])].mean(0))
    x = torch.tensor([[BOS["image"], *range(40)], [BOS["text"], *range(40)]])
    y = torch.cat([x[:, 1:], torch.full((2, 1), -100)], 1)
    with torch.no_grad():
        before, nb = row_nats(small, x, y, token_bytes(make_vocab(BYTE_VOCAB)))
        after, nb2 = row_nats(grown, x, y, token_bytes(vocab))
    assert torch.allclose(after[0], before[0]) and nb[0] == nb2[0] == 40
    assert not torch.allclose(after[1], before[1])  # text is scored over the whole vocabulary


def test_text_and_pixels_of_one_bpe_model_decode_together(tmp_path, vocab, spec, monkeypatch):
    """LM chunks of a BPE model's text (whole vocabulary) and of an image (bytes) decode in one
    call: each lockstep batch takes the chunks of one alphabet."""
    from archiver import classic, streamcoder
    from archiver.intmodel import convert_llama
    from training.export import tiny_fixture
    from training.train import warm_start

    tiny_fixture(0, steps=1).save_pretrained(tmp_path / "byte")
    model = convert_llama(warm_start(tmp_path / "byte", vocab), extra=dict(BYTE_VOCAB, tokenizer=spec))
    pred = streamcoder.Predictor(model)
    # every classic coding loses (best is best_each of one block)
    monkeypatch.setattr(classic, "best_each", lambda blocks, *a, **k: iter([("zstd", bytes(10 * len(d) + 64))
                                                                              for d in blocks]))
    text = (ROOT / "samples" / "weather.json").read_bytes()[:3000]
    pixels = bytes(range(256)) * 6
    chunks = [(kind, c.record | {"model": "m"}, c.payload)
              for kind, data in (("text", text), ("image", pixels))
              for c in streamcoder.encode_stream(kind, data, pred)]
    assert {c[1]["codec"] for c in chunks} == {"lm"}
    text_tokens = sum(r["tokens"] for k, r, _ in chunks if k == "text")
    assert text_tokens < 0.9 * len(text) and sum(r["tokens"] for k, r, _ in chunks if k == "image") == len(pixels)
    out = streamcoder.decode_chunks(chunks, lambda _: pred)
    assert b"".join(d for (k, _, _), d in zip(chunks, out, strict=True) if k == "text") == text
    assert b"".join(d for (k, _, _), d in zip(chunks, out, strict=True) if k == "image") == pixels
