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
    a1 = np.empty(256 * 64 * 33, dtype=np.int32)  # (int32 halves their set-up; the arithmetic is int64)
    a2 = np.empty((1 << abits) * 33, dtype=np.int32)
    for j in range(33):
        v = SQUASH[min(max((j - 16) * 128, -2047), 2047) + 2048] * 16
        a1[j::33] = v
        a2[j::33] = v
    hh = np.zeros(NH, dtype=np.int64)
    base = np.zeros(NH, dtype=np.int64)
    idx = np.zeros(NH, dtype=np.int64)
    x = np.zeros(NI, dtype=np.int64)
    x[NI - 1] = 256
    c4 = c8 = word = pword = ppword = np.int64(0)
    line = pline = 0
    mlen = ptr = 0
    x1, x2, xc = np.int64(0), np.int64(0xFFFFFFFF), np.int64(0)
    pos = 0
    if not encode:
        for _ in range(4):
            xc = (xc << 8) | (np.int64(buf[pos]) if pos < buf.size else 255)
            pos += 1
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
            if mlen > 0 and data[ptr] == data[i - 1]:
                mlen += 1
                ptr += 1
            else:
                mlen = 0
            if i >= MINLEN:
                hm = _hash(c4, c8 & 0xFFFF) & ((1 << mbits) - 1)
                if mlen == 0 and mt[hm] > 0:
                    cand = mt[hm]
                    ln = 0
                    while ln < 32 and ln < cand and data[cand - 1 - ln] == data[i - 1 - ln]:
                        ln += 1
                    if ln >= MINLEN:
                        mlen, ptr = ln, cand
                mt[hm] = i
        mbucket = 0 if mlen == 0 else (mlen if mlen < 16 else min(16 + ((mlen - 16) >> 3), 31))
        expected = (np.int64(data[ptr]) | 256) if mlen > 0 else 0
        c0 = 1  # the bits of this byte so far, after a leading 1
        nib = 1
        for bit in range(8):
            if bit == 0 or bit == 4:
                # each context's 16-slot bucket for this nibble: slot 0 holds a check of the context,
                # two candidate buckets, the less used one is replaced when neither matches
                for k in range(NH):
                    hv = _hash(hh[k], c0)
                    check = np.uint32((hv >> 16) + 1)
                    b0 = hv & mask & ~15
                    b1 = b0 ^ 16
                    if th[k, b0] == check:
                        base[k] = b0
                    elif th[k, b1] == check:
                        base[k] = b1
                    else:
                        if (np.int64(th[k, b0 + 1]) & 1023) > (np.int64(th[k, b1 + 1]) & 1023):
                            b0 = b1
                        th[k, b0] = check
                        th[k, b0 + 1 : b0 + 16] = INIT
                        base[k] = b0
                nib = 1
            x[0] = STRETCH[np.int64(t0[c0]) >> 20]
            x[1] = STRETCH[np.int64(t1[(c1 << 8) | c0]) >> 20]
            known = 0
            for k in range(NH):
                idx[k] = base[k] + nib
                e = np.int64(th[k, idx[k]])
                if (e & 1023) == 0:  # a context never seen says nothing
                    x[2 + 2 * k] = 0
                    x[3 + 2 * k] = 0
                else:
                    x[2 + 2 * k] = STRETCH[e >> 20]
                    x[3 + 2 * k] = (STRETCH[e >> 20] * min(e & 1023, 15)) >> 4
                    if 1 <= k <= 4:
                        known += 1
            mctx = 0
            if expected > 0 and (expected >> (8 - bit)) == c0:
                mctx = mbucket * 2 + ((expected >> (7 - bit)) & 1)
                x[NI - 2] = STRETCH[np.int64(tm[mctx]) >> 20]
            else:
                x[NI - 2] = 0
            # three mixers (chosen by the partial byte and match length, by how many of orders 3-6
            # have been seen and the bit position, by the last byte), averaged in the stretched domain
            s1 = c0 + 256 * (0 if mctx == 0 else (1 if mbucket < 8 else (2 if mbucket < 16 else 3)))
            s2 = known * 8 + bit
            d1 = np.int64(0)
            d2 = np.int64(0)
            d3 = np.int64(0)
            for k in range(NI):
                d1 += w1[s1, k] * x[k]
                d2 += w2[s2, k] * x[k]
                d3 += w3[c1, k] * x[k]
            d1 = min(max(d1 >> 16, -2047), 2047)
            d2 = min(max(d2 >> 16, -2047), 2047)
            d3 = min(max(d3 >> 16, -2047), 2047)
            pm = SQUASH[((d1 + d2 + d3) * 21846 >> 16) + 2048]
            # adaptive probability maps on the partial byte with the match state, and with the last two bytes
            s = STRETCH[pm] + 2048
            lo, wt = s >> 7, s & 127
            i1 = (c0 + 256 * min(mctx, 63)) * 33 + lo
            i2 = ((((c4 & 0xFFFF) * 0x9E3779B1 >> 16) + c0 * 0x2F0F) & ((1 << abits) - 1)) * 33 + lo
            p1 = (a1[i1] * (128 - wt) + a1[i1 + 1] * wt) >> 11
            p2 = (a2[i2] * (128 - wt) + a2[i2 + 1] * wt) >> 11
            p = min(max((pm + p1 + 2 * p2 + 2) >> 2, 1), 4095)  # P(bit = 1), 12 bits
            # binary arithmetic coding
            xmid = x1 + ((x2 - x1) >> 12) * p
            if encode:
                y = (np.int64(data[i]) >> (7 - bit)) & 1
            else:
                y = 1 if xc <= xmid else 0
            if y:
                x2 = xmid
            else:
                x1 = xmid + 1
            while ((x1 ^ x2) & 0xFF000000) == 0:
                if encode:
                    buf[pos] = x2 >> 24
                else:
                    xc = ((xc << 8) & 0xFFFFFFFF) | (np.int64(buf[pos]) if pos < buf.size else 255)
                pos += 1
                x1 = (x1 << 8) & 0xFFFFFFFF
                x2 = ((x2 << 8) & 0xFFFFFFFF) | 255
            # learn
            e1 = ((y << 12) - SQUASH[d1 + 2048]) * MIX_LR
            e2 = ((y << 12) - SQUASH[d2 + 2048]) * MIX_LR
            e3 = ((y << 12) - SQUASH[d3 + 2048]) * MIX_LR
            for k in range(NI):
                w1[s1, k] += (x[k] * e1) >> 13
                w2[s2, k] += (x[k] * e2) >> 13
                w3[c1, k] += (x[k] * e3) >> 13
            _update(t0, c0, y, LIMIT)
            _update(t1, (c1 << 8) | c0, y, LIMIT)
            for k in range(NH):
                _update(th[k], idx[k], y, LIMIT)
            if mctx:
                _update(tm, mctx, y, 1023)
            u1 = i1 + (wt >> 6)
            a1[u1] += ((y << 16) - a1[u1]) >> APM_RATE
            u2 = i2 + (wt >> 6)
            a2[u2] += ((y << 16) - a2[u2]) >> APM_RATE
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
    if encode:  # all of x1: the decoder ends with exactly these bytes in hand, a check of the payload
        for _ in range(4):
            buf[pos] = x1 >> 24
            x1 = (x1 << 8) & 0xFFFFFFFF
            pos += 1
    elif xc != x1:
        return -1
    return pos


def compress(data: bytes) -> bytes:
    if len(data) > MAX_SIZE:
        raise ValueError(f"cm codes at most {MAX_SIZE} bytes at a time")
    src = np.frombuffer(data, dtype=np.uint8).copy()
    # a bit costs at most 12 bits (p >= 1/4096): 12 bytes per byte bounds the output
    out = np.empty(12 * len(data) + 8, dtype=np.uint8)
    return out[: _code(src, len(data), out, True)].tobytes()


def decompress(payload: bytes, size: int) -> bytes:
    """Exactly `size` bytes, or ValueError when the decoder does not end on the encoder's final
    state with every payload byte read (a damaged payload, or a size other than the one coded; the
    chunk's CRC and the entry's SHA-256 are the guards that cannot miss)."""
    if not 0 <= size <= MAX_SIZE:
        raise ValueError(f"cm chunk claims {size} bytes")
    out = np.zeros(size, dtype=np.uint8)
    if _code(out, size, np.frombuffer(payload, dtype=np.uint8).copy(), False) != len(payload):
        raise ValueError("cm chunk is damaged, truncated or of another size")
    return out.tobytes()
