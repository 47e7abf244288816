"""The exact predictor: integer frequency tables from an integer model, identical on every machine.

One forward function serves both paths the archiver needs, so they cannot drift apart:
- `score`: teacher-forced scoring of whole chunks at once (compression), batched;
- `Session.feed`: one token per chunk per call against a KV cache (decompression), a batch of
  chunks in lockstep.
Every row of every tensor is computed from its own chunk only, with exact integer arithmetic, so a
chunk's frequencies do not depend on its batch, the thread count, the CPU's vector unit or the device.
The program runs either as torch operations (any device; exact float64 tensors in attention) or,
on a CPU, through the compiled integer kernels of `archiver.kernels` (attention over a compact
integer cache, and the row-wise steps around the GEMMs): same program, same bits, a fraction of
the memory passes. The kernel path's arrays are numpy's, most of them the same memory from step to
step (`Engine._buffer`): torch's allocations and views had been about a tenth of a batch-64 decode
step (3.7-4.0 ms then, 2.7-2.9 now with the faster row-wise kernels).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numba
import numpy as np
import torch

from archiver import kernels
from archiver.fixedpoint import (
    F,
    force_exact_float_math,
    gemm,
    isqrt,
    pow2_quantize,
    quantize_rows,
    rescale_,
    rshift_round,
)
from archiver.intmodel import ATT_FRAC, ROPE_FRAC, IntModel, QMatrix, query_bits_limit

TOTAL_BITS = 24  # frequency tables sum to 2**24: the floor of 1 per symbol costs < 0.01 bit/token
TOTAL = 1 << TOTAL_BITS
NORM_FRAC = 15  # 1/rms in Q15
KEY_FRAC = 10  # queries and keys enter the score product in Q10
QUERY_BLOCK = 64  # query positions per attention block in the parallel path
GEMM_QUERIES = 16  # from this many queries per chunk on, the kernel path's attention of int32 values runs as GEMMs
SCORE_TILE = 4 << 20  # bytes of a GEMM attention block's scores per tile of chunks: they stay in cache until used
ATTN_TILE = 1 << 18  # float64 scores per attention tile (2 MiB): the softmax chain stays in cache
KEY8_BITS = 7  # int8 key cache: keys as 7-bit magnitudes times a power of two per position
ROW_TILE = 256  # rows per tile of the row-wise layers (projections, MLP, head)
_ROPE_SHIFT = ROPE_FRAC + F - KEY_FRAC  # rotary products (Q14 x Q16) to Q10, see Engine._rope_q10
_ROPE_BIAS = (1 << (ROPE_FRAC - 1)) + (1 << (_ROPE_SHIFT - 1))
SCORE_ROWS = 2048  # tokens per parallel forward: bounds the activations, batching gains no more
ROOM_STEP = 64  # the kernel path's cache rows grow by this many positions (see _Cache)
GEMV_ROWS = 6  # up to this many rows (decoding a few chunks) kernels.gemv beats _int_mm: weights stream once
_NO_SHIFTS = np.empty(0, np.int64)  # kernels.rescale's e when every row shifts by the same amount
MAX_VIEWS = 4096  # Engine._buffer's cached views at most (one per role and shape)
Rows = torch.Tensor | np.ndarray  # a forward's arrays: torch tensors on the torch path, numpy arrays on the kernel path


def default_backend(device: torch.device) -> str:
    """int8 GEMMs on CPU (exact and fastest there); float32 on CUDA, exact by the 2**24 bound."""
    return "int" if device.type == "cpu" else "f32"


def default_path(device: torch.device) -> str:
    """The compiled kernels on CPU ("kernels"); torch operations elsewhere ("torch")."""
    return "kernels" if device.type == "cpu" else "torch"


class _Prepared:
    """A QMatrix laid out for one GEMM backend on one device: the weights w [n, k] (one output
    column's weights contiguous, as the small-batch kernel `kernels.gemv` reads them) and wt, their
    [k, n] view for the GEMMs (`_int_mm` and matmul run as fast on it as on a contiguous copy). On
    the kernel path with int8 GEMMs, a matrix whose shape `kernels.gemm_bytes` takes is also packed
    for it (packed: (weights, column corrections), else None), which then computes every product:
    a decode step at batch 64 of the default model took 4.4 ms where `_int_mm` and `gemv` took
    5.3. The packed copy costs the model's int8 weights once more in memory (135 MB for
    SmolLM2)."""

    def __init__(self, m: QMatrix, backend: str, device: torch.device, pack: bool = False):
        dtype = {"int": torch.int8, "f32": torch.float32, "f64": torch.float64}[backend]
        self.w = m.q.to(device=device, dtype=dtype).contiguous()
        self.mult = m.mult.to(device)
        self.shift = m.shift
        self.pack = pack and backend == "int"
        self._derive()

    def columns(self, idx: torch.Tensor) -> _Prepared:
        """The product restricted to these output columns: each column's integers are computed from
        its own weights and multiplier alone, so they are the same as in the whole product."""
        out = object.__new__(_Prepared)
        out.w = self.w[idx].contiguous()
        out.mult = self.mult[idx].contiguous()
        out.shift, out.pack = self.shift, self.pack
        out._derive()
        return out

    def _derive(self) -> None:
        """What follows from w, mult and pack: wt; mults, the kernels' numpy view of mult; and
        packed, the weights packed for `kernels.gemm_bytes` where it takes them (a multiple of 4
        inputs and of 16 outputs, and products within its int32 bound)."""
        self.wt = self.w.t()
        self.mults = self.mult.numpy() if self.mult.is_cpu else None
        n, k = self.w.shape
        fits = k % 4 == 0 and n % 16 == 0 and 128 * 127 * k < 1 << 31
        self.packed = kernels.pack_columns(self.w.numpy()) if self.pack and fits else None


class Engine:
    def __init__(self, model: IntModel, device: str = "cpu", backend: str | None = None, threads: int | None = None,
                 path: str | None = None):
        force_exact_float_math()
        if threads:
            torch.set_num_threads(threads)
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        self.model = model
        self.device = torch.device(device)
        self.backend = backend or default_backend(self.device)
        path = path or default_path(self.device)
        if path not in ("kernels", "torch"):
            raise ValueError(f"unknown engine path {path!r}")
        self.kernel = path == "kernels"
        if self.kernel and self.device.type != "cpu":
            raise ValueError("the compiled kernels run on the CPU only")
        c = model.config
        self.d = c["hidden_size"]
        self.heads = c["num_heads"]
        self.kv_heads = c["num_kv_heads"]
        self.head_dim = c["head_dim"]
        self.inter = c["intermediate_size"]
        self.context = c["context"]
        prep = lambda m: _Prepared(m, self.backend, self.device, pack=self.kernel)  # noqa: E731
        self.embed_q = model.embed.q.to(self.device)  # int8: rows are widened when looked up
        self.embed_mult = model.embed.mult.to(self.device)
        self.embed_shift = model.embed.shift
        self.layers = [(prep(L.qkv), prep(L.o), prep(L.gate_up), prep(L.down)) for L in model.layers]
        self.head = prep(model.head)
        self.t = {k: v.to(self.device) for k, v in model.tables.items()}
        self.att_exp = self.t["att_exp"].contiguous()
        # the kernel path's numpy views of the tables (and of the embedding)
        embedding = {"embed_q": self.embed_q, "embed_mult": self.embed_mult}
        self.tables = {k: v.contiguous().numpy() for k, v in {**self.t, **embedding}.items()} if self.kernel else {}
        self._buffers: dict[str, np.ndarray] = {}  # see _buffer
        self._views: dict[tuple, np.ndarray] = {}
        self.att_exp64 = self.att_exp.to(torch.float64)  # Q15 (or Q11) integers, exact as float64
        self.att_bits = int(self.att_exp.max()).bit_length()  # every table value is below 2**att_bits
        self._tris: dict[tuple[int, int], torch.Tensor] = {}
        # float64 exactness: |q.k| <= hd * qk_limit**2 < 2**53 and sum(e) * v_limit < 2**53
        self.qk_limit = (1 << ((53 - (self.head_dim - 1).bit_length()) // 2)) - 1
        self.v_limit = (1 << (53 - 15 - (self.context - 1).bit_length())) - 1
        self.int8_keys = c.get("key_cache", "f64") == "int8"
        self.int8_values = c.get("value_cache", "f64") == "int8"
        # int8 keys and values on the kernel path: the byte cache, read by byte dot products
        # (kernels.attend_bytes); queries of up to 7 bits are one signed byte, wider ones two
        self.byte_cache = self.kernel and self.int8_keys and self.int8_values
        # with int8 keys, queries get at most the bits that keep a key product below 2**24 (exact in
        # float32); a model file may ask for fewer ("query_bits": 7 makes each query an int8, see
        # _int8_scores)
        self.q_bits = c.get("query_bits", query_bits_limit(self.head_dim))
        assert self.q_bits <= 14, "a query's high half (q >> 7, see _int8_scores) must fit an int8"

    # ---- exact building blocks -------------------------------------------------------------
    def _product(self, q: Rows, m: _Prepared, row_mult: Rows, base: int,
                 e: Rows | None = None, into: Rows | None = None, out: np.ndarray | None = None) -> Rows | None:
        """rescale_(gemm(q, m), m.mult, row_mult, s) with the row shifts s = base - e (or base): on the
        kernel path the int32 products of _int_mm (or, for a few rows, of `kernels.gemv`) go straight
        into the compiled rescale, without an int64 pass in between. With into, the result is added
        to into's rows (the residual stream) instead of returned: on the kernel path in the same pass.
        The kernel path writes a returned result into out when given, else into a fresh array."""
        if not self.kernel:
            y = rescale_(gemm(q, m.wt, self.backend), m.mult, row_mult, base if e is None else base - e)
            if into is None:
                return y
            into += y
            return None
        acc = self._gemm(q, m)
        dest = into if into is not None else np.empty(acc.shape, np.int64) if out is None else out
        kernels.rescale(acc, m.mults, row_mult.reshape(-1), base, _NO_SHIFTS if e is None else e.reshape(-1),
                        into is not None, dest)
        return None if into is not None else dest

    def _gemm(self, q: np.ndarray, m: _Prepared) -> np.ndarray:
        """The kernel path's products of int8 rows q with m (int32): `kernels.gemm_bytes` where m is
        packed for it, else `_int_mm`, or `kernels.gemv` for a few rows; or the backend's exact
        float GEMM."""
        if self.backend != "int":
            return gemm(torch.from_numpy(q), m.wt, self.backend).numpy()
        if m.packed is None and q.shape[0] > GEMV_ROWS:
            return torch._int_mm(torch.from_numpy(q), m.wt).numpy()
        acc = self._buffer("acc", (q.shape[0], m.w.shape[0]), np.int32)
        if m.packed is not None:
            kernels.gemm_bytes(q, *m.packed, acc)
        else:
            kernels.gemv(q, m.w.numpy(), acc)
        return acc

    def _linear(self, x: Rows, m: _Prepared, into: Rows | None = None) -> Rows | None:
        """The linear layer m of rows x (its input quantized per row), added into into when given."""
        if not self.kernel:
            q, rm, re = quantize_rows(x)
            return self._product(q, m, rm, m.shift + 7, re, into)
        n = x.shape[0]
        q = self._buffer("q", x.shape, np.int8)
        rm, re = self._buffer("q.m", (n,), np.int64), self._buffer("q.e", (n,), np.int64)
        kernels.quantize_rows(x, q, rm, re)
        return self._product(q, m, rm, m.shift + 7, re, into)

    def _normed_linear(self, x: Rows, m: _Prepared, out: np.ndarray | None = None) -> Rows:
        """RMSNorm then linear; the norm's gain is folded into m, the norm itself is exact here (out:
        as _product's).

        The sum of squares is taken in float64: every partial sum is an integer below 127**2 * 2**14
        < 2**53, so it is exact in any order (the kernel path sums in int64: `kernels.norm_quantize`)."""
        q, inv = self._norm_quantize(x)
        return self._product(q, m, inv, self._norm_shift(m), out=out)

    @staticmethod
    def _norm_shift(m: _Prepared) -> int:
        """The rescale shift of a normed product: m's own, plus the Q15 of the inverse root."""
        return m.shift + NORM_FRAC - F

    def _normed_gemm(self, x: np.ndarray, m: _Prepared) -> tuple[np.ndarray, np.ndarray]:
        """The kernel path's normed product before its rescale: the products of the normed rows x
        with m, and the rows' inverse roots (for a kernel that rescales and goes on in one pass)."""
        q, inv = self._norm_quantize(x)
        return self._gemm(q, m), inv.reshape(-1)

    def _norm_quantize(self, x: Rows) -> tuple[Rows, Rows]:
        """_normed_linear's input: rows x quantized to int8, and their inverse root mean squares."""
        scale = x.shape[-1] << (2 * NORM_FRAC)
        if self.kernel:
            q = self._buffer("norm.q", x.shape, np.int8)
            inv = self._buffer("norm.inv", (x.shape[0],), np.int64)
            kernels.norm_quantize(x, scale, q, inv)
            return q, inv
        q, _, _ = quantize_rows(x)
        qf = q.to(torch.float64)
        ss = torch.linalg.vecdot(qf, qf).to(torch.int64).clamp_(min=1).unsqueeze(-1)
        return q, isqrt(torch.div(x.new_full((), scale), ss, rounding_mode="floor"))

    def _rope_q10(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of x [N, heads, hd] (Q16) by its rows' cos, sin [N, 1, hd/2] (Q14), rounded
        straight to the Q10 of the score product and clamped to +-qk_limit.

        One rounding shift does both roundings of the integer program, rshift_round(rshift_round(y,
        ROPE_FRAC), F - KEY_FRAC): floor((floor(a / 2**14) + 2**5) / 2**6) = floor((a + 2**19) / 2**20)
        for a = y + 2**13 (nested floor division), with |y| far below 2**62."""
        half = self.head_dim // 2
        x1, x2 = x[..., :half], x[..., half:]
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        y1, y2 = y[..., :half], y[..., half:]
        torch.mul(x1, cos, out=y1).sub_(x2 * sin)
        torch.mul(x2, cos, out=y2).add_(x1 * sin)
        y.add_(_ROPE_BIAS).bitwise_right_shift_(_ROPE_SHIFT)
        return y.clamp_(-self.qk_limit, self.qk_limit)

    def _pow2_quantize(self, x: Rows, bits: int) -> tuple[Rows, Rows]:
        """fixedpoint.pow2_quantize over the last axis, by the compiled kernel on the kernel path."""
        if not self.kernel:
            return pow2_quantize(x, bits)
        rows = x.reshape(-1, *x.shape[-2:])  # a view for the query heads of qkv rows: no copy
        q = np.empty(x.shape, np.int64)
        e = np.empty((*x.shape[:-1], 1), np.int64)
        kernels.pow2_quantize(rows, bits, q.reshape(rows.shape), e.reshape(rows.shape[:-1]))
        return q, e

    def _qkv(self, x: Rows, m: _Prepared, cos: Rows, sin: Rows, out: Rows) -> None:
        """Rows x [N, d] -> out [N, (H + 2 KV) hd]: Q10 rotated queries and keys, then values clamped
        to +-v_limit (the bounds that keep the float64 attention exact). Written in place, into the
        rows of the layer's whole array, not copied there a tile at a time (8 MB a layer when
        scoring)."""
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        n = x.shape[0]
        if self.kernel:  # the product's rescale and rotation in one pass (queries and keys are adjacent heads)
            acc, inv = self._normed_gemm(x, m)
            kernels.rescale_rope(acc, m.mults, inv, self._norm_shift(m), H + KV, hd, cos, sin, _ROPE_SHIFT,
                                 _ROPE_BIAS, self.qk_limit, self.v_limit, out)
            return
        y = self._normed_linear(x, m)
        k = slice(H * hd, (H + KV) * hd)
        y[:, : H * hd] = self._rope_q10(y[:, : H * hd].view(n, H, hd), cos, sin).view(n, H * hd)
        y[:, k] = self._rope_q10(y[:, k].view(n, KV, hd), cos, sin).view(n, KV * hd)
        y[:, (H + KV) * hd :].clamp_(-self.v_limit, self.v_limit)
        out.copy_(y)

    def _qkv_bytes(self, x: np.ndarray, m: _Prepared, cos: np.ndarray, sin: np.ndarray, r0: int, T: int,
                   cache: _Cache, li: int, p0: int, queries: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """_qkv of the tile x of rows r0.. (b, t) for the byte cache: the rotated rows go straight into
        the cache (keys, values at positions p0 + t) and into queries (`kernels.rope_bytes`), for
        `_attend_bytes`. T is the forward's positions per chunk (queries' second axis)."""
        acc, inv = self._normed_gemm(x, m)
        kernels.rope_bytes(acc, m.mults, inv, self._norm_shift(m), self.heads, self.head_dim, cos, sin, _ROPE_SHIFT,
                           _ROPE_BIAS, self.qk_limit, self.v_limit, r0, p0, self.q_bits, KEY8_BITS, cache.k[li],
                           cache.ks[li], cache.v[li], cache.vs[li], *queries)

    def _attend_bytes(self, queries: tuple[np.ndarray, np.ndarray, np.ndarray], cache: _Cache, li: int,
                      p0: int) -> np.ndarray:
        """_attend over the byte cache, whose keys and values of positions p0.. `_qkv_bytes` has stored,
        for its queries: one kernel, `kernels.attend_bytes`, for any number of queries (a 16-chunk
        scoring of the default model took 0.61 s where the GEMM form, `_attend_gemm`, of the same
        integers took 0.77, `default-v5` 0.82 against 1.34). Returns [B, T, H * hd]."""
        B, T, KV, g = queries[1].shape
        out = self._buffer("att", (B, T, KV, g, self.head_dim), np.int64)
        kernels.attend_bytes(*queries, p0, cache.k[li], cache.ks[li], cache.v[li], cache.vs[li],
                             self.tables["att_exp"], self.att_bits, out)
        return out.reshape(B, T, -1)

    def _attend(self, y: Rows, cache: _Cache, li: int, p0: int) -> Rows:
        """Appends the keys and values of y [B, T, H + 2 KV, hd] (a layer's `_qkv` rows, at
        positions p0..) to the cache, then the causal softmax attention of its queries q = y[:, :,
        :H] (Q10) over the history; returns the Q16 outputs [B, T, H * hd].

        Scores: x = (q.k) / 2**12, every partial sum a multiple of 2**-12 below 2**40, so the float64
        product is exact in any order. With the float64 key cache, the integer products of queries and
        stored keys are scaled by 2**-12 (a power of two, exact). With int8 keys (see _Cache), queries
        are first rounded to q_bits-bit magnitudes times 2**eq; their products then stay below 2**24,
        exact in float32 at half the memory traffic, and the powers of two of query and key rescale
        them exactly in float64.
        The softmax index of the original integer program,
            min(m - s, last) with s = floor(x + 1/2) and m its row maximum,
        equals floor(min(m + 1/2 - 2**-12 - x, last)) because x is a multiple of 2**-12 (so
        ceil(w) = floor(w + 1 - 2**-12)); masked scores are -inf and land on the last table entry,
        which is 0. All of it is exact float64 arithmetic on values below 2**42.
        The work runs in tiles of at most ATTN_TILE scores, from the queries' conversion to the
        rounded outputs, so the whole chain stays in cache.
        """
        if self.kernel:
            return self._attend_kernel(y, cache, li, p0)
        cache.append(li, y[:, :, self.heads :])
        q = y[:, :, : self.heads]
        B, T, H, hd = q.shape
        KV = self.kv_heads
        g = H // KV
        values = cache.vt[li]
        last = self.att_exp64.numel() - 1
        scale = 2.0 ** -(2 * KEY_FRAC - ATT_FRAC)
        half = 0.5 - scale
        if self.int8_keys:
            q, eq = pow2_quantize(q, self.q_bits)
            qscale = (torch.ones_like(eq) << eq).to(torch.float64).mul_(scale)  # [B, T, H, 1]
        out = torch.empty((B, T, H * hd), dtype=torch.int64, device=q.device)
        blk = QUERY_BLOCK if T > 1 else 1
        bufs: dict[str, torch.Tensor] = {}

        def take(name: str, n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
            """n elements of a scratch buffer reused across tiles (grown when too small)."""
            if name not in bufs or bufs[name].numel() < n:
                bufs[name] = torch.empty(n, dtype=dtype, device=q.device)
            return bufs[name][:n]

        for a in range(0, T, blk):
            b = min(T, a + blk)
            S = p0 + b
            R = (b - a) * g
            nb = max(1, min(B, ATTN_TILE // (KV * R * S)))
            tri = self._tri(b - a, g) if b - a > 1 else None
            for b0 in range(0, B, nb):
                b1 = min(B, b0 + nb)
                nt = b1 - b0
                shape = (nt, KV, b - a, g, hd)
                n = nt * KV * R * S
                s = take("s", n).view(nt, KV, R, S)
                qt = take("q", nt * KV * R * hd, cache.k[li].dtype).view(shape)
                qt.copy_(q[b0:b1, a:b].view(nt, b - a, KV, g, hd).transpose(1, 2))
                if self.int8_keys:
                    s32 = take("s32", n, torch.float32).view_as(s)
                    torch.matmul(qt.view(nt, KV, R, hd), cache.keys(li, b0, b1, S), out=s32)
                    s.copy_(s32)
                    s.mul_(qscale[b0:b1, a:b].view(nt, b - a, KV, g, 1).transpose(1, 2).reshape(nt, KV, R, 1))
                    s.mul_(cache.ks[li][b0:b1, :, :, :S])
                else:
                    qt.mul_(scale)
                    torch.matmul(qt.view(nt, KV, R, hd), cache.keys(li, b0, b1, S), out=s)
                if tri is not None:
                    s[..., p0 + a : S].masked_fill_(tri, float("-inf"))
                m = s.amax(-1, keepdim=True).add_(0.5).floor_().add_(half)
                torch.sub(m, s, out=s).clamp_max_(last)
                idx = take("idx", n, torch.int32)
                idx.view_as(s).copy_(s)
                e = torch.index_select(self.att_exp64, 0, idx, out=take("e", n)).view_as(s)  # Q15, row max 2**15
                den = e.sum(-1, keepdim=True)
                acc = take("acc", nt * KV * R * hd).view(nt, KV, R, hd)
                torch.matmul(e, values[b0:b1, :, :, :S].transpose(-1, -2), out=acc)
                # o = floor(acc / den + 1/2), in float64 and exact: |acc| <= den * v_limit and
                # den * (v_limit + 1) <= 2**53, so the floored quotient of these integers is exact (a
                # non-integer quotient lies >= 1/den from any integer, beyond the rounding error), o * den
                # is an integer of magnitude <= |acc| + den <= 2**53 (exact), and so is the remainder.
                o = torch.div(acc, den, out=take("o", acc.numel()).view_as(acc)).floor_()
                r = acc.addcmul_(o, den, value=-1)  # acc - o * den, in [0, den)
                o.add_(r.div_(den.mul_(0.5)).floor_())  # + (2 r >= den), exact as floor(2 r / den) < 2
                out[b0:b1, a:b].view(nt, b - a, KV, g, hd).copy_(o.view(shape).transpose(1, 2))
        return out

    def _attend_kernel(self, y: np.ndarray, cache: _Cache, li: int, p0: int) -> np.ndarray:
        """_attend's program run by the compiled integer kernels over the integer cache (CPU), for a
        model without the byte cache (which takes `_attend_bytes`)."""
        B, T, _, hd = y.shape
        H = self.heads
        shape = (B, T, self.kv_heads, H // self.kv_heads)
        cache.append(li, y[:, :, H:])
        q = y[:, :, :H]
        if self.int8_keys:
            q, eq = self._pow2_quantize(q, self.q_bits)
            eq = eq.reshape(shape)
        else:
            eq = np.zeros(shape, np.int64)
        q = q.reshape(*shape, hd)
        if T >= GEMM_QUERIES:
            return self._attend_gemm(torch.from_numpy(q), torch.from_numpy(eq), cache, li, p0).numpy().reshape(B, T, -1)
        out = np.empty((*shape, hd), np.int64)
        dots = np.empty(0, np.int32 if self.int8_keys else np.int64)
        kernels.attend(np.ascontiguousarray(q), eq, cache.k[li], cache.ks[li], cache.v[li], cache.vs[li], p0,
                       self.tables["att_exp"], dots, out)
        return out.reshape(B, T, H * hd)

    def _attend_gemm(self, q: torch.Tensor, eq: torch.Tensor, cache: _Cache, li: int, p0: int) -> torch.Tensor:
        """`kernels.attend`'s program for many queries q [B, T, KV, g, hd] (exponents eq [B, T, KV,
        g]) of a model with int32 values: the two products run as GEMMs, which are exact here and
        several times faster than the kernel's integer loops on a long chunk. Scores q . k as int8
        GEMMs of split queries for int8 keys (`_int8_scores`; 10% less time than float32 GEMMs on a
        SmolLM2 chunk, level on the default model's batches), or in float64 (exact below 2**53);
        the table step in `kernels.softmax_table`; then sum_j e_j v_j in float64, exact because it
        stays below 2**53 (the bound the model asserts); and the kernel's rounded quotient
        (`kernels.rounded_quotients`, straight into place). Each block of queries runs in tiles of
        chunks whose scores take at most SCORE_TILE bytes, from their product to the quotients, so
        they are still in cache when read: a 16-chunk batch of the default model 18-20% faster than
        whole blocks (when it still took this form). Returns [B, T, KV, g, hd]."""
        B, T, KV, g, hd = q.shape
        n = p0 + T
        keys = cache.key_columns(li, n)  # [B, KV, hd, >= n]
        values = cache.value_rows(li, n)  # [B, KV, n, hd]
        ek = cache.ks[li]
        table = self.tables["att_exp"]
        out = torch.empty(q.shape, dtype=torch.int64)
        for a in range(0, T, QUERY_BLOCK):
            b = min(T, a + QUERY_BLOCK)
            S, R = p0 + b, (b - a) * g
            nb = max(1, min(B, SCORE_TILE // (KV * R * S * 8)))
            for c0 in range(0, B, nb):
                c = slice(c0, min(B, c0 + nb))
                qt = q[c, a:b].transpose(1, 2).reshape(-1, KV, R, hd)  # rows (t, head in group)
                if self.int8_keys:
                    s = self._int8_scores(qt, keys[c], S)
                else:
                    s = torch.matmul(qt.to(torch.float64), keys[c, ..., :S])
                den = torch.empty((qt.shape[0], KV, R), dtype=torch.int64)
                eqb = eq[c, a:b].transpose(1, 2).reshape(-1, KV, R).numpy()
                e = torch.empty((qt.shape[0], KV, R, S), dtype=torch.float64)
                kernels.softmax_table(s.numpy(), eqb, ek[c], p0 + a, g, table, e.numpy(), den.numpy())
                sums = torch.matmul(e, values[c, :, :S])  # exact: below 2**53
                kernels.rounded_quotients(sums.numpy(), den.numpy(), a, g, out[c].numpy())
        return out

    def _int8_scores(self, qt: torch.Tensor, keys: torch.Tensor, S: int) -> torch.Tensor:
        """The products q . k_j of query rows qt [B, KV, R, hd] (magnitudes below 2**q_bits) with the
        int8 keys j < S as int8 GEMMs (one chunk's and head's product 2-3 times as fast as a float32
        GEMM's at 1,024-2,048 keys, though level on a batch of 16 chunks), one `_int_mm` per chunk
        and head. Queries of up to 7 bits are int8 already: returns their int32 products [B, KV, R,
        S]. Wider ones are split into q = 128 hi + lo, hi = q >> 7 (|hi| <= 2**(q_bits - 7)) and lo
        = q & 127, both int8, and the product takes the hi rows and then the lo rows: returns [B,
        KV, 2R, S], whose pairs `kernels._exact_scores` puts together, exactly."""
        B, KV, R, hd = qt.shape
        if self.q_bits <= 7:
            rows = qt.to(torch.int8)
        else:
            rows = torch.empty((B, KV, 2 * R, hd), dtype=torch.int8)
            rows[:, :, :R] = qt >> 7
            rows[:, :, R:] = qt & 127
        s = torch.empty((B, KV, rows.shape[2], S), dtype=torch.int32)
        for b in range(B):
            for h in range(KV):
                torch._int_mm(rows[b, h], keys[b, h, :, :S], out=s[b, h])
        return s

    def _tri(self, n: int, g: int) -> torch.Tensor:
        """Causal mask of a diagonal block: rows (t, head) t < n, columns u < n, True where u > t."""
        key = (n, g)
        if key not in self._tris:
            t = torch.arange(n, device=self.device)
            self._tris[key] = t[None, :] > t.repeat_interleave(g)[:, None]
        return self._tris[key]

    def _silu_mul(self, gu: torch.Tensor) -> torch.Tensor:
        """rshift_round(silu(g) * u, F) with silu(g) = rshift_round(g * sigmoid[idx], 15), for the
        halves g, u of gu [N, 2 * inter], in place in the looked-up table values (index_select: the
        fast path of a 1-D table lookup). The torch path's; the kernel path's is in
        `kernels.gated_quantize`."""
        sig = self.t["sigmoid"]
        g, u = gu[..., : self.inter], gu[..., self.inter :]
        idx = (g >> (F - 8)).add_(sig.numel() // 2).clamp_(0, sig.numel() - 1)
        h = torch.index_select(sig, 0, idx.view(-1)).view(g.shape)
        h.mul_(g).add_(1 << 14).bitwise_right_shift_(15)
        return h.mul_(u).add_(1 << (F - 1)).bitwise_right_shift_(F)

    # ---- the forward pass ------------------------------------------------------------------
    def _forward(self, tokens: torch.Tensor, cache: _Cache, out=None,
                 head: _Prepared | None = None) -> torch.Tensor | None:
        """Run tokens [B, T] at positions cache.length.. ; returns Q16 logits [B, T, V] (or those of
        head's columns), or, when out is given, hands them to out(logits, rows) a tile of rows (b, t)
        at a time and returns None: with a large vocabulary the logits of a whole chunk would not fit
        in memory next to their tables."""
        B, T = tokens.shape
        p0 = cache.length
        tok = tokens.reshape(-1)
        if self.kernel:  # the kernel path's arrays are numpy's (see _buffer)
            pos = np.tile(np.arange(p0, p0 + T), B)  # of the rows (b, t)
            cos, sin = self.tables["rope_cos"][pos], self.tables["rope_sin"][pos]
            x = self._buffer("x", (B * T, self.d), np.int64)  # the residual stream, updated in place
            kernels.embed(tok.numpy(), self.tables["embed_q"], self.tables["embed_mult"], self.embed_shift - F, x)
        else:
            pos = torch.arange(p0, p0 + T, device=self.device).repeat(B)
            cos = torch.index_select(self.t["rope_cos"], 0, pos)[:, None, :]
            sin = torch.index_select(self.t["rope_sin"], 0, pos)[:, None, :]
            x = rshift_round(
                torch.index_select(self.embed_q, 0, tok).to(torch.int64)
                * torch.index_select(self.embed_mult, 0, tok)[:, None],
                self.embed_shift - F,
            )  # the residual stream [B * T, d], updated in place
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        if self.byte_cache:  # the queries as attend_bytes takes them (see _qkv_bytes)
            cache.reserve(p0 + T)
            m = (1 if self.q_bits <= 7 else 2) * (H // KV)
            queries = (self._buffer("qb", (B, T, KV, m, kernels.byte_cache_widths(hd)[0]), np.int8),
                       self._buffer("eq", (B, T, KV, H // KV), np.int64), self._buffer("corr", (B, T, KV, m), np.int32))
        else:
            shape = (B * T, (H + 2 * KV) * hd)
            qkv = self._buffer("qkv", shape, np.int64) if self.kernel else x.new_empty(shape)
        for li, (qkv_m, o_m, gu_m, down_m) in enumerate(self.layers):
            if self.byte_cache:
                self._rowwise(lambda t, r, m=qkv_m, li=li: self._qkv_bytes(t, m, cos[r], sin[r], r.start, T, cache, li,
                                                                          p0, queries), x)
                att = self._attend_bytes(queries, cache, li, p0)
            else:
                self._rowwise(lambda t, r, m=qkv_m: self._qkv(t, m, cos[r], sin[r], qkv[r]), x)
                att = self._attend(qkv.reshape(B, T, H + 2 * KV, hd), cache, li, p0)
            att = att.reshape(B * T, H * hd)
            self._rowwise(lambda t, r, m=o_m: self._linear(t, m, into=x[r]), att)
            self._rowwise(lambda t, r, gm=gu_m, dm=down_m: self._mlp(t, gm, dm, into=x[r]), x)
        cache.length = p0 + T
        head = head or self.head
        if out is not None:  # out reads each tile's logits at once: they take a reused buffer
            def emit(t: Rows, r: slice) -> None:
                scratch = self._buffer("logits", (t.shape[0], head.w.shape[0]), np.int64) if self.kernel else None
                out(torch.as_tensor(self._normed_linear(t, head, scratch)), r)

            self._rowwise(emit, x)
            return None
        y = torch.as_tensor(self._rowwise(lambda t, _: self._normed_linear(t, head), x))
        return y.view(B, T, y.shape[-1])

    def _mlp(self, x: Rows, gu_m: _Prepared, down_m: _Prepared, into: Rows) -> None:
        """The gated MLP of rows x, added into into (the residual stream: x itself may be into, as
        x is read in full by the first product before the last one adds its rows). On the kernel
        path everything between the two products is one pass (`kernels.gated_quantize`)."""
        if not self.kernel:
            self._linear(self._silu_mul(self._normed_linear(x, gu_m)), down_m, into)
            return
        acc, inv = self._normed_gemm(x, gu_m)
        n = x.shape[0]
        h = self._buffer("mlp.h", (n, self.inter), np.int8)
        rm, re = self._buffer("mlp.m", (n,), np.int64), self._buffer("mlp.e", (n,), np.int64)
        kernels.gated_quantize(acc, gu_m.mults, inv, self._norm_shift(gu_m), self.tables["sigmoid"], F - 8, F, h, rm,
                               re)
        self._product(h, down_m, rm, down_m.shift + 7, re, into)

    def _rowwise(self, fn, x: Rows) -> Rows | None:
        """fn(tile, rows) applied to the rows of x [N, k] in tiles of ROW_TILE rows (rows is the
        tile's slice), so every intermediate stays in cache; fn must treat each row on its own (all of
        ours do). The results go into the rows of one fresh array (the logits, kept by the
        caller); a fn that stores its rows itself (`_qkv`, the residual adds of _product's into)
        returns None. Returns the results."""
        n = x.shape[0]
        out = None
        for r0 in range(0, n, ROW_TILE):
            rows = slice(r0, min(n, r0 + ROW_TILE))
            y = fn(x[rows], rows)
            if y is None:
                continue
            if n <= ROW_TILE:
                return y
            if out is None:
                shape = (n, y.shape[-1])
                out = y.new_empty(shape) if isinstance(y, torch.Tensor) else np.empty(shape, y.dtype)
            out[rows] = y
        return out

    def _buffer(self, tag: str, shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
        """The kernel path's array for one role in the forward pass (tag), the same memory from call
        to call: allocating tensors and taking their numpy views had cost a decode step at batch 64
        a tenth of its time. Each role's array is read before its role comes round again, so
        they never overlap; arrays returned to a caller (logits, frequencies) are fresh, except
        the tiles `score` hands on, which are read at once. 64-byte aligned, like torch's (kernels
        over numpy's 16-byte-aligned arrays ran 6-20% slower). The torch path uses it for those
        tiles too."""
        key = (tag, shape, dtype)
        view = self._views.get(key)
        if view is None:
            size = math.prod(shape) * np.dtype(dtype).itemsize
            buf = self._buffers.get(tag)
            if buf is None or buf.size < size:
                buf = self._buffers[tag] = torch.empty(size, dtype=torch.uint8).numpy()
                self._views.clear()  # none may hold a buffer that is no longer the tag's
            elif len(self._views) >= MAX_VIEWS:  # chunks of every length would add views without end
                self._views.clear()
            view = self._views[key] = buf[:size].view(dtype).reshape(shape)
        return view

    def frequencies(self, z: torch.Tensor, out: np.ndarray | None = None) -> torch.Tensor:
        """Q16 logits z [..., A] -> int64 frequencies over those A symbols, each >= 1, summing to 2**24.
        With out (a contiguous int64 array of z's size), they are written there (by the kernel path
        in place) and returned as a view of it."""
        if self.kernel:
            rows = z.contiguous().view(-1, z.shape[-1])
            dest = np.empty(rows.shape, np.int64) if out is None else out.reshape(rows.shape)
            kernels.frequencies(rows.numpy(), self.tables["freq_exp"], F - ATT_FRAC, TOTAL, dest)
            return torch.from_numpy(dest).view(z.shape)
        freq = self._torch_frequencies(z)
        if out is None:
            return freq
        dest = torch.from_numpy(out).view(z.shape)
        dest.copy_(freq)
        return dest

    def _torch_frequencies(self, z: torch.Tensor) -> torch.Tensor:
        """`frequencies` on the torch path."""
        fexp = self.t["freq_exp"]
        idx = ((z.amax(-1, keepdim=True) - z) >> (F - ATT_FRAC)).clamp_(0, fexp.numel() - 1)
        e = torch.index_select(fexp, 0, idx.view(-1)).view(idx.shape)
        n = z.shape[-1]
        freq = torch.div(e * (TOTAL - n), e.sum(-1, keepdim=True), rounding_mode="floor") + 1
        top = idx == 0
        first_top = top & (top.cumsum(-1) == 1)
        return freq + first_top * (TOTAL - freq.sum(-1, keepdim=True))

    # ---- public API --------------------------------------------------------------------------
    def score(self, seqs: list[list[int]], alphabet: torch.Tensor | None = None,
              sink: Callable[[int, int, np.ndarray], None] | None = None) -> list[np.ndarray] | None:
        """Teacher-forced frequencies for each sequence (which starts with its BOS token).

        Returns per sequence an int64 array [len-1, A]: row i is the distribution of token i+1. With
        sink, nothing is kept or returned: sink(j, i, rows) receives sequence j's rows from row i on,
        in order, a tile at a time (a SmolLM2 chunk's tables are 0.8 GB whole; the range coder needs
        them a few hundred rows at a time); rows is a reused buffer, valid only during the call.
        """
        head = self.alphabet_head(alphabet)
        A = head.w.shape[0]
        tables = None if sink is not None else [np.empty((len(s) - 1, A), np.int64) for s in seqs]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        i = 0
        while i < len(order):
            T = len(seqs[order[i]]) - 1
            bsz = max(1, min(len(order) - i, SCORE_ROWS // max(T, 1)))
            batch = order[i : i + bsz]
            toks = torch.zeros(len(batch), T, dtype=torch.int64)
            for r, j in enumerate(batch):
                s = seqs[j][:-1]
                toks[r, : len(s)] = torch.tensor(s, dtype=torch.int64)

            def emit(z: torch.Tensor, rows: slice, batch: list[int] = batch, T: int = T) -> None:
                """The tables of the logits z of flattened rows (b, t), padding left out: written
                straight into the returned tables, or into one reused buffer handed to the sink (a
                fresh array per tile, copied into the tables, had cost a 16-chunk scoring 5%)."""
                r = rows.start
                while r < rows.stop:
                    b, t = divmod(r, T)
                    n = min(rows.stop, (b + 1) * T) - r
                    j = batch[b]
                    keep = min(n, len(seqs[j]) - 1 - t)
                    if keep > 0:
                        part = z[r - rows.start : r - rows.start + keep]
                        if tables is not None:
                            self.frequencies(part, out=tables[j][t : t + keep])
                        else:
                            sink(j, t, self.frequencies(part, out=self._buffer("freq", (keep, A), np.int64)).numpy())
                    r += n

            with torch.no_grad():
                self._forward(toks.to(self.device), _Cache(self, len(batch), T), out=emit, head=head)
            i += bsz
        return tables

    def alphabet_head(self, alphabet: torch.Tensor | None) -> _Prepared:
        """The output head computing only the alphabet's logits, in its order (a byte stream of a BPE
        model needs 256 of them): frequencies over these are those over the alphabet."""
        return self.head if alphabet is None else self.head.columns(alphabet.to(self.device))

    def cache_bytes(self) -> int:
        """Memory one chunk's key/value cache takes at full context."""
        per_layer = sum(math.prod(shape) * dtype.itemsize
                        for _, shape, dtype, _ in _Cache.layout(self, 1, self.context))
        return len(self.layers) * per_layer

    def session(self, batch: int, alphabet: torch.Tensor | None = None) -> Session:
        return Session(self, batch, alphabet)


class _Cache:
    """Key/value history per layer, laid out for the products that read it at every step.

    For the torch attention path: values exact float64 (Q16), transposed [B, KV, hd, room]. Keys
    exact float64 (Q10), transposed the same way; or, for a model whose config says "key_cache":
    "int8", each position's key row (per KV head) rounded to a 7-bit magnitude times a power of two:
    the magnitudes as float32 (exact) [B, KV, room, hd], the powers as float64 in ks [B, KV, 1,
    room]. Each layout is the one whose product with the queries measured fastest in its dtype.
    For the attention kernel: the same integers, keys transposed [B, KV, hd, room] as int8 (int8
    keys) or int32 (float64-program keys, below 2**23), values transposed the same way [B, KV,
    hd, room] as int32 (below 2**28), with the key exponents as int8 [B, KV, room] (zero for the
    float64 program).
    A model whose config says "value_cache": "int8" (and then int8 keys too) rounds each
    position's value row (per KV head) like its keys; the torch path holds the rounded values in
    float64 (exact), the kernel path keeps the byte cache of `kernels.attend_bytes` instead (flat
    per chunk and head: keys as unsigned bytes in blocks of 16 positions, values in groups of 4
    positions, exponents vs int8 [B, KV, room]), the layout whose byte dot products
    `kernels.attend_bytes` takes four at a time.
    A decode step reads each row of positions from 0 up to the step's position. On the kernel path
    the room grows by ROOM_STEP positions, so those rows lie almost end to end in memory, which the
    CPU streams: with rows up to twice as long as read (the torch path's geometric growth), the
    attention kernel took 1.4 times as long on a 256-chunk batch whose cache exceeds the caches.
    Each growth copies the cache, about 1/ROOM_STEP of a copy per step; the room may pass the
    capacity by up to ROOM_STEP - 1 positions, so that it holds whole blocks. (Taking the whole
    capacity at once spares the byte cache those copies, yet made a decode step at batch 256 6-15%
    slower in three alternating runs; why was not pinned down.)"""

    def __init__(self, engine: Engine, batch: int, capacity: int):
        self.engine, self.batch = engine, batch
        self.device = engine.device
        self.int8_keys = engine.int8_keys
        n = len(engine.layers)
        self.k: list[Rows] = [torch.zeros(0)] * n  # numpy arrays on the kernel path, as its kernels take them
        self.ks: list[Rows] = [torch.zeros(0)] * n
        self.v: list[Rows] = [torch.zeros(0)] * n
        self.vs: list[Rows] = [torch.zeros(0)] * n
        self.vt: list[torch.Tensor] = [torch.zeros(0)] * n
        self.length = 0
        self.room = 0
        self.capacity = capacity

    @staticmethod
    def layout(engine: Engine, batch: int, room: int) -> list[tuple[str, tuple[int, ...], torch.dtype, int]]:
        """Per layer: (store, shape, dtype, position axis) of each tensor the cache keeps."""
        B, KV, hd, f64 = batch, engine.kv_heads, engine.head_dim, torch.float64
        if engine.byte_cache:
            wk, wv = kernels.byte_cache_widths(hd)
            return [("v", (B, KV, room * wv), torch.int8, 2), ("vs", (B, KV, room), torch.int8, 2),
                    ("k", (B, KV, room * wk), torch.uint8, 2), ("ks", (B, KV, room), torch.int8, 2)]
        if engine.kernel:
            kdt = torch.int8 if engine.int8_keys else torch.int32
            return [("v", (B, KV, hd, room), torch.int32, 3), ("vs", (B, KV, room), torch.int8, 2),
                    ("k", (B, KV, hd, room), kdt, 3), ("ks", (B, KV, room), torch.int8, 2)]
        if engine.int8_keys:
            keys = [("k", (B, KV, room, hd), torch.float32, 2), ("ks", (B, KV, 1, room), f64, 3)]
        else:
            keys = [("k", (B, KV, hd, room), f64, 3)]
        return [("vt", (B, KV, hd, room), f64, 3), *keys]

    def _grow(self, need: int) -> None:
        """Room for need positions. The old room is copied whole; the new positions are left
        uninitialized (no zeroing pass): every read that counts is of positions below length, which
        append has written (the byte cache's kernel also reads the rest of a block, and weighs it 0)."""
        if self.engine.kernel:
            room = -(-need // ROOM_STEP) * ROOM_STEP
        else:
            room = min(self.capacity, max(need, 2 * self.room, 32))
        for name, shape, dtype, axis in self.layout(self.engine, self.batch, room):
            store = getattr(self, name)
            for li, old in enumerate(store):
                new = torch.empty(shape, dtype=dtype, device=self.device)
                if self.length:
                    new.narrow(axis, 0, old.shape[axis]).copy_(torch.as_tensor(old))
                store[li] = new.numpy() if self.engine.kernel else new  # the kernels' arrays are numpy's
        self.room = room

    def reserve(self, b: int) -> None:
        """Room for positions below b (a ValueError past the capacity)."""
        if b > self.capacity:
            raise ValueError("sequence longer than the model context")
        if b > self.room:
            self._grow(b)

    def append(self, li: int, kv: Rows) -> None:
        """Store the keys and values kv [B, T, 2 KV, hd] (key heads first) at positions length..length+T
        (the byte cache's are stored by `kernels.rope_bytes`)."""
        a, b = self.length, self.length + kv.shape[1]
        self.reserve(b)
        if self.engine.kernel:
            kernels.append_kv(kv, a, KEY8_BITS, self.int8_keys, self.k[li], self.ks[li], self.v[li], self.vs[li])
            return
        KV = kv.shape[2] // 2
        k, v = kv[:, :, :KV], kv[:, :, KV:]
        e = ev = None
        if self.int8_keys:
            k, e = pow2_quantize(k, KEY8_BITS)
        if self.engine.int8_values:
            v, ev = pow2_quantize(v, KEY8_BITS)
        if ev is not None:
            v = v << ev
        if e is None:
            self.k[li][..., a:b] = k.permute(0, 2, 3, 1)
        else:
            self.ks[li][..., a:b] = (torch.ones_like(e) << e).permute(0, 2, 3, 1)
            self.k[li][:, :, a:b] = k.transpose(1, 2)
        self.vt[li][..., a:b] = v.permute(0, 2, 3, 1)

    def value_rows(self, li: int, n: int) -> torch.Tensor:
        """The first n positions' values of the kernel path's int32 cache as float64 rows [B, KV, n,
        hd], the layout a GEMM reads fastest (`_int_mm` took 20% longer on the transposed view): one
        copy per layer and forward, converted in the same pass, small next to the products that
        read it."""
        v = torch.from_numpy(self.v[li][..., :n]).transpose(-1, -2)
        return torch.empty(v.shape, dtype=torch.float64, device=v.device).copy_(v)

    def key_columns(self, li: int, n: int) -> torch.Tensor:
        """The kernel path's keys as columns [B, KV, hd, >= n]: the int8 keys as they are, the
        float64 program's converted to float64."""
        k = torch.from_numpy(self.k[li])
        return k if self.int8_keys else k[..., :n].to(torch.float64)

    def keys(self, li: int, b0: int, b1: int, S: int) -> torch.Tensor:
        """The first S keys of chunks b0..b1 as a [n, KV, hd, S] view (torch path)."""
        k = self.k[li][b0:b1]
        return k[:, :, :S].transpose(-1, -2) if self.int8_keys else k[..., :S]


class Session:
    """Incremental decoding of a batch of chunks in lockstep."""

    def __init__(self, engine: Engine, batch: int, alphabet: torch.Tensor | None):
        self.engine = engine
        self.cache = _Cache(engine, batch, engine.context)
        self.head = engine.alphabet_head(alphabet)

    def feed(self, tokens: list[int] | np.ndarray) -> np.ndarray:
        """Feed one token per chunk; returns int64 frequencies [B, A] for each chunk's next token."""
        return self.feed_run(np.asarray(tokens, dtype=np.int64)[:, None])[:, -1]

    def feed_run(self, tokens: np.ndarray) -> np.ndarray:
        """Feed T tokens per chunk (tokens [B, T]) in one pass; returns int64 frequencies [B, T, A]:
        row t is the distribution after token t, the same table as feeding them one by one."""
        t = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=self.engine.device)
        with torch.no_grad():
            logits = self.engine._forward(t, self.cache, head=self.head)
            return self.engine.frequencies(logits).cpu().numpy()

    def rewind(self, n: int) -> None:
        """Forget the last n positions fed (a speculative guess that proved wrong): the next feed
        overwrites their cache entries."""
        self.cache.length -= n
