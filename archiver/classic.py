"""Classic codecs for data the LM does not win on: store, zstd -19 (long window) and xz -9e."""

from __future__ import annotations

import lzma

import zstandard

CODECS = ("store", "zstd", "xz")
XZ_DICT = 1 << 26  # xz -9's dictionary; the decoder's buffer, enough for every encoder setting below


def _xz_filters(dict_size: int) -> list[dict]:
    return [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dict_size}]


def compress(codec: str, data: bytes) -> bytes:
    if codec == "store":
        return data
    if codec == "zstd":
        params = zstandard.ZstdCompressionParameters.from_level(19, window_log=min(27, max(10, len(data).bit_length())))
        return zstandard.ZstdCompressor(compression_params=params).compress(data)
    if codec == "xz":
        # -9e, with the dictionary cut to the input: same output, without allocating 700 MB per call
        dict_size = min(XZ_DICT, max(1 << 12, 1 << (len(data) - 1).bit_length()))
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_xz_filters(dict_size))
    raise ValueError(f"unknown codec {codec!r}")


def decompress(codec: str, data: bytes, size: int) -> bytes:
    """Decompress, refusing to produce more than `size` bytes (hostile archives)."""
    if codec == "store":
        out = data
    elif codec == "zstd":
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    elif codec == "xz":
        d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_xz_filters(XZ_DICT))
        out = d.decompress(data, max_length=size + 1)
    else:
        raise ValueError(f"unknown codec {codec!r}")
    if len(out) != size:
        raise ValueError(f"{codec} chunk decodes to {len(out)} bytes, expected {size}")
    return out


def best(data: bytes) -> tuple[str, bytes]:
    """The smallest of the classic encodings (store wins ties: it is the fastest to decode)."""
    choice = ("store", data)
    if len(data) < 16:
        return choice
    for codec in ("zstd", "xz"):
        out = compress(codec, data)
        if len(out) < len(choice[1]):
            choice = (codec, out)
    return choice
