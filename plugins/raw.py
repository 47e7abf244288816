"""Raw bytes: the format of last resort, which every file round-trips through."""

from archiver.formats import Split, Stream
from archiver.hookspecs import hookimpl


class RawBytes:
    name = "raw"
    version = "1"
    priority = 0
    description = "any file, as one binary byte stream"

    def detect(self, path: str, head: bytes) -> bool:
        return True

    def split(self, data: bytes) -> Split:
        return Split([Stream("binary", data)])

    def join(self, streams: list[bytes], recipe: dict) -> bytes:
        return streams[0]


@hookimpl
def register_formats(register):
    register(RawBytes())
