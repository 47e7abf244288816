"""PCM audio (WAV incl. WAVE_FORMAT_EXTENSIBLE, AIFF): samples as planar big-endian 16-bit byte streams.

Everything but the sample payload (RIFF header, fmt, LIST and other chunks) is kept verbatim in a
binary stream. Each channel's samples are laid out one after another (planar), high byte first:
the high byte is the predictable one, and planar order keeps a channel's recent past in context.
Samples wider than 16 bits put their top 16 bits in the audio stream and the remaining low bytes
in a side stream.
"""

from __future__ import annotations

import struct

import numpy as np

from archiver.formats import Split, Stream
from archiver.hookspecs import hookimpl

PCM = 1
EXTENSIBLE = 0xFFFE
PCM_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def _riff_chunks(data: bytes):
    pos = 12
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        (n,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        yield cid, pos + 8, min(pos + 8 + n, len(data))
        pos += 8 + n + (n & 1)


def samples_to_streams(payload: bytes, channels: int, width: int, little: bool = True) -> tuple[bytes, bytes]:
    """Interleaved samples of `width` bytes -> (planar top-16-bit big-endian stream, low bytes)."""
    frames = np.frombuffer(payload, dtype=np.uint8).reshape(-1, channels, width)
    planar = frames.transpose(1, 0, 2)  # channel, frame, byte
    if width == 1:
        return planar.tobytes(), b""
    big_end_first = planar[:, :, ::-1] if little else planar
    return big_end_first[:, :, :2].tobytes(), big_end_first[:, :, 2:].tobytes()


def streams_to_samples(main: bytes, side: bytes, channels: int, width: int, little: bool = True) -> bytes:
    if width == 1:
        return np.frombuffer(main, dtype=np.uint8).reshape(channels, -1).T.tobytes()
    hi = np.frombuffer(main, dtype=np.uint8).reshape(channels, -1, 2)
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
    main, side = samples_to_streams(data[a:b], channels, width, little)
    streams = [Stream("binary", data[:a] + data[b:]), Stream("audio", main)]
    if side:
        streams.append(Stream("binary", side))
    return Split(streams, {"at": a, "channels": channels, "width": width, "little": little})


def pcm_join(streams: list[bytes], recipe: dict) -> bytes:
    other, main = streams[0], streams[1]
    side = streams[2] if len(streams) > 2 else b""
    at = recipe["at"]
    samples = streams_to_samples(main, side, recipe["channels"], recipe["width"], recipe.get("little", True))
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
