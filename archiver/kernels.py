"""Compiled CPU kernels (numba) of the engine's integer program: attention and the row-wise steps.

Each kernel computes exactly the integers of a torch implementation that every device can run:
`attend` those of `Engine._attend`, `quantize_rows` and `rescale` those of `quantize_rows` and
`rescale_` in `archiver.fixedpoint` (rescale optionally adding into the residual stream),
`norm_quantize` the RMSNorm of `Engine._normed_linear`, `silu_mul` those of `Engine._silu_mul`,
`frequencies` those of `Engine.frequencies`, `pow2_quantize` those of `pow2_quantize` in
`archiver.fixedpoint`, `append_kv` the cache writes of `_Cache.append`, `rope_q10` those of
`Engine._rope_q10` (and the value clamp of `Engine._qkv`), and `gemv` those of `_int_mm` for a
few rows (decoding a few chunks).
`softmax_table` is `attend`'s table step alone, for the engine's GEMM form of attention on long
chunks (`Engine._attend_gemm`), where GEMMs compute the exact products; `softmax_digits` is
the same step for int8 values, whose weighted sum is then int8 GEMMs, and `rounded_quotients` is
`attend`'s last step for either form. On a CPU torch spends
most of its time in memory passes, one per element-wise op; these do a whole chain in one pass.
Integer (and exactly rounded float64) arithmetic has one result whatever the thread count or vector
unit, so kernel and torch path give the same bits; the tests check each pair on extreme values.

Attention on a CPU is bound by reading the key/value cache at every step, and torch needs float64
tensors to hold the program's exact products: 12 bytes per cached key and value element. The
kernel's cache holds what the program defines, no more: int8 key magnitudes and a power-of-two
exponent per position (int32 keys for the float64-key program), and int32 values, or int8 values
with an exponent per position for a model whose values are rounded like its keys: 5 bytes an
element, or 2.

For a query row with exponent eq and the stored key rows k_j with exponents ek_j:
  X_j = (q . k_j) << (eq + ek_j)             the score in units of 2**-12 (an exact integer)
  i_j = min((F(M) + 2047 - X_j) >> 12, last)  F(M) = ((M + 2048) >> 12) << 12, M = max_j X_j
  e_j = table[i_j]                            Q15 exp table
  out = floor((2 * sum_j (e_j << ev_j) v_j + den) / (2 den)),  den = sum_j e_j   (rounded half up)
where v_j, ev_j are the stored value row and its exponent (int8 magnitudes times 2**ev_j for a model
with int8 values, int32 values and ev_j = 0 otherwise),
which is, in integers, the torch path's floor(min(m - x, last)) with m = floor(max x + 1/2) + 1/2
- 2**-12, and its exactly rounded quotient. The bounds (|X| < 2**53, |sum e v| <= 2**53) are the
ones the model asserts when it loads.
"""

from __future__ import annotations

import numba
import numpy as np

from archiver.fixedpoint import MANTISSA_BITS, SCALE_TOP

NARROW_WEIGHTS = 2**31 // 128  # weights summing below this, times int8 values, fit 32-bit sums


@numba.njit(inline="always")
def _table_row(x: np.ndarray, n: int, table: np.ndarray, out: np.ndarray) -> np.int64:  # pragma: no cover
    """The softmax table step of one query row: from its exact scores x[:n] (int64, the X_j of the
    module docstring) writes e_j = table[i_j] into out[:n] (which may be x itself) and returns
    den = sum e_j. Shared by `attend` and `softmax_table`, so both forms of attention index the
    table by one formula."""
    last = table.size - 1
    top = np.iinfo(np.int64).min
    for j in range(n):
        top = max(top, x[j])
    base = (((top + 2048) >> 12) << 12) + 2047
    den = np.int64(0)
    for j in range(n):
        e = table[min((base - x[j]) >> 12, last)]
        out[j] = e
        den += e
    return den


@numba.njit(inline="always")
def _rounded_quotient(total: np.int64, den: np.int64) -> np.int64:  # pragma: no cover
    """floor((2 * total + den) / (2 * den)): attention's weighted sum over its table values' sum,
    rounded half up. Shared by `attend` and `rounded_quotients`, so both forms round alike."""
    return (2 * total + den) // (2 * den)


@numba.njit(parallel=True, cache=True, nogil=True)
def attend(q: np.ndarray, eq: np.ndarray, kt: np.ndarray, ek: np.ndarray, vt: np.ndarray, ev: np.ndarray,
           p0: int, table: np.ndarray, dots: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """Queries q [B, T, KV, g, hd] at positions p0.. (exponents eq [B, T, KV, g]) over the cached
    keys kt [B, KV, hd, room] and values vt [B, KV, hd, room] (both transposed; exponents ek, ev
    [B, KV, room]): query t sees positions 0..p0+t. Writes the rounded outputs into out [B, T, KV,
    g, hd].

    The products q . k_j are summed in dots.dtype: int32 for int8 keys, where every partial sum
    stays below 2**24 (the bound the engine asserts), int64 for the float64 program's keys. Keys
    transposed make the score loop an axpy over positions (no horizontal sums), and 32-bit lanes
    hold twice the sums of 64-bit ones: about twice the speed of dot products over int64. Values
    transposed make the weighted sum a dot product over positions per output column, whose sum
    stays in a register: the axpy over value rows stored its accumulators at every position and
    took 25-30% longer; with int8 values those sums run in 32-bit lanes where they fit
    (`_value_sums32`: 10% less attention time a decode step at batch 256). Rows of the room read
    up to n run best with room close to n (see `Engine` `_Cache`)."""
    B, T, KV, g, hd = q.shape
    for job in numba.prange(B * T * KV):
        b = job // (T * KV)
        t = (job // KV) % T
        h = job % KV
        n = p0 + t + 1
        p = np.zeros((g, n), dots.dtype)
        for d in range(hd):
            kd = kt[b, h, d]
            for r in range(g):
                qd = q[b, t, h, r, d]
                for j in range(n):
                    p[r, j] = p[r, j] + qd * kd[j]  # stored in dots.dtype: exact by the bound above
        x = np.empty((g, n), np.int64)
        den = np.zeros(g, np.int64)
        low = np.int64(ev[b, h, 0])  # the least value exponent: weights are taken relative to it
        for j in range(1, n):
            low = min(low, np.int64(ev[b, h, j]))
        heavy = np.int64(0)  # the greatest sum of one row's weights
        x32 = np.empty((g, n), np.int32)  # the weights truncated to 32 bits: used when they fit
        for r in range(g):
            for j in range(n):
                x[r, j] = np.int64(p[r, j]) << (np.int64(eq[b, t, h, r]) + np.int64(ek[b, h, j]))
            den[r] = _table_row(x[r], n, table, x[r])
            w = np.int64(0)
            for j in range(n):
                x[r, j] <<= np.int64(ev[b, h, j]) - low  # the weight of value row j: e_j << (ev_j - low)
                x32[r, j] = x[r, j]
                w += x[r, j]
            heavy = max(heavy, w)
        if vt.itemsize == 1 and heavy < NARROW_WEIGHTS:
            _value_sums32(x32, vt[b, h], n, low, den, out[b, t, h])
        else:
            _value_sums64(x, vt[b, h], n, low, den, out[b, t, h])


@numba.njit(inline="always")
def _value_sums32(w: np.ndarray, vt: np.ndarray, n: int, low: np.int64, den: np.ndarray,
                  out: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """`attend`'s weighted sums in 32-bit lanes, twice as many as 64-bit ones: exact when every
    row's weights w [g, n] sum below NARROW_WEIGHTS and the values are int8, which bounds each
    partial sum below 2**31 whatever the order: 99.7-100% of a decode's jobs on real text, image
    and audio streams (the rest take `_value_sums64`). Rows go in pairs, which share each widened
    value (17% less time)."""
    g = w.shape[0]
    for d in range(vt.shape[0]):
        vd = vt[d]
        for r in range(0, g - 1, 2):
            w0, w1 = w[r], w[r + 1]
            t0, t1 = np.int32(0), np.int32(0)
            for j in range(n):
                vj = np.int32(vd[j])
                t0 = np.int32(t0 + w0[j] * vj)  # narrowed back to 32 bits at each step: no overflow, by the bound
                t1 = np.int32(t1 + w1[j] * vj)
            out[r, d] = _rounded_quotient(np.int64(t0) << low, den[r])
            out[r + 1, d] = _rounded_quotient(np.int64(t1) << low, den[r + 1])
        if g % 2:
            w0 = w[g - 1]
            t0 = np.int32(0)
            for j in range(n):
                t0 = np.int32(t0 + w0[j] * np.int32(vd[j]))
            out[g - 1, d] = _rounded_quotient(np.int64(t0) << low, den[g - 1])


@numba.njit(inline="always")
def _value_sums64(w: np.ndarray, vt: np.ndarray, n: int, low: np.int64, den: np.ndarray,
                  out: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """`_value_sums32` in 64-bit lanes, for weights whose sums may not fit 32 bits: the int32 values
    of the exact-value programs (`default-v3`, `default-v4`, which decode only old archives) and a
    few rows of the Q15-table program's. One row at a time: the pairing of `_value_sums32` gained
    these 2-3% of a decode step."""
    for d in range(vt.shape[0]):
        vd = vt[d]
        for r in range(w.shape[0]):
            t = np.int64(0)
            for j in range(n):
                t += w[r, j] * np.int64(vd[j])
            out[r, d] = _rounded_quotient(t << low, den[r])


@numba.njit(inline="always")
def _quantize_row(x: np.ndarray, q: np.ndarray) -> tuple[np.int64, np.int64]:  # pragma: no cover
    """fixedpoint.quantize_rows of one row x (int64) into q (int8); returns its (m, e)."""
    k = x.size
    amax = np.int64(1)
    for j in range(k):
        amax = max(amax, abs(x[j]))
    ei = 0
    while MANTISSA_BITS + ei < SCALE_TOP and amax >= (np.int64(1) << (MANTISSA_BITS + ei)):
        ei += 1
    mi = ((amax - 1) >> ei) + 1
    half = mi << ei
    fm = np.float64(mi)
    for j in range(k):
        n = ((x[j] << 8) + half) >> (ei + 1)
        q[j] = min(127.0, max(-127.0, np.floor(np.float64(n) / fm)))
    return mi, np.int64(ei)


@numba.njit(parallel=True, cache=True, nogil=True)
def quantize_rows(x: np.ndarray, q: np.ndarray, m: np.ndarray, e: np.ndarray) -> None:  # pragma: no cover
    """fixedpoint.quantize_rows of the rows of x [N, k] (int64) into q [N, k] (int8), m, e [N]."""
    for i in numba.prange(x.shape[0]):
        m[i], e[i] = _quantize_row(x[i], q[i])


GEMV_COLUMNS = 16  # output columns per parallel job of gemv


@numba.njit(parallel=True, cache=True, nogil=True)
def gemv(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """out = x @ w.T for a few int8 rows x [M, k] and int8 weights w [n, k], in int32 (exact: the
    same bound as _int_mm's). For a few rows (decoding a few chunks: the engine's GEMV_ROWS) the
    product is bound by reading the weights, which this reads once, row by row, at about twice
    _int_mm's rate at one row; products of int16-widened operands let the compiler use its
    multiply-add of 16-bit pairs (vpmaddwd, or VNNI's vpdpwssd where the CPU has it)."""
    M, k = x.shape
    n = w.shape[0]
    xw = np.empty((M, k), np.int16)
    for m in range(M):
        for j in range(k):
            xw[m, j] = x[m, j]
    for job in numba.prange((n + GEMV_COLUMNS - 1) // GEMV_COLUMNS):
        for c in range(job * GEMV_COLUMNS, min(n, (job + 1) * GEMV_COLUMNS)):
            wc = w[c]
            for m in range(M):
                xm = xw[m]
                s = np.int32(0)
                for j in range(k):
                    s += np.int32(xm[j]) * np.int32(wc[j])
                out[m, c] = s


@numba.njit(parallel=True, cache=True, nogil=True)
def norm_quantize(x: np.ndarray, scale: int, q: np.ndarray, inv: np.ndarray) -> None:  # pragma: no cover
    """The RMSNorm of Engine._normed_linear on the rows of x [N, k] (int64): each row quantized
    like quantize_rows into q [N, k] (int8), and its inverse root mean square
    inv = isqrt(floor(scale / max(1, sum q**2))) (fixedpoint.isqrt: the float64 square root of an
    exact integer, truncated) into inv [N]. One pass where torch took nine operations."""
    for i in numba.prange(x.shape[0]):
        _quantize_row(x[i], q[i])
        ss = np.int64(0)
        for j in range(x.shape[1]):
            ss += np.int64(q[i, j]) * np.int64(q[i, j])
        inv[i] = np.int64(np.sqrt(np.float64(scale // max(ss, 1))))


@numba.njit(parallel=True, cache=True, nogil=True)
def rescale(acc: np.ndarray, mult: np.ndarray, row_mult: np.ndarray, base: int, e: np.ndarray, add: bool,
            out: np.ndarray) -> None:  # pragma: no cover
    """fixedpoint.rescale_ of acc [N, n] (int32 or int64) into out [N, n] (int64), or added to out's
    values when add (a residual connection, in the same pass), with row_mult [N] and the shifts
    s_i = base - e_i (e [N]; an empty e means s_i = base)."""
    N, n = acc.shape
    for i in numba.prange(N):
        si = base - e[i] if e.size else base
        rm = row_mult[i] << max(-si, 0)
        pos = max(si, 0)
        half = (np.int64(1) << pos) >> 1
        for j in range(n):
            y = (np.int64(acc[i, j]) * mult[j] * rm + half) >> pos
            out[i, j] = out[i, j] + y if add else y


@numba.njit(parallel=True, cache=True, nogil=True)
def silu_mul(gu: np.ndarray, inter: int, sig: np.ndarray, step_shift: int, frac: int,
             out: np.ndarray) -> None:  # pragma: no cover
    """Engine._silu_mul of the halves g = gu[:, :inter], u = gu[:, inter:] into out [N, inter]."""
    N = gu.shape[0]
    mid = sig.size // 2
    top = sig.size - 1
    for i in numba.prange(N):
        for j in range(inter):
            g = gu[i, j]
            h = (sig[min(max((g >> step_shift) + mid, 0), top)] * g + (1 << 14)) >> 15
            out[i, j] = (h * gu[i, inter + j] + (np.int64(1) << (frac - 1))) >> frac


@numba.njit(parallel=True, cache=True, nogil=True)
def frequencies(z: np.ndarray, fexp: np.ndarray, shift: int, total: int,
                out: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """Engine.frequencies of the logit rows z [N, A] (int64) into out [N, A] (int64).

    freq_j = floor(e_j (total - A) / S) + 1 with S = sum e: the product reaches 2**56, beyond
    float64's exact integers, and int64 division does not vectorize. So the quotient is estimated
    in float64 (off by at most one: S < 2**53 is exact and the numerator's rounding is relative
    2**-53 of a quotient below 2**25) and corrected by its exact int64 remainder."""
    N, A = z.shape
    last = fexp.size - 1
    scale = np.int64(total - A)
    for i in numba.prange(N):
        row = out[i]
        top = np.iinfo(np.int64).min
        for j in range(A):
            top = max(top, z[i, j])
        s = np.int64(0)
        first = A
        for j in range(A):
            k = min((top - z[i, j]) >> shift, last)
            if k == 0 and first == A:
                first = j
            row[j] = fexp[k]
            s += row[j]
        fs = np.float64(s)
        used = np.int64(0)
        for j in range(A):
            num = row[j] * scale
            f = np.int64(np.float64(num) / fs)
            r = num - f * s
            f += (r >= s) - (r < 0)
            row[j] = f + 1
            used += f + 1
        row[first] += total - used


@numba.njit(inline="always")
def _exact_scores(s: np.ndarray, eq: np.ndarray, ek: np.ndarray, first: int, g: int, b: int, h: int,
                  r: int) -> np.ndarray:  # pragma: no cover
    """Row r of a block's GEMM scores as the exact X_j of the module docstring, up to its causal
    limit (the row's query is at position first + r // g). s is [B, KV, R, S] (exact integers), or
    [B, KV, 2R, S] for int8 queries split in halves (`Engine._int8_scores`): row r's products with
    the high halves, and R rows further down those with the low ones, q . k = 128 hi + lo."""
    n = first + r // g + 1
    sh = np.int64(eq[b, h, r])
    R = eq.shape[2]
    x = np.empty(n, np.int64)
    if s.shape[2] == 2 * R:
        for j in range(n):
            x[j] = ((np.int64(s[b, h, r, j]) << 7) + np.int64(s[b, h, R + r, j])) << (sh + np.int64(ek[b, h, j]))
    else:
        for j in range(n):
            x[j] = np.int64(s[b, h, r, j]) << (sh + np.int64(ek[b, h, j]))
    return x


@numba.njit(parallel=True, cache=True, nogil=True)
def softmax_table(s: np.ndarray, eq: np.ndarray, ek: np.ndarray, first: int, g: int, table: np.ndarray,
                  e: np.ndarray, den: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """`attend`'s table step for a block of queries whose products with the keys were computed
    elsewhere (exactly, by a float GEMM): s [B, KV, R, S] holds q . k_j as exact integers for the
    rows r = (t, head in group) of queries at positions first + r // g, which see keys j <= that
    position. With the exponents eq [B, KV, R] and ek [B, KV, >= S], writes the table values e_j
    into e (float64, exact; 0 beyond the causal limit) and their sums into den [B, KV, R]. (s may
    also be split int8 products, see `_exact_scores`.)"""
    (B, KV, R), S = eq.shape, s.shape[3]  # s may hold 2R rows: split queries (_exact_scores)
    for job in numba.prange(B * KV * R):
        b, h, r = job // (KV * R), (job // R) % KV, job % R
        x = _exact_scores(s, eq, ek, first, g, b, h, r)
        n = x.size
        den[b, h, r] = _table_row(x, n, table, e[b, h, r])
        for j in range(n, S):
            e[b, h, r, j] = 0.0


DIGIT_BITS = 7  # softmax_digits writes base-128 digits: each fits an int8


@numba.njit(parallel=True, cache=True, nogil=True)
def softmax_digits(s: np.ndarray, eq: np.ndarray, ek: np.ndarray, ev: np.ndarray, low: int, first: int, g: int,
                   table: np.ndarray, d: np.ndarray, den: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """`softmax_table` for a model with int8 values, whose weighted sum is computed as int8 GEMMs:
    writes each table value times its value row's power of two over 2**low, w_j = e_j << (ev_j -
    low) (ev [B, KV, >= S], none below low), as base-128 digits d[b, h, k] = (w_j >> 7k) & 127 into
    d [B, KV, ND, R, S] (int8; 0 beyond the causal limit; ND digits must hold the largest w), and
    the table values' sums into den. A chunk's and head's digit planes lie together, so their
    products are one GEMM."""
    (B, KV, R), S = eq.shape, s.shape[3]  # s may hold 2R rows: split queries (_exact_scores)
    nd = d.shape[2]
    for job in numba.prange(B * KV * R):
        b, h, r = job // (KV * R), (job // R) % KV, job % R
        x = _exact_scores(s, eq, ek, first, g, b, h, r)
        n = x.size
        den[b, h, r] = _table_row(x, n, table, x)
        for j in range(n):
            x[j] <<= np.int64(ev[b, h, j]) - low
        for k in range(nd):
            dk = d[b, h, k, r]
            for j in range(n):
                dk[j] = (x[j] >> (DIGIT_BITS * k)) & 127
            for j in range(n, S):
                dk[j] = 0


@numba.njit(parallel=True, cache=True, nogil=True)
def rounded_quotients(acc: np.ndarray, den: np.ndarray, a: int, g: int, low: int,
                      out: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """`attend`'s last step for a block of query rows r = (t, head in group) whose weighted value
    sums were computed by GEMMs: given as ND planes acc [B, KV, ND, R, hd], plane k counting
    2**(low + DIGIT_BITS * k) (the int32 products of `softmax_digits`'s digit planes, or one float64
    plane holding the exact sums, low 0), each sum is divided by its row's den [B, KV, R], rounded half up,
    and written to out[b, a + r // g, h, r % g] (out [B, T, KV, g, hd]). One pass where torch took
    a shift, an add and a cast per plane, an int64 division and a strided copy."""
    B, KV, nd, R, hd = acc.shape
    for job in numba.prange(B * KV * R):
        b, h, r = job // (KV * R), (job // R) % KV, job % R
        t, i = a + r // g, r % g
        dn = den[b, h, r]
        for c in range(hd):
            total = np.int64(0)
            for k in range(nd):
                total += np.int64(acc[b, h, k, r, c]) << (DIGIT_BITS * k)
            out[b, t, h, i, c] = _rounded_quotient(total << low, dn)


@numba.njit(inline="always")
def _pow2_row(x: np.ndarray, bits: int, q: np.ndarray) -> np.int64:  # pragma: no cover
    """fixedpoint.pow2_quantize of one row x (int64, |x| < 2**53) into q; returns its e. The bit
    length is counted in integers, which is frexp's exponent for these magnitudes."""
    lim = (np.int64(1) << bits) - 1
    amax = np.int64(0)
    for j in range(x.size):
        amax = max(amax, abs(x[j]))
    length = 0
    while amax >> length:
        length += 1
    ei = np.int64(max(length - bits, 0))
    half = (np.int64(1) << ei) >> 1
    for j in range(x.size):
        q[j] = min(lim, max(-lim, (x[j] + half) >> ei))
    return ei


@numba.njit(parallel=True, cache=True, nogil=True)
def pow2_quantize(x: np.ndarray, bits: int, q: np.ndarray, e: np.ndarray) -> None:  # pragma: no cover
    """fixedpoint.pow2_quantize of the rows x[i, h] of x [N, H, k] (int64; any strides: the query
    heads of the engine's qkv rows are read in place) into q [N, H, k] and e [N, H]."""
    for i in numba.prange(x.shape[0]):
        for h in range(x.shape[1]):
            e[i, h] = _pow2_row(x[i, h], bits, q[i, h])


@numba.njit(inline="always")
def _store_column(src: np.ndarray, bits: int, quantize: bool, row: np.ndarray, rows_t: np.ndarray,
                  exps: np.ndarray, b: int, h: int, p: int) -> None:  # pragma: no cover  (compiled)
    """One key or value row src (int64) into position p of a transposed cache rows_t [B, KV, hd,
    room]: pow2-quantized to bits (its exponent into exps [B, KV, room]) when quantize, else whole
    with exponent 0; row is scratch of src's length."""
    if quantize:
        exps[b, h, p] = _pow2_row(src, bits, row)
    else:
        for d in range(src.size):
            row[d] = src[d]
        exps[b, h, p] = 0
    for d in range(src.size):
        rows_t[b, h, d, p] = row[d]


@numba.njit(parallel=True, cache=True, nogil=True)
def append_kv(kv: np.ndarray, a: int, bits: int, k8: bool, v8: bool, kt: np.ndarray, ek: np.ndarray,
              vt: np.ndarray, ev: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """_Cache.append on the kernel path: the keys and values kv [B, T, 2 KV, hd] (int64; key heads
    first) of positions a.. into the cache's layout, transposed kt, vt [B, KV, hd, room], each row
    pow2-quantized to bits (exponents into ek, ev [B, KV, room]) when k8 (v8), else stored whole
    with exponent 0. One pass where torch took a quantize, a permute and a strided copy per tensor."""
    B, T, KV2, hd = kv.shape
    KV = KV2 // 2
    for job in numba.prange(B * KV):
        b, h = job // KV, job % KV
        row = np.empty(hd, np.int64)
        for t in range(T):
            _store_column(kv[b, t, h], bits, k8, row, kt, ek, b, h, a + t)
            _store_column(kv[b, t, KV + h], bits, v8, row, vt, ev, b, h, a + t)


@numba.njit(parallel=True, cache=True, nogil=True)
def rope_q10(y: np.ndarray, heads: int, hd: int, cos: np.ndarray, sin: np.ndarray, shift: int, bias: int,
             limit: int, rest_limit: int) -> None:  # pragma: no cover  (compiled)
    """Engine._rope_q10 in place on the first heads * hd columns of y [N, width] (int64), by the
    rows' cos, sin [N, hd / 2]: (x1 cos - x2 sin + bias) >> shift and (x2 cos + x1 sin + bias) >>
    shift, clamped to +-limit; the columns after them (the values, in Engine._qkv) are clamped to
    +-rest_limit in the same pass."""
    N, width = y.shape
    half = hd // 2
    for i in numba.prange(N):
        for j in range(heads * hd, width):
            y[i, j] = min(rest_limit, max(-rest_limit, y[i, j]))
        for h in range(heads):
            a = h * hd
            for j in range(half):
                x1, x2 = y[i, a + j], y[i, a + half + j]
                y[i, a + j] = min(limit, max(-limit, (x1 * cos[i, j] - x2 * sin[i, j] + bias) >> shift))
                y[i, a + half + j] = min(limit, max(-limit, (x2 * cos[i, j] + x1 * sin[i, j] + bias) >> shift))
