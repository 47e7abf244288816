"""An atomic counter for the numba kernels: parts of a parallel loop handed out as threads free up.

numba's `prange` splits its iterations evenly between the threads before any of them starts. On
these machines one thread is often slower than the other for long stretches (a virtual CPU that
shares its core: one attention kernel's two halves took 4.9 and 6.5 ms, whichever chunks each
half held), and the kernel waits for the slower. A kernel whose `prange` iterations are workers,
each taking parts from a shared counter (`next_part`) until none are left, keeps every thread
busy to the end: the first worker on each thread takes parts while there are any, the rest find
none. Which thread computes a part never changes its integers, only when it is done. (The byte
GEMM does not use it: its even split keeps each thread on its own rows' activations, and handed
out in parts it ran 1-10% slower.)
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def fetch_add(typingctx, counter, value):
    """Adds value to counter[0] (a one-element int64 array) atomically; returns the old value."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        array = context.make_array(sig.args[0])(context, builder, args[0])
        v = context.cast(builder, args[1], sig.args[1], types.int64)
        return builder.atomic_rmw("add", array.data, v, "seq_cst")

    return types.int64(counter, value), codegen


@numba.njit(inline="always")
def next_part(counter: np.ndarray, parts: int) -> int:  # pragma: no cover  (compiled)
    """The next part for this thread to do, or -1 when all parts are handed out."""
    part = fetch_add(counter, 1)
    return part if part < parts else -1

