"""The `cmpcm` codec: context mixing for audio streams, which knows the samples behind the bytes.

Why it exists: an audio stream (`plugins/audio.py`) is, per channel, the zigzag-mapped first
difference of 16-bit samples, two bytes per sample, high byte first. The LM sees it in cold
1023-byte chunks; `cm` sees bytes. Given the channel count, a model can rebuild every sample as it
goes and predict the next one the way lossless audio coders do: fixed polynomial predictors (as
FLAC's fixed mode), a cascade of three normalised LMS filters over the recent differences, each
predicting what the ones before it left (as Monkey's Audio and OptimFROG), and, for the second and
later channels, an LMS filter over the first channel's differences around the same instant (that
channel is known in full by then). Each predictor's guess is turned into the 16-bit code it
implies; the contexts say where that code lies relative to the bits coded so far (paq8's audio
models do the same), with how wrong that predictor has recently been. Three mixers and two
probability maps combine them.

Measured (`docs/benchmarks.md`): the 598 dev spoken digits (8 kHz) as one block take 0.917 of
flac -8's size, and lmarc's dev audio went from 0.976 to 0.931 x flac, at about 0.5 MB/s against
the LM's 10 KB/s; on stereo 44.1 kHz music the cross-channel filter takes 0.951 x flac against 1.047
reading the channels as one. The step sizes are large (1/32 to 1/8) because fast adaptation measured
best on short recordings; 256 taps in front of the cascade, slower steps, extra contexts and other
mixer rates measured no better.

It shares `cm`'s machinery (`archiver.contextmix`: counters, hashed nibble buckets, mixers,
adaptive probability maps, the binary arithmetic coder) and, like it, is integer arithmetic only
(the LMS filters too: integer weights, exact floor divisions), so its bits are the same on every
machine; `tests/test_audiomix.py` pins them with a golden digest. The payload starts with the
layout (channel count, u8) and the stream's length (u32): any byte stream decodes with any layout,
a wrong one only costs compression.
"""

from __future__ import annotations

import struct

import numba
import numpy as np

from archiver.contextmix import (
    INIT,
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

HEADER = struct.Struct("<BI")  # channels, stream length
NP = 6  # predictors
NH = 2 * NP + 3  # hashed contexts: two per predictor, three of the code's own history
NI = 2 + 2 * NH + 2  # mixer inputs: two direct tables, two per hashed context, the match, a bias
MIX_LR = 3  # mixer learning rate, after a faster start
LIMIT = 255  # counters settle further than cm's (60), as in cm2d
MINLEN = 12  # a match (a repeated stretch of sound: loops, silence) after this many bytes
STAGES = ((32, 5), (16, 4), (8, 3))  # the LMS cascade: (taps, step size 2**-rate) per stage
CROSS_OWN, CROSS_RATE = 4, 3  # the cross-channel filter: this channel's own past taps, its step size


@numba.njit(inline="always")
def _zigzag(d: int) -> int:  # pragma: no cover
    """The stream's code of a difference d, clamped to 16 bits: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    d = min(max(d, -32768), 32767)
    return (d << 1) if d >= 0 else ((-d << 1) - 1)


@numba.njit(inline="always")
def _level(e: int) -> int:  # pragma: no cover
    """An error size (a running mean of |error| in 1/16ths) in 12 steps."""
    k = 0
    while k < 11 and e >= (32 << k):
        k += 1
    return k


@numba.njit(inline="always")
def _relative(z: int, zp: int, k: int) -> int:  # pragma: no cover
    """Where the predicted code z lies against the codes that start with the k known bits zp:
    0-31 within their range (in 1/32 steps, or exact codes when fewer remain), -1 below, 32 above."""
    sh = max(16 - k - 5, 0)
    r = (z >> sh) - (zp << (16 - k - sh))
    return min(max(r, -1), 32)


@numba.njit(inline="always")
def _lms_predict(w: np.ndarray, h: np.ndarray) -> int:  # pragma: no cover
    """The filter's output: weights (Q16, |w| <= 2**20) times the history (|h| <= 2**16), floored."""
    s = np.int64(0)
    for j in range(h.size):
        s += w[j] * h[j]
    return s >> 16


@numba.njit(inline="always")
def _lms_learn(w: np.ndarray, h: np.ndarray, energy: int, err: int, rate: int) -> None:  # pragma: no cover
    """Normalised LMS: w += 2**-rate * err * h / |h|^2, in Q16 with one exact floor division."""
    en = (min(max(err, -65536), 65536) << 20) // (energy + 256)
    for j in range(h.size):
        w[j] = min(max(w[j] + ((en * h[j]) >> (4 + rate)), -(1 << 20)), 1 << 20)


@numba.njit(cache=True, nogil=True)
def _code(data: np.ndarray, n: int, buf: np.ndarray, encode: bool, chans: int) -> int:  # pragma: no cover
    """Encode data[:n] into buf, or decode buf into data[:n]; as contextmix._code, one function for
    both directions. The stream is `chans` planes of two-byte samples."""
    tbits = table_bits(n)
    mask = (1 << tbits) - 1
    mbits = tbits - 2
    plane = max(n // chans, 1)
    t0 = np.full(2 * 256, INIT, dtype=np.uint32)
    t1 = np.full(1 << 17, INIT, dtype=np.uint32)
    th = np.full((NH, 1 << tbits), INIT, dtype=np.uint32)
    tm = np.full(64, INIT, dtype=np.uint32)
    mt = np.zeros(1 << mbits, dtype=np.int64)
    w1 = np.full((2 * 256, NI), (1 << 16) // 4, dtype=np.int64)
    w2 = np.full((12 * 2 * 8, NI), (1 << 16) // 4, dtype=np.int64)
    w3 = np.full((34 * 4 * 4, NI), (1 << 16) // 4, dtype=np.int64)
    abits = min(16, tbits)
    a1 = _apm_table(2 * 256 * 12)
    a2 = _apm_table(1 << abits)
    hh = np.zeros(NH, dtype=np.int64)
    base = np.zeros(NH, dtype=np.int64)
    idx = np.zeros(NH, dtype=np.int64)
    x = np.zeros(NI, dtype=np.int64)
    x[NI - 1] = 256
    first = np.zeros(max(plane // 2, 1) + 2, dtype=np.int64)  # the first channel's differences, from index 1
    hx = np.zeros(3 + CROSS_OWN, dtype=np.int64)  # the cross filter's inputs: the first channel's
    wx = np.zeros(3 + CROSS_OWN, dtype=np.int64)  # differences around this instant, this channel's last
    ex = np.int64(0)
    ns = len(STAGES)
    hist = [np.zeros(STAGES[j][0], dtype=np.int64) for j in range(ns)]
    wts = [np.zeros(STAGES[j][0], dtype=np.int64) for j in range(ns)]
    energy = np.zeros(ns, dtype=np.int64)
    sp = np.zeros(ns, dtype=np.int64)  # each stage's prediction of its input
    z = np.zeros(NP, dtype=np.int64)  # each predictor's code for the current sample
    pv = np.zeros(NP, dtype=np.int64)  # and its predicted sample
    err = np.zeros(NP, dtype=np.int64)  # running mean |error| per predictor, in 1/16ths
    rel = np.zeros(NP, dtype=np.int64)
    s1 = s2 = s3 = np.int64(0)
    zprev = zprev2 = hi = np.int64(0)
    best = lvl = 0
    c4 = c8 = np.int64(0)
    mlen = ptr = 0
    ac = _coder(buf, encode)
    for i in range(n):
        p, ch = i % plane, i // plane
        t, b = p >> 1, p & 1
        if p == 0:  # a new channel: its history starts over
            s1 = s2 = s3 = zprev = zprev2 = 0
            for j in range(ns):
                hist[j][:] = 0
                wts[j][:] = 0
            energy[:] = 0
            err[:] = 0
        if b == 0:
            for j in range(ns):
                sp[j] = _lms_predict(wts[j], hist[j])
            pv[0] = s1
            pv[1] = 2 * s1 - s2
            pv[2] = 3 * s1 - 3 * s2 + s3
            pv[3] = s1 + sp[0]
            pv[4] = s1 + sp[0] + sp[1]
            if ch > 0:  # the first channel is known in full, its next step too
                hx[:3] = first[t : t + 3]
                hx[3:] = hist[0][:CROSS_OWN]
                ex = 0
                for j in range(hx.size):
                    ex += hx[j] * hx[j]
                pv[5] = s1 + _lms_predict(wx, hx)
            else:
                pv[5] = s1 + sp[0] + sp[1] + sp[2]
            best = 0
            for k in range(NP):
                z[k] = _zigzag(pv[k] - s1)
                if err[k] < err[best]:
                    best = k
            lvl = _level(err[best])
        if i > 0:
            mlen, ptr = _match(data, i, mlen, ptr, mt, _hash(c4, c8) & ((1 << mbits) - 1), MINLEN)
        mbucket, expected = _match_state(data, mlen, ptr)
        lr = MIX_LR + (16 << 14) // (i + 16384)
        c0 = 1
        nib = 1
        for bit in range(8):
            if bit == 0 or bit == 4:
                q = 2 * b + (bit >> 2)
                k = 4 * q
                zp = (hi << (k - 8)) | (c0 & ((1 << (k - 8)) - 1)) if b else c0 & ((1 << k) - 1)
                for j in range(NP):
                    rel[j] = _relative(z[j], zp, k)
                    hh[2 * j] = _hash((rel[j] + 1) | (q << 6), j + 1)
                    hh[2 * j + 1] = _hash((rel[j] + 1) | (q << 6) | (_level(err[j]) << 8), j + 17)
                hh[2 * NP] = _hash(zp | (q << 16) | (lvl << 20), 33)
                hh[2 * NP + 1] = _hash(zp | (q << 16), (zprev >> 6) + 49)
                hh[2 * NP + 2] = _hash(zp | (q << 16), ((zprev >> 9) << 8 | (zprev2 >> 9)) + 65)
                for j in range(NH):
                    base[j] = _bucket(th[j], hh[j], mask)
                nib = 1
            x[0] = STRETCH[np.int64(t0[b * 256 + c0]) >> 20]
            ctxb = hi if b else zprev >> 8
            x[1] = STRETCH[np.int64(t1[(b << 16) | (ctxb << 8) | c0]) >> 20]
            _counter_inputs(th, base, idx, nib, x)
            mctx = _match_input(tm, expected, mbucket, bit, c0, x)
            s1m = b * 256 + c0
            s2m = (lvl * 2 + b) * 8 + bit
            s3m = ((rel[best] + 1) * 4 + q) * 4 + min(best, 3)
            d1, d2, d3 = _mix(w1, s1m, x), _mix(w2, s2m, x), _mix(w3, s3m, x)
            pm = SQUASH[((d1 + d2 + d3) * 21 >> 6) + 2048]
            s = STRETCH[pm] + 2048
            lo, wt = s >> 7, s & 127
            i1 = ((b * 256 + c0) * 12 + lvl) * 33 + lo
            i2 = (_hash((rel[best] + 1) | (q << 6) | (best << 8), c0) & ((1 << abits) - 1)) * 33 + lo
            p1, p2 = _apm(a1, i1, wt), _apm(a2, i2, wt)
            pr = min(max((2 * pm + p1 + p2 + 2) >> 2, 1), 4095)
            y = _code_bit(ac, buf, pr, (np.int64(data[i]) >> (7 - bit)) & 1 if encode else -1)
            _mix_learn(w1, s1m, x, d1, y, lr)
            _mix_learn(w2, s2m, x, d2, y, lr)
            _mix_learn(w3, s3m, x, d3, y, lr)
            _learn_counters(t0, b * 256 + c0, t1, (b << 16) | (ctxb << 8) | c0, th, idx, tm, mctx, y, LIMIT)
            _apm_learn(a1, i1, wt, y)
            _apm_learn(a2, i2, wt, y)
            c0 = (c0 << 1) | y
            nib = (nib << 1) | y
        byte = c0 & 255
        if not encode:
            data[i] = byte
        if b == 0:
            hi = byte
        else:  # a whole sample: rebuild it and teach the predictors
            code = (hi << 8) | byte
            d = (code >> 1) ^ -(code & 1)
            v = ((s1 + d + 32768) & 0xFFFF) - 32768
            for k in range(NP):
                err[k] += ((abs(v - pv[k]) << 4) - err[k]) >> 4
            r = d  # each stage predicts what the stages before it left over
            for j in range(ns):
                h = hist[j]
                _lms_learn(wts[j], h, energy[j], r - sp[j], STAGES[j][1])
                energy[j] += r * r - h[-1] * h[-1]
                h[1:] = h[:-1].copy()
                h[0] = r
                r -= sp[j]
            if ch == 0:
                first[t + 1] = d
            else:
                _lms_learn(wx, hx, ex, v - pv[5], CROSS_RATE)
            s3, s2, s1 = s2, s1, v
            zprev2, zprev = zprev, code
        c8 = ((c8 << 8) | (c4 >> 24)) & 0xFFFFFFFF
        c4 = ((c4 << 8) | byte) & 0xFFFFFFFF
    return _finish(ac, buf, encode)


def compress(data: bytes, chans: int) -> bytes:
    """Code an audio stream of `chans` planes of 16-bit sample codes."""
    chans = _channels(chans, len(data))
    return HEADER.pack(chans, len(data)) + run_encoder(_code, "cmpcm", data, chans)


def decompress(payload: bytes, size: int) -> bytes:
    """Exactly `size` bytes, or ValueError (damage, truncation, a size other than the one coded)."""
    (chans,) = read_header("cmpcm", HEADER, payload, size)
    if chans != _channels(chans, size):
        raise ValueError("cmpcm chunk has an impossible layout")
    return run_decoder(_code, "cmpcm", payload[HEADER.size :], size, chans)


def _channels(chans: int, size: int) -> int:
    """A usable channel count: 1 to 255 planes of whole samples (else one plane)."""
    chans = int(chans)
    return chans if 1 <= chans <= 255 and size % (2 * chans) == 0 else 1
