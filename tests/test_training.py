"""The training helpers: saved streams and entry points without pip (what a lent GPU depends on), and
the export's --reprogram."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.data import BOS, read_streams, save_streams  # noqa: E402
from training.entry_points import write_dist_info  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(BOS)), st.binary(max_size=300)), max_size=8))
def test_saved_streams_read_back_exactly(tmp_path_factory, streams):
    path = tmp_path_factory.mktemp("s") / "train.xz"
    save_streams(path, streams)
    assert read_streams(path) == streams


def test_dist_info_gives_the_same_entry_points_as_the_installed_project(tmp_path):
    write_dist_info(tmp_path, ROOT / "pyproject.toml")
    dist = metadata.Distribution.at(next(tmp_path.glob("lmarc-*.dist-info")))
    written = {(ep.name, ep.value) for ep in dist.entry_points if ep.group == "lmarc"}
    installed = {(ep.name, ep.value) for ep in metadata.distribution("lmarc").entry_points if ep.group == "lmarc"}
    assert written == installed and {"raw", "png", "audio", "text"} <= {n for n, _ in written}


def test_reprogram_makes_the_q7_fixture_from_the_tiny_model(tmp_path, monkeypatch):
    """`export --reprogram` with the default program options writes, from the tests' tiny model, the
    very file the golden-q7 archive was made with (so the export is what made it, byte for byte)."""
    from archiver.modelfile import file_sha256
    from tests.conftest import FIXTURES, TINY
    from training import export

    out = tmp_path / "q7.safetensors"
    monkeypatch.setattr(sys, "argv", ["export", "--reprogram", str(TINY), str(out)])
    export.main()
    assert file_sha256(out) == file_sha256(FIXTURES / "tiny-q7.safetensors")
