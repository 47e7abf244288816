"""What the archive layer needs to know about model files without loading torch.

Listing an archive or printing `lmarc info` should take a blink, not the 2+ seconds `import torch`
costs; so the error type and the content hash that names a model live here, and the modules that
run models (intmodel, engine, streamcoder) are imported only when a model is actually used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


class ModelError(Exception):
    """The model file is missing, malformed or violates the engine's exactness bounds."""


def file_sha256(path: Path) -> str:
    """A model's id: the SHA-256 of its file, which archives record."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
