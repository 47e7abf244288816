"""The exact engine: identical frequency tables however and wherever they are computed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from archiver import intmodel, kernels
from archiver.coder import ideal_bits
from archiver.engine import _ROPE_BIAS, _ROPE_SHIFT, TOTAL, Engine, _Cache
from archiver.fixedpoint import F, quantize_rows, rescale_
from archiver.modelfile import ModelError
from tests.conftest import ROOT, TINY

ALPHA = torch.arange(256)


def _seqs(n: int, seed: int, ctx: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    text = (ROOT / "samples" / "notes.txt").read_bytes()
    out = []
    for i in range(n):
        length = int(rng.integers(1, ctx))
        if i % 2:
            body = list(rng.integers(0, 256, length))
        else:
            start = int(rng.integers(0, len(text) - length))
            body = list(text[start : start + length])
        out.append([256 + i % 4, *[int(b) for b in body]])
    return out


def _digest(tables: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for t in tables:
        h.update(np.ascontiguousarray(t, dtype=np.int64).tobytes())
    return h.hexdigest()


PROGRAMS = {"f64": {}, "int8": {"key_cache": "int8"}, "int8-kv": {"key_cache": "int8", "value_cache": "int8"},
            "q7": {"key_cache": "int8", "value_cache": "int8", "query_bits": 7, "att_exp_bits": 11}}


def _tiny(program: str) -> intmodel.IntModel:
    """The tiny model under one of its integer programs (PROGRAMS: the key and value caches, the
    query bits, the exp table): same weights, different integers."""
    return intmodel.reprogram(intmodel.load(TINY), **PROGRAMS[program])


@pytest.fixture(scope="module", params=list(PROGRAMS))
def model(request):
    return _tiny(request.param)


def test_tables_are_valid_distributions(model):
    eng = Engine(model)
    for t in eng.score(_seqs(5, 0, model.context), ALPHA):
        assert t.shape[1] == 256
        assert (t >= 1).all() and (t.sum(1) == TOTAL).all()


def test_parallel_equals_incremental(model):
    eng = Engine(model)
    seqs = _seqs(7, 1, model.context)
    par = eng.score(seqs, ALPHA)
    sess = eng.session(len(seqs), ALPHA)
    steps = max(len(s) for s in seqs) - 1
    inc: list[list[np.ndarray]] = [[] for _ in seqs]
    for i in range(steps):
        f = sess.feed([s[i] if i < len(s) else 0 for s in seqs])
        for j, s in enumerate(seqs):
            if i < len(s) - 1:
                inc[j].append(f[j])
    for p, rows in zip(par, inc, strict=True):
        assert np.array_equal(p, np.array(rows))


def test_tables_handed_to_a_sink_are_the_returned_ones(model):
    """score(sink=...) hands each sequence's tables over a tile at a time, in order, without the
    padding of shorter sequences batched with longer ones: together they are the returned tables."""
    seqs = _seqs(7, 3, model.context)
    engine = Engine(model)
    got: dict[int, list[np.ndarray]] = {}

    def sink(j: int, i: int, rows: np.ndarray) -> None:
        assert i == sum(map(len, got.get(j, [])))
        got.setdefault(j, []).append(rows.copy())

    assert engine.score(seqs, ALPHA, sink=sink) is None
    want = engine.score(seqs, ALPHA)
    assert sorted(got) == list(range(len(seqs)))
    assert _digest([np.concatenate(got[j]) for j in range(len(seqs))]) == _digest(want)


def test_an_alphabet_is_the_whole_table_restricted(model):
    """The head computes only an alphabet's logits (256 of a BPE model's): in any order of any
    subset, the frequencies are those of the whole vocabulary's logits taken at those columns."""
    from archiver.engine import _Cache

    eng = Engine(model)
    seqs = _seqs(3, 4, model.context)
    n = min(len(s) for s in seqs) - 1
    toks = torch.tensor([s[:n] for s in seqs])
    whole = eng._forward(toks, _Cache(eng, len(seqs), n))
    for alphabet in (ALPHA, torch.tensor([259, 3, 100, 7, 256])):
        want = eng.frequencies(whole[..., alphabet])
        got = eng.score([s[: n + 1] for s in seqs], alphabet)
        assert all(np.array_equal(g, w.numpy()) for g, w in zip(got, want, strict=True))


def test_batch_composition_does_not_matter(model):
    eng = Engine(model)
    target = _seqs(1, 2, model.context)[0]
    alone = eng.score([target], ALPHA)[0]
    for n in (7, 64):
        others = _seqs(n - 1, 10 + n, model.context)
        mixed = others[: n // 2] + [target] + others[n // 2 :]
        assert np.array_equal(eng.score(mixed, ALPHA)[n // 2], alone)


def test_gemm_backends_are_bit_identical(model):
    seqs = _seqs(6, 3, model.context)
    ref = _digest(Engine(model, backend="int").score(seqs, ALPHA))
    for backend in ("f32", "f64"):
        assert _digest(Engine(model, backend=backend).score(seqs, ALPHA)) == ref, backend


def _decode_all(eng: Engine, seqs: list[list[int]]) -> list[np.ndarray]:
    sess = eng.session(len(seqs), ALPHA)
    return [sess.feed([s[i] if i < len(s) else 0 for s in seqs]) for i in range(max(map(len, seqs)) - 1)]


def test_kernels_equal_torch_path(model):
    """The CPU's compiled integer kernels and the torch operations (the path GPUs run) are two
    implementations of one integer program: same tables on both engine paths, at every length."""
    seqs = _seqs(9, 6, model.context)
    kernel, torch_path = Engine(model, path="kernels"), Engine(model, path="torch")
    assert kernel.kernel and not torch_path.kernel
    assert _digest(kernel.score(seqs, ALPHA)) == _digest(torch_path.score(seqs, ALPHA))
    assert _digest(_decode_all(kernel, seqs)) == _digest(_decode_all(torch_path, seqs))


def test_both_kernel_attentions_agree_after_a_history(model):
    """The kernel path's attention (for int32 values integer loops for a few queries and GEMMs from
    GEMM_QUERIES on; over the byte cache one kernel for any number) on blocks that start after a
    cached history: logits of one whole forward equal those of a prefix followed by the rest, in
    blocks below and above the threshold."""
    from archiver.engine import GEMM_QUERIES, _Cache

    eng = Engine(model)
    toks = torch.tensor([_seqs(1, 8, model.context)[0][:120]] * 2)
    whole = eng._forward(toks, _Cache(eng, 2, 120))
    for cut in (GEMM_QUERIES - 1, GEMM_QUERIES, 70):
        cache = _Cache(eng, 2, 120)
        parts = [eng._forward(toks[:, :cut], cache), eng._forward(toks[:, cut : cut + 3], cache),
                 eng._forward(toks[:, cut + 3 :], cache)]
        assert torch.equal(torch.cat(parts, 1), whole), cut


def test_single_chunk_decode_equals_score(model):
    """One chunk alone: every row-wise step runs on single rows."""
    eng = Engine(model)
    seq = _seqs(1, 7, model.context)[0]
    assert _digest(_decode_all(eng, [seq])) == _digest(list(eng.score([seq], ALPHA)[0]))


def _attend_reference(q, eq, kt, ek, vt, ev, p0, table) -> np.ndarray:
    """kernels.attend's module docstring written out in Python integers, one query row at a time."""
    B, T, KV, g, hd = q.shape
    out = np.zeros(q.shape, np.int64)
    for b, t, h, r in np.ndindex(B, T, KV, g):
        n = p0 + t + 1
        x = [int(q[b, t, h, r] @ kt[b, h, :, j].astype(np.int64)) << int(eq[b, t, h, r] + ek[b, h, j])
             for j in range(n)]
        base = (((max(x) + 2048) >> 12) << 12) + 2047
        e = [int(table[min((base - xj) >> 12, len(table) - 1)]) for xj in x]
        den = sum(e)
        for d in range(hd):
            total = sum((e[j] << int(ev[b, h, j])) * int(vt[b, h, d, j]) for j in range(n))
            out[b, t, h, r, d] = (2 * total + den) // (2 * den)
    return out


@pytest.mark.parametrize("keys", ["int8", "int32"])
def test_attention_kernel_equals_its_definition(keys):
    """The kernel of the programs with int32 values gives the integers of the definition, with int8
    keys and with the float64 program's int32 keys, and an odd row count (int8 values: test_simd)."""
    rng = np.random.default_rng(len(keys))
    B, T, KV, g, hd, room, p0 = 2, 2, 2, 3, 8, 48, 37
    q = rng.integers(-2047, 2048, (B, T, KV, g, hd))
    eq = rng.integers(0, 3, (B, T, KV, g))
    if keys == "int8":
        kt, dots = rng.integers(-127, 128, (B, KV, hd, room), dtype=np.int8), np.empty(0, np.int32)
        ek = rng.integers(0, 3, (B, KV, room), dtype=np.int8)
    else:
        kt, dots = rng.integers(-2**22, 2**22, (B, KV, hd, room), dtype=np.int32), np.empty(0, np.int64)
        ek = np.zeros((B, KV, room), np.int8)
    table = (32768 * np.exp(-np.arange(40) / 6)).astype(np.int64)
    table[-1] = 0
    vt, ev = rng.integers(-2**20, 2**20, (B, KV, hd, room), dtype=np.int32), np.zeros((B, KV, room), np.int8)
    out = np.zeros(q.shape, np.int64)
    kernels.attend(q, eq, kt, ek, vt, ev, p0, table, dots, out)
    assert np.array_equal(out, _attend_reference(q, eq, kt, ek, vt, ev, p0, table))


def test_gated_kernel_equals_torch_path(model):
    """kernels.gated_quantize (rescale, silu times up, quantize, in one pass) gives the torch path's
    integers: across the whole sigmoid table and past both of its ends (products rescaled by 1),
    and with the layer's own multipliers and random row scales."""
    kernel, torch_path = Engine(model, path="kernels"), Engine(model, path="torch")
    n = model.config["intermediate_size"]
    gen = torch.Generator().manual_seed(0)
    g = torch.linspace(-(20 << 16), 20 << 16, 8 * n, dtype=torch.float64).to(torch.int64).view(8, n)
    acc = torch.cat([g, torch.randint(-(1 << 20), 1 << 20, (8, n), generator=gen)], 1).to(torch.int32)
    m = kernel.layers[0][2]  # gate_up
    for mult, row_mult, base in ((torch.ones(2 * n, dtype=torch.int64), torch.ones(8, dtype=torch.int64), 0),
                                 (m.mult, torch.randint(1, 1 << 15, (8,), generator=gen), kernel._norm_shift(m))):
        q = torch.empty((8, n), dtype=torch.int8)
        qm, qe = torch.empty(8, dtype=torch.int64), torch.empty(8, dtype=torch.int64)
        kernels.gated_quantize(acc.numpy(), mult.numpy(), row_mult.numpy(), base, kernel.t["sigmoid"].numpy(), F - 8,
                               F, q.numpy(), qm.numpy(), qe.numpy())
        h = torch_path._silu_mul(rescale_(acc.to(torch.int64), mult, row_mult[:, None], base))
        want_q, want_m, want_e = quantize_rows(h)
        assert torch.equal(q, want_q) and torch.equal(qm, want_m.view(-1)) and torch.equal(qe, want_e.view(-1))


def test_rope_kernel_equals_torch_path(model):
    """Rotary positions on query and key heads at every table row, inputs up to 2**44, and the
    clamp to +-qk_limit on both sides; the value columns after them clamped to +-v_limit (the
    kernel's rescale, which `rescale` shares, is tested with the forwards)."""
    kernel, torch_path = Engine(model, path="kernels"), Engine(model, path="torch")
    H, KV, hd = kernel.heads, kernel.kv_heads, kernel.head_dim
    n = model.context
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(-(1 << 44), 1 << 44, (n, H + KV, hd), generator=gen)
    x[: n // 2] >>= torch.randint(0, 40, (n // 2, 1, 1), generator=gen)  # small values as well
    cos, sin = (kernel.t[k][:, None, :] for k in ("rope_cos", "rope_sin"))
    v = torch.randint(-(1 << 44), 1 << 44, (n, KV, hd), generator=gen)
    v[: n // 2] >>= 24  # below the limit as well
    want = torch.cat([torch_path._rope_q10(x[:, :H].clone(), cos, sin),
                      torch_path._rope_q10(x[:, H:].clone(), cos, sin), v.clamp(-kernel.v_limit, kernel.v_limit)], 1)
    acc = torch.cat([x, v], 1).view(n, -1)  # rescaled by 1: the rotation sees these inputs
    mult, row_mult = np.ones(acc.shape[1], np.int64), np.ones(n, np.int64)
    y = torch.empty_like(acc)
    kernels.rescale_rope(acc.numpy(), mult, row_mult, 0, H + KV, hd, cos.reshape(n, -1).numpy(),
                         sin.reshape(n, -1).numpy(), _ROPE_SHIFT, _ROPE_BIAS, kernel.qk_limit, kernel.v_limit,
                         y.numpy())
    assert torch.equal(y.view_as(want), want) and (want[:, : H + KV].abs() == kernel.qk_limit).any()
    assert (want[:, H + KV :].abs() == kernel.v_limit).any() and (want[:, H + KV :].abs() < kernel.v_limit).any()


def test_buffers_are_reused_and_their_views_bounded():
    """Engine._buffer hands out the same memory for a role (64-byte aligned), new memory when the
    role needs more, and keeps at most MAX_VIEWS cached views however many shapes pass through."""
    from archiver.engine import MAX_VIEWS

    eng = Engine(_tiny("int8-kv"), path="kernels")
    a = eng._buffer("t", (4, 8), np.int64)
    assert eng._buffer("t", (4, 8), np.int64) is a and a.ctypes.data % 64 == 0
    assert eng._buffer("t", (2, 8), np.int32).ctypes.data == a.ctypes.data  # smaller: the same memory
    bigger = eng._buffer("t", (64, 64), np.int64)
    assert bigger.shape == (64, 64) and bigger.ctypes.data % 64 == 0
    for n in range(1, MAX_VIEWS + 100):
        eng._buffer("t", (n,), np.int8)
    assert len(eng._views) <= MAX_VIEWS


def test_embedding_kernel_equals_rshift_round():
    """kernels.embed's lookup is rshift_round(q[t] * mult[t], shift): rounding right shifts (half
    up, negative products too) and left shifts, with extreme bytes and multipliers up to 2**40."""
    from archiver.fixedpoint import rshift_round

    gen = torch.Generator().manual_seed(3)
    q = torch.randint(-128, 128, (50, 24), generator=gen, dtype=torch.int8)
    q[0], q[1] = -128, 127
    mult = torch.randint(1, 1 << 40, (50,), generator=gen)
    tokens = torch.randint(0, 50, (300,), generator=gen)
    for shift in (-3, 0, 1, 9, 40):
        want = rshift_round(q[tokens].to(torch.int64) * mult[tokens, None], shift)
        out = np.empty(want.shape, np.int64)
        kernels.embed(tokens.numpy(), q.numpy(), mult.numpy(), shift, out)
        assert np.array_equal(out, want.numpy()), shift


def test_frequency_kernel_equals_torch_path(model):
    """Logits spread across the exp table and past its end, ties at the top (the first top symbol
    takes the remainder), a byte model's row and a 49152-wide row like SmolLM2's."""
    kernel, torch_path = Engine(model, path="kernels"), Engine(model, path="torch")
    gen = torch.Generator().manual_seed(1)
    for width in (256, 260, 49152):
        z = torch.randint(-(40 << 16), 8 << 16, (6, width), generator=gen)
        z[1] = 5  # all tied
        z[2, ::7] = z[2].max()  # several tied at the top
        z[3] = torch.linspace(-(30 << 16), 0, width).to(torch.int64)  # every table index, and past it
        k, t = kernel.frequencies(z), torch_path.frequencies(z)
        assert torch.equal(k, t) and (k >= 1).all() and (k.sum(1) == TOTAL).all()


def test_kernel_cache_is_smaller(model):
    """What the kernel is for: 5 bytes a cached key and value element instead of 12 (int8 keys), 8
    instead of 16 (float64 keys), 2 instead of 12 (int8 keys and values)."""
    kernel, torch_path = Engine(model, path="kernels"), Engine(model, path="torch")
    assert kernel.cache_bytes() < 0.51 * torch_path.cache_bytes()


_PROBE = """
import sys, torch, numpy as np
sys.path.insert(0, {root!r})
from tests.test_engine import _seqs, _digest, _decode_all, _tiny, ALPHA
from archiver.engine import Engine
m = _tiny({kv!r})
e = Engine(m, threads={threads})
s = _seqs(6, 4, m.context)
print(_digest(e.score(s, ALPHA)), _digest(_decode_all(e, s)))
"""


def _probe(threads: int, env_extra: dict[str, str], kv: str) -> str:
    env = dict(os.environ, **env_extra)
    code = _PROBE.format(root=str(ROOT), kv=kv, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("kv", list(PROGRAMS))
def test_threads_and_cpu_kernels_do_not_matter(kv):
    """Fresh processes: 1 vs 2 threads (torch's and numba's), default vs AVX2-only kernels, give the
    same tables."""
    ref = _probe(1, {}, kv)
    assert _probe(2, {}, kv) == ref
    assert _probe(2, {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, kv) == ref
    assert _probe(1, {"ATEN_CPU_CAPABILITY": "default"}, kv) == ref


def test_int8_caches_cost_almost_nothing():
    """The int8 key and value caches are different integer programs: they must predict as well as
    the float64 one (a wrong scale would still be exact, and useless)."""
    seqs = [s for s in _seqs(16, 5, 128) if max(s[1:]) < 256]
    bits = {}
    for kv in PROGRAMS:
        tables = Engine(_tiny(kv)).score(seqs, ALPHA)
        bits[kv] = sum(ideal_bits(np.array(s[1:]), t) for s, t in zip(seqs, tables, strict=True))
    assert max(abs(b / bits["f64"] - 1) for b in bits.values()) < 0.01, bits
    assert len(set(bits.values())) == len(bits), "each program computes its own integers"


@pytest.mark.parametrize("key", ["key_cache", "value_cache"])
def test_unknown_cache_kind_is_refused(key):
    m = _tiny("f64")
    m.config[key] = "int4"
    with pytest.raises(ModelError, match="newer lmarc"):
        m.check_bounds()


@pytest.mark.parametrize("program", [{"query_bits": 7}, {"key_cache": "int8", "query_bits": 14},
                                     {"key_cache": "int8", "query_bits": 7.0}, {"att_exp_bits": 7}])
def test_query_bits_and_table_bits_the_program_cannot_hold_are_refused(program):
    """Query bits need int8 keys and at most the bits that keep products exact (13 for the tiny
    model's head_dim 16); table bits must be an integer the table can be stated in."""
    m = _tiny("f64")
    m.config.update(program)
    with pytest.raises(ModelError, match="newer lmarc"):
        m.check_bounds()


def test_a_table_that_does_not_fit_its_stated_bits_is_refused():
    m = _tiny("q7")
    m.tables["att_exp"] = intmodel.att_exp_table()  # a Q15 table under "att_exp_bits": 11
    with pytest.raises(ModelError, match="exp table"):
        m.check_bounds()


def test_reprogram_keeps_the_weights_and_makes_another_model():
    """A program is config keys and the exp table: the weights are shared, the file's id is not."""
    base = intmodel.load(TINY)
    q7 = intmodel.reprogram(base, **PROGRAMS["q7"])
    assert q7.embed is base.embed and q7.layers is base.layers and q7.head is base.head
    assert int(q7.tables["att_exp"].max()) == 2047 and int(base.tables["att_exp"].max()) == 1 << 15
    assert Engine(q7).q_bits == 7 and Engine(base).q_bits == intmodel.query_bits_limit(base.config["head_dim"])
    back = intmodel.reprogram(q7, key_cache=None, value_cache=None, query_bits=None, att_exp_bits=None)
    assert back.config == base.config and torch.equal(back.tables["att_exp"], base.tables["att_exp"])


def test_byte_attention_of_whole_chunks_equals_torch_path():
    """Whole forwards over the byte cache (kernels.attend_bytes for every query of a chunk) give the
    torch path's tables; so do forwards in parts after a history, whose queries see keys they did
    not write."""
    m = _tiny("int8-kv")
    seqs = _seqs(9, 6, m.context)
    kernel, torch_path = Engine(m, path="kernels"), Engine(m, path="torch")
    assert _digest(kernel.score(seqs, ALPHA)) == _digest(torch_path.score(seqs, ALPHA))
    toks = torch.tensor([_seqs(1, 8, m.context)[0][:120]] * 2)
    whole = torch_path._forward(toks, _Cache(torch_path, 2, 120))
    cache = _Cache(kernel, 2, 120)
    parts = [kernel._forward(toks[:, a:b], cache) for a, b in ((0, 40), (40, 60), (60, 120))]
    assert torch.equal(torch.cat(parts, 1), whole)


def test_int8_score_halves_make_the_products():
    """Queries split into int8 halves (q = 128 hi + lo) give, recombined, the exact products with
    the int8 keys, at the extreme magnitudes too; keys are read from a wider room, as in the cache."""
    eng = Engine(_tiny("int8"))
    lim = (1 << eng.q_bits) - 1
    gen = torch.Generator().manual_seed(3)
    B, KV, R, hd, S = 2, eng.kv_heads, 24, eng.head_dim, 37
    qt = torch.randint(-lim, lim + 1, (B, KV, R, hd), generator=gen)
    qt[0, 0, :4] = torch.tensor([lim, -lim, -1, 0])[:, None]
    keys = torch.randint(-127, 128, (B, KV, hd, S + 11), generator=gen, dtype=torch.int8)
    keys[1, 0, :, :3] = torch.tensor([127, -127, -1], dtype=torch.int8)
    s = eng._int8_scores(qt, keys, S)
    assert s.dtype == torch.int32 and s.shape == (B, KV, 2 * R, S)
    assert torch.equal((s[:, :, :R].long() << 7) + s[:, :, R:], qt @ keys[..., :S].long())
    eng = Engine(_tiny("q7"))  # 7-bit queries are int8 already: one product, not split
    qt = qt.clamp(-127, 127)
    s = eng._int8_scores(qt, keys, S)
    assert s.shape == (B, KV, R, S) and torch.equal(s.long(), qt @ keys[..., :S].long())
