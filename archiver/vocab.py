"""How a model sees streams: which token starts each kind, and bytes <-> symbols.

Byte-level models (our default) code every stream kind over the 256 byte tokens; the frequency
tables cover just that sub-alphabet, and a symbol is the byte value itself.
"""

from __future__ import annotations

import numpy as np
import torch


class ByteVocab:
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
