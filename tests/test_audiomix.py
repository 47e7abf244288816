"""The cmpcm codec: exact round trips, frozen bits, integrity checks, and that it earns its place."""

from __future__ import annotations

import hashlib
import io
import json
import wave

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver import audiomix, classic, contextmix, solid
from archiver.container import ArchiveReader
from archiver.formats import split_file
from tests.conftest import SAMPLES, MemoryWriter, member

# Part of the archive format, as cm's and cm2d's digests are: a change to the model is a new codec
# name and index version, never an edit.
GOLDEN_SHA256 = "8d58b483c7fa609aea94438221b22d208f974de16b5c105e475f9167fb9b1601"


def _wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    """16-bit PCM WAV bytes of samples [frames, channels]."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def _tone(seed: int, frames: int, channels: int = 1, noise: int = 40) -> np.ndarray:
    """A decaying two-note tone with noise, as instrument samples and alert sounds are; later
    channels are the first one quieter, with their own noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / 16000
    f1, f2 = rng.uniform(150, 900, 2)
    x = (np.sin(2 * np.pi * f1 * t) + 0.6 * np.sin(2 * np.pi * f2 * t)) * np.exp(-t * rng.uniform(1, 6)) * 9000
    out = [x * (0.7**c) + rng.normal(0, noise + 1e-9, frames) for c in range(channels)]
    return np.clip(np.stack(out, axis=1), -32768, 32767).astype(np.int16)


def _audio_stream(data: bytes):
    s = next(s for s in split_file(data, "x.wav").split.streams if s.kind == "audio")
    assert s.geometry is not None
    return s


def test_bits_are_frozen():
    s = _audio_stream((SAMPLES / "chord.wav").read_bytes())
    packed = classic.compress("cmpcm", s.data, s.geometry)
    assert hashlib.sha256(packed).hexdigest() == GOLDEN_SHA256
    assert audiomix.decompress(packed, len(s.data)) == s.data


@settings(max_examples=25, deadline=None)
@given(frames=st.integers(0, 3000), channels=st.integers(1, 3), seed=st.integers(0, 2**16),
       noise=st.sampled_from([0, 3, 300, 20000]))
def test_sounds_round_trip(frames, channels, seed, noise):
    """Tones with noise of any strength (up to white noise at full scale), any channel count: the
    codec rebuilds the samples and runs its filters as it goes, identically in both directions."""
    s = _audio_stream(_wav(_tone(seed, frames, channels, noise)))
    assert audiomix.decompress(audiomix.compress(s.data, channels), len(s.data)) == s.data


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=2000), channels=st.integers(0, 300))
def test_any_bytes_with_any_layout_round_trip(data, channels):
    """A layout that does not fit (odd lengths, more channels than samples) only costs compression."""
    assert audiomix.decompress(audiomix.compress(data, channels), len(data)) == data


def test_beats_cm_on_sound_and_best_picks_it():
    s = _audio_stream(_wav(_tone(3, 16000, noise=5)))
    packed = classic.compress("cmpcm", s.data, s.geometry)
    assert len(packed) < 0.85 * len(contextmix.compress(s.data))
    assert classic.best(s.data, geometry=s.geometry, kind="audio") == ("cmpcm", packed)


def test_the_second_channel_is_predicted_from_the_first():
    """Stereo whose right channel is the left one scaled, plus a little noise of its own: coded as
    two channels (the right one predicted from the left, which is known in full) it costs less than
    as one long channel."""
    left = _tone(4, 8000, noise=30)
    right = left * 0.5 + np.random.default_rng(0).normal(0, 2, left.shape)
    s = _audio_stream(_wav(np.concatenate([left, right.astype(np.int16)], axis=1)))
    assert len(audiomix.compress(s.data, 2)) < 0.92 * len(audiomix.compress(s.data, 1))


def test_damage_a_wrong_size_and_a_bad_header_are_refused():
    s = _audio_stream((SAMPLES / "chord.wav").read_bytes())
    packed = audiomix.compress(s.data, 1)
    flipped = bytearray(packed)
    flipped[len(packed) // 2] ^= 0x10
    for payload, size in ((bytes(flipped), len(s.data)), (packed[:-1], len(s.data)), (packed + b"\0", len(s.data)),
                          (packed, len(s.data) + 2), (packed[:3], 0)):
        with pytest.raises(ValueError, match="cmpcm chunk"):
            audiomix.decompress(payload, size)
    for chans in (0, 3):  # no channel; 16000 bytes are not three channels of whole samples
        bad = audiomix.HEADER.pack(chans, len(s.data)) + packed[audiomix.HEADER.size :]
        with pytest.raises(ValueError, match="layout"):
            audiomix.decompress(bad, len(s.data))


def test_short_recordings_share_a_cmpcm_block():
    """Spoken words a few thousand samples long: coded one after another as one channel they cost
    less than each alone, and the block decodes to them."""
    streams = [_audio_stream(_wav(_tone(seed, 3000 + 500 * seed))) for seed in range(4)]
    w = MemoryWriter()
    packer = solid.SolidPacker(w)
    members = []
    for s in streams:
        codec, payload = classic.best(s.data, geometry=s.geometry, kind="audio")
        members.append(member("audio", s.data, codec, payload))
        assert packer.offer(*members[-1], geometry=s.geometry)
    packer.flush()
    chunks = [m[0]["chunks"][0] for m in members]
    assert {c["codec"] for c in chunks} == {"cmpcm"} and all("part" in c for c in chunks)
    joined = b"".join(s.data for s in streams)
    assert classic.decompress("cmpcm", w.payloads[0], len(joined)) == joined
    assert len(w.payloads[0]) < sum(len(m[2][0].payload) for m in members)


def test_cli_codes_a_recording_with_cmpcm(cli, tiny, tmp_path):
    """End to end: a stereo WAV's samples go to cmpcm (the tiny model and cm lose to it), the
    archive says index version 6, and the file comes back byte for byte."""
    path = tmp_path / "tone.wav"
    path.write_bytes(_wav(_tone(5, 12000, channels=2)))
    arc = tmp_path / "a.lma"
    cli("add", "-a", arc, "--model", tiny, path)
    rows = json.loads(cli("list", arc, "--json")[0])
    assert "cmpcm" in rows[0]["codec"]
    with ArchiveReader(arc) as r:
        assert r.index.version == 6
    cli("extract", arc, "-C", tmp_path / "out")
    assert (tmp_path / "out" / path.relative_to(path.anchor)).read_bytes() == path.read_bytes()
