"""Hostile archives, hostile paths, crashes, full disks and concurrent writers lose nothing."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archiver.cli import main
from archiver.container import ArchiveWriter
from tests.conftest import SAMPLES, TINY

LMARC = [sys.executable, "-m", "archiver.cli"]


def run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*LMARC, *map(str, args)], capture_output=True, text=True, **kw)


def one_clean_line(err: str) -> bool:
    return "Traceback" not in err and all(line.startswith("lmarc: ") for line in err.splitlines())


@pytest.fixture(scope="module")
def two_adds(tmp_path_factory) -> tuple[Path, int]:
    """An archive built by two adds; returns it and the size after the first."""
    d = tmp_path_factory.mktemp("arc")
    arc = d / "a.lma"
    assert run("add", "-a", arc, "--model", TINY, SAMPLES / "notes.txt", cwd=d).returncode == 0
    first = arc.stat().st_size
    second = run("add", "-a", arc, "--model", TINY, SAMPLES / "records.bin", SAMPLES / "weather.json", cwd=d)
    assert second.returncode == 0
    return arc, first


def test_truncation_anywhere_keeps_the_previous_state_or_fails_cleanly(two_adds, tmp_path, cli):
    arc, first = two_adds
    data = arc.read_bytes()
    cuts = sorted(set(range(0, len(data), max(1, len(data) // 150))) | {first - 1, first, first + 1, len(data) - 1})
    for cut in cuts:
        t = tmp_path / "t.lma"
        t.write_bytes(data[:cut])
        rc = ops_list(t)
        if cut >= first:
            assert rc == ["work/main/samples/notes.txt"] or rc[0].endswith("notes.txt"), cut
        else:
            assert rc is None, cut


@pytest.mark.parametrize("at", [-40, -30, -20, -12, -6, -2])  # the index; the trailer's magic, index offset,
def test_a_damaged_last_add_is_reported_and_never_written_over(two_adds, tmp_path, cli, at):  # length, CRCs
    """One flipped bit in the last add's index or trailer: the archive reads as the add before left
    it, and list, info, test and extract say that the last add is damaged (test and extract fail).
    `add` refuses and changes nothing: it used to truncate that add's intact payloads away as a
    killed add's debris, hiding the damage for good. `compact` drops the damaged add explicitly,
    after which the archive takes adds again."""
    arc, _ = two_adds
    data = bytearray(arc.read_bytes())
    data[at] ^= 0x10
    t = tmp_path / "t.lma"
    t.write_bytes(data)
    damaged = "warning: the last add's index is damaged"
    out, err = cli("list", t)
    assert "notes.txt" in out and "weather.json" not in out and damaged in err
    assert damaged in cli("info", t)[1] and damaged in cli("list", "--versions", t)[1]
    assert "the last add's index is damaged" in cli("test", t, code=1)[1]
    cli("extract", "-q", "-C", tmp_path / "out", t, code=1)
    (got,) = (tmp_path / "out").rglob("notes.txt")
    assert got.read_bytes() == (SAMPLES / "notes.txt").read_bytes()
    assert "not adding: the last add's index is damaged" in cli("add", "-a", t, "--model", "none", got, code=2)[1]
    assert t.read_bytes() == data
    cli("compact", "-q", t)
    cli("add", "-q", "-a", t, "--model", "none", got)
    assert cli("test", t)[1] == ""


def test_a_killed_adds_debris_is_a_note_and_the_next_add_removes_it(two_adds, tmp_path, cli):
    """Payloads after the last trailer with no commit after them (an add killed by SIGKILL or a
    power cut) are not damage: a note, exit status 0, and the next add writes over them."""
    arc, _ = two_adds
    t = tmp_path / "t.lma"
    t.write_bytes(arc.read_bytes() + random.Random(0).randbytes(5000))
    note = "warning: 5,000 bytes of an add that did not finish"
    assert note in cli("list", t)[1]
    assert note in cli("test", t)[1]
    (tmp_path / "new.txt").write_text("after the crash\n")
    cli("add", "-q", "-a", t, "--model", "none", tmp_path / "new.txt")
    assert cli("test", t)[1] == ""
    assert t.read_bytes().startswith(arc.read_bytes()) and t.stat().st_size < arc.stat().st_size + 5000


def test_an_add_at_work_is_said_to_be_in_progress(two_adds, tmp_path, cli):
    """While a writer holds the lock, the bytes after the last trailer are its work so far: readers
    say so (not "did not finish", not "damaged"), and `test` passes."""
    arc, _ = two_adds
    t = tmp_path / "t.lma"
    t.write_bytes(arc.read_bytes())
    writer = ArchiveWriter(t)
    try:
        writer.write_chunk(b"LMAIDX\x00\x01" * 125)  # even ending like a trailer
        assert "another lmarc is writing to this archive: the 1,000 bytes" in cli("test", t)[1]
    finally:
        writer.rollback()
        writer.close()
    assert cli("test", t)[1] == ""


def test_remove_files_removes_only_what_the_synced_archive_holds(cli, tmp_path, monkeypatch):
    """add --remove-files (tar's): what was added is removed once the archive is committed, files and
    symlinks first, then directories left empty; an excluded file keeps its directories. Every
    file is read even when its size and mtime match its entry (content edited in place is stored,
    not lost). A file changed after it was read, and everything when the add fails, is kept."""
    from archiver import archive as ops

    monkeypatch.chdir(tmp_path)
    t = tmp_path / "t"
    (t / "sub").mkdir(parents=True)
    (t / "a.txt").write_text("alpha\n")
    (t / "sub" / "b.txt").write_text("beta\n")
    (t / "sub" / "keep.o").write_text("excluded\n")
    os.symlink("a.txt", t / "l")
    cli("add", "-q", "-a", "a.lma", "--model", "none", "--remove-files", "-x", "*.o", "t")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in t.rglob("*")) == ["t/sub", "t/sub/keep.o"]
    cli("extract", "-q", "-C", "out", "a.lma")
    assert (tmp_path / "out/t/a.txt").read_text() == "alpha\n" and os.readlink(tmp_path / "out/t/l") == "a.txt"

    f = t / "sub" / "keep.o"  # now added: edited in place, same size, mtime put back
    cli("add", "-q", "-a", "b.lma", "--model", "none", f)
    stamp = f.stat().st_mtime_ns
    f.write_text("EXCLUDED\n")
    os.utime(f, ns=(stamp, stamp))
    cli("add", "-q", "-a", "b.lma", "--model", "none", "--remove-files", f)
    assert not f.exists()
    assert cli("extract", "-q", "-O", "b.lma")[0] == "EXCLUDED\n"

    (t / "c.txt").write_text("gamma\n")
    (t / "d.txt").write_text("delta\n")
    real = ops._add_one

    def then_edit(p, name, *args):
        entry = real(p, name, *args)
        if p.name == "c.txt":
            p.write_text("gamma, edited after it was read\n")
        return entry

    monkeypatch.setattr(ops, "_add_one", then_edit)
    _, err = cli("add", "-a", "c.lma", "--model", "none", "--remove-files", t / "c.txt", t / "d.txt", code=1)
    assert "c.txt: changed since it was read; not removed" in err
    assert (t / "c.txt").exists() and not (t / "d.txt").exists()
    monkeypatch.setattr(ops, "_add_one", real)

    def full(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ArchiveWriter, "commit", full)
    cli("add", "-a", "d.lma", "--model", "none", "--remove-files", t / "c.txt", code=2)
    assert (t / "c.txt").exists() and not Path("d.lma").exists()


def ops_list(path: Path) -> list[str] | None:
    from archiver.archive import listing
    from archiver.container import ArchiveError

    try:
        return [r["path"] for r in listing(path)[0]]
    except ArchiveError:
        return None


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("small")
    (d / "bits.bin").write_bytes((SAMPLES / "records.bin").read_bytes()[:400])
    arc = d / "s.lma"
    assert run("add", "-a", arc, "--model", TINY, "bits.bin", SAMPLES / "notes.txt", cwd=d).returncode == 0
    return arc


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_bit_flips_give_clean_errors_and_nothing_outside(small_archive, tmp_path, data):
    raw = bytearray(small_archive.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    bad = case / "bad.lma"
    bad.write_bytes(bytes(raw))
    for cmd in (["list", bad], ["test", bad], ["extract", bad, "-C", case / "out"]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main([str(c) for c in cmd])
        assert rc in (0, 1, 2)
        assert one_clean_line(err.getvalue()), err.getvalue()
    outside = [p for p in case.rglob("*") if p != bad and not str(p).startswith(str(case / "out"))]
    assert outside == []


def _hostile_archive(path: Path, entries: list[dict]) -> None:
    payload = b"owned"
    digest = hashlib.sha256(payload).hexdigest()
    w = ArchiveWriter(path)
    loc = w.write_chunk(payload)
    w.index.objects[digest] = {"format": "raw", "format_version": "1", "recipe": {},
                               "streams": [{"kind": "binary", "size": 5,
                                            "chunks": [{"codec": "store", "size": 5, "tokens": 0} | loc]}]}
    for e in entries:
        w.index.entries.append({"mode": 0o644, "mtime": 0, "size": 5} | e | (
            {"sha256": digest} if e["type"] == "file" else {}))
    w.commit()
    w.close()


@pytest.mark.parametrize("name", ["../evil", "/abs/evil", "a/../../evil", "C:/evil", "a\\..\\evil", "", "a/\x00b"])
def test_unsafe_names_are_refused(tmp_path, name, cli):
    arc = tmp_path / "h.lma"
    _hostile_archive(arc, [{"path": name, "type": "file"}])
    _, err = cli("extract", arc, "-C", tmp_path / "out", code=2)
    assert "unsafe member name" in err or "malformed" in err
    assert not (tmp_path / "evil").exists() and not Path("/abs/evil").exists()


def test_symlinks_cannot_escape_or_be_written_through(tmp_path, cli):
    arc = tmp_path / "h.lma"
    _hostile_archive(arc, [
        {"path": "up", "type": "symlink", "link": "../../outside"},
        {"path": "abs", "type": "symlink", "link": "/etc/passwd"},
        {"path": "ok", "type": "symlink", "link": "sub/file"},
        {"path": "via/file", "type": "file"},
    ])
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "via")  # an existing symlink in the destination
    _, err = cli("extract", arc, "-C", out, code=1)
    assert "outside the destination" in err and "existing symlink" in err
    assert not (out / "up").exists() and not (out / "abs").is_symlink()
    assert os.readlink(out / "ok") == "sub/file"
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_setuid_bits_are_never_restored(tmp_path, cli):
    arc = tmp_path / "h.lma"
    _hostile_archive(arc, [{"path": "tool", "type": "file", "mode": 0o6755}])
    cli("extract", arc, "-C", tmp_path / "out")
    assert (tmp_path / "out" / "tool").stat().st_mode & 0o7777 == 0o755


def _big_input(tmp_path: Path, files: int = 12, reps: int = 20) -> Path:
    src = tmp_path / "big"
    src.mkdir()
    text = (SAMPLES / "notes.txt").read_bytes()
    for i in range(files):  # 2 KB of noise each: no codec makes these smaller than a few KB
        (src / f"f{i}.txt").write_bytes(text * (reps + i) + random.Random(i).randbytes(2000))
    return src


def test_sigkill_during_add_leaves_previous_contents(two_adds, tmp_path):
    arc0, _ = two_adds
    src = _big_input(tmp_path)
    before = ops_list(arc0)
    for delay in (0.8, 1.6, 3.0):
        arc = tmp_path / "k.lma"
        arc.write_bytes(arc0.read_bytes())
        p = subprocess.Popen([*LMARC, "--threads", "1", "add", "-a", str(arc), "--model", str(TINY), str(src)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.kill()
        p.wait()
        got = ops_list(arc)
        assert got is not None and got[: len(before)] == before
        assert run("test", arc).returncode == 0


def test_ctrl_c_during_add_says_so_and_changes_nothing(two_adds, tmp_path):
    arc0, _ = two_adds
    arc = tmp_path / "c.lma"
    arc.write_bytes(arc0.read_bytes())
    # 3.5 MB: once the tiny model has lost on the first 64 KiB, the rest is cm's (about 10 s here)
    src = _big_input(tmp_path, reps=250)
    # (a job started in the background by a non-interactive shell inherits SIGINT ignored: restore it,
    # as a terminal's Ctrl-C would find it)
    p = subprocess.Popen([*LMARC, "add", "-a", str(arc), "--model", str(TINY), str(src)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(2.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 or p.returncode == 2, err
    assert "interrupted" in err and one_clean_line(err)
    assert arc.read_bytes() == arc0.read_bytes()


def test_ctrl_c_does_not_wait_for_a_running_codec(tmp_path):
    """A 4 MiB block's cm trial takes 10-16 s here; Ctrl-C in the middle of the first of two ends
    the process at once (it waited for the trial to finish: 8-10 s). Two blocks, so that a machine
    several times as fast is still coding when the interrupt comes."""
    words = (SAMPLES / "notes.txt").read_text().split()
    rng = random.Random(0)
    src = tmp_path / "words.txt"
    src.write_text(" ".join(rng.choice(words) for _ in range(1_400_000))[: 8 << 20])
    arc = tmp_path / "w.lma"
    p = subprocess.Popen([*LMARC, "add", "-a", str(arc), "--model", "none", str(src)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(4)
    assert p.poll() is None, "the add ended before the interrupt"
    t = time.monotonic()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert time.monotonic() - t < 4, "exit waited for the codec trial"
    assert p.returncode in (130, 2) and "interrupted" in err and one_clean_line(err)
    assert not arc.exists()


def test_full_disk_gives_clear_error_and_readable_archive(two_adds, tmp_path):
    arc0, _ = two_adds
    arc = tmp_path / "f.lma"
    arc.write_bytes(arc0.read_bytes())
    limit = arc.stat().st_size + 3000

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    src = _big_input(tmp_path, files=3, reps=3)
    r = subprocess.run([*LMARC, "add", "-a", str(arc), "--model", str(TINY), str(src)], capture_output=True,
                       text=True, preexec_fn=small_disk)
    assert r.returncode == 2 and "cannot write" in r.stderr and one_clean_line(r.stderr)
    assert arc.read_bytes() == arc0.read_bytes()


def test_a_second_writer_waits_then_fails_clearly(two_adds, tmp_path):
    arc0, _ = two_adds
    arc = tmp_path / "l.lma"
    arc.write_bytes(arc0.read_bytes())
    holder = ArchiveWriter(arc)  # another add in progress
    try:
        r = run("add", "-a", arc, "--model", TINY, SAMPLES / "chord.wav", env=dict(os.environ, LMARC_LOCK_TIMEOUT="1"))
    finally:
        holder.rollback()
        holder.close()
    assert r.returncode == 2 and "locked by another lmarc process" in r.stderr
    assert arc.read_bytes() == arc0.read_bytes()


def test_unreadable_file_is_reported_and_the_rest_added(tmp_path, cli):
    if os.geteuid() == 0:
        pytest.skip("root can read anything")
    f = tmp_path / "secret.txt"
    f.write_text("x")
    f.chmod(0)
    cli("add", "-a", tmp_path / "a.lma", "--model", TINY, f, SAMPLES / "notes.txt", code=1)


def test_list_json_is_valid_after_hostile_entries(tmp_path, cli):
    arc = tmp_path / "h.lma"
    _hostile_archive(arc, [{"path": "fine.txt", "type": "file"}])
    rows = json.loads(cli("list", arc, "--json")[0])
    assert rows[0]["path"] == "fine.txt"


def test_index_preset_dictionary_is_used_and_old_indexes_still_read():
    """The index's zlib preset dictionary shrinks one-file archives; indexes without it (written
    before it existed) and indexes naming an unknown dictionary are handled explicitly."""
    import zlib

    from archiver.container import ArchiveError, Index

    entry = {"path": "a.png", "mode": 420, "mtime": 1, "type": "file", "size": 3, "sha256": "ab" * 32}
    index = Index([entry], {}, {"f" * 64: "default"})
    raw = index.to_bytes()
    plain = zlib.compress(json.dumps({"format": "lmarc", "version": 1, "entries": [entry], "objects": {},
                                      "models": index.models}).encode(), 9)  # fmt: skip
    assert raw[1] & 0x20 and len(raw) < len(plain) - 50
    assert Index.from_bytes(raw) == index == Index.from_bytes(plain)
    foreign = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, b"another dictionary")
    with pytest.raises(ArchiveError, match="dictionary"):
        Index.from_bytes(foreign.compress(b"{}") + foreign.flush())


def test_index_of_many_entries_is_coded_with_cm_or_xz(monkeypatch):
    """A many-file index is mostly paths, sizes and digests: cm (xz beyond INDEX_CM_MAX) codes it
    smaller than zlib; damaged or oversized ones are refused."""
    import struct
    import zlib

    from archiver import container
    from archiver.container import CM_INDEX, XZ_INDEX, ArchiveError, Index

    entries = [{"path": f"src/pkg{i % 7}/module_{i}.py", "mode": 420, "mtime": 1_700_000_000_000_000_000 + i * 7919,
                "type": "file", "size": 1000 + i, "sha256": hashlib.sha256(str(i).encode()).hexdigest()}
               for i in range(300)]
    index = Index(entries, {}, {})
    raw = index.to_bytes()
    zlib_only = zlib.compress(json.dumps({"format": "lmarc", "version": 1, "entries": entries, "objects": {},
                                          "models": {}}, separators=(",", ":")).encode(), 9)
    assert raw[:3] == CM_INDEX and len(raw) < 0.8 * len(zlib_only)
    assert Index.from_bytes(raw) == index
    damaged = bytearray(raw)
    damaged[len(raw) // 2] ^= 0x40
    oversized = CM_INDEX + struct.pack("<I", container.INDEX_CM_MAX + 1) + raw[7:]
    for bad in (bytes(damaged), raw[:-5], oversized):
        with pytest.raises(ArchiveError, match="unreadable"):
            Index.from_bytes(bad)
    monkeypatch.setattr(container, "INDEX_CM_MAX", 0)
    raw = index.to_bytes()
    assert raw[:3] == XZ_INDEX and Index.from_bytes(raw) == index
    with pytest.raises(ArchiveError, match="unreadable"):
        Index.from_bytes(raw[:-5])


def test_without_flock_archives_are_read_and_never_written(tmp_path):
    """Where fcntl does not exist (Windows), lmarc must still list, test and extract archives; adding
    fails with a clear message and creates nothing."""
    code = ("import sys; sys.modules['fcntl'] = None; from archiver.cli import main;"
            " sys.exit(main(sys.argv[1:]))")  # fmt: skip
    env = dict(os.environ, LMARC_MODEL_PATH=str(TINY.parent))
    golden = TINY.parent / "golden.lma"
    for args in (["list", golden], ["test", golden], ["extract", "-C", tmp_path / "out", golden]):
        r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-c", code, "add", "-a", str(tmp_path / "new.lma"), "--model", "none",
                        str(SAMPLES / "notes.txt")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "has no flock" in r.stderr and one_clean_line(r.stderr)
    assert not (tmp_path / "new.lma").exists()


@pytest.mark.parametrize("target", ["../outside.txt", "/etc/passwd", "b.txt", "missing.txt", "link", "a.txt"])
def test_a_hard_link_entry_only_ever_links_to_a_file_the_extraction_wrote(tmp_path, cli, target):
    """A crafted `hardlink` naming something outside, itself, nothing extracted, or a file of other
    content: the entry is written as the file it holds (its checksum verified), and nothing outside
    the destination is touched."""
    os.chdir(tmp_path)
    (tmp_path / "a.txt").write_bytes(b"first\n")
    (tmp_path / "b.txt").write_bytes(b"second\n")
    os.symlink("a.txt", tmp_path / "link")
    cli("add", "-q", "-a", "h.lma", "--model", "none", "a.txt", "b.txt", "link")
    w = ArchiveWriter(tmp_path / "h.lma")
    w.index.entries[1]["hardlink"] = target
    w.commit()
    w.close()
    out = tmp_path / "out"
    cli("extract", "-q", "-C", out, "h.lma")
    assert (out / "b.txt").read_bytes() == b"second\n" and os.stat(out / "b.txt").st_nlink == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "h.lma", "link", "out"]
