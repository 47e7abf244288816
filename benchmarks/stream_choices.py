"""Measure the plugins' stream layouts: which byte stream does a small LM predict best?

Issue #5 asks that patch geometry, byte order, channel layout and reversible predictors be chosen by
measurement, not taste. Comparing layouts with the shipped model would be unfair (it was trained on one
of them), so every variant gets its own probe model: the same small Llama, the same seed, the same
number of steps, trained only on that variant's streams of the corpus train split, then scored on the
dev split's streams with the real chunking ([BOS] + up to 1023 bytes). The table lands in the
`choices-audio` and `choices-image` sections of docs/benchmarks.md.

Usage:
    python benchmarks/stream_choices.py --steps 150 --out docs/benchmarks.md [--only audio]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.report import replace_section  # noqa: E402
from plugins.audio import predict as sample_residual  # noqa: E402
from plugins.pixels import patch_flatten  # noqa: E402
from plugins.pixels import predict as pixel_residual  # noqa: E402
from training.data import split_files  # noqa: E402
from training.train import Windows, dev_sample, evaluate, lr_at, make_optimizer, model_config, row_nats  # noqa: E402


# ---- variants: decoded data -> the byte stream the model would see ------------------------------
def _audio_be(x: np.ndarray, order: int = 0, zigzag: bool = False) -> bytes:
    top = x.astype(">i2")[..., None].view(np.uint8)
    return sample_residual(top, order, zigzag).tobytes()


AUDIO: dict[str, Callable[[np.ndarray], bytes]] = {
    # x: (channels, frames) int16
    "planar, high byte first": lambda x: _audio_be(x),
    "planar, low byte first": lambda x: x.astype("<u2").tobytes(),
    "interleaved, high byte first": lambda x: _audio_be(np.ascontiguousarray(x.T)),
    "planar, high first, order-1 residual": lambda x: _audio_be(x, 1),
    "planar, high first, order-1 residual, zigzag": lambda x: _audio_be(x, 1, zigzag=True),
    "planar, high first, order-2 residual": lambda x: _audio_be(x, 2),
    "planar, high first, order-2 residual, zigzag": lambda x: _audio_be(x, 2, zigzag=True),
}

IMAGE: dict[str, Callable[[np.ndarray], bytes]] = {
    # x: (H, W, C) uint8
    "raster rows (no patches)": lambda x: x.tobytes(),
    "8x8 patches": lambda x: patch_flatten(x, 8),
    "16x16 patches": lambda x: patch_flatten(x, 16),
    "32x32 patches": lambda x: patch_flatten(x, 32),
    "16x16 patches, left residual": lambda x: patch_flatten(pixel_residual(x, "left"), 16),
    "16x16 patches, up residual": lambda x: patch_flatten(pixel_residual(x, "up"), 16),
    "16x16 patches, gradient (MED) residual": lambda x: patch_flatten(pixel_residual(x, "med"), 16),
    "raster rows, MED residual": lambda x: pixel_residual(x, "med").tobytes(),
    "8x8 patches, MED residual": lambda x: patch_flatten(pixel_residual(x, "med"), 8),
    "32x32 patches, MED residual": lambda x: patch_flatten(pixel_residual(x, "med"), 32),
}


def load_audio(path: Path) -> np.ndarray | None:
    try:
        data, _ = sf.read(path, dtype="int16", always_2d=True)
    except Exception:
        return None
    return np.ascontiguousarray(data.T)


def load_image(path: Path) -> np.ndarray | None:
    try:
        im = Image.open(path)
        im.load()
    except Exception:
        return None
    if im.mode not in ("L", "LA", "RGB", "RGBA", "P"):
        return None
    a = np.asarray(im)
    return a[:, :, None] if a.ndim == 2 else a


MODALITIES = {"audio": (AUDIO, load_audio), "image": (IMAGE, load_image)}


def probe_config() -> LlamaConfig:
    """A quarter-width cousin of the default model: same family, trains in minutes on one core."""
    narrow = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=None)  # head_dim None: derived again from the new width
    return LlamaConfig(**{**model_config().to_dict(), **narrow})


def probe(kind: str, train: list[bytes], dev: list[bytes], args: argparse.Namespace) -> float:
    """Dev bits/byte of a probe model trained on `train` streams for args.steps steps."""
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(probe_config())
    hp = argparse.Namespace(lr=args.lr, warmup=max(1, args.steps // 10), steps=args.steps, weight_decay=0.1)
    opt = make_optimizer(model, hp)
    tw, dw = Windows([(kind, s) for s in train]), Windows([(kind, s) for s in dev])
    dev_batches = dev_sample(dw, args.eval_windows, args.seq, args.batch)
    model.train()
    for step in range(args.steps):
        x, y, _ = tw.batch(np.random.default_rng([args.seed, step]), args.batch, args.seq)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, hp)
        nats, count = row_nats(model, x, y)
        opt.zero_grad(set_to_none=True)
        (nats.sum() / count.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return evaluate(model, dev_batches)[kind]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-windows", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", choices=sorted(MODALITIES))
    p.add_argument("--out", type=Path, help="markdown file whose `choices-<kind>` sections get the tables")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not args.corpus.is_dir():
        sys.exit(f"no corpus at {args.corpus}")
    train_files, dev_files = split_files(args.corpus)
    intro = [
        f"Produced by `python benchmarks/stream_choices.py --steps {args.steps}` ({platform.machine()},"
        f" torch {torch.__version__}). Each row is its own probe model (Llama d=128, 2 layers, context"
        f" 1024), trained for {args.steps} steps of {args.batch} x {args.seq - 1} bytes on that layout's"
        f" train-split streams and scored on {args.eval_windows} dev-split windows: lower is better.",
        "",
    ]
    for kind, (variants, loader) in MODALITIES.items():
        if args.only and kind != args.only:
            continue
        top = args.corpus / kind
        tr = [a for a in (loader(f) for f in train_files if top in f.parents) if a is not None]
        dv = [a for a in (loader(f) for f in dev_files if top in f.parents) if a is not None]
        rows = []
        for name, fn in variants.items():
            t0 = time.time()
            bpb = probe(kind, [fn(a) for a in tr], [fn(a) for a in dv], args)
            rows.append((name, bpb))
            print(f"{kind:5s} {name:45s} {bpb:.3f} bpb ({time.time() - t0:.0f}s)", flush=True)
        best = min(b for _, b in rows)
        lines = [f"### {kind}: {len(tr)} train / {len(dv)} dev files", "", *intro]
        lines += ["| layout | dev bits/byte |", "|---|---|"]
        lines += [f"| {n} | {f'**{b:.3f}**' if b == best else f'{b:.3f}'} |" for n, b in rows]
        if args.out:
            replace_section(args.out, f"choices-{kind}", "\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
