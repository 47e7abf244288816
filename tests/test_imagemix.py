"""The cm2d codec: exact round trips, frozen bits, integrity checks, and that it earns its place."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from archiver import classic, contextmix, imagemix
from archiver.container import ArchiveReader
from archiver.formats import split_file
from tests.conftest import SAMPLES

# Part of the archive format, as cm's digest is: a change to the model is a new codec name and
# index version, never an edit.
GOLDEN_SHA256 = "189b66022b7df7055bed48041be9d847a42d71d7972b10c26ab8cd2df4980e72"


def _image_stream(path=SAMPLES / "gradient.png"):
    s = next(s for s in split_file(path.read_bytes(), str(path)).split.streams if s.kind == "image")
    assert s.geometry is not None
    return s


def _sprites(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    """A palette-index image as games and icon sets have: flat areas, a few shapes, repeated tiles."""
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, 12, (16, 16), dtype=np.uint8)
    tile[4:12, 4:12] = rng.integers(0, 12)
    pix = np.tile(tile, (h // 16, w // 16))
    for _ in range(6):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        pix[y : y + rng.integers(4, 20), x : x + rng.integers(4, 20)] = rng.integers(0, 12)
    return pix


def test_bits_are_frozen():
    s = _image_stream()
    packed = imagemix.compress(s.data, *s.geometry)
    assert hashlib.sha256(packed).hexdigest() == GOLDEN_SHA256
    assert imagemix.decompress(packed, len(s.data)) == s.data


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), c=st.sampled_from([1, 2, 3, 4]), seed=st.integers(0, 2**16),
       noise=st.integers(0, 255))
def test_images_round_trip(h, w, c, seed, noise):
    """Smooth images with noise of any strength, at their own geometry: the codec rebuilds the pixels
    from the residuals as it goes, and must do so identically in both directions."""
    from lmarc_plugins.pixels import to_stream

    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(h), np.arange(w))[:, :, None] * rng.integers(0, 8, c)
    pix = ((ramp + rng.integers(0, noise + 1, (h, w, c))) & 255).astype(np.uint8)
    s, _ = to_stream(pix)
    assert imagemix.decompress(imagemix.compress(s.data, *s.geometry), len(s.data)) == s.data


def test_beats_cm_on_images_and_best_picks_it():
    from lmarc_plugins.pixels import to_stream

    s, _ = to_stream(_sprites(1)[:, :, None])
    packed = imagemix.compress(s.data, *s.geometry)
    assert len(packed) < 0.8 * len(contextmix.compress(s.data))
    assert classic.best(s.data, geometry=s.geometry, kind="image") == ("cm2d", packed)
    g = _image_stream()
    assert len(imagemix.compress(g.data, *g.geometry)) < len(contextmix.compress(g.data))


def test_damage_a_wrong_size_and_a_bad_header_are_refused():
    s = _image_stream()
    packed = imagemix.compress(s.data, *s.geometry)
    flipped = bytearray(packed)
    flipped[len(packed) // 2] ^= 0x10
    for payload, size in ((bytes(flipped), len(s.data)), (packed[:-1], len(s.data)), (packed + b"\0", len(s.data)),
                          (packed, len(s.data) + 1), (packed[:3], 0)):
        with pytest.raises(ValueError, match="cm2d chunk"):
            imagemix.decompress(payload, size)
    bad = imagemix.HEADER.pack(0, 1, len(s.data)) + packed[imagemix.HEADER.size :]
    with pytest.raises(ValueError, match="geometry"):
        imagemix.decompress(bad, len(s.data))


def test_cli_codes_a_sprite_sheet_with_cm2d(cli, tiny, tmp_path):
    """End to end: a palette PNG's pixels go to cm2d (the tiny model and cm lose to it), the archive
    says index version 5, and the file comes back byte for byte."""
    png = tmp_path / "sheet.png"
    im = Image.fromarray(_sprites(2, 192, 256), mode="P")
    im.putpalette([v for i in range(12) for v in (i * 20, 255 - i * 20, (i * 70) % 256)])
    im.save(png)
    arc = tmp_path / "a.lma"
    cli("add", "-a", arc, "--model", tiny, png)
    rows = json.loads(cli("list", arc, "--json")[0])
    assert "cm2d" in rows[0]["codec"]
    with ArchiveReader(arc) as r:
        assert r.index.version == 5
    cli("extract", arc, "-C", tmp_path / "out")
    assert (tmp_path / "out" / png.relative_to(png.anchor)).read_bytes() == png.read_bytes()
