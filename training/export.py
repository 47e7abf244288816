"""Convert a trained transformers checkpoint (or train the tests' tiny model) into the
integer model file the archiver ships, and report float vs integer cross-entropy on sample streams."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from archiver.intmodel import convert_llama

BYTE_VOCAB = {"bos": {"text": 256, "image": 257, "audio": 258, "binary": 259}, "byte_tokens": list(range(256))}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", help="directory written by save_pretrained")
    ap.add_argument("--tiny-fixture-seed", type=int, help="train and export the tests' tiny model instead")
    ap.add_argument("--name", default="default", help="model name recorded in the file")
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    if a.checkpoint is None:
        hf = tiny_fixture(a.tiny_fixture_seed)
    else:
        hf = LlamaForCausalLM.from_pretrained(a.checkpoint).eval()
    model = convert_llama(hf, extra=dict(BYTE_VOCAB, name=a.name))
    digest = model.save(a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size} bytes), model id {digest}")


if __name__ == "__main__":
    main()
