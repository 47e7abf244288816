"""Format plugins: join(split(x)) == x for anything, and real files take the plugin meant for them."""

from __future__ import annotations

import io
import struct
import wave
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from archiver.formats import join_streams, split_file
from archiver.plugins import formats
from lmarc_plugins.png import pack_bits, png_filter


def roundtrip(data: bytes, path: str = "") -> str:
    chosen = split_file(data, path)
    assert join_streams(chosen.format.name, [s.data for s in chosen.split.streams], chosen.split.recipe) == data
    return chosen.format.name


def png_bytes(w: int, h: int, mode: str, seed: int, **save) -> bytes:
    rng = np.random.default_rng(seed)
    chans = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2, "P": 1}[mode]
    arr = rng.integers(0, 256, (h, w, chans), dtype=np.uint8)
    arr = (arr // 32 * 32).astype(np.uint8)  # some structure for the filters to find
    im = Image.fromarray(arr[:, :, 0] if chans == 1 else arr, "L" if chans == 1 else mode)
    if mode == "P":
        im = im.convert("P")
    buf = io.BytesIO()
    im.save(buf, "PNG", **save)
    return buf.getvalue()


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def raw_png_bytes(w: int, h: int, depth: int, ctype: int, seed: int, level: int = 6) -> bytes:
    """A PNG of any bit depth and colour type, written here (Pillow cannot write 16-bit RGB or
    2/4-bit gray), with a random filter type per row so every unfilter path is exercised."""
    rng = np.random.default_rng(seed)
    chans = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    if depth >= 8:
        raw, bpp = (rng.integers(0, 4, (h, w * chans * depth // 8)) * 37).astype(np.uint8), chans * depth // 8
    else:
        raw, bpp = pack_bits(rng.integers(0, 1 << depth, (h, w)).astype(np.uint8), (w * depth + 7) // 8, depth), 1
    types = rng.integers(0, 5, h).astype(np.uint8)
    rows = np.concatenate([types[:, None], png_filter(raw, types, bpp)], axis=1).tobytes()
    head = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
    plte = _png_chunk(b"PLTE", bytes(range(48))) if ctype == 3 else b""
    idat = _png_chunk(b"IDAT", zlib.compress(rows, level))
    return b"\x89PNG\r\n\x1a\n" + head + plte + idat + _png_chunk(b"IEND", b"")


def pil_bytes(arr: np.ndarray, mode: str, fmt: str, **save) -> bytes:
    im = Image.fromarray(arr, "L" if mode in ("P", "1") else mode) if mode != "I;16" else Image.fromarray(arr)
    if mode in ("P", "1"):
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def wav_bytes(channels: int, width: int, frames: bytes) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(8000)
        w.writeframes(frames)
    return buf.getvalue()


def test_every_format_is_registered_through_entry_points():
    expected = {"raw", "text", "compressed", "png", "pnm", "bmp", "tiff", "gif", "wav", "aiff"}
    assert expected <= {f.name for f in formats()}


@given(st.binary(max_size=3000))
def test_any_bytes_round_trip(data):
    roundtrip(data)


@given(st.text(max_size=2000))
def test_any_text_round_trips(text):
    for nl in ("\n", "\r\n"):
        roundtrip(("\ufeff" + text).replace("\n", nl).encode("utf-8"))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.sampled_from(["L", "RGB", "RGBA", "LA", "P"]),
    st.integers(0, 9),
    st.integers(0, 1 << 16),
)
def test_png_round_trips_and_uses_pixels(w, h, mode, level, seed):
    data = png_bytes(w, h, mode, seed, compress_level=level)
    assert roundtrip(data, "x.png") == "png"


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([(0, 1), (0, 2), (0, 4), (0, 16), (2, 16), (3, 1), (3, 2), (3, 4), (4, 16), (6, 16)]),
    st.integers(1, 30),
    st.integers(1, 20),
    st.integers(0, 9),
    st.integers(0, 1 << 16),
)
def test_png_of_every_bit_depth_round_trips(layout, w, h, level, seed):
    ctype, depth = layout
    assert roundtrip(raw_png_bytes(w, h, depth, ctype, seed, level), "x.png") == "png"


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 70),
    st.integers(1, 70),
    st.sampled_from(["L", "RGB", "RGBA", "1", "I;16", "CMYK"]),
    st.integers(0, 1 << 16),
)
def test_uncompressed_tiff_round_trips(w, h, mode, seed):
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        arr = rng.integers(0, 1 << 16, (h, w)).astype(np.uint16)
    else:
        chans = {"L": 1, "1": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
        arr = (rng.integers(0, 8, (h, w, chans)) * 32).astype(np.uint8).squeeze(2 if chans == 1 else ())
    assert roundtrip(pil_bytes(arr, mode, "TIFF"), "x.tif") == "tiff"
    assert roundtrip(pil_bytes(arr, mode, "TIFF", compression="tiff_lzw"), "x.tif") == "raw"  # compressed: bytes


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 120), st.integers(1, 90), st.integers(1, 256), st.integers(1, 3), st.integers(0, 1 << 16))
def test_gif_round_trips_including_full_lzw_tables_and_frames(w, h, colours, frames, seed):
    rng = np.random.default_rng(seed)
    ims = [Image.fromarray(rng.integers(0, colours, (h, w)).astype(np.uint8), "L").convert("P") for _ in range(frames)]
    buf = io.BytesIO()
    ims[0].save(buf, "GIF", save_all=frames > 1, append_images=ims[1:], duration=50)
    chosen = split_file(buf.getvalue(), "x.gif")
    assert roundtrip(buf.getvalue(), "x.gif") == "gif"
    assert sum(s.kind == "image" for s in chosen.split.streams) >= 1


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.sampled_from([1, 2, 3, 4]), st.binary(max_size=600), st.binary(max_size=9))
def test_wav_round_trips(channels, width, payload, junk):
    frames = payload[: len(payload) // (channels * width) * channels * width]
    data = wav_bytes(channels, width, frames)
    assert roundtrip(data, "x.wav") == "wav"
    roundtrip(data + junk)  # trailing bytes after the RIFF chunks


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_truncated_or_corrupted_files_fall_back(data):
    base = data.draw(st.sampled_from(MALFORMABLE))
    cut = data.draw(st.integers(0, len(base)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(1, 255)), max_size=3))
    mangled = bytearray(base[:cut] if data.draw(st.booleans()) else base)
    for pos, x in flips:
        if pos < len(mangled):
            mangled[pos] ^= x
    roundtrip(bytes(mangled))


def bmp_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(w * h * 3, dtype=np.uint8).reshape(h, w, 3)).save(buf, "BMP")
    return buf.getvalue()


MALFORMABLE = [
    png_bytes(9, 7, "RGB", 1), raw_png_bytes(9, 7, 16, 2, 1), raw_png_bytes(11, 5, 2, 0, 1),
    wav_bytes(2, 2, bytes(range(200))), b"P6\n4 3\n255\n" + bytes(range(36)), bmp_bytes(5, 3),
    pil_bytes(np.arange(60, dtype=np.uint8).reshape(6, 10), "L", "TIFF"),
    pil_bytes(np.arange(600, dtype=np.uint16).reshape(20, 30).astype(np.uint8), "P", "GIF"),
]  # fmt: skip


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([b"P4", b"P5", b"P6"]), st.integers(1, 40), st.integers(1, 30), st.binary(max_size=9),
       st.integers(0, 1 << 16))  # fmt: skip
def test_pnm_round_trips(magic, w, h, trailer, seed):
    per_row = {b"P4": (w + 7) // 8, b"P5": w, b"P6": 3 * w}[magic]
    pix = np.random.default_rng(seed).integers(0, 256, per_row * h, dtype=np.uint8).tobytes()
    head = magic + f"\n# by hypothesis\n{w} {h}\n".encode() + (b"" if magic == b"P4" else b"255\n")
    assert roundtrip(head + pix + trailer, "x.pnm") == "pnm"


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 30), st.sampled_from(["L", "P", "RGB", "RGBA"]), st.integers(0, 1 << 16))
def test_bmp_round_trips(w, h, mode, seed):
    chans = {"L": 1, "P": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, chans)).astype(np.uint8)
    im = Image.fromarray(arr[:, :, 0] if chans == 1 else arr, "L" if chans == 1 else mode)
    buf = io.BytesIO()
    (im.convert("P") if mode == "P" else im).save(buf, "BMP")
    assert roundtrip(buf.getvalue(), "x.bmp") in ("bmp", "raw")  # Pillow writes RGBA as BI_BITFIELDS: bytes
    if mode != "RGBA":
        assert roundtrip(buf.getvalue(), "x.bmp") == "bmp"


@given(st.sampled_from([b"\xff\xd8\xff", b"PK\x03\x04", b"\x1f\x8b", b"fLaC", b"OggS"]), st.binary(max_size=500))
def test_compressed_magic_files_round_trip_as_stored(magic, rest):
    chosen = split_file(magic + rest, "x")
    assert roundtrip(magic + rest) == "compressed" and chosen.split.streams[0].kind == "stored"


def test_pnm_and_bmp_use_their_plugins():
    assert roundtrip(b"P5\n# comment\n3 2\n255\n" + bytes(range(6)), "x.pgm") == "pnm"
    assert roundtrip(b"P4\n10 2\n" + bytes([0xAA, 0xC0, 0x55, 0x80]), "x.pbm") == "pnm"
    assert roundtrip(bmp_bytes(5, 3), "x.bmp") == "bmp"


def test_compressed_files_are_not_shown_to_the_lm():
    import gzip

    chosen = split_file(gzip.compress(b"hello" * 100), "x.gz")
    assert chosen.format.name == "compressed" and chosen.split.streams[0].kind == "stored"


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 4), st.sampled_from(["none", "left", "up", "med"]),
       st.integers(0, 1 << 16))  # fmt: skip
def test_every_pixel_predictor_inverts(h, w, c, mode, seed):
    from lmarc_plugins.pixels import predict, unpredict

    pix = np.random.default_rng(seed).integers(0, 256, (h, w, c)).astype(np.uint8)
    assert np.array_equal(unpredict(predict(pix, mode), mode), pix)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 4), st.sampled_from([0, 1, 8, 16, 32]),
       st.integers(0, 1 << 16))  # fmt: skip
def test_every_patch_geometry_inverts(h, w, c, patch, seed):
    from lmarc_plugins.pixels import patch_flatten, patch_unflatten

    pix = np.random.default_rng(seed).integers(0, 256, (h, w, c)).astype(np.uint8)
    flat = patch_flatten(pix, patch)
    assert np.array_equal(patch_unflatten(flat, (h, w, c), patch), pix)
    if patch == 0:  # 0 means raster rows
        assert flat == pix.tobytes()


def test_new_layout_is_raster_and_old_recipes_keep_their_patches():
    """Streams are raster MED residuals now; a recipe without a layout still means 16x16 patches."""
    from lmarc_plugins.pixels import from_stream, patch_flatten, predict, to_stream

    pix = np.random.default_rng(3).integers(0, 256, (40, 37, 3)).astype(np.uint8)
    stream, layout = to_stream(pix)
    assert layout == {"patch": 0, "predictor": "med"} and stream.data == predict(pix, "med").tobytes()
    assert stream.kind == "image" and stream.geometry == (37 * 3, 3)  # rows of 37 three-byte pixels
    assert np.array_equal(from_stream(stream.data, pix.shape, layout), pix)
    assert np.array_equal(from_stream(patch_flatten(pix, 16), pix.shape, None), pix)


def test_smooth_images_become_small_residuals():
    from lmarc_plugins.pixels import PREDICTOR, predict

    ramp = (np.add.outer(np.arange(40), np.arange(60)) * 2).astype(np.uint8)[:, :, None]
    res = predict(ramp, PREDICTOR)
    assert PREDICTOR != "none" and len(np.unique(res[1:, 1:])) == 1  # one constant instead of 80 grey levels


def test_audio_stream_holds_prediction_residuals():
    """A ramp is perfectly predictable: after the predictor's warm-up its residuals are all equal."""
    from lmarc_plugins.audio import ORDER

    ramp = np.arange(0, 3000, 3, dtype="<i2")
    residual = np.frombuffer(split_file(wav_bytes(1, 2, ramp.tobytes()), "x.wav").split.streams[1].data, ">u2")
    assert ORDER >= 1 and len(residual) == len(ramp) and len(set(residual[ORDER:].tolist())) == 1


def test_wide_samples_keep_low_bytes_in_a_side_stream():
    frames = struct.pack("<6i", *[1 << 20, -(1 << 20), 5, -5, 123456789, -1])
    chosen = split_file(wav_bytes(2, 4, frames), "x.wav")
    kinds = [s.kind for s in chosen.split.streams]
    assert kinds == ["binary", "audio", "binary"]
    audio = chosen.split.streams[1].data
    assert len(audio) == 6 * 2  # top 16 bits of each sample, big-endian, channel by channel


def test_every_corpus_image_and_audio_file_round_trips(corpus):
    counts: dict[str, int] = {}
    for p in sorted(corpus.glob("image/**/*")) + sorted(corpus.glob("audio/**/*.wav"))[::10]:
        if p.is_file():
            name = roundtrip(p.read_bytes(), str(p))
            counts[name] = counts.get(name, 0) + 1
    assert counts.get("png", 0) > 100 and counts.get("wav", 0) > 100 and counts.get("pnm") == 1


@pytest.mark.parametrize("text", ["plain\n", "tabs\tand\x1bescape\r\n", "\ufeffbom", "x" * 100000, "nul\x00ok"])
def test_text_variants(text):
    roundtrip(text.encode("utf-8"))


def test_a_third_party_plugin_package_is_found_and_used(tmp_path):
    """Install plugins/lmarc-npy (the plugin authors' template) into a side directory and watch
    lmarc pick it up through the entry-point group, like the built-in formats."""
    import subprocess
    import sys

    from tests.conftest import ROOT, TINY

    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(ROOT / "plugins" / "lmarc-npy"),
        ],
        check=True,
        capture_output=True,
    )
    arr = np.cumsum(np.random.default_rng(0).normal(0, 1, 3000)).astype("<f4")
    np.save(tmp_path / "walk.npy", arr)
    env = dict(__import__("os").environ, PYTHONPATH=f"{site}:{ROOT}")
    lmarc = [sys.executable, "-m", "archiver.cli"]
    info = subprocess.run([*lmarc, "info"], env=env, capture_output=True, text=True, check=True).stdout
    assert "npy" in info and "lmarc-npy" in info
    arc = tmp_path / "a.lma"
    subprocess.run([*lmarc, "add", "-a", arc, "--model", TINY, "walk.npy"], env=env, check=True, cwd=tmp_path)
    rows = subprocess.run([*lmarc, "list", arc, "--json"], env=env, capture_output=True, text=True, check=True)
    assert '"plugin": "npy"' in rows.stdout
    subprocess.run([*lmarc, "extract", arc, "-C", tmp_path / "out"], env=env, check=True)
    assert (tmp_path / "out" / "walk.npy").read_bytes() == (tmp_path / "walk.npy").read_bytes()


def aiff_bytes(channels: int, width: int, frames: bytes, offset: int = 0) -> bytes:
    n = len(frames) // (channels * width)
    rate80 = bytes.fromhex("400cfa00000000000000")  # 16000 Hz as an 80-bit float
    comm = struct.pack(">HIH", channels, n, width * 8) + rate80
    ssnd = struct.pack(">II", offset, 0) + bytes(offset) + frames
    body = b"AIFF" + b"COMM" + struct.pack(">I", len(comm)) + comm + b"SSND" + struct.pack(">I", len(ssnd)) + ssnd
    return b"FORM" + struct.pack(">I", len(body)) + body


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.sampled_from([1, 2, 3, 4]), st.binary(max_size=400), st.integers(0, 3))
def test_aiff_round_trips(channels, width, payload, offset):
    frames = payload[: len(payload) // (channels * width) * channels * width]
    data = aiff_bytes(channels, width, frames, offset)
    assert roundtrip(data, "x.aiff") == "aiff"
    if frames and width >= 2:  # big-endian samples make the same audio stream as the little-endian WAV
        swapped = np.frombuffer(frames, np.uint8).reshape(-1, width)[:, ::-1].tobytes()
        wav = split_file(wav_bytes(channels, width, swapped), "x.wav").split.streams[1].data
        assert split_file(data, "x.aiff").split.streams[1].data == wav
