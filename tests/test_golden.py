"""The cross-machine check: archives made once from the files in tests/fixtures/golden/ must decode
bit-exactly on whatever machine runs the tests. golden.lma: the tiny model with float64 keys (the
first integer program); golden-int8keys.lma: the same weights with the int8 key cache (the default
model's program until 2026-11-28), which also holds brotli chunks (index version 2);
golden-int8kv.lma: the same weights with int8 keys and values (the default model's program until
2026-11-29), which also holds solid cm blocks and a cmpcm chunk; golden-q7.lma: the same again with
7-bit queries and the 11-bit attention exp table (today's default model's program).

Never regenerate the archives casually: they exist to catch any change of the engine's arithmetic.
"""

import hashlib

import pytest

from tests.conftest import FIXTURES


@pytest.mark.parametrize("name", ["golden.lma", "golden-int8keys.lma", "golden-int8kv.lma", "golden-q7.lma"])
def test_golden_archive_decodes_bit_exactly(cli, tmp_path, monkeypatch, name):
    monkeypatch.setenv("LMARC_MODEL_PATH", str(FIXTURES))
    arc = FIXTURES / name
    out, _ = cli("list", arc, "--json")
    assert '"lm' in out  # it really holds LM-coded chunks (text, image, audio, binary)
    cli("extract", arc, "-C", tmp_path)
    originals = sorted(p for p in (FIXTURES / "golden").iterdir())
    assert len(originals) == 5
    for p in originals:
        got = (tmp_path / "golden" / p.name).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(p.read_bytes()).digest(), p.name


def test_golden_archive_refuses_without_its_model(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LMARC_MODEL_PATH", str(tmp_path))
    _, err = cli("extract", FIXTURES / "golden.lma", "-C", tmp_path / "out", code=2)
    assert "needs model" in err and "tiny" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
