"""Range coding of token sequences with integer frequency tables (constriction).

The engine's tables are integers summing to 2**24; they reach constriction as exactly representable
float64 values, always the same dtype, so encoder and decoder quantize them identically.
"""

from __future__ import annotations

import constriction
import numpy as np

_FAMILY = constriction.stream.model.Categorical(perfect=False)
ENCODE_ROWS = 256  # rows converted to float64 at a time: a 49152-token table is 384 KiB a row


class Encoder:
    """Range-codes symbols under their tables a block of rows at a time, the coder's state carrying
    over (the same bits as one call), so a chunk's tables need not exist all at once."""

    def __init__(self):
        self._enc = constriction.stream.queue.RangeEncoder()

    def encode(self, symbols: np.ndarray, freqs: np.ndarray) -> None:
        """Code symbols[i] under the distribution freqs[i] (int64 [n, A])."""
        symbols = np.ascontiguousarray(symbols, dtype=np.int32)
        for a in range(0, len(symbols), ENCODE_ROWS):
            self._enc.encode(symbols[a : a + ENCODE_ROWS], _FAMILY, freqs[a : a + ENCODE_ROWS].astype(np.float64))

    def finish(self) -> bytes:
        return self._enc.get_compressed().tobytes()


def ideal_bits(symbols: np.ndarray, freqs: np.ndarray) -> float:
    """Information content in bits; what an ideal coder would spend (for benchmarks and tests)."""
    p = freqs[np.arange(len(symbols)), symbols] / freqs.sum(1)
    return float(-np.log2(p).sum())


class Decoder:
    """Decodes one symbol at a time, so a batch of chunks can be decoded in lockstep."""

    def __init__(self, data: bytes):
        if len(data) % 4:
            raise ValueError("range-coded chunk length is not a multiple of 4")
        self._dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype=np.uint32).copy())

    def decode(self, freq_row: np.ndarray) -> int:
        return int(self._dec.decode(_FAMILY, freq_row[None, :].astype(np.float64))[0])
