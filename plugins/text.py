"""UTF-8 text: one text stream, which the model's own tokenizer codes (bytes for byte models)."""

from archiver.formats import Split, Stream
from archiver.hookspecs import hookimpl

# Control characters other than tab, newline, carriage return, form feed and escape are rare in text.
_ALLOWED_CONTROLS = {9, 10, 12, 13, 27}


class Utf8Text:
    name = "text"
    version = "1"
    priority = 10
    description = "UTF-8 text (BOM, CRLF, tabs, long lines), tokenized by the model"

    def detect(self, path: str, head: bytes) -> bool:
        if not head:
            return False
        sample = head[: len(head) - 4] if len(head) > 4 else head  # may end inside a character
        try:
            sample.decode("utf-8")
        except UnicodeDecodeError:
            return False
        controls = sum(1 for b in sample if b < 32 and b not in _ALLOWED_CONTROLS)
        return controls * 100 <= len(sample)

    def split(self, data: bytes) -> Split:
        data.decode("utf-8")  # raises on invalid UTF-8 past the sniffed head: fall back to raw
        return Split([Stream("text", data)])

    def join(self, streams: list[bytes], recipe: dict) -> bytes:
        return streams[0]


@hookimpl
def register_formats(register):
    register(Utf8Text())
