"""How a model sees streams: which token starts each kind, and bytes <-> symbols.

Byte-level models (our default) code every stream kind over the 256 byte tokens; the frequency
tables cover just that sub-alphabet, and a symbol is the byte value itself.

Models with a byte-level BPE tokenizer stored in the model file code text streams over their full
vocabulary; a symbol is a token id. Bytes come back through our own id -> bytes table, never
through str, so a chunk may end inside a UTF-8 character. A tokenizer may drop bytes it has no
token for, so every tokenization is checked against the data. A text-only model (SmolLM2) codes
nothing else, and a stream that does not come back exactly is not its to code (`symbols` returns
None). A multimodal BPE model (our default since issue 4) has token i = byte i for i < 256: its
other kinds are coded byte by byte over those tokens, and text the tokenizer cannot give back
(not UTF-8) is coded as byte tokens, which are tokens of the text vocabulary too.
"""

from __future__ import annotations

import numpy as np
import torch


class ByteVocab:
    kinds = frozenset({"text", "image", "audio", "binary"})

    def __init__(self, config: dict):
        self.bos_ids: dict[str, int] = config["bos"]
        self.byte_ids = torch.tensor(config.get("byte_tokens", list(range(256))), dtype=torch.int64)
        self.ids_np = self.byte_ids.numpy()

    def bos(self, kind: str) -> int:
        return self.bos_ids[kind]

    def alphabet(self, kind: str) -> torch.Tensor:
        return self.byte_ids

    def symbols(self, kind: str, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def token_ids(self, symbols: np.ndarray) -> np.ndarray:
        return self.ids_np[symbols]

    def to_bytes(self, kind: str, symbols: np.ndarray) -> bytes:
        return np.asarray(symbols, dtype=np.uint8).tobytes()


def gpt2_byte_chars() -> dict[str, int]:
    """The GPT-2 byte-level BPE alphabet: printable character -> the byte it stands for."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


class TextVocab:
    """A byte-level BPE tokenizer (config["tokenizer"]: tokens, merges) coding text streams, and with
    config["byte_tokens"] (which must be 0..255) every other kind of its config["bos"] byte by byte.

    The tokenizer is rebuilt from the stored tokens and merges with the `tokenizers` library; only
    encoding uses it (and encoding is verified), decoding needs just the id -> bytes table.
    """

    def __init__(self, config: dict):
        spec = config["tokenizer"]
        if spec.get("type") != "byte-level-bpe":
            raise ValueError(f"unsupported tokenizer type {spec.get('type')!r}")
        self.bos_ids: dict[str, int] = config["bos"]
        self.spec = spec
        chars = gpt2_byte_chars()
        # tokens outside the byte alphabet (special tokens) have no bytes: they never come out of
        # encoding (specials are not matched), and an archive that claims one fails the size check
        self.table = [bytes(chars[c] for c in t) if all(c in chars for c in t) else b"" for t in spec["tokens"]]
        self._tok = None
        self.bytes = ByteVocab(config) if "byte_tokens" in config else None
        if self.bytes is not None and (self.bytes.ids_np.tolist() != list(range(256))
                                       or self.table[:256] != [bytes([b]) for b in range(256)]):
            raise ValueError("a multimodal BPE vocabulary needs token i to be byte i for i < 256")
        self.kinds = frozenset(self.bos_ids if self.bytes is not None else {"text"})

    def _tokenizer(self):
        if self._tok is None:
            from tokenizers import Regex, Tokenizer, models, pre_tokenizers

            tokens = self.spec["tokens"]
            vocab = {t: i for i, t in enumerate(tokens) if self.table[i]}
            merges = [tuple(m.split(" ", 1)) for m in self.spec["merges"]]
            tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
            if "split" in self.spec:  # our own tokenizers: a stored pre-tokenizing regex
                pre = [pre_tokenizers.Split(Regex(self.spec["split"]), behavior="isolated"),
                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
            else:  # GPT-2's regex (SmolLM2)
                pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
            if self.spec.get("individual_digits"):
                pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
            tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
            self._tok = tok
        return self._tok

    def bos(self, kind: str) -> int:
        return self.bos_ids[kind]

    def alphabet(self, kind: str) -> torch.Tensor | None:
        """The full vocabulary (None) for text, the byte tokens for the other kinds."""
        return None if kind == "text" else self.bytes.alphabet(kind)

    def symbols(self, kind: str, data: bytes) -> np.ndarray | None:
        """Token ids of a stream (for text: the tokenizer's, or byte tokens when it cannot give back
        these exact bytes and the model has them), or None when this model cannot code it."""
        if kind not in self.kinds:
            return None
        if kind == "text":
            try:
                ids = np.asarray(self._tokenizer().encode(data.decode("utf-8"), add_special_tokens=False).ids,
                                 dtype=np.int32)
                if self.to_bytes(kind, ids) == data:
                    return ids
            except UnicodeDecodeError:
                pass
            if self.bytes is None:
                return None
        return self.bytes.symbols(kind, data)  # byte i is token i

    def token_ids(self, symbols: np.ndarray) -> np.ndarray:
        return np.asarray(symbols, dtype=np.int64)

    def to_bytes(self, kind: str, symbols: np.ndarray) -> bytes:
        if kind != "text":
            return self.bytes.to_bytes(kind, symbols)
        t = self.table
        return b"".join([t[s] for s in np.asarray(symbols).tolist()])


def make_vocab(config: dict) -> ByteVocab | TextVocab:
    return TextVocab(config) if "tokenizer" in config else ByteVocab(config)
