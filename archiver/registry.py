"""Finds models by name (`--model NAME` or a file path) and by the id an archive records.

Besides model files, some names are provided models: made on first use from a package the user
installs (`smollm2`: an optional extra), converted once and cached in the user cache directory.
"""

from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from archiver.modelfile import ModelError, file_sha256

if TYPE_CHECKING:
    from archiver.intmodel import IntModel

PACKAGE_DIR = Path(__file__).parent / "models"
DEFAULT = "default"
NONE = "none"  # `--model none`: classic codecs only (fast, like an ordinary archiver)
PROVIDED = {"smollm2": "archiver.smollm2"}  # name -> module with ensure() -> model file, INSTALL


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
    from archiver import intmodel  # torch: only when a model is really used

    return intmodel.load(Path(path))


def _provided(name: str, model_id: str | None = None) -> Path:
    """The model file of a provided model (the one with model_id, where its module knows how to
    make it), converting it first when needed."""
    return importlib.import_module(PROVIDED[name]).ensure(model_id)


def install_hint(name: str | None) -> str:
    if name in PROVIDED:
        return f"; install it with: {importlib.import_module(PROVIDED[name]).INSTALL}"
    return ""


def load(name: str = DEFAULT) -> IntModel:
    p = Path(name)
    if p.suffix == ".safetensors" and p.is_file():
        return _load_path(str(p.resolve()))
    if name in PROVIDED:
        return _load_path(str(_provided(name).resolve()))
    models = available()
    if name not in models:
        raise ModelError(f"model {name!r} is not installed (available: {', '.join(sorted(models)) or 'none'})")
    return _load_path(str(models[name].resolve()))


def _ids() -> dict[str, Path]:
    return {_file_id(f, f.stat().st_mtime_ns): f for f in available().values()}


@functools.cache
def _file_id(path: Path, mtime_ns: int) -> str:
    return file_sha256(path)


def locate(model_id: str, hint: str | None = None) -> Path | None:
    """The installed file of the model with this content hash (hint: the name an archive recorded
    for it), or None; without loading it, and without making a provided model."""
    f = _ids().get(model_id)
    if f is None and hint and hint.endswith(".safetensors") and Path(hint).is_file():
        if file_sha256(Path(hint)) == model_id:  # added with --model FILE: same file still there
            f = Path(hint)
    return f


def by_id(model_id: str, hint: str | None = None) -> IntModel:
    """The installed model with this content hash; a clear error naming it when there is none."""
    f = locate(model_id, hint)
    if f is None and hint in PROVIDED:
        try:
            made = _provided(hint, model_id)  # first use here: convert it now
        except ModelError:
            made = None
        if made is not None:
            made_id = _file_id(made, made.stat().st_mtime_ns)
            if made_id != model_id:
                raise ModelError(f"this archive needs model {model_id[:16]} ({hint}), but the installed {hint} is "
                                 f"{made_id[:16]} (another release or conversion)")
            f = made
    if f is None:
        name = f" ({hint})" if hint else ""
        raise ModelError(f"this archive needs model {model_id[:16]}{name}, which is not installed{install_hint(hint)}")
    return _load_path(str(f.resolve()))
