"""Compiled CPU kernels (numba) of the engine's integer program: attention and the row-wise steps.

Each kernel computes exactly the integers of a torch implementation that every device can run:
`attend` those of `Engine._attend`, `quantize_rows` and `rescale` those of `quantize_rows` and
`rescale_` in `archiver.fixedpoint` (rescale optionally adding into the residual stream),
`norm_quantize` the RMSNorm of `Engine._normed_linear`, `gated_quantize` the steps of `Engine._mlp`
between its products (a rescale, `Engine._silu_mul` and a quantize_rows),
`frequencies` those of `Engine.frequencies`, `embed` the embedding lookup of `Engine._forward`,
`pow2_quantize` those of `pow2_quantize` in `archiver.fixedpoint`, `append_kv` the cache writes
of `_Cache.append`, `rescale_rope` those of `Engine._qkv` after its product (a rescale,
`Engine._rope_q10` and the value clamp), `gemm_bytes` those of `_int_mm` by byte dot products
over weights laid out by `pack_columns`, and `gemv` those of `_int_mm` for a few rows of a matrix
gemm_bytes cannot take (decoding a few chunks).
`softmax_table` is `attend`'s table step alone, for the engine's GEMM form of attention on long
chunks (`Engine._attend_gemm`), where GEMMs compute the exact products, and `rounded_quotients` is
`attend`'s last step for that form. `attend_bytes` is `attend` for a model with int8 keys and
values, over the byte cache, which `rope_bytes` (`rescale_rope` for such a model) writes along
with the queries' bytes: its products are byte dot products (`archiver.simd`, VNNI's four per
lane and instruction where the CPU has them), the weights written as base-128 digits. On a CPU
torch spends
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

from archiver import simd
from archiver.atomics import next_part
from archiver.fixedpoint import MANTISSA_BITS, SCALE_TOP

SCRATCH_PARTS = 64  # kernels with scratch rows split their jobs in this many parts, each allocating it once


@numba.njit(inline="always")
def _table_base(top: np.int64) -> np.int64:  # pragma: no cover
    """F(M) + 2047 of the module docstring, from a query row's greatest score M = top."""
    return (((top + 2048) >> 12) << 12) + 2047


@numba.njit(inline="always")
def _table_index(base: np.int64, x: np.int64, last: int) -> np.int64:  # pragma: no cover
    """i_j for the score X_j = x of a row whose `_table_base` is base (last: the table's last index)."""
    return min((base - x) >> 12, last)


@numba.njit(inline="always")
def _table_value(table: np.ndarray, base: np.int64, x: np.int64) -> np.int64:  # pragma: no cover
    """e_j = table[i_j] for the score X_j = x of a row whose `_table_base` is base."""
    return table[_table_index(base, x, table.size - 1)]


@numba.njit(inline="always")
def _table_row(x: np.ndarray, n: int, table: np.ndarray, out: np.ndarray) -> np.int64:  # pragma: no cover
    """The softmax table step of one query row: from its exact scores x[:n] (int64, the X_j of the
    module docstring) writes e_j = table[i_j] into out[:n] (which may be x itself) and returns
    den = sum e_j. `attend` and `softmax_table` share it, and `attend_bytes` its two formulas, so
    every form of attention indexes the table alike."""
    top = np.iinfo(np.int64).min
    for j in range(n):
        top = max(top, x[j])
    base = _table_base(top)
    den = np.int64(0)
    for j in range(n):
        e = _table_value(table, base, x[j])
        out[j] = e
        den += e
    return den


@numba.njit(inline="always")
def _rounded_quotient(total: np.int64, den: np.int64, inv: np.float64) -> np.int64:  # pragma: no cover
    """floor((2 * total + den) / (2 * den)) with inv = 1 / (2 * den) (`_inverse`): attention's
    weighted sum over its table values' sum, rounded half up. Shared by every form of attention, so
    all round alike. The quotient is a weighted mean of value rows, far below 2**50 in magnitude,
    so float64's estimate num * inv (three roundings, each within 2**-53 of its value) is within
    3/8 of num / (2 den), its floor off by at most one, which the remainder corrects: the exact
    integer without a 64-bit division per output, which had taken a sixth of attention's time."""
    num = 2 * total + den
    dd = 2 * den
    q = np.int64(np.floor(np.float64(num) * inv))
    rem = num - q * dd
    return q + np.int64(rem >= dd) - np.int64(rem < 0)


@numba.njit(inline="always")
def _inverse(den: np.int64) -> np.float64:  # pragma: no cover
    """1 / (2 * den), the factor `_rounded_quotient` estimates with."""
    return 1.0 / np.float64(2 * den)


@numba.njit(inline="always")
def _span(a: np.ndarray, n: int) -> tuple[np.int64, np.int64]:  # pragma: no cover  (compiled)
    """(least, greatest) of the int8 exponents a[:n], compared as int8: 64 to a vector, where the
    same reduction widened to int64 took eight."""
    lo = hi = a[0]
    for j in range(1, n):
        lo = min(lo, a[j])
        hi = max(hi, a[j])
    return np.int64(lo), np.int64(hi)


@numba.njit(parallel=True, cache=True, nogil=True)
def attend(q: np.ndarray, eq: np.ndarray, kt: np.ndarray, ek: np.ndarray, vt: np.ndarray, ev: np.ndarray,
           p0: int, table: np.ndarray, dots: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """Queries q [B, T, KV, g, hd] at positions p0.. (exponents eq [B, T, KV, g]) over the cached
    keys kt [B, KV, hd, room] and values vt [B, KV, hd, room] (both transposed; exponents ek, ev
    [B, KV, room]): query t sees positions 0..p0+t. Writes the rounded outputs into out [B, T, KV,
    g, hd]. The engine runs it for the programs with int32 values (`default-v1` to `default-v4`,
    which decode only old archives); a model with int8 keys and values takes `attend_bytes`.

    The products q . k_j are summed in dots.dtype: int32 for int8 keys, where every partial sum
    stays below 2**24 (the bound the engine asserts), int64 for the float64 program's keys. Keys
    transposed make the score loop an axpy over positions (no horizontal sums), and 32-bit lanes
    hold twice the sums of 64-bit ones: about twice the speed of dot products over int64. Values
    transposed make the weighted sum a dot product over positions per output column, whose sum
    stays in a register: the axpy over value rows stored its accumulators at every position and
    took 25-30% longer. Rows of the room read up to n run best with room close to n (see `Engine`
    `_Cache`)."""
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
        low = _span(ev[b, h], n)[0]  # the least value exponent: weights are taken relative to it
        for r in range(g):
            for j in range(n):
                x[r, j] = np.int64(p[r, j]) << (np.int64(eq[b, t, h, r]) + np.int64(ek[b, h, j]))
            den[r] = _table_row(x[r], n, table, x[r])
            for j in range(n):
                x[r, j] <<= np.int64(ev[b, h, j]) - low  # the weight of value row j: e_j << (ev_j - low)
        _value_sums(x, vt[b, h], n, low, den, out[b, t, h])


@numba.njit(inline="always")
def _value_sums(w: np.ndarray, vt: np.ndarray, n: int, low: np.int64, den: np.ndarray,
                out: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """`attend`'s weighted sums of the weights w [g, n] and the values vt [hd, >= n] in 64-bit
    lanes (int32 values: their sums need them), each rounded into out [g, hd]."""
    inv = np.empty(w.shape[0])
    for r in range(w.shape[0]):
        inv[r] = _inverse(den[r])
    for d in range(vt.shape[0]):
        vd = vt[d]
        for r in range(w.shape[0]):
            t = np.int64(0)
            for j in range(n):
                t += w[r, j] * np.int64(vd[j])
            out[r, d] = _rounded_quotient(t << low, den[r], inv[r])


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
    for j in range(k):  # clamped as an integer: a float clamp kept the loop scalar (numba's NaN-aware min)
        n = ((x[j] << 8) + half) >> (ei + 1)
        q[j] = min(127, max(-127, np.int64(np.floor(np.float64(n) / fm))))
    return mi, np.int64(ei)


@numba.njit(parallel=True, cache=True, nogil=True)
def quantize_rows(x: np.ndarray, q: np.ndarray, m: np.ndarray, e: np.ndarray) -> None:  # pragma: no cover
    """fixedpoint.quantize_rows of the rows of x [N, k] (int64) into q [N, k] (int8), m, e [N]."""
    for i in numba.prange(x.shape[0]):
        m[i], e[i] = _quantize_row(x[i], q[i])


GEMM_ROWS = 4  # rows per block of gemm_bytes: four broadcast activations share each load of weights
GEMM_COLUMNS = 64  # output columns per block of gemm_bytes (four simd.Vec accumulators per row)
GEMM_TILE = 64  # rows per tile of gemm_bytes: a tile's activations stay in cache over all columns


def pack_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The int8 weights w [n, k] (k a multiple of 4) laid out for `gemm_bytes`: per block of
    GEMM_COLUMNS output columns and per 4 inputs, 256 bytes, four simd.Vec of 16 columns whose lane
    holds the column's 4 weights, as `simd.dot4` pairs them with a row's 4 activations; columns
    padded with zeros to whole blocks. Also each column's -128 * sum of its weights (int32), which
    undoes the +128 that makes the activations unsigned bytes."""
    n, k = w.shape
    blocks = -(-n // GEMM_COLUMNS)
    padded = np.zeros((blocks * GEMM_COLUMNS, k), np.int8)
    padded[:n] = w
    packed = padded.reshape(blocks, 4, 16, k // 4, 4).transpose(0, 3, 1, 2, 4).reshape(-1)
    corr = (-128 * padded.astype(np.int64).sum(1)).astype(np.int32)
    return np.ascontiguousarray(packed), corr


GEMM_SERIAL = 1 << 16  # gemm_bytes converts fewer activations than this without a parallel region


@numba.njit(inline="always")
def _unsigned_rows(x: np.ndarray, i0: int, i1: int, xu: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """Rows i0..i1-1 of the int8 x as unsigned bytes a + 128 into xu (`gemm_bytes`'s activations)."""
    for i in range(i0, i1):
        for j in range(x.shape[1]):
            xu[i, j] = np.uint8(np.int32(x[i, j]) + 128)


@numba.njit(parallel=True, cache=True, nogil=True)
def gemm_bytes(x: np.ndarray, wp: np.ndarray, corr: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """out = x @ w.T in int32 for int8 rows x [M, k] and weights w [n, k] packed by `pack_columns`
    (wp, corr): `_int_mm`'s integers by byte dot products (`simd.dot4`). Each activation is taken
    as the unsigned byte a + 128 and each sum starts at the column's -128 * sum(w), so the sum is
    sum a w: partial sums may wrap at 32 bits (both forms of `simd.dot4` wrap alike), the result
    is exact wherever |sum a w| <= 128 * 127 * k fits an int32 (k below 132,000; the engine packs
    only such matrices). A block of 4 rows times 64 columns keeps 16 accumulators; the rows run in
    tiles of GEMM_TILE, whose activations stay in cache while every column block reads them.
    oneDNN's `_int_mm` ran the model's products (k = 256 or 704, a few hundred to a few thousand
    columns) at half this CPU's peak, and at a third of it for the 64 rows of a decode step."""
    M, k = x.shape
    n = out.shape[1]
    kq = k // 4
    blocks = -(-n // GEMM_COLUMNS)
    rows = -(-M // GEMM_ROWS) * GEMM_ROWS
    xu = np.zeros((rows, k), np.uint8)  # padding rows are computed and dropped
    if M * k < GEMM_SERIAL:  # a few rows (a decode step of a few chunks): one parallel region fewer
        _unsigned_rows(x, 0, M, xu)
    else:
        for i in numba.prange(M):
            _unsigned_rows(x, i, i + 1, xu)
    xw = xu.view(np.int32)  # a row's 4 activations per int32, as simd.splat takes them
    cb = corr.view(np.uint8)
    row_blocks = rows // GEMM_ROWS
    per_tile = min(GEMM_TILE // GEMM_ROWS, row_blocks)
    tiles = -(-row_blocks // per_tile)
    for job in numba.prange(tiles * blocks * per_tile):
        tile, rest = job // (blocks * per_tile), job % (blocks * per_tile)
        c, rb = rest // per_tile, tile * per_tile + rest % per_tile
        if rb >= row_blocks:
            continue
        r0 = rb * GEMM_ROWS
        sums = _block_sums(wp, c * kq * 256, 256, kq, (xw[r0], xw[r0 + 1], xw[r0 + 2], xw[r0 + 3]),
                           _four_vectors(cb, c * 256))
        for r in range(GEMM_ROWS):
            if r0 + r < M:
                for v in range(4):
                    col = c * GEMM_COLUMNS + 16 * v
                    if col < n:
                        simd.store(out[r0 + r], col, sums[r][v])


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
    for i in numba.prange(acc.shape[0]):
        _rescale_row(acc[i], mult, row_mult[i], base - e[i] if e.size else base, add, out[i])


@numba.njit(inline="always")
def _rescale_row(acc: np.ndarray, mult: np.ndarray, row_mult: np.int64, si: np.int64, add: bool,
                 out: np.ndarray) -> None:  # pragma: no cover
    """`rescale` of one row acc with its row multiplier and shift si into out (added when add)."""
    rm = row_mult << max(-si, 0)
    pos = max(si, 0)
    half = (np.int64(1) << pos) >> 1
    for j in range(acc.size):
        y = (np.int64(acc[j]) * mult[j] * rm + half) >> pos
        out[j] = out[j] + y if add else y


@numba.njit(inline="always")
def _silu_row(gu: np.ndarray, inter: int, sig: np.ndarray, step_shift: int, frac: int, idx: np.ndarray,
              out: np.ndarray) -> None:  # pragma: no cover
    """`Engine._silu_mul` of one row gu (gate then up halves) into out [inter], idx [inter] scratch.
    The table reads are a pass of their own: in one loop with the arithmetic they kept it all
    scalar, in three the index and product passes are vector loops (gated_quantize at 256 rows
    took 130-170 us where it had taken 200-260)."""
    mid = sig.size // 2
    top = sig.size - 1
    g, u = gu[:inter], gu[inter:]
    rnd = np.int64(1) << (frac - 1)
    for j in range(inter):
        idx[j] = min(max((g[j] >> step_shift) + mid, 0), top)
    for j in range(inter):
        out[j] = sig[idx[j]]
    for j in range(inter):
        h = (out[j] * g[j] + (1 << 14)) >> 15
        out[j] = (h * u[j] + rnd) >> frac


@numba.njit(parallel=True, cache=True, nogil=True)
def gated_quantize(acc: np.ndarray, mult: np.ndarray, row_mult: np.ndarray, base: int, sig: np.ndarray,
                   step_shift: int, frac: int, q: np.ndarray, m: np.ndarray,
                   e: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """The gated MLP between its two products in one pass: the gate and up products acc [N, 2 inter]
    (int32) rescaled (`rescale` with row_mult [N] and shift base), through `Engine._silu_mul`, quantized
    (`quantize_rows`) into q [N, inter] (int8), m, e [N] for the down product. Where three kernels
    wrote and read two int64 tables, each row stays in cache."""
    N, n = acc.shape
    inter = n // 2
    parts = min(N, SCRATCH_PARTS)
    for part in numba.prange(parts):
        gu = np.empty(n, np.int64)
        h = np.empty(inter, np.int64)
        idx = np.empty(inter, np.int64)
        for i in range(part * N // parts, (part + 1) * N // parts):
            _rescale_row(acc[i], mult, row_mult[i], base, False, gu)
            _silu_row(gu, inter, sig, step_shift, frac, idx, h)
            m[i], e[i] = _quantize_row(h, q[i])


@numba.njit(parallel=True, cache=True, nogil=True)
def embed(tokens: np.ndarray, q: np.ndarray, mult: np.ndarray, shift: int,
          out: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """The embedding lookup of `Engine._forward`: out[i] = rshift_round(q[t] * mult[t], shift) for
    the token t = tokens[i], q [V, d] int8 rows, mult [V]. In one pass where torch took five
    (about 5% of a scoring's time under cProfile)."""
    for i in numba.prange(tokens.size):
        t = tokens[i]
        m = mult[t]
        row = q[t]
        o = out[i]
        if shift > 0:
            half = np.int64(1) << (shift - 1)
            for j in range(row.size):
                o[j] = (np.int64(row[j]) * m + half) >> shift
        else:
            for j in range(row.size):
                o[j] = (np.int64(row[j]) * m) << -shift


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


DIGIT_BITS = 7  # attend_bytes writes its weights as base-128 digits: each fits a signed or unsigned byte


@numba.njit(inline="always")
def _digit_plane(w: np.ndarray, n: int, k: int, plane: np.ndarray, end: int) -> None:  # pragma: no cover
    """Digit k (base 2**DIGIT_BITS) of the weights w[:n] into plane[:n], and 0 from n up to end:
    the unsigned byte operand of `attend_bytes`'s value products."""
    for j in range(n):
        plane[j] = (w[j] >> (DIGIT_BITS * k)) & 127
    for j in range(n, end):
        plane[j] = 0


@numba.njit(parallel=True, cache=True, nogil=True)
def rounded_quotients(sums: np.ndarray, den: np.ndarray, a: int, g: int,
                      out: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """`attend`'s last step for a block of query rows r = (t, head in group) whose weighted value
    sums were computed by a GEMM: each exact sum of sums [B, KV, R, hd] (float64 integers below
    2**53) divided by its row's den [B, KV, R], rounded half up, and written to out[b, a + r //
    g, h, r % g] (out [B, T, KV, g, hd]). One pass where torch took a cast, an int64 division and
    a strided copy."""
    B, KV, R, hd = sums.shape
    for job in numba.prange(B * KV * R):
        b, h, r = job // (KV * R), (job // R) % KV, job % R
        t, i = a + r // g, r % g
        dn = den[b, h, r]
        inv = _inverse(dn)
        for c in range(hd):
            out[b, t, h, i, c] = _rounded_quotient(np.int64(sums[b, h, r, c]), dn, inv)


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
def append_kv(kv: np.ndarray, a: int, bits: int, k8: bool, kt: np.ndarray, ek: np.ndarray,
              vt: np.ndarray, ev: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """_Cache.append on the kernel path without the byte cache: the keys and values kv [B, T, 2 KV,
    hd] (int64; key heads first) of positions a.. into the cache's layout, transposed kt, vt [B,
    KV, hd, room]; each key row pow2-quantized to bits (exponents into ek [B, KV, room]) when k8,
    else stored whole with exponent 0, as every value row (exponent 0 into ev). One pass where
    torch took a quantize, a permute and a strided copy per tensor."""
    B, T, KV2, hd = kv.shape
    KV = KV2 // 2
    for job in numba.prange(B * KV):
        b, h = job // KV, job % KV
        row = np.empty(hd, np.int64)
        for t in range(T):
            _store_column(kv[b, t, h], bits, k8, row, kt, ek, b, h, a + t)
            _store_column(kv[b, t, KV + h], bits, False, row, vt, ev, b, h, a + t)


@numba.njit(inline="always")
def _rope_row(acc: np.ndarray, mult: np.ndarray, row_mult: np.int64, base: int, heads: int, hd: int,
              c: np.ndarray, s: np.ndarray, shift: int, bias: int, limit: int, rest_limit: int,
              y: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """One row of `rescale_rope`: acc rescaled into y (int64), its first heads * hd columns rotated
    by c, s and clamped to +-limit, the rest clamped to +-rest_limit. Loops over slices: indexed
    from offsets, they had stayed scalar (3x the time)."""
    half = hd // 2
    _rescale_row(acc, mult, row_mult, base, False, y)
    rest = y[heads * hd:]
    for j in range(rest.size):
        rest[j] = min(rest_limit, max(-rest_limit, rest[j]))
    for h in range(heads):
        x1, x2 = y[h * hd: h * hd + half], y[h * hd + half: (h + 1) * hd]
        for j in range(half):
            u, v = x1[j], x2[j]
            x1[j] = min(limit, max(-limit, (u * c[j] - v * s[j] + bias) >> shift))
            x2[j] = min(limit, max(-limit, (v * c[j] + u * s[j] + bias) >> shift))


@numba.njit(parallel=True, cache=True, nogil=True)
def rescale_rope(acc: np.ndarray, mult: np.ndarray, row_mult: np.ndarray, base: int, heads: int, hd: int,
                 cos: np.ndarray, sin: np.ndarray, shift: int, bias: int, limit: int, rest_limit: int,
                 out: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """Engine._qkv after its product in one pass: each row of acc [N, width] (int32 or int64)
    rescaled (`rescale` with row_mult [N] and shift base) into out [N, width] (int64), then
    Engine._rope_q10 on its first heads * hd columns by the row's cos, sin [N, hd / 2]: (x1 cos -
    x2 sin + bias) >> shift and (x2 cos + x1 sin + bias) >> shift, clamped to +-limit; the columns
    after them (the values) clamped to +-rest_limit."""
    for i in numba.prange(acc.shape[0]):
        _rope_row(acc[i], mult, row_mult[i], base, heads, hd, cos[i], sin[i], shift, bias, limit, rest_limit, out[i])


# ---- the byte cache: int8 keys and values laid out for simd.dot4 ------------------------------
KEY_BLOCK = 16  # positions per block of the byte cache's keys: one simd.Vec of scores
VALUE_GROUP = 4  # positions per group of the byte cache's values: one simd.dot4 lane's four bytes
VALUE_SPAN = 64  # value columns per pass of attend_bytes's weighted sums: four Vec accumulators


@numba.njit(cache=True)
def byte_cache_widths(hd: int) -> tuple[int, int]:
    """(key width, value width) of a byte cache position for head dimension hd: padded to a multiple
    of 4 (the bytes of a dot4 lane) and of VALUE_SPAN."""
    return -(-hd // 4) * 4, -(-hd // VALUE_SPAN) * VALUE_SPAN


@numba.njit(inline="always")
def _store_byte_row(k: np.ndarray, v: np.ndarray, bits: int, p: int, kbh: np.ndarray, vbh: np.ndarray,
                    row: np.ndarray) -> tuple[np.int64, np.int64]:  # pragma: no cover  (compiled)
    """Position p's key row k and value row v (int64, hd each) into one chunk's and head's part of
    the byte cache of a model with int8 keys and values, each pow2-quantized to bits; returns their
    exponents (for ek, ev [B, KV, room]); row is scratch of length hd. The key magnitudes k + 128
    (unsigned bytes) go into kbh [room * wk] at block p // KEY_BLOCK, laid out [room / KEY_BLOCK,
    wk / 4, KEY_BLOCK, 4]: 64 bytes hold four columns of 16 positions, as `simd.dot4` pairs them
    with a query's bytes; the values into vbh [room * wv] laid out [room / VALUE_GROUP, wv,
    VALUE_GROUP]: 64 bytes hold four positions of 16 columns (wk, wv from `byte_cache_widths`;
    padding left unwritten)."""
    hd = k.size
    wk, wv = byte_cache_widths(hd)
    e_k = _pow2_row(k, bits, row)
    base = (p // KEY_BLOCK) * wk * KEY_BLOCK + (p % KEY_BLOCK) * 4
    for d in range(hd):
        kbh[base + (d // 4) * 4 * KEY_BLOCK + d % 4] = row[d] + 128
    e_v = _pow2_row(v, bits, row)
    base = (p // VALUE_GROUP) * wv * VALUE_GROUP + p % VALUE_GROUP
    for d in range(hd):
        vbh[base + d * VALUE_GROUP] = row[d]
    return e_k, e_v


@numba.njit(inline="always")
def _query_bytes(q: np.ndarray, q_bits: int, g: int, r: int, row: np.ndarray, qbh: np.ndarray,
                 corrh: np.ndarray) -> np.int64:  # pragma: no cover  (compiled)
    """Query row q (int64; head r of its KV head's group of g) pow2-quantized to q_bits as the byte
    rows of qbh [m, wk] (int8, padding columns set to 0) that `attend_bytes` multiplies with the
    keys: row r its bytes, or, for q_bits > 7, row r the high half q >> 7 and row g + r the low
    half q & 127 (their scores recombine exactly in int64); corrh [m] (int32) gets each byte row's
    -128 * sum, which turns the products with the unsigned key bytes k + 128 into q . k. Returns
    the row's exponent."""
    e = _pow2_row(q, q_bits, row)
    hd, wk = q.size, qbh.shape[1]
    for half in range(1 if q_bits <= 7 else 2):
        i = half * g + r
        dest = qbh[i]
        for d in range(hd):
            if q_bits <= 7:
                dest[d] = row[d]
            elif half == 0:
                dest[d] = row[d] >> 7
            else:
                dest[d] = row[d] & 127
        for d in range(hd, wk):
            dest[d] = 0
        total = np.int32(0)
        for d in range(hd):
            total += dest[d]
        corrh[i] = -128 * total
    return e


@numba.njit(parallel=True, cache=True, nogil=True)
def rope_bytes(acc: np.ndarray, mult: np.ndarray, row_mult: np.ndarray, base: int, heads: int, hd: int,
               cos: np.ndarray, sin: np.ndarray, shift: int, bias: int, limit: int, rest_limit: int, r0: int, a: int,
               q_bits: int, bits: int, kb: np.ndarray, ek: np.ndarray, vb: np.ndarray, ev: np.ndarray, qb: np.ndarray,
               eq: np.ndarray, corr: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """`rescale_rope`'s rows (heads query heads, then KV key and KV value heads) put straight where
    `attend_bytes` reads them, for a model with the byte cache: row i of acc [N, width] is row r0 +
    i of the forward's rows (b, t) (T = qb.shape[1] per chunk), at position a + t. Its keys and
    values go into the byte cache (`_store_byte_row`: kb, ek, vb, ev), its queries into qb [B, T,
    KV, m, wk] (int8), eq [B, T, KV, g] and corr [B, T, KV, m] (`_query_bytes`). Each row is
    rotated and quantized while it is in the first-level cache: a scoring had written every row
    whole as int64 (8 MB a layer for two chunks) and read it back in `attend_bytes`, whose key
    appends then took a parallel pass of their own."""
    N = acc.shape[0]
    T, KV = qb.shape[1], qb.shape[2]
    g = heads // KV
    parts = min(N, SCRATCH_PARTS)
    for part in numba.prange(parts):
        y = np.empty((heads + 2 * KV) * hd, np.int64)
        row = np.empty(hd, np.int64)
        for i in range(part * N // parts, (part + 1) * N // parts):
            _rope_row(acc[i], mult, row_mult[i], base, heads + KV, hd, cos[i], sin[i], shift, bias, limit, rest_limit,
                      y)
            b, t = (r0 + i) // T, (r0 + i) % T
            for h in range(KV):
                k, v = y[(heads + h) * hd: (heads + h + 1) * hd], y[(heads + KV + h) * hd: (heads + KV + h + 1) * hd]
                ek[b, h, a + t], ev[b, h, a + t] = _store_byte_row(k, v, bits, a + t, kb[b, h], vb[b, h], row)
            for hq in range(heads):
                h, r = hq // g, hq % g
                eq[b, t, h, r] = _query_bytes(y[hq * hd: (hq + 1) * hd], q_bits, g, r, row, qb[b, t, h], corr[b, t, h])


@numba.njit(inline="always")
def _byte_scores(kbh: np.ndarray, qw: np.ndarray, corr: np.ndarray, i: int, n: int, wk: int,
                 sc: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """Query byte rows i and i + 1 (or i alone when i + 1 == qw.shape[0]) of qw [m, wk / 4] (each
    int32 four signed bytes) times the keys of positions < n (rounded up to a block), into sc [m,
    room] (int32): sum_d q_d (k_d + 128) + corr = q . k with corr = -128 sum_d q_d."""
    pair = i + 1 < qw.shape[0]
    for blk in range((n + KEY_BLOCK - 1) // KEY_BLOCK):
        base = blk * wk * KEY_BLOCK
        a0 = simd.splat(corr[i])
        a1 = simd.splat(corr[i + 1] if pair else 0)
        for c in range(wk // 4):
            keys = simd.load(kbh, base + c * 4 * KEY_BLOCK)
            a0 = simd.dot4(a0, keys, simd.splat(qw[i, c]))
            if pair:
                a1 = simd.dot4(a1, keys, simd.splat(qw[i + 1, c]))
        simd.store(sc[i], blk * KEY_BLOCK, a0)
        if pair:
            simd.store(sc[i + 1], blk * KEY_BLOCK, a1)


@numba.njit(inline="always")
def _byte_sums(vbh: np.ndarray, dig: np.ndarray, i: int, groups: int, wv: int,
               acc: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """The value sums of digit planes i..i+3 of dig [planes, room] (unsigned bytes: base-128 digits
    of a query row's weights, 0 from the first unused position up to groups * VALUE_GROUP) in one
    pass over the values: acc [planes * wv] (int32) receives at p * wv + c the sum_j dig[p, j] v_jc
    of column c. Sixteen accumulators (four planes of four column vectors) share each value load
    (`_block_sums`)."""
    rows = dig[i].view(np.int32), dig[i + 1].view(np.int32), dig[i + 2].view(np.int32), \
        dig[i + 3].view(np.int32)  # four positions' digits per int32
    z = simd.splat(0)
    for span in range(wv // VALUE_SPAN):
        sums = _block_sums(vbh, span * VALUE_SPAN * VALUE_GROUP, wv * VALUE_GROUP, groups, rows, (z, z, z, z))
        col = i * wv + span * VALUE_SPAN
        for k in range(4):
            for c in range(4):
                simd.store(acc, col + k * wv + 16 * c, sums[k][c])


@numba.njit(inline="always")
def _four_vectors(src: np.ndarray, off: int) -> tuple:  # pragma: no cover  (compiled)
    """The 256 bytes of src from flat element off on as four simd.Vec (64 columns of 4 bytes)."""
    return simd.load(src, off), simd.load(src, off + 64), simd.load(src, off + 128), simd.load(src, off + 192)


@numba.njit(inline="always")
def _block_sums(src: np.ndarray, first: int, stride: int, steps: int, rows: tuple,
                start: tuple) -> tuple:  # pragma: no cover  (compiled)
    """A block of 4 rows times 64 columns of byte dot products, the inner loop of `gemm_bytes` and
    `_byte_sums`: from start (four Vec, taken by every row), for s < steps the four vectors of src
    at first + s * stride (`_four_vectors`) times each row's four bytes rows[r][s] (an int32).
    Sixteen accumulators share each load; returns the four rows' four Vec."""
    a0 = a1 = a2 = a3 = start
    for s in range(steps):
        v = _four_vectors(src, first + s * stride)
        a0 = _dot4_columns(a0, simd.splat(rows[0][s]), v)
        a1 = _dot4_columns(a1, simd.splat(rows[1][s]), v)
        a2 = _dot4_columns(a2, simd.splat(rows[2][s]), v)
        a3 = _dot4_columns(a3, simd.splat(rows[3][s]), v)
    return a0, a1, a2, a3


@numba.njit(inline="always")
def _dot4_columns(a: tuple, w: simd.Vec, v: tuple) -> tuple:  # pragma: no cover  (compiled)
    """One row's four accumulators a (of 16 columns each) plus its four bytes w times the four
    vectors of bytes v."""
    return simd.dot4(a[0], w, v[0]), simd.dot4(a[1], w, v[1]), simd.dot4(a[2], w, v[2]), simd.dot4(a[3], w, v[3])


@numba.njit(parallel=True, cache=True, nogil=True)
def attend_bytes(qb: np.ndarray, eq: np.ndarray, corr: np.ndarray, a: int, kb: np.ndarray, ek: np.ndarray,
                 vb: np.ndarray, ev: np.ndarray, table: np.ndarray, att_bits: int,
                 out: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """`attend` over the byte cache, the same integers by byte dot products (`simd.dot4`, four per
    lane and instruction). The queries of positions a..a+T-1 come as `rope_bytes` leaves them, with
    their keys and values already in the cache: byte rows qb [B, T, KV, m, wk] (int8; m = g rows of
    one byte each, or 2g: high halves, then low halves, whose scores recombine exactly in int64),
    exponents eq [B, T, KV, g] and corrections corr [B, T, KV, m]. Each query row attends over
    positions 0..its own. After the table step (`_table_base`, `_table_value`) each weight e_j <<
    (ev_j - low) (low the least value exponent up to the query's position; below 2**(att_bits +
    spread)) is written as base-128 digits, and each digit plane's sums with the int8 values
    (below 127 * 127 * context < 2**31, the bound the model asserts) are put together in int64
    before the rounded quotient. While its first two rows' table steps run (scalar table reads, no
    memory traffic of their own), the kernel prefetches the job's values and the next job's keys:
    a thread otherwise waited for each of those streams in turn, and on a decode step at batch 256
    the kernel took 2.4-2.5 ms a layer instead of 2.0. A row that prefetches nothing (a long
    chunk's queries after its first, whose keys and values are in cache) takes its table step in
    three passes instead, index, table read and weight, of which only the reads are scalar: a
    scoring layer 18-27% faster; rows that prefetch keep the one scalar pass, which spaces their
    prefetches (in the three-pass form a decode layer took 1.8-2.1 ms against 1.6). When scoring
    (T > 1) the items (chunk, head, query) run in parts that the threads take as they free up
    (`atomics`): split evenly beforehand, one thread had often taken a quarter longer than the
    other (16-chunk scorings 4-5% faster). A decode step's parts stay split evenly, each thread's
    chunks next to each other in memory: handed out, they made its steps 9% slower. Writes out
    [B, T, KV, g, hd]."""
    B, T, KV, m, wk = qb.shape
    g = eq.shape[3]
    halves = m // g
    hd = out.shape[4]
    wv = byte_cache_widths(hd)[1]
    room = ek.shape[2]
    top_digits = (att_bits + 127 + DIGIT_BITS) // DIGIT_BITS  # int8 exponents spread at most 127
    top_planes = (g * top_digits + 3) // 4 * 4
    last = table.size - 1
    jobs = B * KV
    items = jobs * T  # one item per chunk, head and query position
    parts = min(items, SCRATCH_PARTS)
    counter = np.zeros(1, np.int64)
    for worker in numba.prange(parts):  # workers: each takes parts until none are left, the first on each thread all
        part = next_part(counter, parts) if T > 1 else worker
        if part < 0:
            continue
        sc = np.empty((m, room), np.int32)
        x = np.empty(room, np.int64)
        ix = np.empty(room, np.int64)
        den = np.empty(g, np.int64)
        dig = np.empty((top_planes, room), np.uint8)
        acc = np.empty(top_planes * wv, np.int32)
        sums = acc.reshape(top_planes, wv)  # plane p's sums in row p: indexed by offsets, the loops had gathered
        tot = np.empty(hd, np.int64)
        while part >= 0:
            start = part * items // parts
            for item in range(start, (part + 1) * items // parts):
                job, t = item // T, item % T
                b, h = job // KV, job % KV
                vbh = vb[b, h]
                fetch = t == 0 or item == start  # this job's values are not in cache yet
                n = a + t + 1
                qw, ch, er_row = qb[b, t, h].view(np.int32), corr[b, t, h], eq[b, t, h]
                for i in range(0, m, 2):
                    _byte_scores(kb[b, h], qw, ch, i, n, wk, sc)
                low, top = _span(ev[b, h], n)
                nd = (att_bits + top - low + DIGIT_BITS - 1) // DIGIT_BITS
                groups = (n + VALUE_GROUP - 1) // VALUE_GROUP
                nxt = min(job + 1, jobs - 1)
                kbn = kb[nxt // KV, nxt % KV]
                ekb, evb = ek[b, h], ev[b, h]
                for r in range(g):
                    sr, er = sc[r], er_row[r]
                    if halves == 1:
                        for j in range(n):
                            x[j] = np.int64(sr[j]) << (er + np.int64(ekb[j]))
                    else:
                        sl = sc[g + r]
                        for j in range(n):
                            x[j] = ((np.int64(sr[j]) << 7) + sl[j]) << (er + np.int64(ekb[j]))
                    top_x = np.iinfo(np.int64).min
                    for j in range(n):
                        top_x = max(top_x, x[j])
                    base = _table_base(top_x)
                    fetch_values = r == 0 and fetch
                    fetch_keys = r == min(1, g - 1) and t == T - 1
                    dn = np.int64(0)
                    if fetch_values or fetch_keys:  # one scalar pass, which paces the prefetches
                        for j in range(n):  # the table step of _table_row, with each weight made in the same pass
                            if fetch_values:
                                simd.prefetch(vbh, j * wv)
                            if fetch_keys:
                                simd.prefetch(kbn, j * wk)
                            e = _table_value(table, base, x[j])
                            dn += e
                            x[j] = e << (np.int64(evb[j]) - low)  # the weight of value row j
                    else:  # the table reads alone in a scalar pass: the passes around it are vector loops
                        for j in range(n):
                            ix[j] = _table_index(base, x[j], last)
                        for j in range(n):
                            ix[j] = table[ix[j]]
                        for j in range(n):
                            dn += ix[j]
                            x[j] = ix[j] << (np.int64(evb[j]) - low)
                    den[r] = dn
                    for k in range(nd):
                        _digit_plane(x, n, k, dig[r * nd + k], groups * VALUE_GROUP)
                planes = (g * nd + 3) // 4 * 4
                for i in range(g * nd, planes):
                    for j in range(groups * VALUE_GROUP):
                        dig[i, j] = 0
                for i in range(0, planes, 4):
                    _byte_sums(vbh, dig, i, groups, wv, acc)
                for r in range(g):  # the digit planes' sums put together, plane by plane (vector loops over rows)
                    first = sums[r * nd]
                    for d in range(hd):
                        tot[d] = np.int64(first[d]) << low
                    for k in range(1, nd):
                        plane, shift = sums[r * nd + k], DIGIT_BITS * k + low
                        for d in range(hd):
                            tot[d] += np.int64(plane[d]) << shift
                    dn = den[r]
                    inv = _inverse(dn)
                    o = out[b, t, h, r]
                    for d in range(hd):
                        o[d] = _rounded_quotient(tot[d], dn, inv)
            part = next_part(counter, parts) if T > 1 else -1
