"""Fast paths: a rule's program compiled for one library, one call per group.

The generic engine (:func:`._engine.run_generic`) is the reference.  Where a
group's arrays qualify, the optimizer hands a program and the group's
parameters to :func:`run`, which performs the same arithmetic in one memory
pass:

* NumPy arrays with numba installed (``pip install neural_arch[fast]``): the
  kernel generated from the rule (:func:`._engine.numba_source`) walks a
  table of data pointers, so a group of 200 small parameters is one compiled
  call.  The table is cached while the arrays keep their identity; only a
  new gradient's address is read again.  Gradients that are not
  C-contiguous (a transposed matrix product) are copied to a reused buffer.
* CuPy arrays (CuPy installed, a CUDA device): the ``ElementwiseKernel``
  generated from the rule (:func:`._engine.cupy_source`), one launch per
  parameter on that parameter's device (a launch is asynchronous; the
  arrays stay where they are, with any strides).

float16 parameters (and bfloat16 on NumPy) get kernels that read the
16-bit parameter and gradient, compute in float32 with float32 state, and
round the result where they store it (and update a master copy).

:func:`run` returns the parameters it did not take (another library or
dtype, a mixed-dtype gradient, a strided or read-only parameter or state
array); the optimizer runs the generic engine on those.  Parameters are
independent and every engine gives the same bits, so the choice shows only
in the speed.  A kernel that fails to compile is reported once, with a
RuntimeWarning, and its program is left to the generic engine from then on;
any other error propagates.

The state records are the generic path's (same keys, ``step`` an int, arrays
of the parameter's shape and dtype), so a checkpoint, ``opt.m``/``opt.v``
and a switch between the paths mid-training all see one layout.
"""

from __future__ import annotations

import importlib
import operator
import os
import threading
import warnings
import weakref
from typing import Any

# The fast paths exist for specific array libraries, so this module, unlike
# the engines, names NumPy itself.
import numpy as np

from . import _engine
from .rule import Program

__all__ = [
    "default_threads",
    "enabled",
    "first_nonfinite",
    "run",
    "set_enabled",
    "set_num_threads",
]

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_ndarray = np.ndarray
#: 16-bit float dtypes the NumPy kernels read and write (computing in float32): their names
_LOW = {np.dtype(np.float16): "float16"}
try:
    import ml_dtypes

    _LOW[np.dtype(ml_dtypes.bfloat16)] = "bfloat16"
except ImportError:  # pragma: no cover - ml_dtypes comes with JAX
    pass
_CHECKED = (_F32, _F64, *_LOW)  # gradient dtypes the compiled finiteness check reads
_F16 = np.dtype(np.float16)
_CUPY = (_F32, _F64, _F16)  # parameter dtypes of the CuPy kernels (CuPy has no bfloat16)

#: Below this many elements in a group, one thread does the update even when
#: more are allowed: waking threads costs more than the work.
PARALLEL_MIN_SIZE = 1 << 18  # measured: from here two threads beat one (Adam, 2 cores)

_enabled = os.environ.get("NEURAL_ARCH_FASTPATH", "1") not in ("0", "false", "off", "")


def default_threads() -> int:
    """The thread count a process gets: ``NEURAL_ARCH_NUM_THREADS``, else ``NUMBA_NUM_THREADS``,
    else ``OMP_NUM_THREADS`` (the first that is a positive integer), else the CPUs this
    process may run on (its affinity, as torch counts them)."""
    for var in ("NEURAL_ARCH_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS and Windows have no affinity call
        return os.cpu_count() or 1


_num_threads = default_threads()
_parallel_lock = threading.Lock()  # numba's default threading layer is not re-entrant
_loaded: dict[str, Any] = {}  # library support modules once imported, False when unavailable
_kernels: dict[tuple, Any] = {}  # (program, library) -> compiled kernels, False when broken


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
    """Let the NumPy fast path split a group over ``n`` threads; returns the old value.

    The default is :func:`default_threads` (every CPU the process may use,
    unless an environment variable says otherwise).  Results do not depend
    on ``n`` (the update is elementwise); only groups of at least
    :data:`PARALLEL_MIN_SIZE` elements are split (the update and the
    finiteness check), and ``n`` is capped by numba's thread count.
    """
    global _num_threads
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    old, _num_threads = _num_threads, n
    return old


def _load(name: str) -> Any:
    """Support module ``name`` (_numba, or cupy itself), imported on first use; False if absent."""
    module = _loaded.get(name)
    if module is None:
        try:
            module = importlib.import_module(name if name == "cupy" else f"{__package__}.{name}")
        except ImportError:  # numba or CuPy missing here: the generic engine does the work
            module = False
        _loaded[name] = module
    return module


def _numba() -> Any:
    """:mod:`._numba`, or False when numba is not installed."""
    return _load("_numba")


def _broken(program: Program, library: str, error: BaseException) -> None:
    _kernels[program, library] = False
    warnings.warn(
        f"neural_arch: the {library} kernel of rule {program.name} failed to compile "
        f"({type(error).__name__}: {error}); this rule now runs on the generic engine, "
        "which gives the same results more slowly",
        RuntimeWarning,
        stacklevel=4,
    )


# ---------------------------------------------------------------- gradients


def _grad_info(cache: dict, g: Any) -> tuple | None:
    """``(weakref, address, kind)`` of a NumPy float gradient, kind "C", "F" or "X" (strided).

    Cached by identity in ``cache`` (one dict per parameter group), so that a
    gradient's address is read once, by the finiteness check or the update,
    whichever sees it first.
    """
    entry = cache.get(id(g))
    if entry is not None and entry[0]() is g:
        return entry
    if type(g) is not _ndarray or g.dtype not in _CHECKED:
        return None
    flags = g.flags
    kind = "C" if flags.c_contiguous else "F" if flags.f_contiguous else "X"
    entry = (weakref.ref(g), g.__array_interface__["data"][0], kind)
    cache[id(g)] = entry
    return entry


def first_nonfinite(pairs: list[tuple[Any, Any]], cache: dict | None = None) -> int | None:
    """Index of the first pair whose gradient holds NaN or ±inf, -1 if none, None if not handled.

    One compiled call reads every gradient of the group once, comparing
    exponent bits as integers.  Handled when every gradient is a C- or
    F-contiguous NumPy float32/float64 array of one dtype.  ``cache`` (a
    dict per parameter group) keeps the table of addresses while the
    gradients are the same arrays.
    """
    if not _enabled or not pairs or type(pairs[0][1]) is not _ndarray:
        return None
    kernels = _numba()
    if not kernels:
        return None
    cache = {} if cache is None else cache
    grads = [g for _, g in pairs]
    table = cache.get("check")
    if (
        table is None
        or len(table[0]) != len(grads)
        or not all(map(operator.is_, map(_deref, table[0]), grads))
    ):
        table = _check_table(grads, cache)
        if table is None:
            return None
        cache["check"] = table
    first = -1
    for index, addresses, sizes, mask in table[1]:  # one call per dtype in the group
        if _num_threads > 1 and int(sizes.sum()) >= PARALLEL_MIN_SIZE:
            k = _first_nonfinite_threaded(addresses, sizes, mask)
        else:
            k = int(kernels.first_nonfinite(addresses, sizes, mask))
        if k >= 0 and (first < 0 or index[k] < first):
            first = index[k]
    return first


def _first_nonfinite_threaded(addresses: Any, sizes: Any, mask: Any) -> int:
    """:func:`first_nonfinite`'s kernel over segments of the table on numba's threads."""
    import numba

    row_of, start, lengths = _segments(sizes, _num_threads)
    found = np.zeros(len(lengths), np.bool_)
    with _parallel_lock:
        numba.set_num_threads(min(_num_threads, numba.config.NUMBA_NUM_THREADS))
        _numba().nonfinite_segments(
            addresses[row_of] + start * mask.dtype.itemsize, lengths, mask, found
        )
    bad = np.flatnonzero(found)
    return int(row_of[bad[0]]) if len(bad) else -1


def _check_table(grads: list, cache: dict) -> tuple | None:
    """(weakrefs, [(indices, addresses, sizes, exponent mask) per dtype]); None if one won't do."""
    infos = cache.get("grads", {})
    fresh: dict = {}
    by_dtype: dict[Any, tuple[list, list, list]] = {}
    for i, g in enumerate(grads):
        info = _grad_info(infos, g)
        if info is None or info[2] == "X":
            return None
        fresh[id(g)] = info
        index, addresses, sizes = by_dtype.setdefault(g.dtype, ([], [], []))
        index.append(i)
        addresses.append(info[1])
        sizes.append(g.size)
    cache["grads"] = fresh  # forget the gradients of earlier steps
    tables = []
    for dtype, (index, addresses, sizes) in by_dtype.items():
        uint, mask = _numba().EXPONENT_MASKS[dtype]
        arrays = np.array(addresses, np.int64), np.array(sizes, np.int64), np.full(1, mask, uint)
        tables.append((index, *arrays))
    return [weakref.ref(g) for g in grads], tables


# ------------------------------------------------------------------- update


def run(
    program: Program,
    items: list[tuple[Any, Any, dict]],
    scalars: dict[str, float],
    cache: dict,
    master: bool = False,
) -> list[int]:
    """Apply ``program`` to the ``(param, grad, record)`` items the kernels take; return the rest.

    ``scalars`` are the program's per-step scalars (Python floats); state the
    program creates is stored into the records.  ``cache`` is a dict the
    optimizer keeps per parameter group.  For float16/bfloat16 NumPy
    parameters the kernels compute in float32 with float32 state; with
    ``master`` they update the record's ``"master_param"`` (which must
    exist) and write its rounding into the parameter.
    """
    if not _enabled or not items:
        return list(range(len(items)))
    x0 = items[0][0].data
    t = type(x0)
    if t is _ndarray:
        if x0.dtype in (_F32, _F64) and _numba():
            return _run_numba(program, items, scalars, cache, x0.dtype)
        if x0.dtype in _LOW and _numba():
            return _run_numba(program, items, scalars, cache, _F32, x0.dtype, master)
    # CuPy is named, not imported: it may be absent
    elif t.__module__.partition(".")[0] == "cupy" and x0.dtype in _CUPY and _load("cupy"):
        if x0.dtype == _F16:
            return _run_cupy(program, items, scalars, "float16", master)
        return _run_cupy(program, items, scalars)
    return list(range(len(items)))


def _numba_kernels(program: Program, storage: str | None = None, master: bool = False) -> Any:
    key = (program, "numba") if storage is None else (program, "numba", storage, master)
    kernels = _kernels.get(key)
    if kernels is None:
        source = _engine.numba_source(program, storage, master)
        kernels = _kernels[key] = _numba().load_kernels(source)
    return kernels


_widening: dict[Any, Any] = {}


def _widening_table(low: Any) -> Any:
    table = _widening.get(low)
    if table is None:
        table = _widening[low] = _numba().widening_table(low)
    return table


class _Table:
    """A group's pointer table for one program and dtype, valid while its arrays are the same.

    ``rows[r, j]`` is the address of array ``program.arrays[j]`` of the
    parameter ``taken[r]``; the gradient column is filled in per step (it
    changes whenever a new gradient arrives).  ``objects`` are the arrays
    the table points at, compared by identity before it is used again.
    """

    def __init__(self) -> None:
        self.objects: list[Any] = []
        self.taken: list[int] = []
        self.rest: list[int] = []
        self.rows = np.zeros((0, 0), np.int64)
        self.sizes = np.zeros(0, np.int64)
        self.shapes: list[tuple] = []
        self.created: list[dict[str, Any]] = []
        self.grad_refs: list[Any] | None = None
        self.grad_ok = np.zeros(0, bool)
        self.copies: list[tuple[Any, Any]] = []  # (C-ordered scratch view, gradient) per step
        self.scratch = np.zeros(0)
        self.itemsizes = np.zeros(0, np.int64)  # bytes per element of each column


_deref = weakref.ref.__call__


def _fits(a: Any, dt: Any, shape: tuple, write: bool = True) -> bool:
    """``a`` is a C-contiguous NumPy array of ``dt`` and ``shape`` (writable if ``write``)."""
    if type(a) is not _ndarray or a.dtype != dt or a.shape != shape:
        return False
    flags = a.flags
    return flags.c_contiguous and (flags.writeable or not write)


def _run_numba(program, items, scalars, cache, dt, low=None, master=False) -> list[int]:
    """The numba kernels over a group of ``dt`` parameters (``low``: float16/bfloat16
    parameters computed in ``dt``, float32; ``master``: updating their master copies)."""
    storage = None if low is None else _LOW[low]
    master = master and low is not None
    kernels = _numba_kernels(program) if low is None else _numba_kernels(program, storage, master)
    if kernels is False:
        return list(range(len(items)))
    states = [k for k in program.arrays if k not in ("param", "grad")]
    if master:
        states.append("master_param")
    created = [k for k in states if k not in program.inputs and k != "master_param"]
    objects: list[Any] = []
    add = objects.append
    for p, _, record in items:
        add(p.data)
        for k in states:
            add(record.get(k))
    key = (program, dt, low, master)
    table = cache.get(key)
    if (
        table is None
        or created
        or len(table.objects) != len(objects)
        or not all(map(operator.is_, table.objects, objects))
    ):
        table = _build_table(program, items, dt, objects, states, created, low, master)
        if not created:  # a table pointing at fresh state arrays serves one step only
            cache[key] = table
    grads = [items[i][1] for i in table.taken]
    refs = table.grad_refs
    if refs is None or not all(map(operator.is_, map(_deref, refs), grads)):
        gdt = dt if low is None else low
        _point_at_grads(program, table, grads, cache.setdefault("grads", {}), gdt)
    for view, g in table.copies:
        np.copyto(view, g)
    rows, sizes, rest = table.rows, table.sizes, table.rest
    if not table.grad_ok.all():  # a gradient the kernel cannot read: its parameter goes generic
        ok = table.grad_ok
        rows, sizes = rows[ok], sizes[ok]
        rest = sorted(rest + [i for i, good in zip(table.taken, ok, strict=True) if not good])
    if len(sizes):
        cast = dt.type
        args = [cast(scalars[name]) for name in program.scalars]
        like = np.empty(0, dt) if low is None else _widening_table(low)
        threads = _num_threads
        if threads > 1 and int(sizes.sum()) >= PARALLEL_MIN_SIZE:
            rows, sizes = _split(rows, sizes, threads, table.itemsizes)
            if not _call(program, kernels.threaded, (rows, sizes, like, *args), parallel=True):
                return list(range(len(items)))
        elif not _call(program, kernels.serial, (rows, sizes, like, *args)):
            return list(range(len(items)))
    if created:
        for i, arrays, good in zip(table.taken, table.created, table.grad_ok, strict=True):
            if good:
                items[i][2].update(arrays)
    return rest


def _call(program: Program, kernel: Any, args: tuple, parallel: bool = False) -> bool:
    """Run a numba kernel; False (once warned) when it does not compile."""
    try:
        if parallel:
            import numba

            with _parallel_lock:
                numba.set_num_threads(min(_num_threads, numba.config.NUMBA_NUM_THREADS))
                kernel(*args)
        else:
            kernel(*args)
    except _numba().NumbaError as error:
        _broken(program, "numba", error)
        return False
    return True


def _build_table(program, items, dt, objects, states, created, low=None, master=False) -> _Table:
    table = _Table()
    cols = program.arrays
    if master:  # the parameter column is the master copy; the 16-bit parameter comes last
        cols = (*cols, "low")
    written = {k for k, _ in program.outputs} | {"master_param"}
    narrow = set() if low is None else {"grad", "low"} if master else {"param", "grad"}
    table.itemsizes = np.array([2 if k in narrow else dt.itemsize for k in cols], np.int64)
    rows, sizes = [], []
    for i, (p, _, record) in enumerate(items):
        x = p.data
        shape = x.shape
        arrays = {"param": x}
        ok = _fits(x, dt if low is None else low, shape) and x.size > 0
        for k in states:
            a = np.empty(shape, dt) if k in created else record.get(k)
            ok = ok and _fits(a, dt, shape, write=k in written)
            arrays[k] = a
        if master:
            arrays["param"], arrays["low"] = arrays["master_param"], x
        if not ok:
            table.rest.append(i)
            continue
        table.taken.append(i)
        table.shapes.append(shape)
        table.created.append({k: arrays[k] for k in created})
        rows.append([0 if k == "grad" else arrays[k].__array_interface__["data"][0] for k in cols])
        sizes.append(x.size)
    table.objects = objects
    table.rows = np.array(rows, np.int64).reshape(len(rows), len(cols))
    table.sizes = np.array(sizes, np.int64)
    table.grad_ok = np.ones(len(rows), bool)
    return table


def _point_at_grads(program: Program, table: _Table, grads: list, infos: dict, dt: Any) -> None:
    """Fill the table's gradient column (C-ordered copies for the other layouts)."""
    column = program.arrays.index("grad")
    items = table.taken
    ok = np.ones(len(items), bool)
    need = 0
    for r, g in enumerate(grads):
        info = _grad_info(infos, g)
        shape_ok = info is not None and g.dtype == dt and g.shape == table.shapes[r]
        if not shape_ok:
            ok[r] = False
        elif info[2] != "C":
            need += g.size
    if table.scratch.dtype != dt or table.scratch.size < need:
        table.scratch = np.empty(need, dt)
    table.copies = []
    offset = 0
    for r, g in enumerate(grads):
        if not ok[r]:
            table.rows[r, column] = 0
            continue
        info = infos[id(g)]
        if info[2] == "C":
            table.rows[r, column] = info[1]
        else:
            view = table.scratch[offset : offset + g.size].reshape(g.shape)
            offset += g.size
            table.copies.append((view, g))
            table.rows[r, column] = view.__array_interface__["data"][0]
    table.grad_ok = ok
    table.grad_refs = [weakref.ref(g) for g in grads]
    if len(infos) > 2 * len(grads) + 64:  # forget gradients that are gone
        for key in [k for k, info in infos.items() if info[0]() is None]:
            del infos[key]


def _segments(sizes: Any, threads: int) -> tuple[Any, Any, Any]:
    """``(row, start, length)`` of each of about ``4 * threads`` equal segments of the rows."""
    target = max(1, -(-int(sizes.sum()) // (4 * threads)))
    pieces = -(-sizes // target)  # segments per row
    row_of = np.repeat(np.arange(len(sizes)), pieces)
    first = np.cumsum(pieces) - pieces
    k = np.arange(len(row_of)) - first[row_of]  # the segment's position within its row
    start = k * target
    return row_of, start, np.minimum(sizes[row_of] - start, target).astype(np.int64)


def _split(rows: Any, sizes: Any, threads: int, itemsizes: Any) -> tuple[Any, Any]:
    """The table cut into about ``4 * threads`` segments of equal size, for numba's threads.

    ``itemsizes[j]`` is the element size of column ``j`` (its segments' offsets)."""
    row_of, start, seg = _segments(sizes, threads)
    return rows[row_of] + start[:, None] * itemsizes[None, :], seg


# --------------------------------------------------------------------- CuPy


def _cupy_kernel(program: Program, storage: str | None = None, master: bool = False) -> Any:
    key = (program, "cupy") if storage is None else (program, "cupy", storage, master)
    kernel = _kernels.get(key)
    if kernel is None:
        cupy = _load("cupy")
        ins, outs, body, name = _engine.cupy_source(program, storage, master)
        kernel = cupy.ElementwiseKernel(ins, outs, body, name, options=("--fmad=false",))
        _kernels[key] = kernel
    return kernel


def _run_cupy(
    program: Program,
    items: list,
    scalars: dict[str, float],
    storage: str | None = None,
    master: bool = False,
) -> list[int]:
    """One ElementwiseKernel launch per parameter (asynchronous; no host synchronisation).

    With ``storage="float16"`` the kernel reads the float16 parameter and
    gradient and computes in float32 with float32 state (``master``: on the
    record's float32 ``"master_param"``, its rounding stored in the parameter).
    """
    cupy = _load("cupy")
    master = master and storage is not None
    kernel = _cupy_kernel(program) if storage is None else _cupy_kernel(program, storage, master)
    if kernel is False:
        return list(range(len(items)))
    written = [k for k, _ in program.outputs]
    read_only = [k for k in program.inputs if k not in written]
    out_names = [k for k in program.arrays if k in written]
    created = [k for k in program.arrays if k not in program.inputs]
    rest = []
    for i, (p, g, record) in enumerate(items):
        x = p.data
        wide = x.dtype if storage is None else _F32
        arrays = {"param": record.get("master_param") if master else x, "grad": g}
        for k in program.arrays:
            if k not in arrays:
                if k not in created:
                    arrays[k] = record.get(k)
                else:  # a state the rule makes: float32 for a float16 parameter
                    arrays[k] = cupy.empty_like(x) if storage is None else cupy.empty_like(x, wide)
        narrow = () if storage is None else ("grad",) if master else ("param", "grad")
        if not all(
            type(a) is type(x)
            and a.dtype == (x.dtype if k in narrow else wide)
            and a.shape == x.shape
            for k, a in arrays.items()
        ):
            rest.append(i)
            continue
        args = [arrays[k] for k in read_only] + [scalars[k] for k in program.scalars]
        args += [arrays[k] for k in out_names]
        if master:
            args.append(x)
        try:
            with x.device:  # launch on the array's own GPU
                kernel(*args)
        except cupy.cuda.compiler.CompileException as error:
            _broken(program, "cupy", error)
            return rest + list(range(i, len(items)))
        for k in created:
            record[k] = arrays[k]
    return rest
