"""PCM audio (WAV incl. WAVE_FORMAT_EXTENSIBLE, AIFF): samples as planar big-endian 16-bit byte streams.

Everything but the sample payload (RIFF header, fmt, LIST and other chunks) is kept verbatim in a
binary stream. Each channel's samples are laid out one after another (planar), high byte first:
the high byte is the predictable one, and planar order keeps a channel's recent past in context.
The 16-bit values are a fixed-order difference of the samples (a reversible predictor, as in FLAC's
fixed mode), which leaves the model small residuals to predict.
Samples wider than 16 bits put their top 16 bits in the audio stream and the remaining low bytes
in a side stream.
"""

from __future__ import annotations

import struct

import numpy as np

from archiver.formats import Split, Stream
from archiver.hookspecs import hookimpl

PCM = 1
# The sample layout, chosen by measurement (benchmarks/stream_choices.py, docs/benchmarks.md): the
# model predicts the first difference of each channel's 16-bit samples far better than the samples.
ORDER, ZIGZAG = 1, True
EXTENSIBLE = 0xFFFE
PCM_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def _riff_chunks(data: bytes):
    pos = 12
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        (n,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        yield cid, pos + 8, min(pos + 8 + n, len(data))
        pos += 8 + n + (n & 1)


def predict(top: np.ndarray, order: int, zigzag: bool) -> np.ndarray:
    """(channels, frames, 2) big-endian 16-bit samples -> the same shape holding the residual of a
    fixed `order` difference predictor along time (wrapping mod 2**16), zigzag-mapped so that small
    residuals of either sign have a zero high byte."""
    r = top.view(">u2")[..., 0].astype(np.uint16)
    for _ in range(order):
        r = np.diff(r, axis=1, prepend=np.zeros((r.shape[0], 1), np.uint16))
    if zigzag:
        s = r.view(np.int16).astype(np.int32)
        r = ((s << 1) ^ (s >> 15)).astype(np.uint16)
    return r.astype(">u2")[..., None].view(np.uint8)


def unpredict(res: np.ndarray, order: int, zigzag: bool) -> np.ndarray:
    """Inverse of predict: undo the zigzag map, then integrate `order` times mod 2**16."""
    r = res.view(">u2")[..., 0].astype(np.uint16)
    if zigzag:
        r = (r >> 1) ^ (0 - (r & 1)).astype(np.uint16)
    for _ in range(order):
        r = np.cumsum(r, axis=1, dtype=np.uint16)
    return r.astype(">u2")[..., None].view(np.uint8)


def samples_to_streams(payload: bytes, channels: int, width: int, little: bool = True, order: int = 0,
                       zigzag: bool = False) -> tuple[bytes, bytes]:  # fmt: skip
    """Interleaved samples of `width` bytes -> (planar top-16-bit big-endian stream, low bytes)."""
    frames = np.frombuffer(payload, dtype=np.uint8).reshape(-1, channels, width)
    planar = frames.transpose(1, 0, 2)  # channel, frame, byte
    if width == 1:
        return planar.tobytes(), b""
    big_end_first = planar[:, :, ::-1] if little else planar
    top = np.ascontiguousarray(big_end_first[:, :, :2])
    return predict(top, order, zigzag).tobytes(), big_end_first[:, :, 2:].tobytes()


def streams_to_samples(main: bytes, side: bytes, channels: int, width: int, little: bool = True, order: int = 0,
                       zigzag: bool = False) -> bytes:  # fmt: skip
    if width == 1:
        return np.frombuffer(main, dtype=np.uint8).reshape(channels, -1).T.tobytes()
    hi = unpredict(np.frombuffer(main, dtype=np.uint8).reshape(channels, -1, 2), order, zigzag)
    be = hi
    if width > 2:
        lo = np.frombuffer(side, dtype=np.uint8).reshape(channels, -1, width - 2)
        be = np.concatenate([hi, lo], axis=2)
    return (be[:, :, ::-1] if little else be).transpose(1, 0, 2).tobytes()


def pcm_split(data: bytes, a: int, b: int, channels: int, width: int, little: bool) -> Split:
    """Streams for a file whose sample payload is data[a:b]; everything else stays verbatim."""
    align = channels * width
    if channels < 1 or width not in (1, 2, 3, 4) or b > len(data) or a > b:
        raise ValueError("unsupported sample layout")
    b -= (b - a) % align  # a trailing partial frame stays in the verbatim part
    main, side = samples_to_streams(data[a:b], channels, width, little, ORDER, ZIGZAG)
    # 16-bit sample codes, one channel after another: the cmpcm codec's geometry
    geometry = (len(main) // channels, 2) if width > 1 else None
    streams = [Stream("binary", data[:a] + data[b:]), Stream("audio", main, geometry)]
    if side:
        streams.append(Stream("binary", side))
    recipe = {"at": a, "channels": channels, "width": width, "little": little, "order": ORDER, "zigzag": ZIGZAG}
    return Split(streams, recipe)


def pcm_join(streams: list[bytes], recipe: dict) -> bytes:
    other, main = streams[0], streams[1]
    side = streams[2] if len(streams) > 2 else b""
    at = recipe["at"]
    layout = recipe.get("little", True), recipe.get("order", 0), recipe.get("zigzag", False)  # old recipes: 0, off
    samples = streams_to_samples(main, side, recipe["channels"], recipe["width"], *layout)
    return other[:at] + samples + other[at:]


class Wav:
    name = "wav"
    version = "1"
    priority = 40
    description = "WAV PCM 8/16/24/32-bit, any channel count, WAVE_FORMAT_EXTENSIBLE"

    def detect(self, path: str, head: bytes) -> bool:
        return head[:4] == b"RIFF" and head[8:12] == b"WAVE"

    def split(self, data: bytes) -> Split:
        fmt = payload = None
        for cid, a, b in _riff_chunks(data):
            if cid == b"fmt ":
                fmt = data[a:b]
            elif cid == b"data" and payload is None:
                payload = (a, b)
        if fmt is None or payload is None:
            raise ValueError("WAV without fmt or data chunk")
        tag, channels, _, _, align, bits = struct.unpack("<HHIIHH", fmt[:16])
        if tag == EXTENSIBLE:
            if fmt[24 + 2 : 24 + 16] != PCM_GUID_TAIL or struct.unpack("<H", fmt[24:26])[0] != PCM:
                raise ValueError("extensible WAV that is not PCM")
        elif tag != PCM:
            raise ValueError("not PCM")
        width = (bits + 7) // 8
        if align != channels * width:
            raise ValueError("unsupported sample layout")
        return pcm_split(data, *payload, channels, width, little=True)

    def join(self, streams: list[bytes], recipe: dict) -> bytes:
        return pcm_join(streams, recipe)


class Aiff:
    name = "aiff"
    version = "1"
    priority = 40
    description = "AIFF PCM 8/16/24/32-bit, any channel count (big-endian samples)"

    def detect(self, path: str, head: bytes) -> bool:
        return head[:4] == b"FORM" and head[8:12] == b"AIFF"

    def split(self, data: bytes) -> Split:
        comm = ssnd = None
        pos = 12
        while pos + 8 <= len(data):
            cid, n = data[pos : pos + 4], struct.unpack(">I", data[pos + 4 : pos + 8])[0]
            if cid == b"COMM":
                comm = data[pos + 8 : pos + 8 + n]
            elif cid == b"SSND":
                offset = struct.unpack(">I", data[pos + 8 : pos + 12])[0]
                ssnd = (pos + 16 + offset, min(pos + 8 + n, len(data)))
            pos += 8 + n + (n & 1)
        if comm is None or ssnd is None or len(comm) < 8:
            raise ValueError("AIFF without COMM or SSND")
        channels, _, bits = struct.unpack(">HIH", comm[:8])
        return pcm_split(data, *ssnd, channels, (bits + 7) // 8, little=False)

    def join(self, streams: list[bytes], recipe: dict) -> bytes:
        return pcm_join(streams, recipe)


@hookimpl
def register_formats(register):
    register(Wav())
    register(Aiff())
