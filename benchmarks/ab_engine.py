"""The engine of another commit against the working tree's, in one process, turn about.

Single runs on these VMs move by 20-40% within minutes, and a slow spell can last minutes, so two
benchmark runs minutes apart cannot tell a 5% change from noise. This loads the other commit's
`archiver` package under another name (`archiver_ab`, from `git archive`) beside the working
tree's, asserts that both give the same integers (frequency tables when scoring, each step's when
decoding), then times them alternately, each round in the other order, and prints each side's
best and median and the median of the per-round ratios (new / old: below 1 is faster).

    python benchmarks/ab_engine.py REV [--model NAME] [--mode score|decode] [--rounds N]
                                       [--chunks N] [--batch B] [--position P] [--steps K]

score: `Engine.score` of --chunks full-context chunks of random bytes. decode: a session at batch
B fed P steps, then K steps timed and rewound, round after round (decode speed at position P).
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_other(rev: str, into: Path):
    """The engine module of commit rev, imported as the package archiver_ab from a copy in into."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "archiver"], check=True,
                         capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    (into / "archiver").rename(into / "archiver_ab")
    for f in (into / "archiver_ab").rglob("*.py"):
        f.write_text(re.sub(r"\barchiver(?=[. ]|$)", "archiver_ab", f.read_text(), flags=re.M))
    sys.path.insert(0, str(into))
    return importlib.import_module("archiver_ab.engine"), importlib.import_module("archiver_ab.intmodel")


def alternate(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each run, rounds times, the order reversed every other round."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        for name in (list(runs) if r % 2 else list(runs)[::-1]):
            t = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rev", help="the commit to compare the working tree with")
    ap.add_argument("--model", default="default")
    ap.add_argument("--mode", choices=["score", "decode"], default="score")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--position", type=int, default=900)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)

    from archiver import engine as new_engine
    from archiver import intmodel as new_intmodel

    with tempfile.TemporaryDirectory() as tmp:
        old_engine, old_intmodel = load_other(args.rev, Path(tmp))
        path = ROOT / "archiver" / "models" / f"{args.model}.safetensors"
        engines = {"old": old_engine.Engine(old_intmodel.load(path), threads=2),
                   "new": new_engine.Engine(new_intmodel.load(path), threads=2)}
        rng = np.random.default_rng(0)
        alpha = torch.arange(256)
        if args.mode == "score":
            seqs = [[256, *rng.integers(0, 256, engines["new"].context - 1).tolist()] for _ in range(args.chunks)]
            got = {k: e.score(seqs, alpha) for k, e in engines.items()}
            assert all(np.array_equal(a, b) for a, b in zip(got["old"], got["new"], strict=True)), "tables differ"
            runs = {k: (lambda e=e: e.score(seqs, alpha)) for k, e in engines.items()}
            per = 1.0
        else:
            toks = rng.integers(0, 256, (args.position + args.steps, args.batch))
            toks[0] = 256
            sessions, got = {}, {}
            for k, e in engines.items():
                s = e.session(args.batch, alpha)
                for i in range(args.position):
                    s.feed(toks[i])
                got[k] = [s.feed(toks[args.position + i]) for i in range(args.steps)]
                s.rewind(args.steps)
                sessions[k] = s

            def steps(s) -> None:
                for i in range(args.steps):
                    s.feed(toks[args.position + i])
                s.rewind(args.steps)

            assert all(np.array_equal(a, b) for a, b in zip(got["old"], got["new"], strict=True)), "steps differ"
            runs = {k: (lambda s=s: steps(s)) for k, s in sessions.items()}
            per = 1.0 / args.steps
        times = alternate(runs, args.rounds)
    unit = "s a scoring" if args.mode == "score" else "s a step"
    for k, v in times.items():
        print(f"{k}: best {min(v) * per:.4f}, median {np.median(v) * per:.4f} {unit}")
    ratio = np.median(np.array(times["new"]) / np.array(times["old"]))
    print(f"new / old, median of {args.rounds} rounds: {ratio:.3f} (same integers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
