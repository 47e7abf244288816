"""Exact integer primitives shared by the predictor engine.

Every function here maps integer tensors to integer tensors with operations whose result does not
depend on the CPU, GPU, thread count or summation order: integer add/mul/shift/floor-division,
max, and matrix products whose operands are small integers (see `gemm`). That is what makes an
archive decode on any machine: floating-point inference drifts by ulps, integers do not.

Activations are int64 in fixed point with `F` fractional bits. A matrix product first quantizes its
input rows to int8 with a per-row power-of-two-times-mantissa scale, multiplies exactly, then
rescales with integer multipliers.
"""

from __future__ import annotations

import torch

F = 16  # fractional bits of activations (Q16)
MANTISSA_BITS = 15  # per-row scales are m * 2**e with m < 2**15
SCALE_TOP = 62  # split_scale's exponent thresholds are 2**MANTISSA_BITS .. 2**(SCALE_TOP - 1)
F32_EXACT_K = 1024  # 127*127*1024 < 2**24: a float32 dot product of int8 values this long is exact

_THRESHOLDS: dict[torch.device, torch.Tensor] = {}


def _thresholds(device: torch.device) -> torch.Tensor:
    if device not in _THRESHOLDS:
        powers = [1 << j for j in range(MANTISSA_BITS, SCALE_TOP)]
        _THRESHOLDS[device] = torch.tensor(powers, dtype=torch.int64, device=device)
    return _THRESHOLDS[device]


def split_scale(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Write integers 1 <= v < 2**62 as m * 2**e with m <= 2**15, m * 2**e >= v (ceil), e >= 0."""
    e = (v.unsqueeze(-1) >= _thresholds(v.device)).sum(-1)
    m = ((v - 1) >> e) + 1  # ceil(v / 2**e) for v >= 1
    return m, e


def rshift_round(x: torch.Tensor, s: torch.Tensor | int) -> torch.Tensor:
    """x / 2**s rounded half up, for any integer shift s (negative shifts multiply)."""
    if isinstance(s, int):
        if s > 0:
            return (x + (1 << (s - 1))) >> s
        return x << (-s)
    pos = s.clamp(min=0)
    neg = (-s).clamp(min=0)
    half = torch.where(pos > 0, torch.ones_like(pos) << (pos - 1).clamp(min=0), torch.zeros_like(pos))
    return ((x + half) >> pos) << neg


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize the last axis to int8 values q with x ~= q * m * 2**(e-7).

    Returns q (int8, values in [-127, 127]) and the row scale (m, e), each shaped [..., 1].
    q = clamp(floor((256 x + d) / (2 d)), -127, 127) with d = m * 2**e, for |x| < 2**54 (256 x fits
    int64). int64 division is scalar on CPUs, so the quotient is taken in two exact steps:
    floor(N / (2**(e+1) m)) = floor(floor(N / 2**(e+1)) / m); the first is a shift, and the second
    has a numerator n with |n| <= 257 m / 2 < 2**23, where floor of the float64 quotient is exact
    (for integers |n| < 2**53 and m >= 1 a non-integer n / m lies >= 1/m from any integer, more than
    the rounding error |n / m| * 2**-53).
    """
    amax = x.abs().amax(-1, keepdim=True).clamp(min=1)
    m, e = split_scale(amax)
    n = ((x << 8) + (m << e)) >> (e + 1)
    q = n.to(torch.float64).div_(m.to(torch.float64)).floor_().clamp_(-127, 127).to(torch.int8)
    return q, m, e


def pow2_quantize(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize the last axis of integers x (|x| < 2**53) to q with x ~= q * 2**e, |q| <= 2**bits - 1.

    e = max(0, bit_length(max |x|) - bits) per row, q = clamp(rshift_round(x, e)). A power-of-two
    scale multiplies exactly in floating point, so products of q stay exact after rescaling. The bit
    length is frexp's exponent of the exactly converted float64. Returns q and e (int64, [..., 1]).
    """
    amax = x.abs().amax(-1, keepdim=True).to(torch.float64)
    e = (torch.frexp(amax).exponent.to(torch.int64) - bits).clamp_(min=0)
    lim = (1 << bits) - 1
    q = (x + (torch.ones_like(e) << e >> 1)).bitwise_right_shift_(e).clamp_(-lim, lim)
    return q, e


def isqrt(v: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(v)) for int64 0 <= v < 2**52, exact: the float64 square root truncated.

    v is exact as float64 and sqrt is correctly rounded. With r = floor(sqrt(v)), sqrt(v) >= r rounds
    to at least r (exact), and r + 1 - sqrt(v) >= sqrt(v + 1) - sqrt(v) > 2**-27 exceeds the half ulp
    (<= 2**-28 below 2**26), so it never rounds up to r + 1.
    """
    return torch.sqrt(v.to(torch.float64)).to(torch.int64)


def rescale_(acc: torch.Tensor, mult: torch.Tensor, row_mult: torch.Tensor, s: torch.Tensor | int) -> torch.Tensor:
    """rshift_round(acc * mult * row_mult, s), computed in place in acc (which it returns).

    Same integers as the unfused chain: a negative shift is folded into row_mult, and int64 products
    wrap modulo 2**64 in either order.
    """
    if isinstance(s, int):
        acc.mul_(mult).mul_(row_mult if s >= 0 else row_mult << -s)
        if s > 0:
            acc.add_(1 << (s - 1)).bitwise_right_shift_(s)
        return acc
    pos = s.clamp(min=0)
    acc.mul_(mult).mul_(row_mult << (-s).clamp(min=0))
    return acc.add_((torch.ones_like(pos) << pos) >> 1).bitwise_right_shift_(pos)


def gemm(q: torch.Tensor, wt: torch.Tensor, backend: str) -> torch.Tensor:
    """Exact product of int8-valued q [..., k] and weights wt [k, n]; returns int64 [..., n].

    backend "int": torch._int_mm on int8 operands (int32 accumulation, exact).
    backend "f32": float32 matmul over blocks of k <= 1024, where every partial sum is an integer
    below 2**24 and therefore exact in any order; blocks are summed in int64.
    backend "f64": float64 matmul, exact for any k below 2**38.
    """
    lead = q.shape[:-1]
    q2 = q.reshape(-1, q.shape[-1])
    if backend == "int":
        out = torch._int_mm(q2.to(torch.int8), wt).to(torch.int64)
    elif backend == "f64":
        out = (q2.to(torch.float64) @ wt).to(torch.int64)
    else:
        qf = q2.to(torch.float32)
        k = qf.shape[1]
        out = None
        for lo in range(0, k, F32_EXACT_K):
            part = (qf[:, lo : lo + F32_EXACT_K] @ wt[lo : lo + F32_EXACT_K]).to(torch.int64)
            out = part if out is None else out + part
    return out.reshape(*lead, wt.shape[1])


def force_exact_float_math() -> None:
    """Turn off every reduced-precision float path (TF32, bf16 fpmath) whatever the environment says.

    Our float GEMMs are exact only when the hardware multiplies and adds in full float32/float64.
    """
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    torch.backends.cudnn.allow_tf32 = False
    if hasattr(torch.backends, "mkldnn") and hasattr(torch.backends.mkldnn, "matmul"):
        try:
            torch.backends.mkldnn.matmul.fp32_precision = "ieee"
        except (AttributeError, RuntimeError):
            pass
