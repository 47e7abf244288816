"""The `cm2d` codec: context mixing for image streams, which knows the image's rows and pixels.

Why it exists: the image stream is MED prediction residuals in raster order (`plugins/pixels.py`).
The LM sees it one 1023-byte chunk at a time with no notion of rows, and `cm` reads it as text
(its "byte above" follows newlines). Given the row length and the bytes per pixel, a model can
rebuild each pixel value from the residuals as it goes, and predict the next residual from the
pixels left, above, above-left and above-right (exact and coarsened), from where other predictors
(W + NE - N, the mean of W and NE, the previous channel's step) put the pixel relative to MED's
guess, from the residuals around it (their size says how busy the neighbourhood is), from a
texture pattern and from the other channels of the same pixel: the contexts of lossless image
coders such as CALIC and paq8's image models. Four mixers (by channel, busyness, flatness and
texture) and two probability maps combine them.

Measured (`docs/benchmarks.md`): on the unseen sprites and icons its streams are 0.81 of cm's and
lmarc went from 0.963 to 0.912 x optipng; on 200-row crops of three dev Kodak photos it is 4%
smaller than the default LM (at about 200 KB/s against the LM's 10-15), and on the dev GIMP icons
about 5% smaller in total (the LM still wins on most single 48x48 icons).

It shares `cm`'s machinery (`archiver.contextmix`: counters, hashed nibble buckets, mixers,
adaptive probability maps, the binary arithmetic coder), all in integers, so its bits are the same
on every machine; `tests/test_imagemix.py` pins them with a golden digest. The payload starts with
the geometry (row bytes as a little-endian u32, bytes per pixel as a u8), so any byte stream with
any geometry decodes: a wrong geometry costs compression, never correctness. The stream's length
(u32) follows, so a chunk record that claims another size is refused outright (cm's final-state
check catches most such claims, not all).
"""

from __future__ import annotations

import struct

import numba
import numpy as np

from archiver.contextmix import (
    INIT,
    MAX_SIZE,
    SQUASH,
    STRETCH,
    _apm,
    _apm_learn,
    _apm_table,
    _bucket,
    _code_bit,
    _coder,
    _counter_inputs,
    _finish,
    _hash,
    _learn_counters,
    _match,
    _match_input,
    _match_state,
    _mix,
    _mix_learn,
    read_header,
    run_decoder,
    run_encoder,
    table_bits,
)

HEADER = struct.Struct("<IBI")  # row bytes, bytes per pixel, stream length
NH = 15  # hashed contexts
NI = 2 + 2 * NH + 2  # mixer inputs: two direct tables, two per hashed context, the match, a bias
MIX_LR = 4  # mixer learning rate, after a faster start (small images are over quickly)
LIMIT = 255  # counters settle further than cm's (60): image statistics drift less than text's
MINLEN = 8  # a match (a repeated run of residuals: sprites, tiles) is looked up after this many bytes


@numba.njit(inline="always")
def _med(a: int, b: int, c: int) -> int:  # pragma: no cover
    lo, hi = min(a, b), max(a, b)
    return lo if c >= hi else (hi if c <= lo else a + b - c)


@numba.njit(inline="always")
def _signed(r: int) -> int:  # pragma: no cover
    return r - 256 if r > 127 else r


@numba.njit(inline="always")
def _offset(d: int, r: int) -> int:  # pragma: no cover
    """d clipped to [-r, r], shifted to [0, 2r]."""
    return min(max(d, -r), r) + r


@numba.njit(inline="always")
def _level(e: int) -> int:  # pragma: no cover
    """How busy a neighbourhood is (a sum of residual magnitudes) in 8 steps."""
    if e == 0:
        return 0
    if e < 3:
        return 1
    if e < 6:
        return 2
    if e < 12:
        return 3
    if e < 24:
        return 4
    if e < 48:
        return 5
    if e < 96:
        return 6
    return 7


@numba.njit(cache=True, nogil=True)
def _code(data: np.ndarray, n: int, buf: np.ndarray, encode: bool, stride: int, chans: int) -> int:  # pragma: no cover
    """Encode data[:n] into buf, or decode buf into data[:n]; as contextmix._code, one function for
    both directions. `stride` bytes make a row, `chans` bytes a pixel."""
    tbits = table_bits(n)
    mask = (1 << tbits) - 1
    mbits = tbits - 2
    width = stride // chans
    px = np.zeros(n, dtype=np.int64)  # the pixel values rebuilt from the residuals
    t0 = np.full(8 * 256, INIT, dtype=np.uint32)
    t1 = np.full(65536, INIT, dtype=np.uint32)
    th = np.full((NH, 1 << tbits), INIT, dtype=np.uint32)
    tm = np.full(64, INIT, dtype=np.uint32)
    mt = np.zeros(1 << mbits, dtype=np.int64)
    w1 = np.full((8 * 256, NI), (1 << 16) // 4, dtype=np.int64)
    w2 = np.full((8 * 8 * 8, NI), (1 << 16) // 4, dtype=np.int64)
    w3 = np.full((16 * 8, NI), (1 << 16) // 4, dtype=np.int64)
    w4 = np.full((64 * 8, NI), (1 << 16) // 4, dtype=np.int64)
    abits = min(16, tbits)
    a1 = _apm_table(256 * 64)
    a2 = _apm_table(1 << abits)
    hh = np.zeros(NH, dtype=np.int64)
    base = np.zeros(NH, dtype=np.int64)
    idx = np.zeros(NH, dtype=np.int64)
    x = np.zeros(NI, dtype=np.int64)
    x[NI - 1] = 256
    c4 = c8 = np.int64(0)
    mlen = ptr = 0
    ac = _coder(buf, encode)
    for i in range(n):
        col = i % stride
        xx, ch = col // chans, col % chans
        hw, hn, hne = xx > 0, i >= stride, i >= stride and xx + 1 < width
        w = px[i - chans] if hw else 0
        nn = px[i - stride] if hn else 0
        nw = px[i - stride - chans] if hn and hw else 0
        ne = px[i - stride + chans] if hne else 0
        ww = px[i - 2 * chans] if xx > 1 else 0
        n2 = px[i - 2 * stride] if i >= 2 * stride else 0
        pred = _med(w, nn, nw)
        rw = _signed(data[i - chans]) if hw else 0
        rn = _signed(data[i - stride]) if hn else 0
        rnw = _signed(data[i - stride - chans]) if hn and hw else 0
        rne = _signed(data[i - stride + chans]) if hne else 0
        lvl = _level(abs(rw) + abs(rn) + abs(rnw) + abs(rne))
        r1 = _signed(data[i - 1]) if ch > 0 else 0
        r2 = _signed(data[i - 2]) if ch > 1 else 0
        # the previous channel's step from its left neighbour, which this channel often repeats
        g = (px[i - 1] - px[i - 1 - chans]) if ch > 0 and hw else 0
        flat = (1 if w == nn else 0) + (2 if nn == nw else 0) + (4 if nn == ne else 0) + (8 if w == ww else 0)
        cc = ch + 1
        hh[0] = _hash(w | (nn << 8), cc)
        hh[1] = _hash(w | (nn << 8) | (nw << 16) | (ne << 24), cc + 16)
        hh[2] = _hash(nn | (ne << 8) | (n2 << 16), cc + 32)
        hh[3] = _hash((w >> 2) | ((nn >> 2) << 8) | ((nw >> 2) << 16) | ((ne >> 2) << 24), cc + 48)
        hh[4] = _hash(pred | (lvl << 8), cc + 64)
        hh[5] = _hash((rw & 255) | ((rn & 255) << 8), cc + 80)
        hh[6] = _hash((r1 & 255) | ((r2 & 255) << 8) | (lvl << 16), cc + 96)
        hh[7] = _hash(min(max(w + g, 0), 255) | (min(max(nn + g, 0), 255) << 8), cc + 112)
        hh[8] = _hash(c4 & 0xFFFF, cc + 128)
        hh[9] = _hash((w >> 3) | ((nn >> 3) << 5) | ((nw >> 3) << 10) | ((ne >> 3) << 15), cc + 144)
        hh[10] = _hash(_hash(w | (nn << 8) | (nw << 16) | (ne << 24), ww | (n2 << 8)), cc + 160)
        hh[11] = _hash(min(max(w + nn - nw, 0), 255) | (flat << 8), cc + 176)
        tex = ((w > pred) + 2 * (nn > pred) + 4 * (nw > pred) + 8 * (ne > pred) + 16 * (ww > pred)
               + 32 * (n2 > pred))
        hh[12] = _hash(tex | (lvl << 6) | (min(abs(g), 31) << 9), cc + 192)
        # where other predictors put this pixel, relative to MED's guess
        hh[13] = _hash(_offset(w + ne - nn - pred, 32) | (_offset(((w + ne) >> 1) - pred, 32) << 8), cc + 208)
        hh[14] = _hash(_offset(w + g - pred, 64) | ((r1 & 255) << 8), cc + 224)
        if i > 0:
            mlen, ptr = _match(data, i, mlen, ptr, mt, _hash(c4, c8) & ((1 << mbits) - 1), MINLEN)
        mbucket, expected = _match_state(data, mlen, ptr)
        chs = min(ch, 7)
        lr = MIX_LR + (16 << 14) // (i + 16384)
        c0 = 1
        nib = 1
        for bit in range(8):
            if bit == 0 or bit == 4:
                for k in range(NH):
                    base[k] = _bucket(th[k], _hash(hh[k], c0), mask)
                nib = 1
            x[0] = STRETCH[np.int64(t0[chs * 256 + c0]) >> 20]
            x[1] = STRETCH[np.int64(t1[(pred << 8) | c0]) >> 20]
            _counter_inputs(th, base, idx, nib, x)
            mctx = _match_input(tm, expected, mbucket, bit, c0, x)
            # three mixers: by channel and partial byte; by busyness, channel and bit; by flatness and bit
            s1 = chs * 256 + c0
            s2 = (lvl * 8 + chs) * 8 + bit
            s3 = flat * 8 + bit
            s4 = tex * 8 + bit
            d1, d2, d3, d4 = _mix(w1, s1, x), _mix(w2, s2, x), _mix(w3, s3, x), _mix(w4, s4, x)
            pm = SQUASH[((d1 + d2 + d3 + d4) >> 2) + 2048]
            s = STRETCH[pm] + 2048
            lo, wt = s >> 7, s & 127
            i1 = (c0 + 256 * min(mctx, 63)) * 33 + lo
            i2 = ((_hash(pred | (lvl << 8), cc) + c0 * 0x2F0F) & ((1 << abits) - 1)) * 33 + lo
            p1, p2 = _apm(a1, i1, wt), _apm(a2, i2, wt)
            p = min(max((pm + p1 + 2 * p2 + 2) >> 2, 1), 4095)
            y = _code_bit(ac, buf, p, (np.int64(data[i]) >> (7 - bit)) & 1 if encode else -1)
            _mix_learn(w1, s1, x, d1, y, lr)
            _mix_learn(w2, s2, x, d2, y, lr)
            _mix_learn(w3, s3, x, d3, y, lr)
            _mix_learn(w4, s4, x, d4, y, lr)
            _learn_counters(t0, chs * 256 + c0, t1, (pred << 8) | c0, th, idx, tm, mctx, y, LIMIT)
            _apm_learn(a1, i1, wt, y)
            _apm_learn(a2, i2, wt, y)
            c0 = (c0 << 1) | y
            nib = (nib << 1) | y
        byte = c0 & 255
        if not encode:
            data[i] = byte
        px[i] = (byte + pred) & 255
        c8 = ((c8 << 8) | (c4 >> 24)) & 0xFFFFFFFF
        c4 = ((c4 << 8) | byte) & 0xFFFFFFFF
    return _finish(ac, buf, encode)


def compress(data: bytes, stride: int, chans: int) -> bytes:
    """Code an image stream whose rows are `stride` bytes of `chans`-byte pixels."""
    stride, chans = _geometry(stride, chans)
    return HEADER.pack(stride, chans, len(data)) + run_encoder(_code, "cm2d", data, stride, chans)


def decompress(payload: bytes, size: int) -> bytes:
    """Exactly `size` bytes, or ValueError (damage, truncation, a size other than the one coded)."""
    stride, chans = read_header("cm2d", HEADER, payload, size)
    if (stride, chans) != _geometry(stride, chans):
        raise ValueError("cm2d chunk has an impossible geometry")
    return run_decoder(_code, "cm2d", payload[HEADER.size :], size, stride, chans)


def _geometry(stride: int, chans: int) -> tuple[int, int]:
    """A usable geometry: 1 to 8 bytes per pixel, rows of whole pixels (else one-byte pixels)."""
    stride = max(1, min(int(stride), MAX_SIZE))
    chans = int(chans) if 1 <= chans <= 8 and stride % chans == 0 else 1
    return stride, chans
