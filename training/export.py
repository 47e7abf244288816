"""Convert a trained transformers checkpoint (or train the tests' tiny model) into the
integer model file the archiver ships, and report float vs integer cross-entropy on sample streams.
`--reprogram FILE` writes an integer model file's weights under other integer program settings
(a new model id), as the default's later programs were made from the first one's weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from archiver import intmodel
from training.data import BOS

BYTE_VOCAB = {"bos": BOS, "byte_tokens": list(range(256))}


def vocab_config(tokenizer: Path | None) -> dict:
    """The vocabulary part of a model file's config: our byte tokens and stream starts, plus the BPE
    spec for text when the model was trained with one (`training.tokenizer`)."""
    if tokenizer is None:
        return dict(BYTE_VOCAB)
    return dict(BYTE_VOCAB, tokenizer=json.loads(tokenizer.read_text()))


def tiny_fixture(seed: int, steps: int = 400, context: int = 128) -> LlamaForCausalLM:
    """The test suite's model: tiny (fast), trained for seconds on samples/ so that it beats zstd
    and xz on short chunks and the tests exercise LM coding, not just the classic fallback."""
    from archiver.formats import training_streams

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    samples = Path(__file__).resolve().parent.parent / "samples"
    streams = [ks for f in sorted(samples.iterdir()) if f.is_file() for ks in training_streams(f)]
    streams = [(k, d) for k, d in streams if len(d) > context]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = []
        for _ in range(16):
            kind, data = streams[int(torch.randint(len(streams), (1,), generator=gen))]
            a = int(torch.randint(len(data) - context + 1, (1,), generator=gen))
            rows.append([BYTE_VOCAB["bos"][kind], *data[a : a + context - 1]])
        x = torch.tensor(rows)
        loss = model(x, labels=x.masked_fill(x >= 256, -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def compare(hf: LlamaForCausalLM | None, path: Path, corpus: Path, windows: int, seed: int = 0,
            baseline: Path | None = None) -> dict:
    """Bits per byte of the float model (when there is one) and of the exported integer model on
    the same dev windows, per stream kind: each window is [BOS] + 1023 tokens of a dev stream,
    exactly as the archiver codes a chunk (1023 bytes, or 1023 BPE tokens of text). With a baseline
    (another integer model file, e.g. the previous default), the same bytes are also coded by it,
    chunked by its own vocabulary as the archiver would."""
    import numpy as np

    from archiver.coder import ideal_bits
    from archiver.engine import Engine
    from archiver.vocab import make_vocab
    from training.data import load_streams, split_files

    _, dev = split_files(corpus)
    streams = load_streams(dev, corpus)
    im = intmodel.load(path)
    eng, vocab = Engine(im), make_vocab(im.config)
    n = im.context - 1
    if baseline is not None:
        bm = intmodel.load(baseline)
        beng, bvocab = Engine(bm), make_vocab(bm.config)
    rng = np.random.default_rng(seed)
    out = {}
    for kind in [k for k in BYTE_VOCAB["bos"] if k in vocab.kinds]:  # a fixed order: one rng
        pool = [s for s in (vocab.symbols(k, d) for k, d in streams if k == kind) if s is not None and len(s) > n]
        if not pool:
            continue
        bos, alphabet = vocab.bos(kind), vocab.alphabet(kind)
        seqs, raws = [], []
        for _ in range(windows):
            s = pool[int(rng.integers(len(pool)))]
            a = int(rng.integers(len(s) - n + 1))
            seqs.append([bos, *vocab.token_ids(s[a : a + n]).tolist()])
            raws.append(vocab.to_bytes(kind, s[a : a + n]))
        total = sum(len(r) for r in raws)
        freqs = eng.score(seqs, alphabet)
        bits = sum(ideal_bits(np.array(s[1:]), f) for s, f in zip(seqs, freqs, strict=True))
        out[kind] = {"int_bpb": bits / total}
        if hf is not None:
            with torch.no_grad():
                logits = hf(torch.tensor(seqs)).logits[:, :-1].double()
                if alphabet is not None:
                    logits = logits[..., alphabet]
                tgt = torch.tensor([s[1:] for s in seqs])
                nats = -torch.log_softmax(logits, -1).gather(-1, tgt[..., None]).sum()
            out[kind]["float_bpb"] = float(nats) / np.log(2) / total
        if baseline is not None:
            bn = bm.context - 1
            pieces = []
            for raw in raws:
                sym = bvocab.symbols(kind, raw)
                pieces += [sym[i : i + bn] for i in range(0, len(sym), bn)]
            bseqs = [[bvocab.bos(kind), *bvocab.token_ids(p).tolist()] for p in pieces]
            bfreqs = beng.score(bseqs, bvocab.alphabet(kind))
            bbits = sum(ideal_bits(np.array(p), f) for p, f in zip(pieces, bfreqs, strict=True))
            out[kind]["baseline_int_bpb"] = bbits / total
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", help="directory written by save_pretrained")
    ap.add_argument("--reprogram", type=Path, metavar="FILE",
                    help="an integer model file: write its weights under the program options below")
    ap.add_argument("--tiny-fixture-seed", type=int, help="train and export the tests' tiny model instead")
    ap.add_argument("--name", default="default", help="model name recorded in the file")
    ap.add_argument("--compare", type=Path, metavar="CORPUS", help="also report float vs integer bits/byte on dev")
    ap.add_argument("--windows", type=int, default=8, help="dev windows per stream kind for --compare")
    ap.add_argument("--tokenizer", type=Path, help="the BPE spec the checkpoint was trained with (text tokens)")
    ap.add_argument("--baseline", type=Path, help="with --compare: also code the same bytes with this model file")
    ap.add_argument("--key-cache", choices=["int8", "f64"], default="int8",
                    help="the engine's key cache: int8 (faster, same bits/byte) or float64 (the first models)")
    ap.add_argument("--value-cache", choices=["int8", "f64"], default="int8",
                    help="the engine's value cache: int8 (rounded like the keys, same bits/byte) or exact (default-v4)")
    ap.add_argument("--query-bits", type=int, default=7,
                    help="bits of a query magnitude with int8 keys: 7 (one int8 GEMM) or 0, the most that stay "
                         "exact (11 for head_dim 64: the programs before 2026-11-29)")
    ap.add_argument("--att-exp-bits", type=int, default=11,
                    help="bits of an attention exp table entry: 11 (two value digits) or 0, the first programs' Q15")
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    program = dict(key_cache=a.key_cache, value_cache=a.value_cache,
                   query_bits=(a.query_bits or None) if a.key_cache == "int8" else None,
                   att_exp_bits=a.att_exp_bits or None)
    hf = None
    if a.reprogram is not None:
        model = intmodel.reprogram(intmodel.load(a.reprogram), **program)
    else:
        if a.checkpoint is None:
            hf = tiny_fixture(a.tiny_fixture_seed)
        else:
            hf = LlamaForCausalLM.from_pretrained(a.checkpoint).eval()
        model = intmodel.convert_llama(hf, extra=dict(vocab_config(a.tokenizer), name=a.name,
                                             **{k: v for k, v in program.items() if v is not None}))
    digest = model.save(a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size} bytes), model id {digest}")
    if a.compare:
        res = compare(hf, a.out, a.compare, a.windows, baseline=a.baseline)
        for kind, r in res.items():
            flt = f"float {r['float_bpb']:.4f}  " if "float_bpb" in r else ""
            gap = f"  ({r['int_bpb'] / r['float_bpb'] - 1:+.2%})" if "float_bpb" in r else ""
            base = f"  baseline {r['baseline_int_bpb']:.4f}" if "baseline_int_bpb" in r else ""
            print(f"{kind:<7} {flt}integer {r['int_bpb']:.4f} bits/byte{gap}{base}")
        print(json.dumps(res))


if __name__ == "__main__":
    main()
