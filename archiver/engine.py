"""The exact predictor: integer frequency tables from an integer model, identical on every machine.

One forward function serves both paths the archiver needs, so they cannot drift apart:
- `score`: teacher-forced scoring of whole chunks at once (compression), batched;
- `Session.feed`: one token per chunk per call against a preallocated int8 KV cache (decompression),
  a batch of chunks in lockstep.
Every row of every tensor is computed from its own chunk only, with exact integer arithmetic, so a
chunk's frequencies do not depend on its batch, the thread count, the CPU's vector unit or the device.
"""

from __future__ import annotations

import numpy as np
import torch

from archiver.fixedpoint import F, force_exact_float_math, gemm, isqrt, quantize_rows, rshift_round
from archiver.intmodel import ATT_FRAC, ROPE_FRAC, IntModel, QMatrix

TOTAL_BITS = 24  # frequency tables sum to 2**24: the floor of 1 per symbol costs < 0.01 bit/token
TOTAL = 1 << TOTAL_BITS
NORM_FRAC = 15  # 1/rms in Q15
KEY_FRAC = 10  # queries and keys enter the score product in Q10
QUERY_BLOCK = 256  # query rows per attention block in the parallel path
ATTN_ELEMENTS = 1 << 23  # cap on batch*heads*block*S per parallel forward (int64 score tensors)


def default_backend(device: torch.device) -> str:
    """int8 GEMMs on CPU (exact and fastest there); float32 on CUDA, exact by the 2**24 bound."""
    return "int" if device.type == "cpu" else "f32"


class _Prepared:
    """A QMatrix laid out for one GEMM backend on one device."""

    def __init__(self, m: QMatrix, backend: str, device: torch.device):
        dtype = {"int": torch.int8, "f32": torch.float32, "f64": torch.float64}[backend]
        self.wt = m.q.t().contiguous().to(device=device, dtype=dtype)
        self.mult = m.mult.to(device)
        self.shift = m.shift


class Engine:
    def __init__(self, model: IntModel, device: str = "cpu", backend: str | None = None, threads: int | None = None):
        force_exact_float_math()
        if threads:
            torch.set_num_threads(threads)
        self.model = model
        self.device = torch.device(device)
        self.backend = backend or default_backend(self.device)
        c = model.config
        self.d = c["hidden_size"]
        self.heads = c["num_heads"]
        self.kv_heads = c["num_kv_heads"]
        self.head_dim = c["head_dim"]
        self.inter = c["intermediate_size"]
        self.context = c["context"]
        prep = lambda m: _Prepared(m, self.backend, self.device)  # noqa: E731
        self.embed_q = model.embed.q.to(device=self.device, dtype=torch.int64)
        self.embed_mult = model.embed.mult.to(self.device)
        self.embed_shift = model.embed.shift
        self.layers = [(prep(L.qkv), prep(L.o), prep(L.gate_up), prep(L.down)) for L in model.layers]
        self.head = prep(model.head)
        self.t = {k: v.to(self.device) for k, v in model.tables.items()}
        # float64 exactness: |q.k| <= hd * qk_limit**2 < 2**53 and sum(e) * v_limit < 2**53
        self.qk_limit = (1 << ((53 - (self.head_dim - 1).bit_length()) // 2)) - 1
        self.v_limit = (1 << (53 - 15 - (self.context - 1).bit_length())) - 1

    # ---- exact building blocks -------------------------------------------------------------
    def _linear(self, x: torch.Tensor, m: _Prepared) -> torch.Tensor:
        q, rm, re = quantize_rows(x)
        acc = gemm(q, m.wt, self.backend)
        return rshift_round(acc * m.mult * rm, (m.shift + 7) - re)

    def _normed_linear(self, x: torch.Tensor, m: _Prepared) -> torch.Tensor:
        """RMSNorm then linear; the norm's gain is folded into m, the norm itself is exact here."""
        q, _, _ = quantize_rows(x)
        ss = (q * q).sum(-1, keepdim=True).clamp(min=1)
        inv = isqrt(torch.div(x.new_full((), x.shape[-1] << (2 * NORM_FRAC)), ss, rounding_mode="floor"))
        acc = gemm(q, m.wt, self.backend)
        return rshift_round(acc * m.mult * inv, m.shift + NORM_FRAC - F)

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x [B, T, H, hd] at positions pos [T]."""
        half = self.head_dim // 2
        cos = self.t["rope_cos"][pos][None, :, None, :]
        sin = self.t["rope_sin"][pos][None, :, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat(
            [rshift_round(x1 * cos - x2 * sin, ROPE_FRAC), rshift_round(x2 * cos + x1 * sin, ROPE_FRAC)], -1
        )

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, p0: int) -> torch.Tensor:
        """Causal softmax attention of q [B, T, H, hd] (Q16, at positions p0..) over the history.

        keys hold Q10 integers and values Q16 integers as float64; every float64 product and sum
        below stays an integer under 2**53, so the matrix products are exact in any order. Query
        rows are processed in blocks that only see the keys they may attend to.
        """
        B, T, H, hd = q.shape
        KV = self.kv_heads
        g = H // KV
        att_exp = self.t["att_exp"]
        last = att_exp.numel() - 1
        q = rshift_round(q, F - KEY_FRAC).clamp(-self.qk_limit, self.qk_limit)
        out = []
        for a in range(0, T, QUERY_BLOCK):
            b = min(T, a + QUERY_BLOCK)
            S = p0 + b
            qb = q[:, a:b].reshape(B, b - a, KV, g, hd).permute(0, 2, 3, 1, 4).reshape(B, KV, g * (b - a), hd)
            acc = (qb.to(torch.float64) @ keys[:, :, :S].transpose(-1, -2)).to(torch.int64)  # Q20
            s = rshift_round(acc, 2 * KEY_FRAC - ATT_FRAC)  # Q8 nats
            pos = torch.arange(p0 + a, p0 + b, device=self.device).repeat(g)
            masked = torch.arange(S, device=self.device)[None, :] > pos[:, None]  # [g*(b-a), S]
            s = s.masked_fill(masked, torch.iinfo(torch.int64).min)
            idx = (s.amax(-1, keepdim=True) - s).clamp(0, last).masked_fill(masked, last)
            e = att_exp[idx]  # Q15, the row maximum is exactly 2**15
            acc = (e.to(torch.float64) @ values[:, :, :S]).to(torch.int64)
            den = e.sum(-1, keepdim=True)
            o = torch.div(2 * acc + den, 2 * den, rounding_mode="floor")  # [B, KV, g*(b-a), hd]
            out.append(o.reshape(B, KV, g, b - a, hd).permute(0, 3, 1, 2, 4).reshape(B, b - a, H * hd))
        return torch.cat(out, 1) if len(out) > 1 else out[0]

    def _silu(self, g: torch.Tensor) -> torch.Tensor:
        sig = self.t["sigmoid"]
        idx = ((g >> (F - 8)) + sig.numel() // 2).clamp(0, sig.numel() - 1)
        return rshift_round(g * sig[idx], 15)

    # ---- the forward pass ------------------------------------------------------------------
    def _forward(self, tokens: torch.Tensor, cache: _Cache) -> torch.Tensor:
        """Run tokens [B, T] at positions cache.length.. ; returns Q16 logits [B, T, V]."""
        B, T = tokens.shape
        p0 = cache.length
        pos = torch.arange(p0, p0 + T, device=self.device)
        S = p0 + T
        x = rshift_round(self.embed_q[tokens] * self.embed_mult[tokens][..., None], self.embed_shift - F)
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        for li, (qkv_m, o_m, gu_m, down_m) in enumerate(self.layers):
            qkv = self._normed_linear(x, qkv_m)
            q = self._rope(qkv[..., : H * hd].reshape(B, T, H, hd), pos)
            k = self._rope(qkv[..., H * hd : (H + KV) * hd].reshape(B, T, KV, hd), pos)
            v = qkv[..., (H + KV) * hd :].reshape(B, T, KV, hd)
            k = rshift_round(k, F - KEY_FRAC).clamp(-self.qk_limit, self.qk_limit)
            v = v.clamp(-self.v_limit, self.v_limit)
            keys, values = cache.append(li, k.transpose(1, 2), v.transpose(1, 2))  # [B, KV, S, hd]
            att = self._attend(q, keys, values, p0)
            x = x + self._linear(att, o_m)
            gu = self._normed_linear(x, gu_m)
            h = rshift_round(self._silu(gu[..., : self.inter]) * gu[..., self.inter :], F)
            x = x + self._linear(h, down_m)
        cache.length = S
        return self._normed_linear(x, self.head)

    def frequencies(self, logits: torch.Tensor, alphabet: torch.Tensor | None) -> torch.Tensor:
        """Q16 logits [..., V] -> int64 frequencies over the alphabet, each >= 1, summing to 2**24."""
        z = logits if alphabet is None else logits[..., alphabet]
        fexp = self.t["freq_exp"]
        idx = ((z.amax(-1, keepdim=True) - z) >> (F - ATT_FRAC)).clamp(0, fexp.numel() - 1)
        e = fexp[idx]
        n = z.shape[-1]
        freq = torch.div(e * (TOTAL - n), e.sum(-1, keepdim=True), rounding_mode="floor") + 1
        top = idx == 0
        first_top = top & (top.cumsum(-1) == 1)
        return freq + first_top * (TOTAL - freq.sum(-1, keepdim=True))

    # ---- public API --------------------------------------------------------------------------
    def score(self, seqs: list[list[int]], alphabet: torch.Tensor | None = None) -> list[np.ndarray]:
        """Teacher-forced frequencies for each sequence (which starts with its BOS token).

        Returns per sequence an int64 array [len-1, A]: row i is the distribution of token i+1.
        """
        out: list[np.ndarray | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        alpha = None if alphabet is None else alphabet.to(self.device)
        i = 0
        while i < len(order):
            T = len(seqs[order[i]]) - 1
            per_seq = self.heads * min(T, QUERY_BLOCK) * T
            bsz = max(1, min(len(order) - i, ATTN_ELEMENTS // max(per_seq, 1), 64))
            batch = order[i : i + bsz]
            toks = torch.zeros(len(batch), T, dtype=torch.int64)
            for r, j in enumerate(batch):
                s = seqs[j][:-1]
                toks[r, : len(s)] = torch.tensor(s, dtype=torch.int64)
            with torch.no_grad():
                logits = self._forward(toks.to(self.device), _Cache(self, len(batch), T))
                freqs = self.frequencies(logits, alpha).cpu().numpy()
            for r, j in enumerate(batch):
                out[j] = freqs[r, : len(seqs[j]) - 1]
            i += bsz
        return out  # type: ignore[return-value]

    def session(self, batch: int, alphabet: torch.Tensor | None = None) -> Session:
        return Session(self, batch, alphabet)


class _Cache:
    """Preallocated key/value history per layer: Q10 keys and Q16 values as exact float64."""

    def __init__(self, engine: Engine, batch: int, capacity: int):
        shape = (batch, engine.kv_heads, capacity, engine.head_dim)
        dev = engine.device
        self.k = [torch.zeros(shape, dtype=torch.float64, device=dev) for _ in engine.layers]
        self.v = [torch.zeros(shape, dtype=torch.float64, device=dev) for _ in engine.layers]
        self.length = 0
        self.capacity = capacity

    def append(self, li: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.length, self.length + k.shape[2]
        if b > self.capacity:
            raise ValueError("sequence longer than the model context")
        self.k[li][:, :, a:b] = k.to(torch.float64)
        self.v[li][:, :, a:b] = v.to(torch.float64)
        return self.k[li][:, :, :b], self.v[li][:, :, :b]


class Session:
    """Incremental decoding of a batch of chunks in lockstep."""

    def __init__(self, engine: Engine, batch: int, alphabet: torch.Tensor | None):
        self.engine = engine
        self.cache = _Cache(engine, batch, engine.context)
        self.alphabet = None if alphabet is None else alphabet.to(engine.device)

    def feed(self, tokens: list[int] | np.ndarray) -> np.ndarray:
        """Feed one token per chunk; returns int64 frequencies [B, A] for each chunk's next token."""
        t = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=self.engine.device)[:, None]
        with torch.no_grad():
            logits = self.engine._forward(t, self.cache)
            return self.engine.frequencies(logits[:, -1], self.alphabet).cpu().numpy()
