"""Loads format plugins: every module in the `lmarc` entry-point group, built-ins included."""

from __future__ import annotations

import functools
from importlib import metadata

import pluggy

from archiver import hookspecs

ENTRY_POINT_GROUP = "lmarc"


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("lmarc")
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


@functools.cache
def formats() -> tuple:
    """All registered formats, highest priority first (ties broken by name for stable order)."""
    found = []
    plugin_manager().hook.register_formats(register=found.append)
    names = [f.name for f in found]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise RuntimeError(f"two plugins register the same format name: {sorted(dupes)}")
    return tuple(sorted(found, key=lambda f: (-f.priority, f.name)))


def format_by_name(name: str):
    for f in formats():
        if f.name == name:
            return f
    return None


def plugin_versions() -> list[tuple[str, str, str]]:
    """(entry point name, distribution, version) for every loaded plugin module."""
    rows = []
    for dist_info in plugin_manager().list_plugin_distinfo():
        plugin, dist = dist_info
        rows.append((plugin_manager().get_name(plugin), dist.project_name, dist.version))
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if not any(r[0] == ep.name for r in rows):
            rows.append((ep.name, "?", "?"))
    return sorted(rows)
