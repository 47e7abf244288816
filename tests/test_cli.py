"""End to end through the `lmarc` command line, on the demo files and (when present) the corpus."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from archiver import largefile
from archiver.cli import main
from archiver.container import ArchiveReader
from tests.conftest import SAMPLES

SAMPLE_FILES = ["notes.txt", "gradient.png", "chord.wav", "records.bin", "weather.json"]


def _same_tree(a: Path, b: Path) -> None:
    for f in a.rglob("*"):
        g = b / f.relative_to(a)
        if f.is_symlink():
            assert g.is_symlink() and os.readlink(f) == os.readlink(g)
        elif f.is_file():
            assert g.read_bytes() == f.read_bytes(), f
            assert g.stat().st_mode & 0o777 == f.stat().st_mode & 0o777
            assert g.stat().st_mtime_ns == f.stat().st_mtime_ns
        else:
            assert g.is_dir(), f


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(SAMPLES, src / "samples")
    (src / "samples" / "empty_dir").mkdir()
    (src / "samples" / "empty.txt").write_bytes(b"")
    (src / "samples" / "copy_of_notes.txt").write_bytes((SAMPLES / "notes.txt").read_bytes())
    os.symlink("notes.txt", src / "samples" / "link_to_notes")
    os.chmod(src / "samples" / "records.bin", 0o600)
    Image.open(SAMPLES / "gradient.png").save(src / "samples" / "gradient.ppm")
    return src


def test_round_trip_text_image_audio_binary(cli, tiny, tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tree)
    arc = tmp_path / "a.lma"
    cli("add", "-a", arc, "--model", tiny, "samples")
    out, _ = cli("list", arc, "--json")
    rows = {r["path"]: r for r in json.loads(out)}
    assert rows["samples/gradient.ppm"]["plugin"] == "pnm"
    # the PNG's pixels cost the tiny model more than the PNG itself: its own bytes are kept instead
    assert rows["samples/gradient.png"]["stored"] <= rows["samples/gradient.png"]["size"]
    assert rows["samples/chord.wav"]["plugin"] == "wav"
    assert rows["samples/notes.txt"]["plugin"] == "text"
    assert rows["samples/empty_dir"]["type"] == "dir"
    assert rows["samples/link_to_notes"]["type"] == "symlink"
    assert {"path", "size", "stored", "ratio", "plugin", "codec"} <= set(rows["samples/notes.txt"])
    cli("test", arc)
    cli("extract", arc, "-C", tmp_path / "out")
    _same_tree(tree / "samples", tmp_path / "out" / "samples")
    assert (tmp_path / "out" / "samples" / "empty_dir").is_dir()


def test_same_content_is_stored_once(cli, tiny, tree, tmp_path):
    arc = tmp_path / "a.lma"
    cli("add", "-a", arc, "--model", tiny, tree / "samples" / "notes.txt")
    size_one = arc.stat().st_size
    cli("add", "-a", arc, "--model", tiny, tree / "samples" / "copy_of_notes.txt")
    assert arc.stat().st_size - size_one < 600  # only a new index, no second copy of the data


def test_append_and_single_member_extract(cli, tiny, tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tree / "samples")
    arc = tmp_path / "a.lma"
    cli("add", "-a", arc, "--model", tiny, "notes.txt")
    cli("add", "-a", arc, "--model", tiny, "chord.wav", "weather.json")
    out, _ = cli("list", arc, "--json")
    assert [r["path"] for r in json.loads(out)] == ["notes.txt", "chord.wav", "weather.json"]
    cli("extract", arc, "chord.wav", "-C", tmp_path / "one")
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["chord.wav"]
    assert (tmp_path / "one" / "chord.wav").read_bytes() == (SAMPLES / "chord.wav").read_bytes()
    cli("extract", arc, "nope.txt", "-C", tmp_path / "two", code=2)


def test_test_names_a_flipped_byte(cli, tiny, tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tree / "samples")
    arc = tmp_path / "a.lma"
    cli("add", "-a", arc, "--model", tiny, "notes.txt", "records.bin")
    first_chunk = json.loads(cli("list", arc, "--json")[0])  # noqa: F841 (listing must work before damage)
    data = bytearray(arc.read_bytes())
    data[20] ^= 0x40  # inside the first entry's first chunk
    arc.write_bytes(bytes(data))
    _, err = cli("test", arc, code=1)
    assert "notes.txt" in err and "damaged" in err
    assert "records.bin" not in err
    _, err = cli("extract", arc, "-C", tmp_path / "out", code=1)
    assert (tmp_path / "out" / "records.bin").read_bytes() == (SAMPLES / "records.bin").read_bytes()
    assert not (tmp_path / "out" / "notes.txt").exists()


def test_random_data_does_not_expand(cli, tiny, tmp_path):
    blob = tmp_path / "random.bin"
    blob.write_bytes(os.urandom(200_000))
    arc = tmp_path / "a.lma"
    cli("add", "-a", arc, "--model", tiny, blob)
    assert arc.stat().st_size <= 200_000 * 1.01 + 1024


def test_existing_files_need_overwrite(cli, tiny, tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tree / "samples")
    arc = tmp_path / "a.lma"
    cli("add", "-a", arc, "--model", tiny, "notes.txt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _, err = cli("extract", arc, "-C", out, code=1)
    assert "exists" in err and (out / "notes.txt").read_text() == "mine"
    cli("extract", arc, "-C", out, "--overwrite")
    assert (out / "notes.txt").read_bytes() == (SAMPLES / "notes.txt").read_bytes()


def test_errors_are_one_line(cli, tmp_path):
    bad = tmp_path / "bad.lma"
    bad.write_bytes(b"not an archive at all")
    _, err = cli("list", bad, code=2)
    assert err.count("\n") == 1 and "not an lmarc archive" in err
    _, err = cli("test", tmp_path / "missing.lma", code=2)
    assert err.startswith("lmarc: ") and err.count("\n") == 1


def test_global_options_before_or_after_command(cli, tiny, tree, tmp_path):
    arc = tmp_path / "a.lma"
    cli("--threads", "1", "-q", "add", "-a", arc, "--model", tiny, tree / "samples" / "notes.txt")
    out, _ = cli("test", arc, "--threads", "1", "--no-progress", "-q")
    assert out == ""


def test_info_lists_plugins_and_models(cli):
    out, _ = cli("info")
    for name in ("raw", "text", "png", "wav", "compressed"):
        assert name in out
    assert "engine: exact integer inference" in out
    assert "codecs: lm, store, zstd, xz, brotli, cm, cm2d, cmpcm" in out


def test_help_on_every_command():
    for cmd in ("add", "extract", "list", "test", "info"):
        r = subprocess.run([sys.executable, "-m", "archiver.cli", cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: lmarc" in r.stdout


def test_corpus_images_and_audio_round_trip(cli, tiny, corpus, tmp_path, monkeypatch):
    """A slice of the real corpus, small enough for CI: PNG icons and spoken-digit WAVs.
    (test_formats checks every corpus image and audio file at the plugin level.)"""
    picks = sorted((corpus / "image" / "gimp_icons").glob("legacy_*"))[:6]
    picks += sorted((corpus / "audio" / "speech_fsdd").glob("*.wav"))[:2]
    src = tmp_path / "src"
    src.mkdir()
    for p in picks:
        shutil.copy(p, src / p.name)
    arc = tmp_path / "a.lma"
    monkeypatch.chdir(tmp_path)
    cli("add", "-a", arc, "--model", tiny, "src")
    cli("extract", arc, "-C", tmp_path / "out")
    for p in picks:
        assert (tmp_path / "out" / "src" / p.name).read_bytes() == p.read_bytes(), p.name


def test_adding_the_current_directory(cli, tiny, tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tree / "samples")
    arc = tmp_path / "a.lma"
    cli("add", "-a", arc, "--model", tiny, ".")
    names = [r["path"] for r in json.loads(cli("list", arc, "--json")[0])]
    assert "notes.txt" in names and "empty_dir" in names and "." not in names
    cli("extract", arc, "-C", tmp_path / "out", "notes.txt")
    assert (tmp_path / "out" / "notes.txt").read_bytes() == (SAMPLES / "notes.txt").read_bytes()


def test_cuda_without_a_gpu_is_a_clear_error(cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _, err = cli("--device", "cuda", "info", code=2)
    assert err == "lmarc: --device cuda: no CUDA device is available\n"


@pytest.mark.parametrize("command", [["list"], ["list", "--versions"], ["info"], ["test", "--quick"]])
def test_listing_does_not_load_torch(command):
    """`lmarc list` and `info ARCHIVE` must answer in a blink: torch (2+ s to import) loads only
    when a model runs."""
    import subprocess
    import sys

    from tests.conftest import FIXTURES

    code = ("import sys; from archiver.cli import main; rc = main(sys.argv[1:]);"
            " sys.exit(rc or ('torch' in sys.modules and 9))")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code, *command, str(FIXTURES / "golden.lma")], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr + "torch was imported" * (run.returncode == 9)


def test_info_on_an_archive_names_the_models_it_needs(cli, tiny, tmp_path):
    """`info ARCHIVE` says what an archive holds and, before any extraction is tried, whether the
    models its LM chunks need are installed."""
    model = tmp_path / "mine.safetensors"
    model.write_bytes(Path(tiny).read_bytes())
    arc = tmp_path / "a.lma"
    cli("add", "-q", "-a", arc, "--model", model, SAMPLES / "notes.txt", SAMPLES / "records.bin")
    info = json.loads(cli("info", "--json", arc)[0])
    assert info["entries"] == {"file": 2, "dir": 0, "symlink": 0}
    assert info["file_bytes"] == sum((SAMPLES / n).stat().st_size for n in ("notes.txt", "records.bin"))
    assert sum(info["codecs"].values()) == info["stored_bytes"] and "lm" in info["codecs"]
    assert [(m["name"], m["installed"]) for m in info["models"]] == [(str(model), str(model))]
    model.unlink()
    out, _ = cli("info", arc)
    assert f"model: {model} (id " in out and "NOT INSTALLED" in out
    cli("extract", "-C", tmp_path / "out", arc, code=2)  # as info said
    none = tmp_path / "none.lma"
    cli("add", "-q", "-a", none, "--model", "none", SAMPLES / "notes.txt")
    assert "models: none needed" in cli("info", none)[0]


def test_every_shipped_model_is_found_by_its_id():
    """Archives name models by content hash; every model file in the package (the current default
    and the retired ones kept for old archives) must resolve by that hash."""
    from archiver import registry
    from archiver.modelfile import file_sha256

    shipped = sorted(registry.PACKAGE_DIR.glob("*.safetensors"))
    assert any(p.stem == registry.DEFAULT for p in shipped)
    for path in shipped:
        assert registry.by_id(file_sha256(path)).model_id == file_sha256(path)


def test_model_none_is_classic_only_and_never_loads_torch(tmp_path):
    """`--model none` archives like an ordinary archiver: classic codecs only, no model, fast; the
    archive extracts byte for byte, still without torch."""
    arc, out = tmp_path / "c.lma", tmp_path / "out"
    code = ("import sys; from archiver.cli import main; rc = main(sys.argv[1:]);"
            " sys.exit(rc or ('torch' in sys.modules and 9))")  # fmt: skip
    for args in (["add", "-a", arc, "--model", "none", "."], ["extract", arc, "-C", out]):
        run = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                             cwd=SAMPLES)
        assert run.returncode == 0, run.stderr + "torch was imported" * (run.returncode == 9)
    rows = json.loads(subprocess.run([sys.executable, "-m", "archiver.cli", "list", "--json", str(arc)],
                                     capture_output=True, text=True, check=True).stdout)
    assert rows and all("lm" not in r["codec"].split("+") for r in rows)
    for f in SAMPLES.iterdir():
        if f.is_file():
            assert (out / f.name).read_bytes() == f.read_bytes()


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`lmarc list a.lma | head -1`: the reader going away is no error to report."""
    from tests.conftest import FIXTURES

    p = subprocess.Popen([sys.executable, "-m", "archiver.cli", "list", str(FIXTURES / "golden.lma")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the first line is written (the interpreter takes a while to start)
    assert p.wait(timeout=120) == 141 and p.stderr.read() == b""


def test_a_file_goes_whole_when_its_streams_code_worse_and_structured_ones_skip_cm(cli, tmp_path, monkeypatch):
    """A file is coded from its plugin's streams unless the classic codecs on its own bytes do
    better (then it is stored as raw bytes, and still round-trips); for an image or audio file
    larger than WHOLE_CM_MAX that comparison leaves cm out (its structured codec already beat it on
    every corpus file sampled, at the cost of a second cm pass); a smaller one is tried with cm."""
    from archiver import archive, classic, streamcoder

    wav = SAMPLES / "chord.wav"
    tried = []
    real = classic.compress
    monkeypatch.setattr(classic, "compress", lambda c, d, g=None: tried.append((c, len(d))) or real(c, d, g))
    for limit, with_cm in ((wav.stat().st_size - 1, False), (wav.stat().st_size, True)):
        monkeypatch.setattr(archive, "WHOLE_CM_MAX", limit)
        tried.clear()
        cli("add", "-q", "--model", "none", "-a", tmp_path / f"a{limit}.lma", wav)
        assert ("xz", wav.stat().st_size) in tried and (("cm", wav.stat().st_size) in tried) == with_cm
        assert "wav" in cli("list", tmp_path / f"a{limit}.lma")[0]
    monkeypatch.undo()
    real_encode = streamcoder.encode_stream
    bloated = lambda *a, **k: [streamcoder.Coded(c.record, c.payload + bytes(1 << 16)) for c in real_encode(*a, **k)]  # noqa: E731
    monkeypatch.setattr(streamcoder, "encode_stream", bloated)
    cli("add", "-q", "--model", "none", "-a", tmp_path / "b.lma", wav)
    assert " raw " in cli("list", tmp_path / "b.lma")[0]
    cli("extract", "-q", tmp_path / "b.lma", "-C", tmp_path / "out")
    assert next((tmp_path / "out").rglob("chord.wav")).read_bytes() == wav.read_bytes()


@pytest.mark.parametrize(("name", "patterns", "out"), [
    ("proj/.git/config", [".git"], True),
    ("proj/src/a.o", ["*.o"], True),
    ("proj/src/a.c", ["*.o"], False),
    ("proj/build/x/y.bin", ["proj/build"], True),
    ("proj/builder/y.bin", ["proj/build"], False),
    ("proj/build", ["proj/build/"], True),
    ("other/proj/build/y", ["proj/build"], False),  # a pattern with '/' matches from the top
    ("proj/README", ["readme"], False),  # case-sensitive
])
def test_exclude_patterns_follow_tar(name, patterns, out):
    from archiver.archive import excluded

    assert excluded(name, patterns) is out


def test_add_exclude_leaves_out_names_and_what_is_under_them(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for f in ["proj/.git/config", "proj/src/a.c", "proj/src/a.o", "proj/build/out.bin", "proj/keep.txt"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(f.encode())
    walked = []
    walk = os.walk
    monkeypatch.setattr(os, "walk", lambda top, **kw: (walked.append(r) or (r, d, f) for r, d, f in walk(top, **kw)))
    cli("add", "-a", "a.lma", "--model", "none", "-x", ".git", "--exclude", "*.o", "-x", "proj/build", "proj")
    names = [e["path"] for e in json.loads(cli("list", "a.lma", "--json")[0])]
    assert names == ["proj", "proj/src", "proj/keep.txt", "proj/src/a.c"]
    assert not any(".git" in r or "build" in r for r in walked)  # excluded directories are not entered


def test_extract_to_stdout_writes_only_the_bytes(tmp_path, monkeypatch, capsysbinary):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "one.txt").write_bytes(b"first file\n")
    (tmp_path / "two.bin").write_bytes(bytes(range(256)))
    assert main(["add", "-a", "a.lma", "--model", "none", "one.txt", "two.bin"]) == 0
    capsysbinary.readouterr()
    os.mkdir("out")
    monkeypatch.chdir("out")
    assert main(["extract", "-O", "../a.lma"]) == 0
    out, err = capsysbinary.readouterr()
    assert out == b"first file\n" + bytes(range(256))
    assert b"extracted 2 entries" in err
    assert os.listdir(".") == []
    assert main(["extract", "../a.lma", "two.bin", "--to-stdout", "-q"]) == 0
    assert capsysbinary.readouterr() == (bytes(range(256)), b"")


def test_exclude_from_a_file(cli, tmp_path, monkeypatch):
    """-X FILE adds FILE's patterns, one per line (blank lines skipped), to the -x ones."""
    monkeypatch.chdir(tmp_path)
    for n in ("keep.c", "drop.o", "also.tmp", "x.log"):
        (tmp_path / "p" / n).parent.mkdir(exist_ok=True)
        (tmp_path / "p" / n).write_text(n)
    Path("patterns").write_text("*.o\n\n*.tmp\n")
    cli("add", "-q", "-a", "a.lma", "--model", "none", "-X", "patterns", "-x", "*.log", "p")
    assert sorted(r["path"] for r in json.loads(cli("list", "--json", "a.lma")[0])) == ["p", "p/keep.c"]
    with pytest.raises(SystemExit):
        main(["add", "-a", "b.lma", "-X", "missing", "p"])
    assert "--exclude-from missing: No such file or directory" in cli.capsys.readouterr().err


def test_extract_exclude_leaves_out_members(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for f in ["proj/src/a.c", "proj/src/a.o", "proj/doc/x.txt"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(f.encode())
    cli("add", "-a", "a.lma", "--model", "none", "proj")
    cli("extract", "a.lma", "-C", "out", "-x", "*.o", "--exclude", "proj/doc")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")) == [
        "proj", "proj/src", "proj/src/a.c"]
    cli("extract", "a.lma", "proj/doc", "-C", "out2", "-x", "proj/doc")  # named but excluded: nothing, no error
    assert not (tmp_path / "out2" / "proj").exists()


def test_files_from_a_list_or_standard_input(cli, tmp_path, monkeypatch):
    """`add -T FILE` adds the paths FILE lists, one per line, `-T -` those on standard input and
    `--null` NUL-separated ones (`find -print0`): names with spaces or bytes that are not UTF-8."""
    monkeypatch.chdir(tmp_path)
    names = [b"plain.txt", b"with space.txt", b"caf\xe9.txt"]
    for n in names:
        Path(os.fsdecode(n)).write_bytes(b"content of " + n)
    Path("list").write_bytes(b"\n".join(names[:2]) + b"\n")
    cli("add", "-q", "-a", "a.lma", "--model", "none", "-T", "list")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(names[2] + b"\0" + names[0] + b"\0")))
    cli("add", "-q", "-a", "a.lma", "--model", "none", "--null", "-T", "-")
    rows = json.loads(cli("list", "--json", "a.lma")[0])
    assert sorted(r["path"] for r in rows) == sorted(os.fsdecode(n) for n in names)
    _, err = cli("add", "-a", "a.lma", code=2)
    assert "name at least one PATH" in err


class _Stdin(io.TextIOWrapper):
    """Standard input as a pipe (or, with tty, a terminal) holding these bytes."""

    def __init__(self, data: bytes, tty: bool = False):
        super().__init__(io.BytesIO(data))
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_standard_input_is_added_as_one_file(cli, tmp_path, monkeypatch):
    """PATH '-' stores standard input's bytes as one file named by --stdin-name (7z's -si), beside
    the other paths: a dump piped in extracts byte for byte, with the mode a new file gets. A pipe
    larger than LARGE_FILE goes through the segmented path like a large file. Reading a terminal,
    or standard input as both file and --files-from list, is refused; no spool file is left."""
    import random

    monkeypatch.chdir(tmp_path)
    data = random.Random(1).randbytes(3000) + b"CREATE TABLE t (id int);\n" * 200
    Path("other.txt").write_text("beside it\n")
    monkeypatch.setattr(sys, "stdin", _Stdin(data))
    cli("add", "-q", "-a", "a.lma", "--model", "none", "--stdin-name", "../dumps/db.sql", "other.txt", "-")
    rows = {r["path"]: r for r in json.loads(cli("list", "--json", "a.lma")[0])}
    assert set(rows) == {"other.txt", "dumps/db.sql"} and rows["dumps/db.sql"]["size"] == len(data)
    cli("extract", "-q", "-C", "out", "a.lma")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out/dumps/db.sql").read_bytes() == data
    assert (tmp_path / "out/dumps/db.sql").stat().st_mode & 0o777 == 0o666 & ~mask
    monkeypatch.setattr("archiver.largefile.LARGE_FILE", 1000)
    monkeypatch.setattr(sys, "stdin", _Stdin(data))
    cli("add", "-q", "-a", "b.lma", "--model", "none", "-")
    reader = ArchiveReader(tmp_path / "b.lma")
    (entry,) = reader.index.entries
    assert entry["path"] == "stdin" and largefile.is_segmented(reader.index.objects[entry["sha256"]])
    reader.close()
    cli("extract", "-q", "-C", "out2", "b.lma")
    assert (tmp_path / "out2/stdin").read_bytes() == data
    monkeypatch.setattr(sys, "stdin", _Stdin(data, tty=True))
    assert "from a terminal" in cli("add", "-a", "c.lma", "-", code=2)[1]
    monkeypatch.setattr(sys, "stdin", _Stdin(b"other.txt\n"))
    assert "both a file" in cli("add", "-a", "c.lma", "-T", "-", "-", code=2)[1]
    monkeypatch.setattr(sys, "stdin", _Stdin(data))
    assert "cannot name a file" in cli("add", "-a", "c.lma", "--stdin-name", "..", "-", code=2)[1]
    assert not Path("c.lma").exists()
    assert not list(tmp_path.glob(".lmarc-stdin-*"))


def test_diff_compares_with_the_disk_by_checksum(cli, tiny, tree, tmp_path, monkeypatch):
    """`lmarc diff` (tar --diff): an extraction matches its archive; then each kind of change is
    named (content of the same size, size, mode, mtime, link target, type, a missing name, a name
    the archive does not have), exit status 1; members and -x narrow it. It decodes nothing, so a
    model-coded archive needs no model and torch is never imported."""
    monkeypatch.chdir(tree)
    cli("add", "-q", "-a", tmp_path / "a.lma", "--model", tiny, "samples")
    out = tmp_path / "out"
    cli("extract", "-q", "-C", out, tmp_path / "a.lma")
    assert cli("diff", "-C", out, tmp_path / "a.lma") == ("", "compared 13 entries: no differences\n")
    s = out / "samples"
    notes = s / "notes.txt"
    stamp = notes.stat().st_mtime_ns
    notes.write_bytes(notes.read_bytes().swapcase())
    os.utime(notes, ns=(stamp, stamp))
    os.chmod(s / "records.bin", 0o644)
    (s / "weather.json").write_bytes(b"{}")
    (s / "link_to_notes").unlink()
    os.symlink("chord.wav", s / "link_to_notes")
    (s / "empty.txt").unlink()
    (s / "empty.txt").mkdir()
    (s / "chord.wav").unlink()
    (s / "new.txt").write_text("not archived\n")
    got, _ = cli("diff", "-C", out, tmp_path / "a.lma", code=1)
    assert got.splitlines() == [
        "samples/new.txt: not in the archive",
        "samples/chord.wav: missing",
        "samples/empty.txt: a dir here, a file in the archive",
        "samples/link_to_notes: links to 'chord.wav' here, to 'notes.txt' in the archive",
        "samples/notes.txt: content differs (same size)",
        "samples/records.bin: mode 644 here, 600 in the archive",
        "samples/weather.json: size 2 here, 7,553 in the archive",
        "samples/weather.json: mtime differs",
    ]
    got, _ = cli("diff", "-C", out, tmp_path / "a.lma", "samples/notes.txt", "samples/records.bin",
                 "-x", "records.bin", code=1)
    assert got == "samples/notes.txt: content differs (same size)\n"
    code = ("import sys; from archiver.cli import main; rc = main(sys.argv[1:]);"
            " sys.exit(rc if 'torch' not in sys.modules else 9)")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code, "diff", "-q", "-C", out, tmp_path / "a.lma",
                          "samples/gradient.ppm", "samples/gradient.png"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_owners_are_recorded_and_restored_by_root(cli, tmp_path, monkeypatch):
    """tar's habit: every entry records its owner (numbers, and names where known); an extraction
    as root gives files, directories and symlinks those owners, by name where the name exists here
    (so an archive moved between machines keeps "alice" as alice), else by number, and
    --no-same-owner leaves them root's. A chown alone is seen by the next add, and by diff."""
    from archiver import owners

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t" / "d").mkdir(parents=True)
    (tmp_path / "t" / "d" / "f.txt").write_text("owned\n")
    (tmp_path / "t" / "byname.txt").write_text("root by name\n")
    os.symlink("d/f.txt", tmp_path / "t" / "link")
    cli("add", "-q", "-a", "a.lma", "--model", "none", "t")
    rows = {r["path"]: r for r in json.loads(cli("list", "--json", "a.lma")[0])}
    assert rows["t/d/f.txt"]["uid"] == os.getuid() and rows["t/d/f.txt"]["gid"] == os.getgid()
    if os.geteuid() != 0:
        pytest.skip("giving files away needs root")
    for p in ("t/d", "t/d/f.txt", "t/link", "t/byname.txt"):
        os.chown(p, 54321, 54322, follow_symlinks=False)  # numbers with no name here
    real = owners._look.__wrapped__
    monkeypatch.setattr(owners, "_look", lambda what, key: "root" if (what, key) == (owners.USER_NAME, 54321)
                        else real(what, key))
    (tmp_path / "t" / "byname.txt").touch()
    cli("add", "-q", "-a", "b.lma", "--model", "none", "t/byname.txt")  # recorded as user "root", uid 54321
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    out, _ = cli("diff", "a.lma", code=1)
    assert "t/d/f.txt: owner 54321:54322 here, 0:0 in the archive" in out.splitlines()
    cli("add", "-q", "-a", "a.lma", "--model", "none", "t")  # the chown alone makes the entries new
    assert cli("diff", "a.lma")[0] == ""
    cli("extract", "-q", "-C", "out", "a.lma")
    for p in ("t/d", "t/d/f.txt", "t/link"):
        st = os.lstat(tmp_path / "out" / p)
        assert (st.st_uid, st.st_gid) == (54321, 54322), p
    cli("extract", "-q", "-C", "out2", "b.lma")
    st = os.lstat(tmp_path / "out2/t/byname.txt")
    assert (st.st_uid, st.st_gid) == (0, 54322)  # the name "root" wins over the number 54321
    cli("extract", "-q", "-C", "plain", "--no-same-owner", "a.lma")
    assert os.lstat(tmp_path / "plain/t/d/f.txt").st_uid == 0


def test_list_long_shows_mode_owner_and_time(cli, tmp_path, monkeypatch):
    """`list -l`, as tar tv: type and permissions, owner names, local modification time."""
    import grp
    import pwd
    import time as time_

    monkeypatch.chdir(tmp_path)
    f = tmp_path / "t" / "f.txt"
    f.parent.mkdir()
    f.write_text("x\n")
    os.chmod(f, 0o640)
    stamp = time_.mktime((2001, 2, 3, 4, 5, 0, 0, 0, -1))
    os.utime(f, (stamp, stamp))
    os.symlink("f.txt", tmp_path / "t" / "l")
    cli("add", "-q", "-a", "a.lma", "--model", "none", "t")
    lines = cli("list", "-l", "a.lma")[0].splitlines()
    owner = f"{pwd.getpwuid(os.getuid()).pw_name}/{grp.getgrgid(os.getgid()).gr_name}"
    assert lines[0].startswith("mode       owner        modified ")
    assert any(line.startswith(f"-rw-r----- {owner:<12} 2001-02-03 04:05 ") and line.endswith(" t/f.txt")
               for line in lines)
    assert any(line.startswith("lrwxrwxrwx ") and line.endswith("t/l -> f.txt") for line in lines)


def test_strip_components_as_tar_does(cli, tmp_path, monkeypatch):
    """extract --strip-components N drops the first N parts of each name, leaves out entries with
    no more parts than that, and renames hard link targets alike."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "proj-1.0" / "src").mkdir(parents=True)
    (tmp_path / "proj-1.0" / "README").write_text("read me\n")
    (tmp_path / "proj-1.0" / "src" / "a.c").write_text("int main;\n")
    os.link(tmp_path / "proj-1.0" / "src" / "a.c", tmp_path / "proj-1.0" / "src" / "b.c")
    cli("add", "-q", "-a", "a.lma", "--model", "none", "proj-1.0")
    cli("extract", "-q", "-C", "one", "--strip-components", "1", "a.lma")
    assert sorted(p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one").rglob("*")) == [
        "README", "src", "src/a.c", "src/b.c"]
    assert os.stat("one/src/a.c").st_ino == os.stat("one/src/b.c").st_ino
    cli("extract", "-q", "-C", "two", "a.lma", "--strip-components", "2")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["a.c", "b.c"]
    with pytest.raises(SystemExit):
        main(["extract", "--strip-components", "-1", "a.lma"])


def test_quick_test_reads_stored_bytes_against_their_crcs(cli, tmp_path, monkeypatch):
    """`test --quick` names the entry whose stored bytes changed (nothing decoded) and passes the rest."""
    monkeypatch.chdir(tmp_path)
    Path("a.txt").write_text("first file\n" * 500)
    Path("b.txt").write_text("second file, other words\n" * 500)
    cli("add", "-q", "-a", "a.lma", "--model", "none", "--no-solid", "a.txt", "b.txt")
    assert cli("test", "--quick", "a.lma")[0] == "tested 2 entries\nall entries OK\n"
    with ArchiveReader(tmp_path / "a.lma") as r:
        (chunk,) = r.index.objects[r.index.entries[1]["sha256"]]["streams"][0]["chunks"]
    data = bytearray(Path("a.lma").read_bytes())
    data[chunk["offset"] + chunk["length"] // 2] ^= 0x01
    Path("a.lma").write_bytes(data)
    out, err = cli("test", "--quick", "a.lma", code=1)
    assert out == "tested 1 entries, 1 problems\n" and err == "lmarc: b.txt: damaged (chunk CRC mismatch)\n"


def test_rename_is_a_new_version_of_the_names(cli, tmp_path, monkeypatch):
    """`rename ARCHIVE OLD NEW...` (7z rn): entries and what is under them take new names, hard link
    targets follow, no payload is written (the archive grows by one index), and --until 1 still has
    the old names. A name taken twice, an unsafe NEW or a missing OLD changes nothing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p" / "src").mkdir(parents=True)
    (tmp_path / "p" / "src" / "a.c").write_text("int a;\n")
    os.link(tmp_path / "p" / "src" / "a.c", tmp_path / "p" / "b.c")
    (tmp_path / "p" / "README").write_text("read me\n")
    cli("add", "-q", "-a", "a.lma", "--model", "none", "p")
    with ArchiveReader(tmp_path / "a.lma") as r:
        data_end = r.data_end
    before = Path("a.lma").read_bytes()
    assert cli("rename", "a.lma", "p/src", "p/lib", "p/b.c", "p/c.c")[0] == "renamed 3 entries\n"
    assert Path("a.lma").read_bytes()[:data_end] == before[:data_end]
    rows = {r["path"]: r for r in json.loads(cli("list", "--json", "a.lma")[0])}
    assert set(rows) == {"p", "p/lib", "p/lib/a.c", "p/c.c", "p/README"}
    assert rows["p/lib/a.c"]["hardlink"] == "p/c.c"  # (p/b.c was the first name walked)
    cli("extract", "-q", "-C", "out", "a.lma")
    assert os.stat("out/p/lib/a.c").st_ino == os.stat("out/p/c.c").st_ino
    assert {r["path"] for r in json.loads(cli("list", "--json", "--until", "1", "a.lma")[0])} == {
        "p", "p/src", "p/src/a.c", "p/b.c", "p/README"}
    after = Path("a.lma").read_bytes()
    assert "already has p/c.c" in cli("rename", "a.lma", "p/README", "p/c.c", code=2)[1]
    assert "cannot name an entry" in cli("rename", "a.lma", "p/c.c", "../c.c", code=2)[1]
    assert "not in the archive: p/none" in cli("rename", "a.lma", "p/none", "p/x", code=2)[1]
    assert Path("a.lma").read_bytes() == after


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert re.fullmatch(r"lmarc \S+ \(archive format 1, 2 encrypted, index versions 1-\d+\)\n", capsys.readouterr().out)


def test_hard_links_come_back_as_hard_links(cli, tmp_path, monkeypatch):
    """tar's habit: a file of several names is stored once and read once; each other name is an
    entry naming the first (and carrying its content, for old readers and for extracting it alone).
    Extracted together they are one file again; alone, or once the first name is deleted, a copy."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t" / "d").mkdir(parents=True)
    (tmp_path / "t" / "a.txt").write_bytes(b"one file, three names\n" * 30)
    os.link(tmp_path / "t" / "a.txt", tmp_path / "t" / "c.txt")
    os.link(tmp_path / "t" / "a.txt", tmp_path / "t" / "d" / "b.txt")
    reads = []
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: reads.append(p.name) or read_bytes(p))
    cli("add", "-q", "-a", "a.lma", "--model", "none", "t", "t/a.txt")  # (t/a.txt twice: never a link to itself)
    assert reads.count("a.txt") == 1 and "b.txt" not in reads and "c.txt" not in reads
    rows = {r["path"]: (r["hardlink"], r["stored"] > 0) for r in json.loads(cli("list", "--json", "a.lma")[0])}
    assert rows == {"t": (None, False), "t/d": (None, False), "t/a.txt": (None, True), "t/c.txt": ("t/a.txt", False),
                    "t/d/b.txt": ("t/a.txt", False)}  # (stored once: counted for the first name only)
    cli("extract", "-q", "-C", "all", "a.lma")
    inodes = {os.stat(f"all/t/{n}").st_ino for n in ("a.txt", "c.txt", "d/b.txt")}
    assert len(inodes) == 1 and os.stat("all/t/a.txt").st_nlink == 3
    cli("extract", "-q", "-C", "alone", "a.lma", "t/d/b.txt")
    assert Path("alone/t/d/b.txt").read_bytes() == (tmp_path / "t" / "a.txt").read_bytes()
    cli("delete", "-q", "a.lma", "t/a.txt")
    cli("extract", "-q", "-C", "after", "a.lma")
    assert Path("after/t/c.txt").read_bytes() == Path("after/t/d/b.txt").read_bytes() == Path(
        "all/t/a.txt").read_bytes()
    cli("test", "-q", "a.lma")


def test_an_unchanged_file_is_not_read_again_unless_checksum(cli, tmp_path, monkeypatch):
    """As zpaq and rsync decide: a file whose size, mtime and mode match its entry keeps that entry
    unread. An edit that restores the mtime and keeps the size goes unnoticed; --checksum reads
    every file and sees it. A changed mode alone is read again and recorded."""
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "f.txt"
    f.write_bytes(b"version one\n" * 100)
    cli("add", "-q", "-a", "a.lma", "--model", "none", "f.txt")
    reads = []
    read_bytes = Path.read_bytes
    raw = Path("a.lma").read_bytes()
    monkeypatch.setattr(Path, "read_bytes", lambda p: (reads.append(p.name) if p.name == "f.txt" else None)
                        or read_bytes(p))
    cli("add", "-q", "-a", "a.lma", "--model", "none", "f.txt")
    assert reads == [] and Path("a.lma").read_bytes() == raw
    st = f.stat()
    f.write_bytes(b"version two\n" * 100)  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    cli("add", "-q", "-a", "a.lma", "--model", "none", "f.txt")
    assert reads == [] and cli("extract", "-q", "-O", "a.lma")[0].startswith("version one")
    cli("add", "-q", "-a", "a.lma", "--model", "none", "--checksum", "f.txt")
    assert reads == ["f.txt"] and cli("extract", "-q", "-O", "a.lma")[0].startswith("version two")
    f.chmod(0o600)
    cli("add", "-q", "-a", "a.lma", "--model", "none", "f.txt")
    assert reads == ["f.txt", "f.txt"] and json.loads(cli("list", "--json", "a.lma")[0])[0]["mode"] == 0o600
