"""Fast paths: the same update rules, fused into one compiled pass per parameter.

The generic rules in :mod:`.functional` are the reference.  When a group's
arrays qualify, the optimizers hand the group to this module instead, which
runs the same arithmetic in the same order in one memory pass per parameter:

* NumPy arrays and numba installed (``pip install neural_arch[fast]``):
  the kernels of :mod:`._numba`;
* CuPy arrays (CuPy installed, a CUDA device): the kernels of :mod:`._cupy`.

Each entry point returns False when it does not take the group (numba or
CuPy missing, the group's first parameter not a float32/float64 array of that
library); the caller then runs the generic rule.  Within a group it takes,
a parameter whose arrays do not qualify (another dtype or library, a gradient
of another dtype, a non-contiguous or read-only parameter or state array)
goes through the generic rule, one parameter at a time: parameters are independent and both
paths give the same bits, so the choice is silent and only the speed differs.

The state records are the generic path's (same keys, ``step`` an int, arrays
of the parameter's shape and dtype), so a checkpoint, ``opt.m``/``opt.v``
and a switch between the paths mid-training all see one layout.
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import Any

# The fast paths exist for specific array libraries, so this module, unlike
# the generic rules, names NumPy itself.
import numpy as np

__all__ = [
    "adam_group",
    "enabled",
    "first_nonfinite",
    "set_enabled",
    "set_num_threads",
    "sgd_group",
]

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_ndarray = np.ndarray

#: Below this many elements a parameter is updated by one thread even when
#: more are allowed: waking threads costs more than the work.
PARALLEL_MIN_SIZE = 1 << 20

_enabled = os.environ.get("NEURAL_ARCH_FASTPATH", "1") not in ("0", "false", "off", "")
_num_threads = 1
_parallel_lock = threading.Lock()  # numba's default threading layer is not re-entrant
_scratch = threading.local()  # dtype -> a reused buffer for non-contiguous gradients
_loaded: dict[str, Any] = {}  # kernels modules once imported, False when unavailable


def enabled() -> bool:
    """Whether the fast paths are used where the arrays qualify."""
    return _enabled


def set_enabled(flag: bool) -> bool:
    """Turn the fast paths on or off (e.g. to time the generic path); returns the old value.

    The environment variable ``NEURAL_ARCH_FASTPATH=0`` turns them off at import.
    """
    global _enabled
    old, _enabled = _enabled, bool(flag)
    return old


def set_num_threads(n: int) -> int:
    """Let the NumPy fast path split large parameters over ``n`` threads; returns the old value.

    The default is 1.  Results do not depend on ``n`` (the update is
    elementwise); only parameters of at least :data:`PARALLEL_MIN_SIZE`
    elements are split, and ``n`` is capped by numba's thread count.
    """
    global _num_threads
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    old, _num_threads = _num_threads, n
    return old


def _load(name: str) -> Any:
    """Kernels module ``name`` (_numba or _cupy), imported on first use; False if unavailable."""
    kernels = _loaded.get(name)
    if kernels is None:
        try:
            kernels = importlib.import_module(f"{__package__}.{name}")
        except Exception:  # numba or CuPy missing or broken here: the generic path does the work
            kernels = False
        _loaded[name] = kernels
    return kernels


def _kernels() -> Any:
    """The numba kernels, or False when numba is unavailable."""
    return _load("_numba")


def _library(x: Any) -> tuple[type, Any] | None:
    """(array type, kernels module) when ``x`` is a float32/float64 array a fast path serves."""
    t = type(x)
    if t is _ndarray:
        kernels = _load("_numba")
    elif t.__module__.partition(".")[0] == "cupy":  # named, not imported: CuPy may be absent
        kernels = _load("_cupy")
    else:
        return None
    if not kernels or x.dtype not in (_F32, _F64):
        return None
    return t, kernels


def _float_dtype(x: Any) -> Any:
    """The dtype of ``x`` if it is a NumPy float32/float64 array, else None."""
    if type(x) is not _ndarray:
        return None
    dt = x.dtype
    return dt if dt is _F32 or dt is _F64 or dt in (_F32, _F64) else None


def _fits(a: Any, t: type, dt: Any, shape: tuple) -> bool:
    """``a`` is a writable C-contiguous array of type ``t``, dtype ``dt`` and ``shape``."""
    if type(a) is not t or not (a.dtype is dt or a.dtype == dt) or a.shape != shape:
        return False
    flags = a.flags
    return flags.c_contiguous and (t is not _ndarray or flags.writeable)  # CuPy: always


def _fits_pair(x: Any, g: Any, t: type) -> Any:
    """The dtype of parameter ``x`` if ``x`` and its gradient ``g`` can go through a kernel."""
    if type(x) is not t or type(g) is not t or g is x:
        return None
    dt = x.dtype
    if not (dt is _F32 or dt is _F64 or dt in (_F32, _F64)):
        return None
    if not (g.dtype is dt or g.dtype == dt) or g.shape != x.shape:
        return None
    return dt if _fits(x, t, dt, x.shape) else None


def _c_order(g: Any) -> Any:
    """``g`` if C-contiguous, else its copy into this thread's reused scratch buffer.

    Gradients of matrix products often come out transposed (F order); the
    kernels walk p, g, m, v in one order, so such a gradient is copied first
    (one extra read and write of g; no new memory after the first step).
    CuPy's kernels take any strides, so only NumPy arrays get here.
    """
    if g.flags.c_contiguous:
        return g
    buffers = _scratch.__dict__
    buf = buffers.get(g.dtype)
    if buf is None or buf.size < g.size:
        buf = buffers[g.dtype] = np.empty(g.size, g.dtype)  # grows to the largest gradient
    out = buf[: g.size].reshape(g.shape)
    np.copyto(out, g)
    return out


def _flat(*arrays: Any) -> tuple:
    """1-d views of C-contiguous arrays (None stays None): the kernels' one ndim."""
    return tuple(None if a is None else a.reshape(-1) for a in arrays)


def _pick(kernels: Any, name: str) -> tuple[Any, Any]:
    """(serial kernel, threaded kernel or None) for kernel ``name``."""
    threaded = getattr(kernels, name + "_par") if _num_threads > 1 else None
    return getattr(kernels, name), threaded


def _run_parallel(kernel: Any, args: tuple) -> None:
    import numba

    with _parallel_lock:
        numba.set_num_threads(min(_num_threads, numba.config.NUMBA_NUM_THREADS))
        kernel(*args)


# ----------------------------------------------------------------- nonfinite


def _launch(serial: Any, threaded: Any, args: tuple, size: int) -> bool:
    """Run a kernel (the threaded one for large parameters); False if it cannot run."""
    try:
        if threaded is not None and size >= PARALLEL_MIN_SIZE:
            _run_parallel(threaded, args)
        else:
            serial(*args)
    except Exception:  # no kernel for these types (compiling failed): the generic rule
        return False
    return True


def first_nonfinite(pairs: list[tuple[Any, Any]]) -> int | None:
    """Index of the first pair whose gradient holds NaN or ±inf, -1 if none, None if not handled.

    One read of every gradient, one compiled call per gradient, and no float
    reduction (the exponent bits are compared as integers).  Handled when
    every gradient is a C- or F-contiguous NumPy float32/float64 array.
    """
    if not _enabled or not pairs or _float_dtype(pairs[0][1]) is None:
        return None
    kernels = _kernels()
    if not kernels:
        return None
    checks = kernels.HAS_NONFINITE
    calls = []
    for _, g in pairs:
        check = checks.get(g.dtype) if type(g) is _ndarray else None
        if check is None:
            return None
        flags = g.flags
        if flags.c_contiguous:
            calls.append((check, g if g.ndim == 1 else g.reshape(-1)))
        elif flags.f_contiguous:  # a transposed gradient: the order does not matter here
            calls.append((check, g.T.reshape(-1)))
        else:
            return None
    for i, ((kernel, mask), flat) in enumerate(calls):
        if kernel(flat, mask):
            return i
    return -1


# ---------------------------------------------------------------------- Adam


def adam_group(
    pairs: list[tuple[Any, Any]],
    records: list[dict[str, Any]],
    hyper: dict[str, Any],
    *,
    decoupled: bool,
) -> list[int]:
    """Apply :func:`.functional.adam_step` to the pairs the kernels take; return the others.

    ``records`` are the pairs' state records (made by the optimizer, as for
    the generic rule) and are updated in place; ``hyper`` is the parameter
    group (``lr``, ``betas``, ``eps``, ``weight_decay``, ``amsgrad``,
    ``maximize``).  Returns the indices of the pairs left to the generic rule:
    all of them unless numba (or CuPy) is available and the first parameter
    qualifies; then only those whose arrays do not (each parameter is
    independent, so the split does not change the result).
    """
    library = _library(pairs[0][0].data) if _enabled and pairs else None
    if library is None:
        return list(range(len(pairs)))
    t, kernels = library
    serial, threaded = _pick(kernels, "adam_kernel")
    lr, (beta1, beta2), eps, wd = hyper["lr"], hyper["betas"], hyper["eps"], hyper["weight_decay"]
    amsgrad = bool(hyper["amsgrad"])
    w = 1.0 - beta1
    by_dtype: dict[Any, tuple] = {}
    by_step: dict[tuple, tuple] = {}
    rest = []
    for i, ((p, g), record) in enumerate(zip(pairs, records, strict=True)):
        x = p.data
        dt = _fits_pair(x, g, t)
        m, v = record.get("exp_avg"), record.get("exp_avg_sq")
        vmax = record.get("max_exp_avg_sq") if amsgrad else None
        shape = x.shape
        if (
            dt is None
            or not (_fits(m, t, dt, shape) and _fits(v, t, dt, shape))
            or (amsgrad and not _fits(vmax, t, dt, shape))
        ):
            rest.append(i)
            continue
        options = by_dtype.get(dt)
        if options is None:
            # None switches an option off (see _numba); values are rounded to the dtype,
            # as NumPy rounds a Python float that meets an array
            cast = dt.type
            options = (
                True if hyper["maximize"] else None,
                cast(1.0 - lr * wd) if wd != 0 and decoupled else None,
                cast(wd) if wd != 0 and not decoupled else None,
                cast(w) if abs(w) < 0.5 else None,
                None if abs(w) < 0.5 else cast(1.0 - w),
                cast(beta2),
                cast(1.0 - beta2),
            )
            by_dtype[dt] = options
        step = record["step"] + 1
        scalars = by_step.get((dt, step))
        if scalars is None:
            cast = dt.type
            bias_correction1 = 1.0 - beta1**step
            bias_correction2_sqrt = (1.0 - beta2**step) ** 0.5
            scalars = (cast(bias_correction2_sqrt), cast(eps), cast(-lr / bias_correction1))
            by_step[dt, step] = scalars
        if t is _ndarray:
            g = _c_order(g)
        arrays = (x, g, m, v, vmax) if x.ndim == 1 else _flat(x, g, m, v, vmax)
        if not _launch(serial, threaded, (*arrays, *options, *scalars), x.size):
            rest.append(i)
            continue
        record["step"] = step
    return rest


# ----------------------------------------------------------------------- SGD


def sgd_group(
    pairs: list[tuple[Any, Any]], records: list[dict[str, Any]], hyper: dict[str, Any]
) -> list[int]:
    """Apply :func:`.functional.sgd_step` to the pairs the kernels take; return the others.

    As :func:`adam_group`; ``hyper`` holds ``lr``, ``momentum``, ``dampening``,
    ``weight_decay``, ``nesterov``, ``maximize``.
    """
    library = _library(pairs[0][0].data) if _enabled and pairs else None
    if library is None:
        return list(range(len(pairs)))
    t, kernels = library
    serial, threaded = _pick(kernels, "sgd_kernel")
    momentum, wd = hyper["momentum"], hyper["weight_decay"]
    by_dtype: dict[Any, tuple] = {}
    rest = []
    for i, ((p, g), record) in enumerate(zip(pairs, records, strict=True)):
        x = p.data
        dt = _fits_pair(x, g, t)
        buf = record.get("momentum_buffer") if momentum != 0 else None
        first = momentum != 0 and buf is None
        if dt is None or not (buf is None or _fits(buf, t, dt, x.shape)):
            rest.append(i)
            continue
        options = by_dtype.get(dt)
        if options is None:
            cast = dt.type
            negate, l2 = (True if hyper["maximize"] else None), (cast(wd) if wd != 0 else None)
            one_damp = cast(1.0 - hyper["dampening"])
            tail = (True if hyper["nesterov"] else None, cast(momentum), cast(-hyper["lr"]))
            options = by_dtype[dt] = ((negate, l2, one_damp, *tail), (negate, l2, None, *tail))
        if first:
            buf = kernels.empty_like(x)
        if t is _ndarray:
            g = _c_order(g)
        arrays = (x, g, buf) if x.ndim == 1 else _flat(x, g, buf)
        if not _launch(serial, threaded, (*arrays, *options[first]), x.size):
            rest.append(i)
            continue
        if first:
            record["momentum_buffer"] = buf
    return rest
