"""Fallback codecs for data the LM does not win on: store, zstd -19 (long window), xz -9e, brotli
-q 11 (whose built-in dictionary of common words and markup wins on small text files), cm, our
context-mixing codec (`archiver.contextmix`), which beats all of them on most text, and its two
variants for structured streams whose geometry (`formats.Stream.geometry`) is known: cm2d for
images (`archiver.imagemix`) and cmpcm for audio (`archiver.audiomix`)."""

from __future__ import annotations

import lzma

import brotli
import numpy as np
import zstandard

from archiver import audiomix, contextmix, imagemix

CODECS = ("store", "zstd", "xz", "brotli", "cm", "cm2d", "cmpcm")
STRUCTURED = {"image": "cm2d", "audio": "cmpcm"}  # the codec that models a stream kind's geometry
BROTLI_MAX = 256 << 10  # brotli's edge is its built-in dictionary, on small inputs; on a 4 MiB block
# it measured 2% under xz at 2.5x xz's time (1 MB/s), so best() does not try it on larger ones
XZ_DICT = 1 << 26  # xz -9's dictionary; the decoder's buffer, enough for every encoder setting below
NEAR_UNIFORM = 7.9  # bits per byte, order 0: above this a block may be incompressible (see best)
PROBE = 128 << 10  # bytes of such a block cm codes first, to see whether it pays to code all of it
PROBE_GAIN = 0.99  # ... which it does when the probe comes out smaller than this share of itself


def _xz_filters(dict_size: int) -> list[dict]:
    return [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dict_size}]


def _zstd(level: int, data: bytes) -> bytes:
    """zstd at this level with a window that covers the data (the level's own may not: level 1's
    512 KiB misses a repeat 600 KiB back)."""
    params = zstandard.ZstdCompressionParameters.from_level(level, window_log=min(27, max(10, len(data).bit_length())))
    return zstandard.ZstdCompressor(compression_params=params).compress(data)


def compress(codec: str, data: bytes, geometry: tuple[int, int] | None = None) -> bytes:
    """`geometry` is the structured codecs', which need it: cm2d's (bytes per row, bytes per pixel),
    cmpcm's (bytes per channel, bytes per sample); data that is not whole channels is one channel."""
    if codec == "store":
        return data
    if codec == "zstd":
        return _zstd(19, data)
    if codec == "xz":
        # -9e, with the dictionary cut to the input: same output, without allocating 700 MB per call
        dict_size = min(XZ_DICT, max(1 << 12, 1 << (len(data) - 1).bit_length()))
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_xz_filters(dict_size))
    if codec == "brotli":
        return brotli.compress(data, quality=11, lgwin=min(24, max(10, len(data).bit_length())))
    if codec == "cm":
        return contextmix.compress(data)
    if codec in STRUCTURED.values() and geometry is None:
        raise ValueError(f"{codec} needs the stream's geometry")
    if codec == "cm2d":
        return imagemix.compress(data, *geometry)
    if codec == "cmpcm":
        per = geometry[0]
        return audiomix.compress(data, len(data) // per if per > 0 and len(data) % per == 0 else 1)
    raise ValueError(f"unknown codec {codec!r}")


def decompress(codec: str, data: bytes, size: int) -> bytes:
    """Decompress, refusing to produce more than `size` bytes (hostile archives). Every codec's own
    error type becomes ValueError, which readers report as a damaged member."""
    try:
        if codec == "store":
            out = data
        elif codec == "zstd":
            out = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
        elif codec == "xz":
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_xz_filters(XZ_DICT))
            out = d.decompress(data, max_length=size + 1)
            if not d.eof and len(out) <= size:
                raise ValueError("xz chunk is truncated")
        elif codec == "brotli":
            b = brotli.Decompressor()
            out = b.process(data, output_buffer_limit=size + 1)
            if not b.is_finished() and len(out) <= size:
                raise ValueError("brotli chunk is truncated")
        elif codec == "cm":
            out = contextmix.decompress(data, size)
        elif codec == "cm2d":
            out = imagemix.decompress(data, size)
        elif codec == "cmpcm":
            out = audiomix.decompress(data, size)
        else:
            raise ValueError(f"unknown codec {codec!r}")
    except (zstandard.ZstdError, lzma.LZMAError, brotli.error) as e:
        raise ValueError(f"{codec} chunk is corrupt: {e}") from e
    if len(out) != size:
        raise ValueError(f"{codec} chunk decodes to {len(out)} bytes, expected {size}")
    return out


def order0_bits(data: bytes) -> float:
    """Bits per byte of the data's byte histogram (8.0 for uniform bytes). Counted a MiB at a time:
    np.bincount widens its input to int64 first, which for a whole 200 MB file took 1.6 GB."""
    view = np.frombuffer(data, dtype=np.uint8)
    counts = sum((np.bincount(view[i : i + (1 << 20)], minlength=256) for i in range(0, len(view), 1 << 20)),
                 np.zeros(256, np.int64))
    p = counts[counts > 0] / len(data)
    return float(-(p * np.log2(p)).sum())


def incompressible(data: bytes) -> bool:
    """Whether a large block would come out of every generic codec at its own size: near-uniform
    bytes, no repeat that zstd's fastest level finds anywhere in it, and a probe from its middle
    that cm shrinks by under 1%. These three cost about 0.5 s for a 4 MiB block of random bytes,
    on which cm alone takes 17 s, xz 1.7 and zstd -19 0.7 for nothing. Measured on 128 KiB
    probes: cm takes 0.986 of a JPEG's and 0.984 of a Kodak PNG's (so both are still coded: 0.977
    in all), 1.003 of random bytes'; gzip files hold repeats (zstd -1: 0.947 of one of the
    corpus's text)."""
    if len(data) < 2 * PROBE or order0_bits(data) <= NEAR_UNIFORM:
        return False
    if len(_zstd(1, data)) < 0.999 * len(data):
        return False
    mid = (len(data) - PROBE) // 2
    return len(contextmix.compress(data[mid : mid + PROBE])) >= PROBE_GAIN * PROBE


def best(data: bytes, cm: bool = True, geometry: tuple[int, int] | None = None,
         kind: str | None = None) -> tuple[str, bytes]:
    """The smallest of the classic encodings (store wins ties: it is the fastest to decode).
    `cm=False` leaves the context-mixing codecs out: for one LM chunk's kilobyte they learn too
    little to matter and would cost a few ms per chunk (a whole stream, where they do matter, is
    tried with them). The structured codec of `kind` is tried only with a `geometry` (an image's
    rows, an audio stream's channels, which a chunk does not start on), and then instead of cm,
    its generic form: on the corpus's 199 audio streams cmpcm beat cm on all but one (which cm took
    by 2.7%) and came to 12% less in all, while cm's trial was half the codec time of a WAV's
    stream; on the four image streams tried (two Kodak photos, two large GIMP icons) cm2d came to
    12-13% less than cm. A block that looks `incompressible` (and has no structured codec) is
    stored without trying the rest."""
    choice = ("store", data)
    if len(data) < 16:
        return choice
    shaped = STRUCTURED.get(kind) if geometry is not None else None
    if cm and shaped is None and incompressible(data):
        return choice
    for codec in CODECS[1:]:
        if ((codec == "brotli" and len(data) > BROTLI_MAX) or (codec.startswith("cm") and not cm)
                or (codec in STRUCTURED.values() and codec != shaped) or (codec == "cm" and shaped)):
            continue
        out = compress(codec, data, geometry)
        if len(out) < len(choice[1]):
            choice = (codec, out)
    return choice
