"""Train lmarc's default byte-level model (a small Llama) on the shared corpus.

Why it looks like this:
- The archiver codes every stream in independent chunks of 1023 tokens, each preceded by its kind's
  BOS token, so a training example is exactly that: [BOS_kind] + a random window of up to 1023 tokens
  of one stream, with loss on those tokens only (BOS is never a target). Tokens are bytes, except
  for text with `--tokenizer` (a byte-level BPE spec from `training.tokenizer`), whose tokens are
  the tokenizer's, exactly as `archiver.vocab` makes them; losses are reported per byte either way.
- `--init DIR` starts from a trained checkpoint instead of random weights; the rows of tokens it
  lacks (a BPE tokenizer's merges) start as the mean embedding of their bytes.
- The model shape is fixed by the integer engine (archiver/intmodel.py converts a transformers
  LlamaForCausalLM), so it is built here from a hard-coded LlamaConfig and saved with
  `save_pretrained`, which the converter loads directly.
- Modalities differ a lot in size (audio dominates the corpus by bytes), so each batch row first
  picks a kind uniformly, then a stream weighted by its length, then a random window: every modality
  gets trained on, and within a modality every byte is equally likely to be seen.
- Batches are drawn from an RNG seeded by (seed, step), so a resumed run sees exactly the batches
  the uninterrupted run would have seen; the dev sample is fixed by its own seed so numbers from
  different runs are comparable.
- CPU float32 by default (bf16 matmuls are not faster on CPU here), one thread because the machine
  is shared. On a lent GPU: `--device cuda --bf16` (autocast) with `--streams DIR` made beforehand by
  `python -m training.data --out DIR` (the GPU machine has neither the corpus nor room for it), and
  `--time-budget S`, which fixes the step count from the measured step time so the cosine schedule
  ends when the lease does.

Usage:
    python -m training.train --out runs/default --steps 500 --batch 16 --seq 1024 --lr 2e-3
    python -m training.train --out runs/default --steps 500 ... --resume   # continue from runs/default/ckpt
    python -m training.train --streams .gpu/streams --device cuda --bf16 --batch 128 --time-budget 420 ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or as -m
from archiver.vocab import make_vocab  # noqa: E402
from training.data import BOS, KINDS, load_streams, read_streams, split_files, stream_source  # noqa: E402
from training.export import vocab_config  # noqa: E402

KIND_WEIGHT = {"text": 1.0, "image": 1.0, "audio": 1.0, "binary": 0.25}  # binary streams are small headers
EVAL_SEED = 1234  # fixed, independent of --seed, so dev numbers compare across runs
LN2 = math.log(2.0)


def model_config(vocab_size: int = 260) -> LlamaConfig:
    """The default model's shape; must stay in step with the integer engine."""
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, hidden_act="silu", rms_norm_eps=1e-5, rope_theta=10000.0,
    )  # fmt: skip


def n_tokens(vocab) -> int:
    """The model's vocabulary size: a BPE's tokens, or the 256 bytes and the stream starts."""
    return len(vocab.table) if hasattr(vocab, "table") else 256 + len(BOS)


def token_bytes(vocab) -> torch.Tensor:
    """Bytes each token id stands for (0 for the stream starts): turns token losses into bits/byte."""
    n = [len(t) for t in vocab.table] if hasattr(vocab, "table") else [1] * 256 + [0] * len(BOS)
    return torch.tensor(n, dtype=torch.float32)


class Windows:
    """Streams of each kind in memory as token arrays, sampled as [BOS] + window batches."""

    def __init__(self, streams: list[tuple[str, bytes]], vocab, weights: dict[str, float] | None = None):
        self.by_kind: dict[str, list[np.ndarray]] = {}
        for kind, data in streams:
            self.by_kind.setdefault(kind, []).append(vocab.symbols(kind, data))
        self.kinds = [k for k in KINDS if k in self.by_kind]
        self.p_stream = {}
        weights = KIND_WEIGHT | (weights or {})
        for k in self.kinds:
            lens = np.array([len(s) for s in self.by_kind[k]], dtype=np.float64)
            self.p_stream[k] = lens / lens.sum()
        w = np.array([weights[k] for k in self.kinds])
        self.p_kind = w / w.sum()

    def ntokens(self, kind: str) -> int:
        return sum(len(s) for s in self.by_kind[kind])

    def window(self, rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
        """A random window of at most n tokens from a length-weighted stream of this kind."""
        s = self.by_kind[kind][rng.choice(len(self.by_kind[kind]), p=self.p_stream[kind])]
        off = int(rng.integers(0, len(s) - n + 1)) if len(s) > n else 0
        return s[off : off + n]

    def batch(self, rng: np.random.Generator, batch: int, seq: int, kinds: list[str] | None = None):
        """(inputs [B, seq-1], targets [B, seq-1] with -100 on padding, kinds per row)."""
        if kinds is None:
            kinds = list(rng.choice(self.kinds, size=batch, p=self.p_kind))
        x = torch.zeros(len(kinds), seq, dtype=torch.long)
        y = torch.full((len(kinds), seq - 1), -100, dtype=torch.long)
        for i, k in enumerate(kinds):
            w = torch.from_numpy(self.window(rng, k, seq - 1).astype(np.int64))
            x[i, 0] = BOS[k]
            x[i, 1 : 1 + len(w)] = w
            y[i, : len(w)] = w
        # padding sits after the bytes and attention is causal, so it never affects a scored position
        return x[:, :-1], y, kinds


def row_nats(model: LlamaForCausalLM, x: torch.Tensor, y: torch.Tensor,
             nbytes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross entropy (nats, float32 even under autocast) and scored byte count per row
    (nbytes: bytes per token id, on the model's device). As in the archiver, a row is scored over
    the byte tokens only, unless it is text and the vocabulary has more text tokens than bytes."""
    dev = model.device
    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
    logits = model(input_ids=x).logits.float()
    byte_rows = (x[:, 0] != BOS["text"]) | (nbytes[256:] == 0).all()
    not_byte = torch.arange(logits.shape[-1], device=dev) >= 256
    logits = logits.masked_fill(byte_rows[:, None, None] & not_byte, float("-inf"))
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none")
    return loss.view_as(y).sum(1), nbytes[y.clamp(min=0)].mul_(y != -100).sum(1)


@torch.no_grad()
def evaluate(
    model: LlamaForCausalLM, dev_batches: list[tuple[str, torch.Tensor, torch.Tensor]], nbytes: torch.Tensor,
    autocast=contextlib.nullcontext,
) -> dict[str, float]:
    """Dev bits/byte per kind (and 'all', byte-weighted) on the fixed dev sample."""
    model.eval()
    nats: dict[str, float] = {}
    count: dict[str, float] = {}
    for kind, x, y in dev_batches:
        with autocast():
            n, c = row_nats(model, x, y, nbytes)
        nats[kind] = nats.get(kind, 0.0) + float(n.sum())
        count[kind] = count.get(kind, 0.0) + float(c.sum())
    model.train()
    out = {k: nats[k] / count[k] / LN2 for k in nats}
    out["all"] = sum(nats.values()) / sum(count.values()) / LN2
    return out


def dev_sample(dev: Windows, per_kind: int, seq: int, batch: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """A deterministic list of dev batches: per_kind windows of each kind, seeded by EVAL_SEED."""
    rng = np.random.default_rng(EVAL_SEED)
    out = []
    for k in dev.kinds:
        for start in range(0, per_kind, batch):
            x, y, _ = dev.batch(rng, 0, seq, kinds=[k] * min(batch, per_kind - start))
            out.append((k, x, y))
    return out


def warm_start(path: Path, vocab) -> LlamaForCausalLM:
    """The checkpoint at path, its vocabulary grown to vocab's: a new token's embedding (tied to the
    output head) starts as the mean of its bytes' embeddings."""
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    old, size = model.config.vocab_size, n_tokens(vocab)
    if size > old:
        model.resize_token_embeddings(size, mean_resizing=False)
        emb = model.get_input_embeddings().weight
        with torch.no_grad():
            for i in range(old, size):
                emb[i] = emb[list(vocab.table[i])].mean(0)
    return model


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine decay to lr/10."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def make_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only, which also keeps rows tame for int8 quantisation."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


def save_checkpoint(out: Path, model: LlamaForCausalLM, opt: torch.optim.Optimizer, state: dict) -> None:
    """Write out/ckpt atomically (tmp folder then rename) so a kill never leaves a torn checkpoint."""
    tmp, dst, old = out / "ckpt.tmp", out / "ckpt", out / "ckpt.old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"optimizer": opt.state_dict(), **state}, tmp / "train_state.pt")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus")
    p.add_argument("--out", type=Path, default=Path("runs/default"))
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024, help="tokens per row including BOS (bytes = seq - 1)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=None, help="default: min(100, steps // 10)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (for GPUs; CPU bf16 is not faster here)")
    p.add_argument("--streams", type=Path, help="read DIR/train.xz and DIR/dev.xz instead of the corpus")
    p.add_argument("--time-budget", type=float, help="seconds of training: --steps is set from the step time")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt if present")
    p.add_argument("--tokenizer", type=Path, help="a BPE spec (python -m training.tokenizer) for text streams")
    p.add_argument("--weights", default="", help="kind sampling weights, e.g. text=2 (default: KIND_WEIGHT)")
    p.add_argument("--init", type=Path, help="start from this checkpoint (save_pretrained) instead of random")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-windows", type=int, default=16, help="dev windows per kind")
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=10)
    args = p.parse_args()
    if args.warmup is None:
        args.warmup = max(1, min(100, args.steps // 10))
    if not 2 <= args.seq <= model_config().max_position_embeddings:
        p.error("--seq must be in [2, 1024]")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    console = Console(soft_wrap=True)
    hf_logging.disable_progress_bar()  # its per-save shard bars only clutter the log
    args.out.mkdir(parents=True, exist_ok=True)

    vocab = make_vocab(vocab_config(args.tokenizer))
    weights = {k: float(w) for k, w in (kv.split("=") for kv in args.weights.split(",") if kv)}
    if args.tokenizer:  # the archiver's model file will carry it; keep it with the checkpoints
        shutil.copy(args.tokenizer, args.out / "tokenizer.json")
    t0 = time.time()
    if args.streams:
        source = "training_streams"  # what `python -m training.data` saves
        train, dev = (Windows(read_streams(args.streams / f"{n}.xz"), vocab, weights) for n in ("train", "dev"))
        console.print(f"streams from {args.streams} in {time.time() - t0:.1f}s")
    else:
        train_files, dev_files = split_files(args.corpus)
        source = stream_source()
        train, dev = (Windows(load_streams(files, args.corpus), vocab, weights) for files in (train_files, dev_files))
        console.print(
            f"streams via {source} in {time.time() - t0:.1f}s: {len(train_files)} train / {len(dev_files)} dev files"
        )
    for k in train.kinds:
        dn = dev.ntokens(k) if k in dev.kinds else 0
        console.print(
            f"  {k:6s} train {len(train.by_kind[k]):5d} streams {train.ntokens(k) / 1e6:7.2f} M tokens"
            f" | dev {dn / 1e6:6.2f} M"
        )
    dev_batches = dev_sample(dev, args.eval_windows, args.seq, args.batch)

    ckpt = args.out / "ckpt"
    nbytes = token_bytes(vocab).to(args.device)
    state = {"step": 0, "train_time": 0.0, "tokens": 0, "source": source}
    device = torch.device(args.device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext
    if args.resume and (ckpt / "train_state.pt").exists():
        model = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).to(device)
        opt = make_optimizer(model, args)
        saved = torch.load(ckpt / "train_state.pt", weights_only=False, map_location=device)
        opt.load_state_dict(saved.pop("optimizer"))
        state.update(saved)
        if state["source"] != source:
            console.print(f"[red]warning: checkpoint trained on {state['source']} streams, now {source}[/]")
            state["source"] = source
        console.print(f"resumed from {ckpt} at step {state['step']}")
    else:
        model = LlamaForCausalLM(model_config(n_tokens(vocab))) if args.init is None else warm_start(args.init, vocab)
        model = model.to(device)
        opt = make_optimizer(model, args)
    model.train()
    console.print(
        f"model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params on {device}, {args.threads} thread(s),"
        f" args {vars(args)}"
    )

    def log_eval(step: int) -> dict[str, float]:
        te = time.time()
        ev = evaluate(model, dev_batches, nbytes, autocast)
        console.print(
            f"[bold]eval step {step}[/] dev bits/byte "
            + " ".join(f"{k}={v:.3f}" for k, v in ev.items())
            + f" ({time.time() - te:.0f}s)"
        )
        with open(args.out / "evals.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "tokens": state["tokens"], "dev_bpb": ev}) + "\n")
        return ev

    ema: dict[str, float] = {}
    logged_step, logged_time = state["step"], state["train_time"]
    cols = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]

    def draw(step: int):
        return train.batch(np.random.default_rng([args.seed, step]), args.batch, args.seq)

    budget_start, budget_train_time0 = state["step"], state["train_time"]  # --time-budget counts from here
    prefetch = ThreadPoolExecutor(1)  # the next batch is built while the device runs this one
    with Progress(*cols, console=console) as progress:
        task = progress.add_task("train", total=args.steps, completed=state["step"], info="")
        if state["step"] == 0:
            log_eval(0)
        next_batch = prefetch.submit(draw, state["step"])
        while state["step"] < args.steps:
            step = state["step"]
            ts = time.time()
            x, y, kinds = next_batch.result()
            next_batch = prefetch.submit(draw, step + 1)
            lr = lr_at(step, args)
            for g in opt.param_groups:
                g["lr"] = lr
            with autocast():
                nats, count = row_nats(model, x, y, nbytes)
            loss = nats.sum() / count.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip))
            opt.step()
            state["step"] = step = step + 1
            state["tokens"] += int(count.sum())
            state["train_time"] += time.time() - ts
            if args.time_budget and step - budget_start in (30, 300):  # step time measured: fix the schedule
                spent = state["train_time"] - budget_train_time0  # (again at 300, when the cosine has barely
                per_step = spent / (step - budget_start)  # begun, in case the first steps were slow)
                args.steps = step + max(1, int((args.time_budget - spent) / per_step))
                progress.update(task, total=args.steps)
                console.print(f"time budget {args.time_budget:.0f}s: {per_step:.3f}s/step, training to {args.steps}")
            for k in set(kinds):
                rows = [i for i, kk in enumerate(kinds) if kk == k]
                bpb = float(nats[rows].detach().sum() / count[rows].sum()) / LN2
                ema[k] = bpb if k not in ema else 0.9 * ema[k] + 0.1 * bpb
            info = " ".join(f"{k}={ema[k]:.2f}" for k in train.kinds if k in ema) + f" bpb lr={lr:.1e}"
            progress.update(task, completed=step, info=info)
            if step % args.log_every == 0 or step == args.steps:
                per_step = (state["train_time"] - logged_time) / max(1, step - logged_step)
                logged_step, logged_time = step, state["train_time"]
                console.print(
                    f"step {step} loss {float(loss.detach()) / LN2:.3f} bpb | ema {info} | gnorm {gnorm:.2f}"
                    f" | {per_step:.2f}s/step"
                )
            if step % args.eval_every == 0 or step == args.steps:
                state["last_eval"] = log_eval(step)
            if step % args.ckpt_every == 0 or step == args.steps:
                save_checkpoint(args.out, model, opt, state)

    model.save_pretrained(args.out / "final")
    ev = state.get("last_eval") or evaluate(model, dev_batches, nbytes, autocast)
    metrics = {
        "train_time_s": round(state["train_time"], 1),
        "steps": state["step"],
        "tokens_seen": state["tokens"],
        "dev_bits_per_byte": ev,
        "dev_windows_per_kind": args.eval_windows,
        "stream_source": source,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    console.print(f"done: {args.out / 'final'} and {args.out / 'metrics.json'}")


if __name__ == "__main__":
    main()
