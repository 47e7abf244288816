"""Shared fixtures: the tiny test model, the corpus location, an in-process CLI runner, and the
classic codecs' thread count."""

from __future__ import annotations

from pathlib import Path

import pytest

from archiver import classic
from archiver.cli import main
from archiver.container import ArchiveWriter
from archiver.streamcoder import Coded

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny.safetensors"
SAMPLES = ROOT / "samples"
CORPUS = ROOT.parent / "shared" / "corpus"


@pytest.fixture
def tiny() -> str:
    return str(TINY)


@pytest.fixture
def codec_threads():
    """classic.set_threads for one test; the thread count from before (and a pool of that size)
    afterwards, so no test leaves its pool's threads behind."""
    before = classic.threads()
    yield classic.set_threads
    classic.set_threads(before)


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is not present")
    return CORPUS


class Cli:
    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *args: str, code: int = 0) -> tuple[str, str]:
        rc = main([str(a) for a in args])
        out, err = self.capsys.readouterr()
        assert rc == code, f"exit {rc} (wanted {code}); stderr: {err}"
        return out, err


@pytest.fixture
def cli(capsys) -> Cli:
    return Cli(capsys)


def member(kind: str, data: bytes, codec: str, payload: bytes) -> tuple[dict, bytes, list[Coded]]:
    """What the archiver offers the solid packer for one stream: its record, bytes and own coding."""
    rec = {"codec": codec, "size": len(data), "tokens": 0}
    return {"kind": kind, "size": len(data)}, data, [Coded(rec, payload)]


class MemoryWriter:
    """ArchiveWriter's chunk writing, in memory: the solid packer's writer in tests."""

    write_coded = ArchiveWriter.write_coded

    def __init__(self):
        self.payloads: list[bytes] = []

    def write_chunk(self, payload: bytes) -> dict:
        self.payloads.append(payload)
        return {"offset": 16 + sum(len(p) for p in self.payloads[:-1]), "length": len(payload), "crc32": 0}
