"""512-bit integer vectors for the numba kernels: the byte dot products of AVX-512 VNNI.

A decode step's attention reads every cached int8 key and value once and multiplies each by a
small integer. Written as numba loops, LLVM turns those products into 32-bit multiplies (one
product per lane and instruction, after widening every byte); VNNI's `vpdpbusd` takes 64 unsigned
bytes and 64 signed bytes and adds each lane's four products into a 32-bit accumulator: four
times the products per instruction, no widening. LLVM does not find it in loops, so `dot4` emits
it by name where the CPU has it (`NATIVE`), and otherwise the same integers in portable LLVM
vector IR (widen, multiply, add the four products of each lane), which any CPU runs. Integer sums
wrap alike in both, so a kernel's output is the same on every machine; only its speed differs.

`Vec` is sixteen int32 lanes held in a register (a numba type over LLVM's <16 x i32>): `splat`,
`load` (64 bytes of an array, as `dot4` takes them), `dot4` and `store` (16 int32 into an array) are
all a kernel needs. None of them checks bounds; the kernels' layouts keep every access inside.
`prefetch` asks for a cache line ahead of its use (LLVM's generic hint: a no-op where a CPU has
none, and never a fault), so that a kernel's arithmetic overlaps the memory reads its next
products wait for.

Set LMARC_SIMD=portable to compile the portable form on a VNNI CPU (the tests compare the two).
numba's cache does not see this module's choice: a kernel cached under one form keeps it, which
changes its speed, never its integers.
"""

from __future__ import annotations

import os

import llvmlite.binding as llvm
import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

LANES = 16
_I32 = ir.IntType(32)
_V16 = ir.VectorType(_I32, LANES)
_BYTES = ir.VectorType(ir.IntType(8), 4 * LANES)
_WIDE = ir.VectorType(_I32, 4 * LANES)
_BYTE_POINTER = ir.IntType(8).as_pointer()


def _native() -> bool:
    """VNNI where the CPU has it, numba compiles for this CPU and nobody asked for the portable form."""
    if os.environ.get("LMARC_SIMD", "") == "portable" or numba.config.CPU_NAME or numba.config.CPU_FEATURES:
        return False
    features = llvm.get_host_cpu_features()
    return bool(features.get("avx512vnni")) and bool(features.get("avx512bw"))


NATIVE = _native()


class Vec(types.Type):
    """Sixteen int32 lanes in one vector register."""

    def __init__(self) -> None:
        super().__init__(name="Vec16i32")


vec = Vec()


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type) -> None:
        super().__init__(dmm, fe_type, _V16)


@intrinsic
def splat(typingctx, x):
    """x (an integer, truncated to 32 bits) in every lane: an accumulator's start, or four packed
    bytes to pair with each lane's four bytes of `load`."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, _I32)
        elif v.type.width < 32:
            v = builder.sext(v, _I32) if sig.args[0].signed else builder.zext(v, _I32)
        one = builder.insert_element(ir.Constant(_V16, None), v, ir.Constant(_I32, 0))
        return builder.shuffle_vector(one, one, ir.Constant(_V16, None))

    return vec(x), codegen


def _element_pointer(context, builder, arrty, arr, off):
    """Pointer to element off of a C-contiguous array (flat index)."""
    a = context.make_array(arrty)(context, builder, arr)
    return builder.gep(a.data, [off])


@intrinsic
def load(typingctx, arr, off):
    """The 64 bytes of a C-contiguous int8 or uint8 array from flat element off on, as 16 lanes of
    4 bytes (lane i holds bytes 4i..4i+3)."""
    if not (isinstance(arr, types.Array) and arr.dtype in (types.int8, types.uint8) and arr.layout == "C"):
        return None

    def codegen(context, builder, sig, args):
        p = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(p, _V16.as_pointer()), align=1)

    return vec(arr, types.intp), codegen


@intrinsic
def store(typingctx, arr, off, v):
    """Writes v's 16 lanes into a C-contiguous int32 array from flat element off on."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int32 and arr.layout == "C"):
        return None

    def codegen(context, builder, sig, args):
        p = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(p, _V16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(arr, types.intp, vec), codegen


@intrinsic
def dot4(typingctx, acc, u, s):
    """acc + the sums of each lane's four products of unsigned bytes u and signed bytes s (lane i:
    sum over k < 4 of u[4i + k] * s[4i + k]), wrapping at 32 bits: VNNI's vpdpbusd."""
    if not (acc == vec and u == vec and s == vec):
        return None

    def codegen(context, builder, sig, args):
        a, u, s = args
        if NATIVE:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16] * 3),
                                                "llvm.x86.avx512.vpdpbusd.512")
            return builder.call(fn, [a, u, s])
        wu = builder.zext(builder.bitcast(u, _BYTES), _WIDE)
        ws = builder.sext(builder.bitcast(s, _BYTES), _WIDE)
        prod = builder.mul(wu, ws)
        for k in range(4):
            lanes = ir.Constant(_V16, [4 * i + k for i in range(LANES)])
            a = builder.add(a, builder.shuffle_vector(prod, prod, lanes))
        return a

    return vec(vec, vec, vec), codegen



@intrinsic
def prefetch(typingctx, arr, off):
    """Hint that the cache line of flat element off of a C-contiguous array will be read soon
    (into the second-level cache: `attend_bytes` fetches a chunk's whole values, larger than the
    first level, while its table step runs)."""
    if not (isinstance(arr, types.Array) and arr.layout == "C"):
        return None

    def codegen(context, builder, sig, args):
        p = builder.bitcast(_element_pointer(context, builder, sig.args[0], args[0], args[1]), _BYTE_POINTER)
        hint = ir.FunctionType(ir.VoidType(), [_BYTE_POINTER, _I32, _I32, _I32])
        fn = cgutils.get_or_insert_function(builder.module, hint, "llvm.prefetch.p0i8")
        # read, locality 2 (prefetcht1: second-level cache), data cache
        builder.call(fn, [p, ir.Constant(_I32, 0), ir.Constant(_I32, 2), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.void(arr, types.intp), codegen
