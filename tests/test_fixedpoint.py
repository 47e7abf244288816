"""The exact integer primitives: what the engine's portability rests on."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from archiver.fixedpoint import F32_EXACT_K, gemm, isqrt, quantize_rows, rshift_round, split_scale


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
