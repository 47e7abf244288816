"""Corpus split and stream loading shared by training and benchmarks.

The split is by file, per folder: within each leaf folder of the corpus the files are sorted by name
and the last ~20% are dev. Training never sees a dev file, so benchmarks on dev measure
generalisation rather than memorisation. Folders holding one or two files keep them all in train
(a 20% share rounds to zero), which is why the rounding below is spelled out.

Streams are what the archiver actually codes: a file goes through the archiver's format plugins
(`archiver.formats.training_streams`) and comes back as (kind, bytes) pairs, e.g. a PNG as its pixel
planes plus a small binary header. Training on the same streams the archiver feeds the model is the
whole point, so the real function is always preferred; the fallback (raw file bytes, kind by top
folder) only exists so training can run before the plugins are written.
"""

from __future__ import annotations

import json
import lzma
from collections.abc import Iterable
from pathlib import Path

KINDS = ("text", "image", "audio", "binary")
BOS = {"text": 256, "image": 257, "audio": 258, "binary": 259}
DEV_FRACTION = 0.2


def n_dev(n_files: int) -> int:
    """How many of a folder's n files are dev: 20% rounded half up (1 -> 0, 3 -> 1, 24 -> 5)."""
    return int(n_files * DEV_FRACTION + 0.5)


def split_files(corpus: Path) -> tuple[list[Path], list[Path]]:
    """(train, dev) file lists: per folder, name-sorted files, the last ~20% are dev.

    Hidden files are ignored. The order is deterministic (sorted folders, sorted names) so every
    tool that calls this sees the same split.
    """
    corpus = Path(corpus)
    train: list[Path] = []
    dev: list[Path] = []
    folders = sorted({p.parent for p in corpus.rglob("*") if p.is_file() and not p.name.startswith(".")})
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if folder == corpus:  # top-level files (README.md) are documentation, not data
            continue
        k = n_dev(len(files))
        train.extend(files[: len(files) - k])
        dev.extend(files[len(files) - k :])
    return train, dev


def _fallback_streams(path: Path, corpus: Path) -> list[tuple[str, bytes]]:
    """Raw bytes, kind from the top-level folder (text/, image/, audio/); .txt files count as text."""
    top = path.relative_to(corpus).parts[0]
    kind = top if top in ("text", "image", "audio") else "binary"
    if path.suffix.lower() == ".txt":
        kind = "text"
    return [(kind, path.read_bytes())]


def _ensure_plugins() -> bool:
    """Make sure format plugins are registered; True when `training_streams` is usable.

    The built-in plugins arrive through the `lmarc` entry points, which only exist once the project
    is pip-installed. From a plain checkout, register the in-tree `plugins/` modules directly so
    training still sees the real streams.
    """
    try:
        import importlib

        from archiver import plugins
        from archiver.formats import training_streams  # noqa: F401
    except ImportError:
        return False
    if not any(f.name == "raw" for f in plugins.formats()):
        root = Path(__file__).resolve().parent.parent / "plugins"
        pm = plugins.plugin_manager()
        for mod in sorted(root.glob("*.py")):
            if mod.stem != "__init__":
                module = importlib.import_module(f"plugins.{mod.stem}")
                if not pm.is_registered(module):
                    pm.register(module, name=f"lmarc_plugins.{mod.stem}")
        plugins.formats.cache_clear()
    return any(f.name == "raw" for f in plugins.formats())


def stream_source() -> str:
    """'training_streams' when the archiver's format plugins provide it, else 'fallback'."""
    return "training_streams" if _ensure_plugins() else "fallback"


def load_streams(files: Iterable[Path], corpus: Path) -> list[tuple[str, bytes]]:
    """All (kind, data) streams of the given files, via the archiver's plugins when available."""
    training_streams = None
    if _ensure_plugins():
        from archiver.formats import training_streams
    out: list[tuple[str, bytes]] = []
    for path in files:
        pairs = training_streams(path) if training_streams else _fallback_streams(path, Path(corpus))
        for kind, data in pairs:
            if kind not in BOS:
                raise ValueError(f"{path}: unknown stream kind {kind!r}")
            if data:
                out.append((kind, bytes(data)))
    return out


def save_streams(path: Path, streams: list[tuple[str, bytes]]) -> None:
    """Write streams to one xz file (a JSON line of [kind, length] pairs, then the bytes), so a
    machine without the corpus or the plugins (a lent GPU) can train on exactly these streams."""
    head = json.dumps([[kind, len(data)] for kind, data in streams]).encode() + b"\n"
    with lzma.open(path, "wb", preset=6) as f:
        f.write(head)
        for _, data in streams:
            f.write(data)


def read_streams(path: Path) -> list[tuple[str, bytes]]:
    """Inverse of save_streams."""
    with lzma.open(path, "rb") as f:
        index = json.loads(f.readline())
        return [(kind, f.read(n)) for kind, n in index]


def main() -> None:
    """`python -m training.data --out DIR`: the train and dev streams of a corpus as DIR/{train,dev}.xz."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, files in zip(("train", "dev"), split_files(args.corpus), strict=True):
        streams = load_streams(files, args.corpus)
        save_streams(args.out / f"{name}.xz", streams)
        size = (args.out / f"{name}.xz").stat().st_size
        print(f"{name}: {len(streams)} streams, {sum(len(d) for _, d in streams) / 1e6:.1f} MB, {size / 1e6:.1f} MB xz")


if __name__ == "__main__":
    main()
