"""The byte dot products of `archiver.simd` and the attention kernel built on them: the same integers
in VNNI's instruction and in the portable form every other CPU compiles."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from archiver import atomics, kernels, simd
from tests.test_engine import _attend_reference

FORMS = sorted({simd.NATIVE, False}, reverse=True)  # this CPU's form, and the portable one


def _compiled(fn, native: bool, monkeypatch, **opts):
    """fn compiled afresh (no cache) with simd's VNNI form (native) or its portable one."""
    monkeypatch.setattr(simd, "NATIVE", native)
    return numba.njit(**opts)(fn)


def _dots(u, s, start, out):  # pragma: no cover  (compiled)
    a = simd.splat(start)
    for i in range(u.size // 64):
        a = simd.dot4(a, simd.load(u, i * 64), simd.load(s, i * 64))
    simd.store(out, 0, a)


@pytest.mark.parametrize("native", FORMS, ids=lambda native: "vnni" if native else "portable")
def test_dot4_sums_each_lanes_four_products_and_wraps_at_32_bits(native, monkeypatch):
    """Lane i gains u[4i + k] * s[4i + k] for k < 4, unsigned times signed bytes, at the extremes
    too; the sum wraps as int32 arithmetic does (the kernels stay below 2**31, but both forms must
    agree whatever comes)."""
    dots = _compiled(_dots, native, monkeypatch)
    rng = np.random.default_rng(0)
    u = rng.integers(0, 256, 64 * 7).astype(np.uint8)
    s = rng.integers(-128, 128, 64 * 7).astype(np.int8)
    u[:64], s[:64] = 255, -128  # the largest products
    for start in (0, -12345, 2**31 - 1):
        out = np.zeros(16, np.int32)
        dots(u, s, np.int32(start), out)
        want = (u.astype(np.int64) * s).reshape(7, 16, 4).sum((0, 2)) + start
        assert np.array_equal(out, ((want + 2**31) % 2**32 - 2**31).astype(np.int32))


def _kv_rows(kt, ek, vt, ev):
    """The rows [B, room, 2 KV, hd] (int64, key heads first) of keys kt and values vt [B, KV, hd,
    room] times their powers of two ek, ev [B, KV, room]: what quantizes back to exactly them
    when each row's largest magnitude is 127."""
    return np.concatenate([np.transpose(a.astype(np.int64), (0, 3, 1, 2)) << np.transpose(e, (0, 2, 1))[..., None]
                           for a, e in ((kt, ek), (vt, ev))], axis=2)


def _rope_bytes(rows, a, q_bits, cache, g):
    """kernels.rope_bytes over rows [B, T, KV * g + 2 KV, hd] (int64: queries, keys, values) under
    an identity rescale and rotation (multipliers 1, shift 0; cos 2**14, sin 0, no bias; limits
    beyond every value): their keys and values into the byte cache (kb, ek, vb, ev) at positions
    a.., their queries pow2-quantized to q_bits; returns the queries as attend_bytes takes them
    (qb, eq, corr)."""
    B, T, width, hd = rows.shape
    KV = width // (g + 2)
    m = g * (1 if q_bits <= 7 else 2)
    n = B * T
    acc = rows.reshape(n, -1)
    cos, sin = np.full((n, hd // 2), 1 << 14, np.int64), np.zeros((n, hd // 2), np.int64)
    qb = np.full((B, T, KV, m, kernels.byte_cache_widths(hd)[0]), 99, np.int8)  # padding must be zeroed
    eq, corr = np.zeros((B, T, KV, g), np.int64), np.zeros((B, T, KV, m), np.int32)
    kernels.rope_bytes(acc, np.ones(acc.shape[1], np.int64), np.ones(n, np.int64), 0, KV * g, hd, cos, sin, 14, 0,
                       1 << 60, 1 << 60, 0, a, q_bits, 7, *cache, qb, eq, corr)
    return qb, eq, corr


def _byte_cache(kv, n, g):
    """The byte cache of the first n positions of kv (`_kv_rows`), with room for all of kv's
    positions (in whole blocks), stored by kernels.rope_bytes (with queries of zeros, dropped)."""
    B, room, KV2, hd = kv.shape
    KV = KV2 // 2
    wk, wv = kernels.byte_cache_widths(hd)
    room = -(-room // 64) * 64
    cache = (np.zeros((B, KV, room * wk), np.uint8), np.zeros((B, KV, room), np.int8),
             np.zeros((B, KV, room * wv), np.int8), np.zeros((B, KV, room), np.int8))
    if n:
        _rope_bytes(np.concatenate([np.zeros((B, n, KV * g, hd), np.int64), kv[:, :n]], axis=2), 0, 7, cache, g)
    return cache


CASES = {"7-bit queries": (2, 2, 2, 3, 8, 37, 1), "split queries, many digit planes": (3, 3, 1, 4, 20, 70, 2),
         "long history": (2, 1, 2, 2, 64, 700, 1), "a whole chunk's queries": (2, 45, 2, 2, 16, 0, 1),
         "many split queries after a history": (1, 21, 3, 3, 64, 19, 2)}  # B, T, KV, g, hd, p0, halves


@pytest.mark.parametrize("form", ["as cached", "portable"])
def test_attention_over_the_byte_cache_equals_its_definition(form, monkeypatch):
    """kernels.rope_bytes stores a layer's new keys and values and quantizes its queries, and
    kernels.attend_bytes over them (as the engine runs it, and compiled afresh in the portable
    form) gives the integers of kernels.attend's definition: queries of one byte or split in two,
    head sizes that are not a multiple of 4 or 64, odd groups, several queries per chunk after a
    history or a whole chunk's from its start (the queries of a chunk spread over several jobs),
    weights of one to six digit planes (several passes of four). Every row's largest magnitude is
    the limit of its bits, so the rows it quantizes are exactly the definition's integers times
    their powers of two."""
    attend = kernels.attend_bytes
    if form == "portable":
        attend = _compiled(attend.py_func, False, monkeypatch, parallel=True)
    for case, (B, T, KV, g, hd, p0, halves) in CASES.items():
        rng = np.random.default_rng(len(case))
        lim = (1 << (7 * halves)) - 1
        room = p0 + T
        q = rng.integers(-lim, lim + 1, (B, T, KV, g, hd))
        q[..., 0] = lim
        eq = rng.integers(0, 3, (B, T, KV, g))
        kt = rng.integers(-127, 128, (B, KV, hd, room), dtype=np.int8)
        vt = rng.integers(-127, 128, (B, KV, hd, room), dtype=np.int8)
        kt[:, :, 0], vt[:, :, 0] = 127, -127
        ek = rng.integers(0, 3, (B, KV, room), dtype=np.int8)
        ev = rng.integers(3, 30 if "many" in case else 8, (B, KV, room), dtype=np.int8)
        table = (2047 * np.exp(-np.arange(40) / 6)).astype(np.int64)
        table[-1] = 0
        kv = _kv_rows(kt, ek, vt, ev)
        cache = _byte_cache(kv, p0, g)  # the history; rope_bytes stores the rest
        y = np.concatenate([(q << eq[..., None]).reshape(B, T, KV * g, hd), kv[:, p0:]], axis=2)
        queries = _rope_bytes(y, p0, 7 * halves, cache, g)
        assert np.array_equal(queries[1], eq), case
        out = np.zeros(q.shape, np.int64)
        attend(*queries, p0, *cache, table, int(table.max()).bit_length(), out)
        assert np.array_equal(cache[1][..., :room], ek) and np.array_equal(cache[3][..., :room], ev), case
        assert np.array_equal(out, _attend_reference(q, eq, kt, ek, vt, ev, p0, table)), case


@pytest.mark.parametrize("form", ["as cached", "portable"])
def test_byte_gemm_equals_the_integer_product(form, monkeypatch):
    """kernels.gemm_bytes over kernels.pack_columns's layout gives x @ w.T exactly: rows that do not
    fill a block of 4 or a tile, columns that do not fill a block of 64 (but whole vectors of 16),
    several tiles, and the extreme bytes (-128 activations, +-127 weights)."""
    gemm = kernels.gemm_bytes
    if form == "portable":
        gemm = _compiled(gemm.py_func, False, monkeypatch, parallel=True)
    rng = np.random.default_rng(5)
    for M, k, n in ((1, 4, 16), (7, 12, 48), (70, 64, 80), (131, 256, 192)):
        x = rng.integers(-128, 128, (M, k)).astype(np.int8)
        w = rng.integers(-127, 128, (n, k)).astype(np.int8)
        x[0], w[0], w[-1] = -128, 127, -127
        out = np.zeros((M, n), np.int32)
        gemm(x, *kernels.pack_columns(w), out)
        assert np.array_equal(out, x.astype(np.int64) @ w.T.astype(np.int64)), (M, k, n)


def _take_parts(parts, taken):  # pragma: no cover  (compiled)
    counter = np.zeros(1, np.int64)
    for _ in numba.prange(parts):
        part = atomics.next_part(counter, parts)
        while part >= 0:
            taken[part] += 1
            part = atomics.next_part(counter, parts)


def test_parts_handed_out_as_threads_free_up_are_each_taken_once():
    """atomics.next_part hands every part to exactly one worker, whichever thread runs it, and -1
    once all are out (the attention kernel's parts, taken as threads free up)."""
    take = numba.njit(parallel=True)(_take_parts)
    for parts in (1, 2, 7, 64, 1000):
        taken = np.zeros(parts, np.int64)
        take(parts, taken)
        assert (taken == 1).all(), parts
    counter = np.zeros(1, np.int64)
    assert numba.njit(lambda c: (atomics.fetch_add(c, 5), atomics.fetch_add(c, 1)))(counter) == (0, 5)
    assert counter[0] == 6
