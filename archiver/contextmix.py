"""The `cm` codec: bitwise context mixing (in the manner of lpaq), in integers only.

Why it exists: on text the default model (~3.9 bits/byte on dev text) loses to xz; it is sized
to code image and audio bytes at 10 KB/s, and has little room for language. Text is full of repeats
(logs, code, reference text) that an adaptive model learns within the file itself. This codec
predicts each bit of a byte stream from order-0 to order-6 and order-8 contexts, the current word
with the two words before it, the byte above in the previous line, and the longest earlier match;
three learned logistic mixers combine those predictions and two adaptive probability maps refine
them. On the 12 dev text files it measured 0.74 x xz -9e at about 0.5 MB/s both ways
(docs/benchmarks.md). It competes with the other fallback codecs per block, as xz and brotli do.

The LM is not one of its inputs: a stream-long model mixed with the LM would make decoding one
sequence, byte by byte, where LM chunks now decode hundreds at a time in lockstep.

Every step is integer arithmetic (lookup tables, shifts, int64 products that cannot overflow), so
the bits are the same on every machine, as the archive format requires. The model and its constants
are part of the format: changing any of them changes the bits, which `tests/test_contextmix.py`
pins with a golden digest.

Why not constriction: each bit's probability depends on the bits decoded before it, so decoding is
one long sequential loop that has to run compiled; constriction cannot be called from numba, and a
Python call per bit would be ~100x slower. The binary arithmetic coder is lpaq's carry-less 32-bit
coder (12-bit probabilities), about twenty lines inside the loop below; it ends with
its 4-byte state, which the decoder checks.
"""

from __future__ import annotations

import struct

import numba
import numpy as np

MAX_SIZE = 1 << 26  # a chunk larger than this is not one we wrote (tables are sized from the size)

# squash(d) = 4096 / (1 + e^(-d/256)) by interpolation in lpaq's 33-point table; stretch is its inverse
_SQUASH_POINTS = (1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047, 2549, 2994, 3348,
                  3607, 3785, 3901, 3975, 4024, 4050, 4068, 4079, 4085, 4089, 4092, 4093, 4094)


def _squash(d: int) -> int:
    if d > 2047:
        return 4095
    if d < -2047:
        return 1
    w, i = d & 127, (d >> 7) + 16
    return max(1, (_SQUASH_POINTS[i] * (128 - w) + _SQUASH_POINTS[i + 1] * w + 64) >> 7)


SQUASH = np.array([_squash(d) for d in range(-2048, 2048)], dtype=np.int64)  # index d + 2048


def _stretch() -> np.ndarray:
    st = np.full(4096, 2047, dtype=np.int64)
    lo = 0
    for d in range(-2047, 2048):
        v = _squash(d)
        st[lo : v + 1] = d
        lo = max(lo, v + 1)
    return st


STRETCH = _stretch()  # index p (12 bits)
RATE = np.array([(2 << 16) // (2 * n + 3) for n in range(1024)], dtype=np.int64)  # 1/(n + 1.5) in Q16
LIMIT = 60  # a counter's adaptation rate stops falling after this many observations
NH = 10  # hashed contexts: orders 2-6 and 8, word (+ last byte), word bigram, word skip-gram, column
NI = 2 + 2 * NH + 2  # mixer inputs: orders 0 and 1, two per hashed context, the match, a bias
MINLEN = 6  # a match is looked up after this many bytes agree
MIX_LR = 4  # mixer learning rate
APM_RATE = 6  # adaptive probability maps move 1/64 of the way per bit
INIT = np.uint32(1 << 31)  # a fresh counter: p = 1/2, seen 0 times


@numba.njit(cache=True)
def table_bits(size: int) -> int:  # pragma: no cover
    """log2 of each hashed context's table: about two slots per input byte, 4K to 4M slots (16 MB)."""
    b = 12
    while b < 22 and (1 << b) <= 2 * size:
        b += 1
    return b


@numba.njit(inline="always")
def _hash(a: int, b: int) -> int:  # pragma: no cover
    x = ((a & 0xFFFFFFFF) * 0x2F0F3D5B + (b & 0xFFFFFFFF) * 0x6F4F2A45 + 0x1234567) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    return x ^ (x >> 13)


@numba.njit(inline="always")
def _update(t: np.ndarray, i: int, y: int, limit: int) -> None:  # pragma: no cover
    """A counter is a 22-bit probability and a 10-bit count; it moves 1/(count + 1.5) towards y."""
    e = np.int64(t[i])
    n = e & 1023
    p = e >> 10
    p += (((y << 22) - p) * RATE[n]) >> 16
    t[i] = np.uint32((p << 10) | min(n + 1, limit))


# The helpers below are shared with `archiver.imagemix` (cm2d) and `archiver.audiomix` (cmpcm), which
# inline them into their own compiled loops. numba's on-disk cache keys a function on its own file
# only: a change here would not recompile those until their files change too. (Any change here changes
# every such codec's bits, so it is a new codec name and index version anyway; the golden digests
# catch it.)


@numba.njit(inline="always")
def _bucket(t: np.ndarray, hv: int, mask: int) -> int:  # pragma: no cover
    """The 16-slot bucket of a hashed context for one nibble: slot 0 holds a check of the context;
    of two candidate buckets the less used one is replaced when neither matches."""
    check = np.uint32((hv >> 16) + 1)
    b0 = hv & mask & ~15
    b1 = b0 ^ 16
    if t[b0] == check:
        return b0
    if t[b1] == check:
        return b1
    if (np.int64(t[b0 + 1]) & 1023) > (np.int64(t[b1 + 1]) & 1023):
        b0 = b1
    t[b0] = check
    t[b0 + 1 : b0 + 16] = INIT
    return b0


@numba.njit(inline="always")
def _coder(buf: np.ndarray, encode: bool) -> np.ndarray:  # pragma: no cover
    """lpaq's carry-less binary arithmetic coder: [low, high, code (decoder only), position, encoding]."""
    ac = np.array([0, 0xFFFFFFFF, 0, 0, 1 if encode else 0], dtype=np.int64)
    if not encode:
        for _ in range(4):
            ac[2] = (ac[2] << 8) | (np.int64(buf[ac[3]]) if ac[3] < buf.size else 255)
            ac[3] += 1
    return ac


@numba.njit(inline="always")
def _code_bit(ac: np.ndarray, buf: np.ndarray, p: int, y: int) -> int:  # pragma: no cover
    """Code one bit with P(1) = p / 4096: the encoder passes y, the decoder -1; returns the bit."""
    x1, x2 = ac[0], ac[1]
    xmid = x1 + ((x2 - x1) >> 12) * p
    if ac[4] == 0:
        y = 1 if ac[2] <= xmid else 0
    if y:
        x2 = xmid
    else:
        x1 = xmid + 1
    while ((x1 ^ x2) & 0xFF000000) == 0:
        if ac[4]:
            buf[ac[3]] = x2 >> 24
        else:
            ac[2] = ((ac[2] << 8) & 0xFFFFFFFF) | (np.int64(buf[ac[3]]) if ac[3] < buf.size else 255)
        ac[3] += 1
        x1 = (x1 << 8) & 0xFFFFFFFF
        x2 = ((x2 << 8) & 0xFFFFFFFF) | 255
    ac[0], ac[1] = x1, x2
    return y


@numba.njit(inline="always")
def _finish(ac: np.ndarray, buf: np.ndarray, encode: bool) -> int:  # pragma: no cover
    """The encoder flushes all of low: the decoder ends with exactly these bytes in hand, a check
    of the payload. Returns the payload's length, or -1 when the decoder's check fails."""
    if encode:
        x1 = ac[0]
        for _ in range(4):
            buf[ac[3]] = x1 >> 24
            x1 = (x1 << 8) & 0xFFFFFFFF
            ac[3] += 1
    elif ac[2] != ac[0]:
        return -1
    return ac[3]


@numba.njit(inline="always")
def _apm_table(n: int) -> np.ndarray:  # pragma: no cover
    """n adaptive probability maps of 33 interpolation points each, starting as the identity.
    (int32 halves their set-up; the arithmetic is int64.)"""
    a = np.empty(n * 33, dtype=np.int32)
    for j in range(33):
        a[j::33] = SQUASH[min(max((j - 16) * 128, -2047), 2047) + 2048] * 16
    return a


@numba.njit(inline="always")
def _apm(a: np.ndarray, i: int, wt: int) -> int:  # pragma: no cover
    """The map's 12-bit probability between points i and i + 1, wt/128 of the way."""
    return (a[i] * (128 - wt) + a[i + 1] * wt) >> 11


@numba.njit(inline="always")
def _apm_learn(a: np.ndarray, i: int, wt: int, y: int) -> None:  # pragma: no cover
    u = i + (wt >> 6)
    a[u] += ((y << 16) - a[u]) >> APM_RATE


@numba.njit(inline="always")
def _mix(w: np.ndarray, s: int, x: np.ndarray) -> int:  # pragma: no cover
    """Mixer weight set s applied to the inputs: a stretched probability, clipped to +-2047."""
    d = np.int64(0)
    for k in range(x.size):
        d += w[s, k] * x[k]
    return min(max(d >> 16, -2047), 2047)


@numba.njit(inline="always")
def _mix_learn(w: np.ndarray, s: int, x: np.ndarray, d: int, y: int, lr: int) -> None:  # pragma: no cover
    e = ((y << 12) - SQUASH[d + 2048]) * lr
    for k in range(x.size):
        w[s, k] += (x[k] * e) >> 13


@numba.njit(inline="always")
def _counter_inputs(th: np.ndarray, base: np.ndarray, idx: np.ndarray, nib: int,
                    x: np.ndarray) -> None:  # pragma: no cover
    """Two mixer inputs per hashed context, from x[2] on: its counter's stretched probability, and
    that scaled by its confidence (count up to 15); a context never seen says nothing."""
    for k in range(th.shape[0]):
        idx[k] = base[k] + nib
        e = np.int64(th[k, idx[k]])
        if (e & 1023) == 0:
            x[2 + 2 * k] = 0
            x[3 + 2 * k] = 0
        else:
            x[2 + 2 * k] = STRETCH[e >> 20]
            x[3 + 2 * k] = (STRETCH[e >> 20] * min(e & 1023, 15)) >> 4


@numba.njit(inline="always")
def _match(data: np.ndarray, i: int, mlen: int, ptr: int, mt: np.ndarray, hm: int,
           minlen: int) -> tuple[int, int]:  # pragma: no cover
    """The match model after byte i - 1: extend the current match (length, pointer to the byte it
    predicts next), or look up where the context hashed to hm was last seen and verify the last
    `minlen` bytes agree; then remember position i for hm."""
    if mlen > 0 and data[ptr] == data[i - 1]:
        mlen += 1
        ptr += 1
    else:
        mlen = 0
    if i >= minlen:
        if mlen == 0 and mt[hm] > 0:
            cand = mt[hm]
            ln = 0
            while ln < 32 and ln < cand and data[cand - 1 - ln] == data[i - 1 - ln]:
                ln += 1
            if ln >= minlen:
                mlen, ptr = ln, cand
        mt[hm] = i
    return mlen, ptr


@numba.njit(inline="always")
def _match_state(data: np.ndarray, mlen: int, ptr: int) -> tuple[int, int]:  # pragma: no cover
    """(length bucket 0-31, the predicted byte with a leading 1, or 0 without a match)."""
    if mlen == 0:
        return 0, 0
    return (mlen if mlen < 16 else min(16 + ((mlen - 16) >> 3), 31)), np.int64(data[ptr]) | 256


@numba.njit(inline="always")
def _match_input(tm: np.ndarray, expected: int, mbucket: int, bit: int, c0: int,
                 x: np.ndarray) -> int:  # pragma: no cover
    """The match model's mixer input (x[-2]) while the predicted byte agrees with the bits so far;
    returns its counter's index (0: no prediction for this bit)."""
    if expected > 0 and (expected >> (8 - bit)) == c0:
        mctx = mbucket * 2 + ((expected >> (7 - bit)) & 1)
        x[x.size - 2] = STRETCH[np.int64(tm[mctx]) >> 20]
        return mctx
    x[x.size - 2] = 0
    return 0


@numba.njit(inline="always")
def _learn_counters(t0: np.ndarray, i0: int, t1: np.ndarray, i1: int, th: np.ndarray, idx: np.ndarray,
                    tm: np.ndarray, mctx: int, y: int, limit: int) -> None:  # pragma: no cover
    """Move every counter that predicted this bit towards it: the two direct tables' (t0[i0],
    t1[i1]), every hashed context's, and the match model's."""
    _update(t0, i0, y, limit)
    _update(t1, i1, y, limit)
    for k in range(th.shape[0]):
        _update(th[k], idx[k], y, limit)
    if mctx:
        _update(tm, mctx, y, 1023)


@numba.njit(cache=True, nogil=True)
def _code(data: np.ndarray, n: int, buf: np.ndarray, encode: bool) -> int:  # pragma: no cover
    """Encode data[:n] into buf and return the payload's length, or decode payload buf into data[:n].
    One function for both directions, so the model cannot differ between them."""
    tbits = table_bits(n)
    mask = (1 << tbits) - 1
    mbits = tbits - 2
    t0 = np.full(256, INIT, dtype=np.uint32)
    t1 = np.full(65536, INIT, dtype=np.uint32)
    th = np.full((NH, 1 << tbits), INIT, dtype=np.uint32)
    tm = np.full(64, INIT, dtype=np.uint32)
    mt = np.zeros(1 << mbits, dtype=np.int64)
    w1 = np.full((4 * 256, NI), (1 << 16) // 4, dtype=np.int64)
    w2 = np.full((5 * 8, NI), (1 << 16) // 4, dtype=np.int64)
    w3 = np.full((256, NI), (1 << 16) // 4, dtype=np.int64)
    abits = min(16, tbits)
    a1 = _apm_table(256 * 64)
    a2 = _apm_table(1 << abits)
    hh = np.zeros(NH, dtype=np.int64)
    base = np.zeros(NH, dtype=np.int64)
    idx = np.zeros(NH, dtype=np.int64)
    x = np.zeros(NI, dtype=np.int64)
    x[NI - 1] = 256
    c4 = c8 = word = pword = ppword = np.int64(0)
    line = pline = 0
    mlen = ptr = 0
    ac = _coder(buf, encode)
    for i in range(n):
        c1 = c4 & 255
        hh[0] = _hash(c4 & 0xFFFF, 2)
        hh[1] = _hash(c4 & 0xFFFFFF, 3)
        hh[2] = _hash(c4, 4)
        hh[3] = _hash(c4 ^ ((c8 & 0xFF) * 0x3C6EF372), 5)
        hh[4] = _hash(c4 ^ ((c8 & 0xFFFF) * 0x3C6EF372), 6)
        hh[5] = _hash(word ^ (c1 * 0x5BD1E995), 7)
        hh[6] = _hash(word ^ (pword * 0x2127599B), 8)
        hh[7] = _hash(word ^ (ppword * 0x2127599B), 10)
        hh[8] = _hash(c4 ^ (c8 * 0x3C6EF372), 9)
        col = i - line
        above = np.int64(data[pline + col]) if pline + col < line else 0
        hh[9] = _hash(above | (c1 << 8) | (min(col, 255) << 16), 11)
        # the match model: extend the current match, or look up where the last MINLEN bytes were seen
        if i > 0:
            mlen, ptr = _match(data, i, mlen, ptr, mt, _hash(c4, c8 & 0xFFFF) & ((1 << mbits) - 1), MINLEN)
        mbucket, expected = _match_state(data, mlen, ptr)
        c0 = 1  # the bits of this byte so far, after a leading 1
        nib = 1
        for bit in range(8):
            if bit == 0 or bit == 4:
                # each context's 16-slot bucket for this nibble: slot 0 holds a check of the context,
                # two candidate buckets, the less used one is replaced when neither matches
                for k in range(NH):
                    base[k] = _bucket(th[k], _hash(hh[k], c0), mask)
                nib = 1
            x[0] = STRETCH[np.int64(t0[c0]) >> 20]
            x[1] = STRETCH[np.int64(t1[(c1 << 8) | c0]) >> 20]
            _counter_inputs(th, base, idx, nib, x)
            known = 0
            for k in range(1, 5):
                if (th[k, idx[k]] & 1023) != 0:
                    known += 1
            mctx = _match_input(tm, expected, mbucket, bit, c0, x)
            # three mixers (chosen by the partial byte and match length, by how many of orders 3-6
            # have been seen and the bit position, by the last byte), averaged in the stretched domain
            s1 = c0 + 256 * (0 if mctx == 0 else (1 if mbucket < 8 else (2 if mbucket < 16 else 3)))
            s2 = known * 8 + bit
            d1, d2, d3 = _mix(w1, s1, x), _mix(w2, s2, x), _mix(w3, c1, x)
            pm = SQUASH[((d1 + d2 + d3) * 21846 >> 16) + 2048]
            # adaptive probability maps on the partial byte with the match state, and with the last two bytes
            s = STRETCH[pm] + 2048
            lo, wt = s >> 7, s & 127
            i1 = (c0 + 256 * min(mctx, 63)) * 33 + lo
            i2 = ((((c4 & 0xFFFF) * 0x9E3779B1 >> 16) + c0 * 0x2F0F) & ((1 << abits) - 1)) * 33 + lo
            p1, p2 = _apm(a1, i1, wt), _apm(a2, i2, wt)
            p = min(max((pm + p1 + 2 * p2 + 2) >> 2, 1), 4095)  # P(bit = 1), 12 bits
            y = _code_bit(ac, buf, p, (np.int64(data[i]) >> (7 - bit)) & 1 if encode else -1)
            # learn
            _mix_learn(w1, s1, x, d1, y, MIX_LR)
            _mix_learn(w2, s2, x, d2, y, MIX_LR)
            _mix_learn(w3, c1, x, d3, y, MIX_LR)
            _learn_counters(t0, c0, t1, (c1 << 8) | c0, th, idx, tm, mctx, y, LIMIT)
            _apm_learn(a1, i1, wt, y)
            _apm_learn(a2, i2, wt, y)
            c0 = (c0 << 1) | y
            nib = (nib << 1) | y
        byte = c0 & 255
        if not encode:
            data[i] = byte
        if byte == 10:
            pline = line
            line = i + 1
        c8 = ((c8 << 8) | (c4 >> 24)) & 0xFFFFFFFF
        c4 = ((c4 << 8) | byte) & 0xFFFFFFFF
        if (65 <= byte <= 90) or (97 <= byte <= 122):
            word = ((word + (byte | 32)) * 0x3D4D51CB) & 0xFFFFFFFF
        else:
            if word != 0:
                ppword = pword
                pword = word
            word = 0
    return _finish(ac, buf, encode)


def run_encoder(code, name: str, data: bytes, *args) -> bytes:
    """The payload a cm-family loop (`code(data, n, buf, encode, *args)`, one function for both
    directions: this module's, cm2d's, cmpcm's) makes of data. Its buffer holds the coder's worst
    case: a bit costs at most 12 bits (p >= 1/4096), so 12 bytes per byte, plus the 4-byte final state."""
    if len(data) > MAX_SIZE:
        raise ValueError(f"{name} codes at most {MAX_SIZE} bytes at a time")
    src = np.frombuffer(data, dtype=np.uint8).copy()
    out = np.empty(12 * len(data) + 8, dtype=np.uint8)
    return out[: code(src, len(data), out, True, *args)].tobytes()


def run_decoder(code, name: str, body: bytes, size: int, *args) -> bytes:
    """Exactly `size` bytes decoded from body by a cm-family loop, or ValueError when it does not
    end on the encoder's final state with every byte of body read (a damaged payload, or a size
    other than the one coded; the chunk's CRC and the entry's SHA-256 are the guards that cannot miss)."""
    out = np.zeros(size, dtype=np.uint8)
    if code(out, size, np.frombuffer(body, dtype=np.uint8).copy(), False, *args) != len(body):
        raise ValueError(f"{name} chunk is damaged, truncated or of another size")
    return out.tobytes()


def read_header(name: str, header: struct.Struct, payload: bytes, size: int) -> tuple[int, ...]:
    """The fields of a structured codec's payload header (cm2d's, cmpcm's), whose last field, the
    stream's length, must be the chunk record's size; the fields before it are returned."""
    if not 0 <= size <= MAX_SIZE or len(payload) < header.size:
        raise ValueError(f"{name} chunk of {len(payload)} bytes claiming {size} is not one we wrote")
    *fields, length = header.unpack_from(payload)
    if length != size:
        raise ValueError(f"{name} chunk holds {length} bytes, its record says {size}")
    return tuple(fields)


def compress(data: bytes) -> bytes:
    return run_encoder(_code, "cm", data)


def decompress(payload: bytes, size: int) -> bytes:
    """Exactly `size` bytes, or ValueError (see run_decoder)."""
    if not 0 <= size <= MAX_SIZE:
        raise ValueError(f"cm chunk claims {size} bytes")
    return run_decoder(_code, "cm", payload, size)
