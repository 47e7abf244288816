"""Finds models by name (`--model NAME` or a file path) and by the id an archive records."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from archiver import intmodel
from archiver.intmodel import IntModel, ModelError

PACKAGE_DIR = Path(__file__).parent / "models"
DEFAULT = "default"


def search_dirs() -> list[Path]:
    """Built-in models, then $LMARC_MODEL_PATH (colon-separated), then the user cache."""
    dirs = [PACKAGE_DIR]
    dirs += [Path(p) for p in os.environ.get("LMARC_MODEL_PATH", "").split(os.pathsep) if p]
    dirs.append(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmarc" / "models")
    return dirs


def available() -> dict[str, Path]:
    """name -> file of every installed model."""
    found: dict[str, Path] = {}
    for d in search_dirs():
        for f in sorted(d.glob("*.safetensors")) if d.is_dir() else []:
            found.setdefault(f.stem, f)
    return found


@functools.cache
def _load_path(path: str) -> IntModel:
    return intmodel.load(Path(path))


def load(name: str = DEFAULT) -> IntModel:
    p = Path(name)
    if p.suffix == ".safetensors" and p.is_file():
        return _load_path(str(p.resolve()))
    models = available()
    if name not in models:
        raise ModelError(f"model {name!r} is not installed (available: {', '.join(sorted(models)) or 'none'})")
    return _load_path(str(models[name].resolve()))


def _ids() -> dict[str, Path]:
    return {_file_id(f, f.stat().st_mtime_ns): f for f in available().values()}


@functools.cache
def _file_id(path: Path, mtime_ns: int) -> str:
    return intmodel.file_sha256(path)


def by_id(model_id: str, hint: str | None = None) -> IntModel:
    """The installed model with this content hash; a clear error naming it when there is none."""
    f = _ids().get(model_id)
    if f is None and hint and hint.endswith(".safetensors") and Path(hint).is_file():
        if intmodel.file_sha256(Path(hint)) == model_id:  # added with --model FILE: same file still there
            f = Path(hint)
    if f is None:
        name = f" ({hint})" if hint else ""
        raise ModelError(f"this archive needs model {model_id[:16]}{name}, which is not installed")
    return _load_path(str(f.resolve()))
