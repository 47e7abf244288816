"""File ownership as tar keeps it: recorded by every add, restored only by an extraction run as root.

An entry keeps its owner's numbers (uid, gid) and, where this system knows them, names (user,
group). Restoring prefers the names, which stay right when an archive moves between machines that
number their users differently, and falls back to the numbers for a name unknown there (tar's
default). Only root can give a file away, so only an extraction run as root restores owners
(`extract --no-same-owner` keeps them the extracting user's), as tar does. setuid and setgid bits
are still never restored (docs/security.md): a hostile archive can give a file to another user,
never make it run as one.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

try:
    import grp
    import pwd
except ImportError:  # Windows: no owners to record or restore
    grp = pwd = None  # type: ignore[assignment]


def recorded(st: os.stat_result) -> dict:
    """An entry's owner fields for a file of this stat."""
    out: dict = {"uid": st.st_uid, "gid": st.st_gid}
    user, group = _look(USER_NAME, st.st_uid), _look(GROUP_NAME, st.st_gid)
    if user is not None:
        out["user"] = user
    if group is not None:
        out["group"] = group
    return out


def may_restore() -> bool:
    """Whether this process can give files away (root), and so restores owners by default."""
    return pwd is not None and os.geteuid() == 0


def restore(target: Path, e: dict) -> None:
    """Give the extracted target (not following a symlink) the entry's owner: by name where this
    system has the name, else by number; nothing for an entry that recorded none."""
    uid, gid = _id(e, "user", "uid", USER_ID), _id(e, "group", "gid", GROUP_ID)
    if uid is not None or gid is not None:
        os.chown(target, -1 if uid is None else uid, -1 if gid is None else gid, follow_symlinks=False)


def differs(st: os.stat_result, e: dict) -> str | None:
    """How a file's owner differs from its entry's (by number), for `lmarc diff`; None if not."""
    if "uid" not in e or (st.st_uid, st.st_gid) == (e["uid"], e.get("gid")):
        return None
    return f"owner {st.st_uid}:{st.st_gid} here, {e['uid']}:{e.get('gid')} in the archive"


def _id(e: dict, name_key: str, id_key: str, by_name: str) -> int | None:
    name = e.get(name_key)
    found = _look(by_name, name) if isinstance(name, str) else None
    return found if found is not None else e.get(id_key)


USER_NAME, GROUP_NAME, USER_ID, GROUP_ID = "user name", "group name", "user id", "group id"
_LOOKUPS = {} if pwd is None else {
    USER_NAME: lambda uid: pwd.getpwuid(uid).pw_name,
    GROUP_NAME: lambda gid: grp.getgrgid(gid).gr_name,
    USER_ID: lambda name: pwd.getpwnam(name).pw_uid,
    GROUP_ID: lambda name: grp.getgrnam(name).gr_gid,
}


@functools.lru_cache(maxsize=4096)
def _look(what: str, key: int | str) -> int | str | None:
    """A user's or group's name by number, or number by name (what: USER_NAME ...), None where
    this system does not know it (or has no pwd and grp)."""
    try:
        return _LOOKUPS[what](key) if what in _LOOKUPS else None
    except KeyError:
        return None
