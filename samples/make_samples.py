"""Regenerates the demo files in this folder (all made by this script, so license-clean: Apache-2.0).

    python samples/make_samples.py
"""

import json
import math
import random
import struct
import wave
from pathlib import Path

from PIL import Image

HERE = Path(__file__).parent


def image() -> None:
    """A 96x64 RGB picture with smooth gradients, edges and a little noise, like a small photo."""
    rnd = random.Random(7)
    img = Image.new("RGB", (96, 64))
    px = img.load()
    for y in range(64):
        for x in range(96):
            r = int(128 + 100 * math.sin(x / 13.0) * math.cos(y / 11.0)) + rnd.randint(-3, 3)
            g = int(40 + 2 * y + (60 if (x - 60) ** 2 + (y - 30) ** 2 < 300 else 0)) + rnd.randint(-3, 3)
            b = int(200 - 1.5 * x) + rnd.randint(-3, 3)
            px[x, y] = tuple(max(0, min(255, v)) for v in (r, g, b))
    img.save(HERE / "gradient.png")


def audio() -> None:
    """Half a second of a decaying two-note chord with noise, 16 kHz mono 16-bit PCM."""
    rnd = random.Random(11)
    rate, n = 16000, 8000
    frames = b"".join(
        struct.pack("<h", int(9000 * math.exp(-3 * i / n) * (math.sin(2 * math.pi * 440 * i / rate)
                                                              + 0.5 * math.sin(2 * math.pi * 660 * i / rate))
                          + rnd.gauss(0, 200)))
        for i in range(n)
    )
    with wave.open(str(HERE / "chord.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)


def binary() -> None:
    """Structured binary records (a little table of floats and counters)."""
    rnd = random.Random(3)
    rows = [struct.pack("<IdH", i, math.sin(i / 10) * 1000, rnd.randint(0, 50)) for i in range(300)]
    (HERE / "records.bin").write_bytes(b"".join(rows))


def table() -> None:
    """A JSON list of weather readings: text with repetitive structure."""
    rnd = random.Random(5)
    cities = ["Lisbon", "Oslo", "Quito", "Hanoi", "Accra", "Perth", "Lima", "Turin"]
    rows = [{"id": i, "city": rnd.choice(cities), "temp_c": round(rnd.gauss(15, 8), 1), "ok": rnd.random() > 0.1,
             "tags": rnd.sample(["rain", "wind", "sun", "fog", "snow"], 2)} for i in range(60)]
    (HERE / "weather.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    table()
    image()
    audio()
    binary()
