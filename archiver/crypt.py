"""Archive encryption (`lmarc add --encrypt`): AES-256-GCM on every payload and index, under a key
that scrypt derives from a password, as 7z's `-p -mhe=on` and zpaq's `-key` give.

Without the password neither the files' contents nor their names can be read (the index, which
holds the names, sizes and checksums, is encrypted like the payloads), and a changed payload or
index fails GCM's tag instead of decoding to something else. What stays visible is what the
container's layout shows: that the file is an lmarc archive, how many payloads of what sizes, and
the trailers.

An encrypted archive has format version 2: its 16-byte header is followed by the key record (its
KDF's parameters, a random salt, and the archive's random 256-bit data key sealed under the key
derived from the password: a wrong password fails that seal's tag at once, and a new password
would only need a new record, not new payloads), and every payload and index is sealed with the
data key: a random 12-byte nonce, the ciphertext, GCM's 16-byte tag (OVERHEAD bytes more than the
plain payload). Nonces are random, not positions: every add
appends under the same key, and a rewrite (`compact`) writes a new file under it, so a position
can recur; random 96-bit nonces are safe for 2**32 payloads per key (NIST SP 800-38D), far beyond
any archive's.

The password comes from the source the CLI sets (`--password-file`), else the LMARC_PASSWORD
environment variable, else the terminal, asked once per process (twice when it creates an
archive). A derived key is kept per key record, so opening an archive several times in one command
runs scrypt once.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import os
import struct
import sys
from collections.abc import Callable

KEY_MAGIC = b"LMAKEY\x00\x01"
KEY_HEAD = struct.Struct("<8sBBBB16s")  # magic, KDF (1: scrypt), log2 N, r, p, salt
SCRYPT = 1
LOG2_N, R, P = 16, 8, 1  # scrypt's cost for new archives: 64 MiB and about 0.3 s here
MAX_MEMORY = 1 << 30  # a key record asking scrypt for more memory than this (128 r N bytes) is not one we wrote,
MAX_WORK = 16 * (R << LOG2_N)  # nor one asking for more than 16 times our work (p r N): a hostile archive's DoS
NONCE, TAG = 12, 16
OVERHEAD = NONCE + TAG  # a sealed blob's bytes beyond the plain ones
KEY_BYTES = 32  # AES-256
CHUNK, INDEX, KEY = b"lmarc chunk", b"lmarc index", b"lmarc key"  # the roles a sealed blob is bound to
KEY_RECORD_LEN = KEY_HEAD.size + OVERHEAD + KEY_BYTES


class CryptError(Exception):
    """A wrong password, no password to be had, or a sealed blob that fails its tag."""


class Sealer:
    """AES-256-GCM under one archive's key. (`cryptography` is imported here, when an archive is
    encrypted: 35 ms that plain archives do not wait for.)"""

    def __init__(self, key: bytes):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.key = key  # (kept to seal it under another password: `lmarc passwd`)
        self._aead = AESGCM(key)

    def seal(self, data: bytes, role: bytes) -> bytes:
        """data sealed for its role (CHUNK, INDEX or KEY: authenticated with it, so that a blob
        sealed for one role never opens as another)."""
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, data, role)

    def open(self, blob: bytes, role: bytes) -> bytes:
        """The plain bytes of a blob sealed for role; CryptError when it fails its tag (damaged,
        altered, or sealed for another role)."""
        from cryptography.exceptions import InvalidTag

        if len(blob) < OVERHEAD:
            raise CryptError("sealed data too short")
        try:
            return self._aead.decrypt(blob[:NONCE], blob[NONCE:], role)
        except InvalidTag:
            raise CryptError("fails authentication (damaged, or altered without the key)") from None


Key = tuple[bytes, Sealer]  # an encrypted archive's key record and the sealer of its data key


def new_key_record(password: str, key: bytes | None = None) -> Key:
    """A key record (with a fresh salt) holding the data key, a new random one unless given (a new
    password for an archive keeps its data key), and the sealer of that data key."""
    head = KEY_HEAD.pack(KEY_MAGIC, SCRYPT, LOG2_N, R, P, os.urandom(16))
    key = os.urandom(KEY_BYTES) if key is None else key
    return head + Sealer(_derive(password, head)).seal(key, KEY + head), Sealer(key)


def unlock(record: bytes, password: str) -> Sealer:
    """The sealer of the data key an archive's key record holds, once the password opens it."""
    unwrap = Sealer(_derive(password, record[: KEY_HEAD.size]))
    try:
        key = unwrap.open(record[KEY_HEAD.size :], KEY + record[: KEY_HEAD.size])
    except CryptError:
        raise CryptError("wrong password (or a damaged key record)") from None
    if len(key) != KEY_BYTES:
        raise CryptError("the archive's key record is damaged")
    return Sealer(key)


@functools.lru_cache(maxsize=8)
def _derive(password: str, head: bytes) -> bytes:
    magic, kdf, log2_n, r, p, salt = KEY_HEAD.unpack(head)
    if (magic != KEY_MAGIC or kdf != SCRYPT or not (10 <= log2_n <= 30 and r >= 1 and p >= 1)
            or (128 * r) << log2_n > MAX_MEMORY or (p * r) << log2_n > MAX_WORK):
        raise CryptError("the archive's key record is damaged or of a kind this lmarc does not know")
    return hashlib.scrypt(password.encode(), salt=salt, n=1 << log2_n, r=r, p=p,
                          maxmem=MAX_MEMORY + (1 << 26), dklen=32)  # (a limit: 128 r N bytes are used)


_source: Callable[[], str] | None = None
_new_source: Callable[[], str] | None = None
_given: str | None = None  # the password, once had


def set_password_source(source: Callable[[], str] | None, new: Callable[[], str] | None = None) -> None:
    """Where password() and new_password() take their passwords from (the CLI's --password-file and
    --new-password-file); None: the environment or the terminal."""
    global _source, _new_source, _given
    _source, _new_source, _given = source, new, None


def password(new: bool = False) -> str:
    """The password, from the set source, else LMARC_PASSWORD, else asked on the terminal (once per
    process; twice, to be sure of it, for a new archive)."""
    global _given
    if _given is None:
        _given = _ask(_source, "LMARC_PASSWORD", new, "password", "the archive is encrypted: give its password "
                      "(--password-file FILE")
    return _given


def new_password() -> str:
    """The password an archive is to have from now on (`lmarc passwd`): from the set source, else
    LMARC_NEW_PASSWORD, else asked twice on the terminal."""
    return _ask(_new_source, "LMARC_NEW_PASSWORD", True, "new password", "give the new password (--new-password-file "
                "FILE")


def _ask(source: Callable[[], str] | None, env: str, confirm: bool, what: str, missing: str) -> str:
    if source is not None:
        pw = source()
    elif env in os.environ:
        pw = os.environ[env]
    elif _terminal():
        pw = getpass.getpass(f"lmarc {what}: ")
        if confirm and getpass.getpass("again: ") != pw:
            raise CryptError("the passwords differ")
    else:
        raise CryptError(f"{missing}, the {env} environment variable, or a terminal to ask on)")
    if not pw:
        raise CryptError(f"an empty {what}")
    return pw


def _terminal() -> bool:
    """Whether there is a terminal to ask on. getpass asks on /dev/tty, not standard input, so
    `pg_dump db | lmarc add --encrypt -` can still ask; without /dev/tty (Windows), standard input."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
        return True
    except OSError:
        return sys.stdin is not None and sys.stdin.isatty()
