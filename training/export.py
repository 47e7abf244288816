"""Convert a trained transformers checkpoint (or a seeded random model, for test fixtures) into the
integer model file the archiver ships, and report float vs integer cross-entropy on sample streams."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from archiver.intmodel import convert_llama

BYTE_VOCAB = {"bos": {"text": 256, "image": 257, "audio": 258, "binary": 259}, "byte_tokens": list(range(256))}


def tiny_random(seed: int, context: int = 128) -> LlamaForCausalLM:
    """A small random model: enough to exercise every code path of the engine in tests."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=260,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", help="directory written by save_pretrained")
    ap.add_argument("--random-seed", type=int, help="export a tiny random model instead")
    ap.add_argument("--name", default="default", help="model name recorded in the file")
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    hf = tiny_random(a.random_seed) if a.checkpoint is None else LlamaForCausalLM.from_pretrained(a.checkpoint).eval()
    model = convert_llama(hf, extra=dict(BYTE_VOCAB, name=a.name))
    digest = model.save(a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size} bytes), model id {digest}")


if __name__ == "__main__":
    main()
