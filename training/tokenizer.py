"""Train the default model's byte-level BPE tokenizer on the train split's text streams.

The tokenizer is stored in the model file as plain tokens and merges (the same spec SmolLM2's is
stored in, read by `archiver.vocab.TextVocab`), laid out for a multimodal model:
- ids 0..255 are the 256 byte values (in GPT-2's printable spelling), so image, audio and binary
  streams are coded over the first 256 tokens exactly as the byte-level models coded them, and a
  byte-level model's embeddings carry over to these ids unchanged;
- ids 256..259 start a stream of each kind (`training.data.BOS`); their names hold a character
  outside the byte alphabet, so no text ever encodes to them;
- ids 260.. are the learned merges, in the order they were learned.

Pre-tokenization (`SPLIT`) is GPT-2's regex with every run bounded to 32 characters and digits
one by one: the train split holds a 4.6 MB DNA sequence and a million digits of pi, single "words"
on which unbounded BPE training takes tens of minutes and encoding is quadratic.

    python -m training.tokenizer --streams .gpu/streams --vocab 1024 --out training/tokenizer.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from training.data import BOS, read_streams

SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}{1,32}|\p{N}| ?[^\s\p{L}\p{N}]{1,32}|\s{1,32}(?!\S)|\s{1,32}"
PIECE = 1 << 16  # characters per training text: bounds the trainer's memory per sequence


def texts(streams: Iterable[tuple[str, bytes]]) -> list[str]:
    """The text streams that are UTF-8 (the others are coded as byte tokens anyway)."""
    out = []
    for kind, data in streams:
        if kind == "text":
            try:
                out.append(data.decode("utf-8"))
            except UnicodeDecodeError:
                pass
    return out


def _pieces(docs: list[str]) -> Iterator[str]:
    for t in docs:
        for i in range(0, len(t), PIECE):
            yield t[i : i + PIECE]


def train(docs: list[str], vocab_size: int) -> dict:
    """The tokenizer spec (type, split, tokens, merges) with vocab_size tokens in all."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from archiver.vocab import gpt2_byte_chars

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(BOS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_pieces(docs), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    byte_char = {b: c for c, b in gpt2_byte_chars().items()}
    specials = [""] * len(BOS)
    for kind, i in BOS.items():
        specials[i - 256] = f"\x00{kind}"
    merged = ["".join(m.split(" ")) for m in merges]
    return {"type": "byte-level-bpe", "split": SPLIT,
            "tokens": [byte_char[b] for b in range(256)] + specials + merged, "merges": merges}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=Path, required=True, help="DIR with train.xz (python -m training.data)")
    p.add_argument("--vocab", type=int, default=1024, help="tokens in all: 256 bytes, 4 stream starts, merges")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    spec = train(texts(read_streams(a.streams / "train.xz")), a.vocab)
    a.out.write_text(json.dumps(spec, ensure_ascii=False) + "\n")
    print(f"{a.out}: {len(spec['tokens'])} tokens, {len(spec['merges'])} merges")


if __name__ == "__main__":
    main()
