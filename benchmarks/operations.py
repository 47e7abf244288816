"""Time the archive operations around the codecs: incremental add, delete, compact, versions.

What a user of an append-only archiver pays for keeping an archive up to date, on two workloads
built here, both coded with `--model none` (the operations never run the model; the codecs' own
speeds are in the other tables):
  - a tree of small text files (words from samples/notes.txt, deterministic), in directories:
    first add, re-add unchanged, re-add after one file changed, compact, delete a tenth of the
    directories (their cm blocks are coded again), list --versions;
  - one large file of noise beside a small one: delete the large one (a payload copy).
Each row is one run, in a fresh process (`lmarc` as the user runs it), sizes in bytes.

Usage:
    python benchmarks/operations.py [--files 3000] [--noise-mb 64] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import platform
import random
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.report import replace_section  # noqa: E402
from benchmarks.run import timed  # noqa: E402

DIRS = 30


def lmarc(*args: object, cwd: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS in MB) of one lmarc command in its own process."""
    seconds, kib = timed([sys.executable, "-m", "archiver.cli", "-q", "--no-progress", *map(str, args)], cwd=cwd)
    return seconds, kib // 1024


def make_tree(root: Path, files: int) -> None:
    rng = random.Random(0)
    words = (ROOT / "samples" / "notes.txt").read_text().split()
    for i in range(files):
        d = root / "t" / f"d{i % DIRS:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(rng.randint(20, 200))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--noise-mb", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        make_tree(w, a.files)
        arc = w / "t.lma"
        size = lambda: arc.stat().st_size  # noqa: E731

        def row(what: str, run: tuple[float, int], before: int | None = None) -> None:
            was = "" if before is None else f"{before:,}"
            rows.append(f"| {what} | {was} | {size():,} | {run[0]:.2f} | {run[1]} |")

        row(f"add {a.files} small text files in {DIRS} directories",
            lmarc("add", "-a", arc, "--model", "none", "t", cwd=w))
        b = size()
        row("add the same tree again, unchanged (nothing read, nothing written)",
            lmarc("add", "-a", arc, "--model", "none", "t", cwd=w), b)
        row("... again with --checksum (every file read)",
            lmarc("add", "-a", arc, "--model", "none", "--checksum", "t", cwd=w), b)
        changed = w / "t" / "d01" / "f1.txt"
        changed.write_text(changed.read_text() + " one more line\n")
        row("add again after one file changed (a new version: one file and an index)",
            lmarc("add", "-a", arc, "--model", "none", "t", cwd=w), b)
        b = size()
        row("list --versions", lmarc("list", "--versions", arc, cwd=w), b)
        row("compact (drop the old version's data and indexes)", lmarc("compact", arc, cwd=w), b)
        b = size()
        gone = [f"t/d{i:02d}" for i in range(DIRS // 10)]
        row(f"delete {len(gone)} of the {DIRS} directories (their solid blocks coded again)",
            lmarc("delete", arc, *gone, cwd=w), b)
        fresh = w / "fresh.lma"
        for d in gone:
            shutil.rmtree(w / d)
        lmarc("add", "-a", fresh, "--model", "none", "t", cwd=w)
        rows.append(f"| (a fresh add of the files left, for comparison) | | {fresh.stat().st_size:,} | | |")

        (w / "noise.bin").write_bytes(random.Random(1).randbytes(a.noise_mb << 20))
        (w / "note.txt").write_text("a small file beside it\n")
        arc = w / "n.lma"
        lmarc("add", "-a", arc, "--model", "none", "noise.bin", "note.txt", cwd=w)
        b = size()
        row(f"delete a {a.noise_mb} MiB stored file beside a small one (a payload copy)",
            lmarc("delete", arc, "noise.bin", cwd=w), b)
        b = size()
        row("compact that (nothing to drop: a copy of the rest)", lmarc("compact", arc, cwd=w), b)
    table = "\n".join([
        "## Archive operations (`python benchmarks/operations.py`)",
        "",
        f"{platform.machine()}, Python {platform.python_version()}, `--model none`; one run each, every command in a "
        "fresh process (start-up included: about 0.5 s). Sizes in bytes; peak RSS of the lmarc process.",
        "",
        "| operation | archive before | archive after | seconds | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ])
    replace_section(a.out, "operations", table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
