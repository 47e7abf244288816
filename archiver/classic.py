"""Fallback codecs for data the LM does not win on: store, zstd -19 (long window), xz -9e, brotli
-q 11 (whose built-in dictionary of common words and markup wins on small text files), cm, our
context-mixing codec (`archiver.contextmix`), which beats all of them on most text, and its two
variants for structured streams whose geometry (`formats.Stream.geometry`) is known: cm2d for
images (`archiver.imagemix`) and cmpcm for audio (`archiver.audiomix`)."""

from __future__ import annotations

import lzma
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

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
SLOWEST_FIRST = ("cm", "cm2d", "cmpcm", "xz", "brotli", "zstd")  # the order trials start in (see best_each)
LOOKAHEAD = 8  # jobs (blocks to code, chunks to decode) in flight at most: bounds the memory they hold
_END = object()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_threads = _cpus()
_pool: ThreadPoolExecutor | None = None


def set_threads(n: int | None) -> None:
    """Threads the codec trials and decodings run on (`--threads`; None: the CPUs this process may use)."""
    global _threads, _pool
    n = max(1, n or _cpus())
    if n != _threads and _pool is not None:
        _pool.shutdown()
        _pool = None
    _threads = n


def threads() -> int:
    return _threads


_unfinished: set[Future] = set()  # every submitted job until it is done (or cancelled): see busy()


def _submit(fn: Callable, *args) -> Future:
    """fn(*args) on the pool's threads."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_threads, thread_name_prefix="lmarc-codec")
    fut = _pool.submit(fn, *args)
    _unfinished.add(fut)
    fut.add_done_callback(_unfinished.discard)
    return fut


def busy() -> bool:
    """Whether a job is still running on the pool's threads: after Ctrl-C or an error, a codec trial
    that had started runs on (a compiled codec cannot be stopped), and the interpreter waits for
    it at exit, up to cm's time on a block (about 16 s). The command line then exits without
    waiting (`cli.entry`): the archive was already rolled back, and the trial's result is unwanted."""
    return any(not f.done() for f in list(_unfinished))


def _in_order(jobs: Iterable, start: Callable[[Any], dict[str, Future]], finish: Callable) -> Iterator:
    """finish(job, start(job)) for each job, in order, where start(job) submits the job's work to
    the pool and returns its futures. Jobs are started ahead of the one being finished whenever a
    thread would otherwise idle (fewer unfinished futures than threads), up to LOOKAHEAD jobs, so
    a long job at the head does not hold up the ones behind it (a 2.4 MB text file's cm decoding
    started 4.4 s late behind a solid block's); only those jobs' inputs and results are held. On
    any exception (Ctrl-C included) the work not yet started is cancelled: the pool's threads would
    otherwise run all of it before the process could exit."""
    window: deque[tuple[Any, dict[str, Future]]] = deque()
    todo, more = iter(jobs), True
    try:
        while more or window:
            running = [f for _, futures in window for f in futures.values() if not f.done()]
            if more and len(running) < _threads and len(window) < LOOKAHEAD:
                job = next(todo, _END)
                if job is _END:
                    more = False
                else:
                    window.append((job, start(job)))
            elif not more or len(window) >= LOOKAHEAD or not any(f in running for f in window[0][1].values()):
                yield finish(*window.popleft())
            else:
                wait(running, return_when=FIRST_COMPLETED)
    except BaseException:
        for _, futures in window:
            for f in futures.values():
                f.cancel()
        raise


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


def compress_later(codec: str, data: bytes, geometry: tuple[int, int] | None = None) -> Future:
    """`compress` on the codec threads: its bytes are the future's result."""
    return _submit(compress, codec, data, geometry)


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
    return next(best_each([data], cm, geometry, kind))


def best_each(blocks: Iterable[bytes], cm: bool = True, geometry: tuple[int, int] | None = None,
              kind: str | None = None) -> Iterator[tuple[str, bytes]]:
    """`best` of each block, in order. The codecs' trials run side by side on the pool's threads,
    the slowest first, and the next blocks' trials start while a block's last ones finish: every
    codec leaves the GIL (zstd, xz and brotli in C, the cm family compiled with nogil), so on 2
    cores a text block takes about cm's time instead of the sum of all four, and a stream of many
    blocks about half its time. Each trial's output is its own: the choice, and so the archive,
    does not depend on the thread count."""
    shaped = STRUCTURED.get(kind) if geometry is not None else None

    def start(data: bytes) -> dict[str, Future]:
        if len(data) < 16 or (cm and shaped is None and incompressible(data)):
            return {}
        return {c: compress_later(c, data, geometry) for c in SLOWEST_FIRST
                if not ((c == "brotli" and len(data) > BROTLI_MAX) or (c.startswith("cm") and not cm)
                        or (c in STRUCTURED.values() and c != shaped) or (c == "cm" and shaped))}

    def finish(data: bytes, trials: dict[str, Future]) -> tuple[str, bytes]:
        choice = ("store", data)
        for codec in CODECS[1:]:
            if codec in trials and len(out := trials[codec].result()) < len(choice[1]):
                choice = (codec, out)
        return choice

    return _in_order(blocks, start, finish)


def decompress_each(items: Iterable[tuple[str, bytes, int]]) -> Iterator[bytes | ValueError]:
    """`decompress(codec, data, size)` of each item, in order, run side by side on the pool's
    threads as `best_each` runs its trials; a damaged item yields its ValueError instead of
    raising it, so the caller can tell which one it was."""

    def start(item: tuple[str, bytes, int]) -> dict[str, Future]:
        return {"out": _submit(decompress, *item)}

    def finish(_item: tuple[str, bytes, int], job: dict[str, Future]) -> bytes | ValueError:
        try:
            return job["out"].result()
        except ValueError as err:
            return err

    return _in_order(items, start, finish)
