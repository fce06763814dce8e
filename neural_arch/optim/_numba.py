"""numba support for the NumPy fast path: kernels generated from rules, and the finiteness check.

Imported only by :mod:`._fastpath`, and only when numba is installed;
importing neural_arch never imports numba.

* :func:`load_kernels` compiles the module that :func:`._engine.numba_source`
  writes for a rule.  The source goes to a file in a cache directory
  (``$NEURAL_ARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/neural_arch`` or
  ``~/.cache/neural_arch``) named by a hash of its text, so that numba's
  ``cache=True`` finds the compiled serial kernel again in the next process.
  Where that directory cannot be written the kernels are compiled in
  memory, per process.
* :func:`voidptr` turns an address from a pointer table into a pointer the
  kernels wrap with ``numba.carray``: a whole group's arrays in one call.
* :func:`first_nonfinite` checks a table of gradients in one call: an
  element is NaN or infinite exactly when all its exponent bits are set, and
  comparing bits as integers needs no float reduction, so the loop
  vectorizes without ``fastmath``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from types import ModuleType
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "EXPONENT_MASKS",
    "NumbaError",
    "first_nonfinite",
    "load_kernels",
    "nonfinite_segments",
    "to_bfloat16",
    "to_float16",
    "voidptr",
    "widening_table",
]

NumbaError = numba.core.errors.NumbaError

#: float dtype -> (unsigned integer dtype of its width, the mask of its exponent bits)
EXPONENT_MASKS = {
    np.dtype(np.float16): (np.dtype(np.uint16), np.uint16(0x7C00)),
    np.dtype(np.float32): (np.dtype(np.uint32), np.uint32(0x7F800000)),
    np.dtype(np.float64): (np.dtype(np.uint64), np.uint64(0x7FF0000000000000)),
}
try:  # NumPy's bfloat16
    import ml_dtypes

    EXPONENT_MASKS[np.dtype(ml_dtypes.bfloat16)] = (np.dtype(np.uint16), np.uint16(0x7F80))
except ImportError:  # pragma: no cover - ml_dtypes comes with JAX
    pass


@intrinsic
def voidptr(typingctx: Any, address: Any) -> Any:
    """The integer ``address`` as a ``void *`` (for ``numba.carray``)."""
    sig = types.voidptr(address)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


@intrinsic
def float_bits(typingctx: Any, x: Any) -> Any:
    """The bits of a float32 as a uint32 (a bit cast, no conversion)."""
    sig = types.uint32(x)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@numba.njit(inline="always", nogil=True)
def to_float16(x):  # pragma: no cover - compiled
    """The float16 nearest to float32 ``x`` (ties to even), as its bits: NumPy's cast."""
    f = float_bits(x)
    f_exp = f & numba.uint32(0x7F800000)
    sign = numba.uint16((f >> numba.uint32(16)) & numba.uint32(0x8000))
    if f_exp >= numba.uint32(0x47800000):  # overflow, infinity or NaN
        sig = f & numba.uint32(0x007FFFFF)
        if f_exp == numba.uint32(0x7F800000) and sig != 0:  # NaN: keep the payload's top
            h = numba.uint32(0x7C00) + (sig >> numba.uint32(13))
            if h == numba.uint32(0x7C00):
                h += numba.uint32(1)
            return sign | numba.uint16(h)
        return sign | numba.uint16(0x7C00)
    if f_exp <= numba.uint32(0x38000000):  # a subnormal float16, or zero
        if f_exp < numba.uint32(0x33000000):
            return sign
        e = f_exp >> numba.uint32(23)
        sig = numba.uint32(0x00800000) + (f & numba.uint32(0x007FFFFF))
        sig = sig >> (numba.uint32(113) - e)
        if (sig & numba.uint32(0x3FFF)) != numba.uint32(0x1000) or (f & numba.uint32(0x7FF)) != 0:
            sig += numba.uint32(0x1000)
        return sign | numba.uint16(sig >> numba.uint32(13))
    h_exp = (f_exp - numba.uint32(0x38000000)) >> numba.uint32(13)
    sig = f & numba.uint32(0x007FFFFF)
    if (sig & numba.uint32(0x3FFF)) != numba.uint32(0x1000):
        sig += numba.uint32(0x1000)
    return sign | numba.uint16((sig >> numba.uint32(13)) + h_exp)


@numba.njit(inline="always", nogil=True)
def to_bfloat16(x):  # pragma: no cover - compiled
    """The bfloat16 nearest to float32 ``x`` (ties to even), as its bits: ml_dtypes' cast."""
    f = float_bits(x)
    if (f & numba.uint32(0x7FFFFFFF)) > numba.uint32(0x7F800000):  # NaN: a quiet one
        return numba.uint16((f >> numba.uint32(16)) | numba.uint32(0x40))
    f += numba.uint32(0x7FFF) + ((f >> numba.uint32(16)) & numba.uint32(1))
    return numba.uint16(f >> numba.uint32(16))


def widening_table(dtype: Any) -> np.ndarray:
    """float32 values of the 65536 bit patterns of a 16-bit float dtype (exact)."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype).astype(np.float32)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def first_nonfinite(addresses, sizes, mask):  # pragma: no cover - compiled
    """Index of the first array in the table holding NaN or ±inf, or -1."""
    dt = mask.dtype
    for k in range(sizes.size):
        bits = numba.carray(voidptr(addresses[k]), sizes[k], dt)
        m = mask[0]
        worst = m ^ m
        for i in range(bits.size):
            worst = max(worst, bits[i] & m)
        if worst == m:
            return k
    return -1


@numba.njit(cache=False, parallel=True, nogil=True, boundscheck=False)
def nonfinite_segments(addresses, sizes, mask, out):  # pragma: no cover - compiled
    """``out[k]``: whether segment ``k`` of the table holds NaN or ±inf (numba's threads)."""
    dt = mask.dtype
    for k in numba.prange(sizes.size):
        bits = numba.carray(voidptr(addresses[k]), sizes[k], dt)
        m = mask[0]
        worst = m ^ m
        for i in range(bits.size):
            worst = max(worst, bits[i] & m)
        out[k] = worst == m


_lock = threading.Lock()
_modules: dict[str, ModuleType] = {}


def _cache_dir() -> str | None:
    """A writable directory for generated kernel sources, or None."""
    base = os.environ.get("NEURAL_ARCH_CACHE_DIR")
    if not base:
        root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(root, "neural_arch")
    path = os.path.join(base, f"kernels-numba{numba.__version__}")
    # no fallback to a shared temporary directory: numba's cache index there
    # would be a pickle another user could have written
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


def _holds(path: str, source: str) -> bool:
    try:
        with open(path) as f:
            return f.read() == source
    except OSError:
        return False


def load_kernels(source: str) -> ModuleType:
    """The module compiled from ``source`` (see :func:`._engine.numba_source`), cached."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    with _lock:
        module = _modules.get(digest)
        if module is not None:
            return module
        name = f"neural_arch_kernel_{digest}"
        directory = _cache_dir()
        if directory is None:  # nowhere to write: compiled in memory, per process
            module = ModuleType(name)
            exec(compile(source.replace("cache=True", "cache=False"), name, "exec"), vars(module))
        else:
            path = os.path.join(directory, name + ".py")
            if not _holds(path, source):  # written once, atomically: its stamp is numba's key
                fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
                with os.fdopen(fd, "w") as f:
                    f.write(source)
                os.replace(tmp, path)
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        _modules[digest] = module
        return module
