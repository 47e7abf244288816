"""Exact causal attention on the CPU: one compiled integer kernel (numba) for both engine paths.

The engine's integer program fixes every number of attention (see `Engine._attend`, which runs the
same program with torch operations on any device). On a CPU that program is bound by memory
traffic, and torch needs float64 tensors to hold its exact products: 12 bytes per cached key and
value element, read at every step. Here the cache holds what the program defines, no more: keys as
int8 magnitudes and a power-of-two exponent per position (or int32 for the float64-key program),
values as int32, 5 bytes an element; every product and sum is an int64 computed in one pass that
never leaves the cache lines it reads. Integer arithmetic has one result whatever the thread
count or vector unit, so this kernel and the torch path give the same bits (tests check both).

For a query row with exponent eq and the stored key rows k_j with exponents ek_j:
  X_j = (q . k_j) << (eq + ek_j)             the score in units of 2**-12 (an exact integer)
  i_j = min((F(M) + 2047 - X_j) >> 12, last)  F(M) = ((M + 2048) >> 12) << 12, M = max_j X_j
  e_j = table[i_j]                            Q15 exp table
  out = floor((2 * sum_j e_j v_j + den) / (2 den)),  den = sum_j e_j   (rounded half up)
which is, in integers, the torch path's floor(min(m - x, last)) with m = floor(max x + 1/2) + 1/2
- 2**-12, and its exactly rounded quotient. The bounds (|X| < 2**53, |sum e v| <= 2**53) are the
ones the model asserts when it loads.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True, nogil=True)
def attend(q: np.ndarray, eq: np.ndarray, k: np.ndarray, ek: np.ndarray, v: np.ndarray, p0: int,
           table: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover  (compiled; covered through the engine)
    """Queries q [B, T, KV, g, hd] at positions p0.. (exponents eq [B, T, KV, g]) over the cached
    keys k [B, KV, room, hd] (exponents ek [B, KV, room]) and values v [B, KV, room, hd]: query t
    sees positions 0..p0+t. Writes the rounded outputs into out [B, T, KV, g, hd] (int64)."""
    B, T, KV, g, hd = q.shape
    last = table.size - 1
    for job in numba.prange(B * T * KV):
        b = job // (T * KV)
        t = (job // KV) % T
        h = job % KV
        n = p0 + t + 1
        x = np.empty((g, n), np.int64)
        top = np.full(g, np.iinfo(np.int64).min, np.int64)
        for j in range(n):
            kj = k[b, h, j]
            for r in range(g):
                p = 0
                for d in range(hd):
                    p += np.int64(q[b, t, h, r, d]) * np.int64(kj[d])
                s = p << (np.int64(eq[b, t, h, r]) + np.int64(ek[b, h, j]))
                x[r, j] = s
                top[r] = max(top[r], s)
        den = np.zeros(g, np.int64)
        for r in range(g):
            base = (((top[r] + 2048) >> 12) << 12) + 2047
            for j in range(n):
                e = table[min((base - x[r, j]) >> 12, last)]
                x[r, j] = e
                den[r] += e
        acc = np.zeros((g, hd), np.int64)
        for j in range(n):
            vj = v[b, h, j]
            for r in range(g):
                e = x[r, j]
                for d in range(hd):
                    acc[r, d] += e * np.int64(vj[d])
        for r in range(g):
            for d in range(hd):
                out[b, t, h, r, d] = (2 * acc[r, d] + den[r]) // (2 * den[r])
