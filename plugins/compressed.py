"""Already-compressed files (JPEG, ZIP, gzip, xz, 7z, zstd, bzip2, MP4, FLAC, MP3, Ogg, WebP):
stored or classic-coded, never shown to the LM, which could only waste time on them."""

from archiver.formats import Split, Stream
from archiver.hookspecs import hookimpl

MAGICS = {
    b"\xff\xd8\xff": "jpeg",
    b"PK\x03\x04": "zip",
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"7z\xbc\xaf\x27\x1c": "7z",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"BZh": "bzip2",
    b"fLaC": "flac",
    b"ID3": "mp3",
    b"\xff\xfb": "mp3",
    b"OggS": "ogg",
    b"LMARC": "lmarc",
}


def sniff(head: bytes) -> str | None:
    for magic, name in MAGICS.items():
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


class Compressed:
    name = "compressed"
    version = "1"
    priority = 50
    description = "already-compressed data (JPEG, ZIP, gz, xz, 7z, zst, MP4, FLAC, MP3, Ogg...)"

    def detect(self, path: str, head: bytes) -> bool:
        return sniff(head) is not None

    def split(self, data: bytes) -> Split:
        return Split([Stream("stored", data)], {"type": sniff(data[:16])})

    def join(self, streams: list[bytes], recipe: dict) -> bytes:
        return streams[0]


@hookimpl
def register_formats(register):
    register(Compressed())
