"""Encrypted archives (`add --encrypt`, archiver/crypt.py): nothing readable without the password,
every command works with it, and a wrong or missing password is one clear error."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from archiver import crypt
from archiver.container import ArchiveReader
from tests.conftest import SAMPLES


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LMARC_PASSWORD", "correct horse")
    t = tmp_path / "t"
    t.mkdir()
    (t / "confidential-name.txt").write_text("the launch code is 0000\n" * 40)
    (t / "noise.bin").write_bytes(random.Random(7).randbytes(3000))  # stored as is when not encrypted
    (t / "notes.txt").write_bytes((SAMPLES / "notes.txt").read_bytes())
    yield t
    crypt.set_password_source(None)


def test_nothing_readable_without_the_password_and_everything_with_it(cli, tiny, tree, tmp_path):
    """Names, contents (even stored, incompressible ones) and the index are sealed; with the
    password add (new and appended), list, info, test, test --quick, extract, diff, delete and
    compact all work, and the archive stays encrypted through the rewrites."""
    cli("add", "-q", "-a", "a.lma", "--model", tiny, "--encrypt", "t")
    raw = Path("a.lma").read_bytes()
    assert raw[8:10] == (2).to_bytes(2, "little")  # format 2: a lmarc that predates encryption says so
    for secret in (b"confidential-name", b"launch code", (tree / "noise.bin").read_bytes()[:64], b"notes.txt"):
        assert secret not in raw
    rows = {r["path"]: r for r in json.loads(cli("list", "--json", "a.lma")[0])}
    assert set(rows) == {"t", "t/confidential-name.txt", "t/noise.bin", "t/notes.txt"}
    assert "encrypted: AES-256-GCM" in cli("info", "a.lma")[0]
    cli("test", "-q", "a.lma")
    cli("test", "-q", "--quick", "a.lma")
    (tree / "later.txt").write_text("appended later\n")
    cli("add", "-q", "-a", "a.lma", "--model", "none", "t/later.txt")  # (no --encrypt needed to append)
    cli("extract", "-q", "-C", "out", "a.lma")
    for f in tree.iterdir():
        assert (tmp_path / "out" / "t" / f.name).read_bytes() == f.read_bytes()
    assert cli("diff", "-C", "out", "a.lma")[0] == ""
    cli("delete", "-q", "a.lma", "t/noise.bin")
    cli("compact", "-q", "a.lma")
    raw = Path("a.lma").read_bytes()
    assert raw[8:10] == (2).to_bytes(2, "little") and b"appended later" not in raw
    cli("test", "-q", "a.lma")
    assert len(json.loads(cli("list", "--json", "a.lma")[0])) == 4


def test_wrong_missing_or_filed_password(cli, tree, tmp_path, monkeypatch):
    """A wrong password, or none to be had (no LMARC_PASSWORD, no --password-file, not a terminal),
    is one error line and exit status 2; --password-file reads the file's first line."""
    cli("add", "-q", "-a", "a.lma", "--model", "none", "--encrypt", "t")
    monkeypatch.setenv("LMARC_PASSWORD", "wrong horse")
    assert cli("list", "a.lma", code=2)[1] == "lmarc: a.lma: wrong password (or a damaged key record)\n"
    monkeypatch.delenv("LMARC_PASSWORD")
    monkeypatch.setattr(crypt, "_terminal", lambda: False)
    assert "the archive is encrypted: give its password" in cli("extract", "-C", "x", "a.lma", code=2)[1]
    assert not (tmp_path / "x").exists()
    assert "give its password" in cli("add", "-a", "new.lma", "--encrypt", "t", code=2)[1]
    assert not (tmp_path / "new.lma").exists()  # (no empty archive left behind)
    Path("pw").write_text("correct horse\nnot this line\n")
    cli("--password-file", "pw", "test", "-q", "a.lma")
    cli("test", "-q", "--password-file", "pw", "a.lma")


def test_encryption_is_chosen_when_the_archive_is_created(cli, tree):
    cli("add", "-q", "-a", "plain.lma", "--model", "none", "t/notes.txt")
    before = Path("plain.lma").read_bytes()
    assert "exists and is not encrypted" in cli("add", "-a", "plain.lma", "--encrypt", "t", code=2)[1]
    assert Path("plain.lma").read_bytes() == before


def test_damage_is_found_and_stays_local(cli, tree):
    """A flipped byte in a sealed payload fails its CRC (the entry is reported, the others come
    back); in the key record, it reads as a wrong password; in the sealed index, as unreadable."""
    cli("add", "-q", "-a", "a.lma", "--model", "none", "--encrypt", "--no-solid", "t")
    data = bytearray(Path("a.lma").read_bytes())
    rows = {r["path"]: r for r in json.loads(cli("list", "--json", "a.lma")[0])}
    with ArchiveReader("a.lma") as r:
        obj = r.index.objects[rows["t/noise.bin"]["sha256"]]
        chunk = obj["streams"][0]["chunks"][0]
        index_at = r.versions[-1][0]
    hit = bytearray(data)
    hit[chunk["offset"] + 40] ^= 1
    Path("b.lma").write_bytes(hit)
    _, err = cli("extract", "-q", "-C", "out", "b.lma", code=1)
    assert err == "lmarc: t/noise.bin: damaged (chunk CRC mismatch)\n"
    assert (tree / "notes.txt").read_bytes() == Path("out/t/notes.txt").read_bytes()
    key = bytearray(data)
    key[16 + 20] ^= 1  # the salt
    Path("c.lma").write_bytes(key)
    assert "wrong password (or a damaged key record)" in cli("list", "c.lma", code=2)[1]
    index = bytearray(data)
    index[index_at + 20] ^= 1
    Path("d.lma").write_bytes(index)
    assert cli("list", "d.lma", code=2)[1].startswith("lmarc: ")


def test_sealing_round_trips_and_every_seal_differs():
    """Each seal has its own nonce; a flipped bit, or a blob sealed for another role (a payload
    offered as the index), fails; the key record opens with its password only."""
    sealer = crypt.Sealer(bytes(32))
    a, b = sealer.seal(b"same bytes", crypt.CHUNK), sealer.seal(b"same bytes", crypt.CHUNK)
    assert a != b and len(a) == len(b"same bytes") + crypt.OVERHEAD
    assert sealer.open(a, crypt.CHUNK) == sealer.open(b, crypt.CHUNK) == b"same bytes"
    for bad, role in ((a[:-1] + bytes([a[-1] ^ 1]), crypt.CHUNK), (a, crypt.INDEX)):
        with pytest.raises(crypt.CryptError):
            sealer.open(bad, role)
    record, mine = crypt.new_key_record("pw")
    assert len(record) == crypt.KEY_RECORD_LEN
    assert crypt.unlock(record, "pw").open(mine.seal(b"x", crypt.CHUNK), crypt.CHUNK) == b"x"
    with pytest.raises(crypt.CryptError, match="wrong password"):
        crypt.unlock(record, "other")
    greedy = crypt.KEY_HEAD.pack(crypt.KEY_MAGIC, crypt.SCRYPT, 24, 8, 1, bytes(16))  # 2 GiB: a hostile record
    with pytest.raises(crypt.CryptError, match="damaged or of a kind"):
        crypt.unlock(greedy + record[crypt.KEY_HEAD.size :], "pw")


def test_passwd_changes_adds_or_removes_the_password(cli, tree, monkeypatch):
    """`passwd` rewraps the data key under a new password (the old one no longer opens the archive),
    encrypts a plain archive, and with --remove decrypts one; the entries come back each time."""
    cli("add", "-q", "-a", "a.lma", "--model", "none", "--encrypt", "t")
    Path("new").write_text("battery staple\n")
    cli("passwd", "-q", "--new-password-file", "new", "a.lma")
    assert "wrong password" in cli("test", "a.lma", code=2)[1]
    monkeypatch.setenv("LMARC_PASSWORD", "battery staple")
    cli("test", "-q", "a.lma")
    cli("passwd", "-q", "--remove", "a.lma")
    assert Path("a.lma").read_bytes()[8:10] == (1).to_bytes(2, "little")
    monkeypatch.delenv("LMARC_PASSWORD")
    cli("test", "-q", "a.lma")
    monkeypatch.setenv("LMARC_NEW_PASSWORD", "third")
    cli("passwd", "-q", "a.lma")
    assert b"confidential-name" not in Path("a.lma").read_bytes()
    monkeypatch.setenv("LMARC_PASSWORD", "third")
    cli("extract", "-q", "-C", "out", "a.lma")
    assert Path("out/t/notes.txt").read_bytes() == (tree / "notes.txt").read_bytes()
