"""The exact integer primitives: what the engine's portability rests on."""

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver import kernels
from archiver.fixedpoint import (
    F32_EXACT_K,
    gemm,
    isqrt,
    pow2_quantize,
    quantize_rows,
    rescale_,
    rshift_round,
    split_scale,
)


@given(st.lists(st.integers(0, (1 << 52) - 1), min_size=1, max_size=50))
def test_isqrt_is_floor_sqrt(values):
    got = isqrt(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [math.isqrt(v) for v in values]


@given(st.lists(st.integers(1, (1 << 50)), min_size=1, max_size=50))
def test_split_scale_covers_value_with_15_bit_mantissa(values):
    v = torch.tensor(values, dtype=torch.int64)
    m, e = split_scale(v)
    assert bool((m <= 1 << 15).all()) and bool(((m << e) >= v).all())
    assert bool((((m - 1) << e) < v).all())  # ceil, not an overestimate


@given(st.lists(st.integers(-(1 << 40), 1 << 40), min_size=1, max_size=64))
def test_quantize_rows_bounds_and_accuracy(values):
    x = torch.tensor([values], dtype=torch.int64)
    q, m, e = quantize_rows(x)
    assert int(q.abs().max()) <= 127
    approx = q * (m << e)  # = x * 128, up to rounding and the clamp at 127
    err = (approx - x * 128).abs().max()
    assert int(err) <= int(m << e) * 2


@given(st.integers(-(1 << 40), 1 << 40), st.integers(-8, 30))
def test_rshift_round_matches_rounding(x, s):
    want = x * 2 ** (-s)
    got_int = int(rshift_round(torch.tensor([x]), s)[0])
    got_tensor = int(rshift_round(torch.tensor([x]), torch.tensor([s]))[0])
    assert got_int == got_tensor == math.floor(want + 0.5)


def test_gemm_backends_agree_at_the_exactness_limit():
    g = torch.Generator().manual_seed(0)
    k = 3 * F32_EXACT_K + 5  # split into blocks, last one partial
    q = torch.randint(-127, 128, (9, k), generator=g)
    w = torch.randint(-127, 128, (k, 17), generator=g)
    q[0] = 127
    w[:, 0] = 127  # worst case sums
    exact = q @ w
    for backend, wt in (("int", w.to(torch.int8)), ("f32", w.float()), ("f64", w.double())):
        assert torch.equal(gemm(q, wt, backend), exact), backend


# The compiled CPU kernels (archiver.kernels) against the torch definitions, on extreme values. No
# deadline: the first example may compile the kernel (a few seconds in a fresh clone).
_ROW = st.lists(st.integers(-(1 << 54) + 1, (1 << 54) - 1), min_size=1, max_size=40)


@settings(deadline=None)
@given(st.lists(_ROW, min_size=1, max_size=4), st.integers(0, 54))
def test_quantize_rows_kernel_equals_torch(rows, bits):
    width = len(rows[0])
    x = torch.tensor([(r * width)[:width] for r in rows], dtype=torch.int64) >> (54 - bits)
    q, m, e = quantize_rows(x)
    kq = torch.empty(x.shape, dtype=torch.int8)
    km, ke = torch.empty(len(x), dtype=torch.int64), torch.empty(len(x), dtype=torch.int64)
    kernels.quantize_rows(x.numpy(), kq.numpy(), km.numpy(), ke.numpy())
    assert torch.equal(q, kq) and torch.equal(m.view(-1), km) and torch.equal(e.view(-1), ke)


@settings(deadline=None)
@given(st.lists(st.lists(st.integers(-(1 << 53) + 1, (1 << 53) - 1), min_size=1, max_size=40), min_size=1,
                max_size=4), st.integers(0, 53), st.integers(1, 20))
def test_pow2_quantize_kernel_equals_torch(rows, shift, bits):
    width = len(rows[0])
    x = torch.tensor([(r * width)[:width] for r in rows], dtype=torch.int64) >> shift
    q, e = pow2_quantize(x, bits)
    wider = torch.zeros((len(x), 2, width), dtype=torch.int64)
    wider[:, 1] = x  # the kernel reads rows in place, strided, as the query heads of qkv rows
    kq, ke = torch.empty((len(x), 1, width), dtype=torch.int64), torch.empty((len(x), 1), dtype=torch.int64)
    kernels.pow2_quantize(wider[:, 1:].numpy(), bits, kq.numpy(), ke.numpy())
    assert torch.equal(q, kq.view_as(q)) and torch.equal(e.view(-1), ke.view(-1))


@settings(deadline=None)
@given(st.lists(st.integers(-(1 << 31), (1 << 31) - 1), min_size=6, max_size=6),
       st.lists(st.integers(1, (1 << 15) - 1), min_size=3, max_size=3),
       st.lists(st.integers(1, (1 << 15) - 1), min_size=2, max_size=2),
       st.lists(st.integers(-2, 40), min_size=2, max_size=2))
def test_rescale_kernel_equals_torch(acc, mult, row_mult, shifts):
    a = torch.tensor(acc, dtype=torch.int32).view(2, 3)
    mu, rm, s = (torch.tensor(v, dtype=torch.int64) for v in (mult, row_mult, shifts))
    out = torch.empty((2, 3), dtype=torch.int64)
    kernels.rescale(a.numpy(), mu.numpy(), rm.numpy(), 40, (40 - s).numpy(), False, out.numpy())  # shifts 40 - e
    want = rescale_(a.to(torch.int64), mu, rm[:, None], s[:, None])
    assert torch.equal(out, want)
    kernels.rescale(a.numpy(), mu.numpy(), rm.numpy(), 40, (40 - s).numpy(), True, out.numpy())  # added to out
    assert torch.equal(out, 2 * want)
    kernels.rescale(a.numpy(), mu.numpy(), rm.numpy(), shifts[0], np.empty(0, np.int64), False, out.numpy())
    assert torch.equal(out, rescale_(a.to(torch.int64), mu, rm[:, None], shifts[0]))  # one shift for all rows


@settings(deadline=None)
@given(st.lists(_ROW, min_size=1, max_size=4), st.integers(0, 54), st.integers(0, 40))
def test_norm_quantize_kernel_equals_torch(rows, bits, scale_bits):
    """The RMSNorm's row quantizing and inverse root of Engine._normed_linear, kernel against torch."""
    width = len(rows[0])
    x = torch.tensor([(r * width)[:width] for r in rows], dtype=torch.int64) >> (54 - bits)
    scale = width << scale_bits
    q, _, _ = quantize_rows(x)
    qf = q.to(torch.float64)
    ss = torch.linalg.vecdot(qf, qf).to(torch.int64).clamp_(min=1)
    kq, inv = torch.empty(x.shape, dtype=torch.int8), torch.empty(len(x), dtype=torch.int64)
    kernels.norm_quantize(x.numpy(), scale, kq.numpy(), inv.numpy())
    assert torch.equal(q, kq) and torch.equal(inv, isqrt(torch.div(torch.tensor(scale), ss, rounding_mode="floor")))


@settings(deadline=None)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(1, 1536), st.integers(0, 2**32 - 1))
def test_gemv_kernel_equals_int_mm(rows, cols, k, seed):
    """The small-batch product (kernels.gemv) against torch._int_mm, extremes included: all -127
    or 127 rows reach the int32 bound of the model's widest layers."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-127, 128, (rows, k), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (cols, k), dtype=torch.int8, generator=g)
    x[0], w[0] = -127, 127
    out = torch.empty((rows, cols), dtype=torch.int32)
    kernels.gemv(x.numpy(), w.numpy(), out.numpy())
    want = (x.to(torch.int64) @ w.to(torch.int64).t()).to(torch.int32)  # the exact product
    assert torch.equal(out, want)
