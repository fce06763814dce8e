"""The three engines that run a traced rule (:class:`.rule.Program`).

* :func:`run_generic` evaluates the program on whole arrays of any Array API
  library.  On mutable arrays it works in place: an operation whose operand
  dies there writes into that operand's buffer (a temporary of its own, or
  the state array or parameter the chain of operations ends in), and a dead
  temporary is reused before new memory is taken; on immutable arrays (JAX)
  every operation makes a new array and the results are rebound.  Both give
  the same bits: only where the values live differs.
* :func:`numba_source` writes the program as a numba loop over a table of
  data pointers (one compiled call walks a whole group), serial and
  threaded; :mod:`._fastpath` compiles it from a file in a cache directory,
  so numba's ``cache=True`` holds across processes.
* :func:`cupy_source` writes it as the body of a CuPy ``ElementwiseKernel``
  (every scalar typed ``T``; compiled with ``--fmad=false``).

Every engine performs the program's operations one by one, in its order, in
the arrays' dtype, with IEEE division and square root and no contraction
into fused multiply-adds, so all three agree to the last bit.
"""

from __future__ import annotations

import hashlib
import operator
from typing import Any

from ..backend import device, is_immutable
from .rule import BINARY, COMPARE, LOGIC, Program

__all__ = ["cupy_source", "numba_source", "private", "run_generic"]

Array = Any

_PY_OPS = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
}
_IN_PLACE = {
    "add": operator.iadd,
    "sub": operator.isub,
    "mul": operator.imul,
    "div": operator.itruediv,
}
_COMMUTATIVE = frozenset({"add", "mul"})  # a + b and b + a are the same IEEE result
_XP_FUNCS = {
    "neg": "negative",
    "sqrt": "sqrt",
    "abs": "abs",
    "sign": "sign",
    "not": "logical_not",
    "and": "logical_and",
    "or": "logical_or",
    "maximum": "maximum",
    "minimum": "minimum",
    "where": "where",
}

# ---------------------------------------------------------------- generic


class _Plan:
    """What :func:`run_generic` precomputes once per program."""

    def __init__(self, program: Program) -> None:
        outs: dict[int, list[str]] = {}
        for key, node in program.outputs:
            outs.setdefault(node, []).append(key)
        self.outputs_of = outs
        steps = []
        n = len(program.nodes)
        for i, (op, args) in enumerate(program.nodes):
            if op in ("input", "scalar"):
                steps.append((op, args[0], (), ()))
                continue
            dies = tuple(program.last_use[a] == i for a in args)
            steps.append((op, args, dies, tuple(outs.get(i, ()))))
        self.steps = steps
        self.end = n


_plans: dict[Program, _Plan] = {}


def _writable(x: Any) -> bool:
    """Whether ``x`` is an array whose elements may be assigned (NumPy scalars are not)."""
    flags = getattr(x, "flags", None)  # NumPy and CuPy: the cheap common case
    if flags is None:
        import array_api_compat

        return array_api_compat.is_writeable_array(x)
    return bool(getattr(flags, "writeable", True))


def private(xp: Any, x: Any) -> Any:
    """A copy of a writable array (others as they are: None, ints, immutable arrays)."""
    if x is None or isinstance(x, (int, float)) or not _writable(x):
        return x
    return xp.asarray(x, copy=True)


def run_generic(
    program: Program, xp: Any, arrays: dict[str, Array], scalars: dict[str, float]
) -> dict[str, Array]:
    """Evaluate ``program`` on whole arrays; return the new value of every output.

    ``arrays`` maps ``"param"``, ``"grad"`` and the state keys to arrays (a
    state the rule creates maps to None); ``scalars`` maps the program's
    scalar names to Python floats.  Parameter and state arrays that are
    writable are updated in place and returned; on immutable arrays new
    arrays are returned.  The gradient is never written.

    The common case (writable arrays of one dtype and shape, at least 1-d)
    runs a Python function generated from the program, whose in-place
    choices were made once, when it was generated; every other case goes
    through :func:`_interpret`, which makes them array by array.  Both do
    the same operations in the same order.
    """
    param = arrays["param"]
    compiled = _py_kernels.get(program)
    if compiled is None:
        compiled = _py_kernels[program] = _compile_python(program)
    if compiled is not False and _uniform(compiled[1], arrays, param):
        kernel, inputs, names = compiled
        args = [arrays[k] for k, _ in inputs]
        return kernel(xp, param, *args, *[scalars[k] for k in names])
    return _interpret(program, xp, arrays, scalars)


_py_kernels: dict[Program, Any] = {}


def _uniform(inputs: tuple[tuple[str, bool], ...], arrays: dict[str, Array], param: Any) -> bool:
    """The generated function's assumptions: writable, one dtype and shape, not 0-d."""
    if not param.shape or not _writable(param):
        return False
    dtype, shape = param.dtype, param.shape
    for key, written in inputs:
        a = arrays[key]
        if a.dtype != dtype or a.shape != shape or (written and not _writable(a)):
            return False
    return True


def _interpret(
    program: Program, xp: Any, arrays: dict[str, Array], scalars: dict[str, float]
) -> dict[str, Array]:
    """:func:`run_generic` for any arrays, deciding where each value lives as it goes.

    Arguments and result as :func:`run_generic`.  A new value is rounded to
    its destination's dtype where it is made (a float64 gradient on a
    float32 parameter leaves float32 state).
    """
    plan = _plans.get(program)
    if plan is None:
        plan = _plans[program] = _Plan(program)
    param = arrays["param"]
    # where each output ends: its array, if it may be written now (its old value is then dead)
    dst: dict[str, Array] = {}
    for key, _ in program.outputs:
        old = arrays.get(key)
        if old is not None and not _writable(old) and not is_immutable(old):
            raise ValueError(
                f"the optimizer updates arrays in place, but the {key!r} array is read-only"
            )
        dst[key] = old
    vals: list[Any] = [None] * plan.end
    home: list[Any] = [None] * plan.end  # "t": a temporary of ours; a key: that output's array
    free: list[Array] = []  # dead temporaries, free for reuse
    for i, (op, args, dies, outs) in enumerate(plan.steps):
        if op == "input":
            x = vals[i] = arrays[args]
            if args in dst and x is not None and _writable(x):
                home[i] = args
            continue
        if op == "scalar":
            vals[i] = scalars[args]
            continue
        a = vals[args[0]]
        result = None
        where = None
        if op in _IN_PLACE:
            b = vals[args[1]]
            # in place into an operand's buffer: a temporary, or the output this value heads for
            for j, (x, y) in enumerate(((a, b), (b, a))):
                if j and op not in _COMMUTATIVE:
                    break
                h = home[args[j]]
                if h is None or not dies[j] or (h != "t" and outs and outs != (h,)):
                    continue
                if isinstance(y, float) or y.dtype == x.dtype:
                    result, where = _IN_PLACE[op](x, y), h
                    break
            if result is None and free and not isinstance(a, float):
                for k, buf in enumerate(free):
                    if buf.dtype == a.dtype and (isinstance(b, float) or b.dtype == a.dtype):
                        del free[k]
                        buf[...] = a
                        result, where = _IN_PLACE[op](buf, b), "t"
                        break
            if result is None:
                result = _PY_OPS[op](a, b)
        elif op in _PY_OPS:
            result = _PY_OPS[op](a, vals[args[1]])
        else:
            operands = [vals[k] for k in args]
            if op in ("maximum", "minimum", "where"):
                arrays = [v for v in operands if not isinstance(v, float) and v.dtype != xp.bool]
                like = arrays[0] if arrays else param
                operands = [_as_array(xp, v, like) for v in operands]
            result = getattr(xp, _XP_FUNCS[op])(*operands)
        if where is None and _writable(result) and getattr(result, "shape", None) == param.shape:
            where = "t"
        for key in outs:  # a new value is rounded to its destination's dtype where it is made
            target = dst[key] if dst[key] is not None else param
            if result.dtype != target.dtype:
                result = xp.astype(result, target.dtype)
                where = "t" if _writable(result) else None
        vals[i], home[i] = result, where
        for arg, dead in zip(args, dies, strict=True):
            if dead and home[arg] == "t" and vals[arg] is not result and arg != i:
                free.append(vals[arg])
                home[arg] = None
    return _store(program, xp, dst, vals, home, param)


def _as_array(xp: Any, v: Any, like: Array) -> Array:
    """A Python float as a 0-d array of ``like``'s dtype (the value the operators would use)."""
    if isinstance(v, float):
        return xp.asarray(v, dtype=like.dtype, device=device(like))
    return v


def _store(program, xp, dst, vals, home, param) -> dict[str, Array]:
    """Put every output's value into its array (or return it, on immutable arrays)."""
    out: dict[str, Array] = {}
    claimed: set[int] = set()
    olds = {id(a) for a in dst.values() if a is not None}
    values = {}
    for key, node in program.outputs:
        value = vals[node]
        if id(value) in olds and value is not dst[key]:  # another output's old array: keep it
            value = xp.asarray(value, copy=True)
        values[key] = value
    for key, node in program.outputs:
        value, old = values[key], dst[key]
        if old is None:  # a state the rule creates: a private array of the parameter's dtype
            if (home[node] == "t" or is_immutable(value)) and node not in claimed:
                claimed.add(node)
                out[key] = value
            else:
                out[key] = xp.asarray(value, dtype=param.dtype, copy=True)
        elif value is old:
            out[key] = old
        elif is_immutable(old):
            out[key] = value
        else:
            old[...] = value
            out[key] = old
    return out


def python_source(program: Program) -> str | None:
    """A Python function running ``program`` on writable arrays of one dtype, in place.

    The choices :func:`_interpret` makes at run time are made here once,
    assuming every array is writable and of the parameter's dtype and
    shape; None for the rare program whose outputs would need copies to be
    ordered (an output that is another output's old array).
    """
    dsts = {k for k, _ in program.outputs}
    outs_of: dict[int, tuple[str, ...]] = {}
    for key, node in program.outputs:
        outs_of[node] = (*outs_of.get(node, ()), key)
    names: list[str] = []
    homes: list[str | None] = []  # "t": a temporary of ours; a key: that output's array
    free: list[str] = []
    lines: list[str] = []
    last = program.last_use
    for i, (op, args) in enumerate(program.nodes):
        if op == "input":
            names.append(f"a_{args[0]}")
            homes.append(args[0] if args[0] in dsts else None)
            continue
        if op == "scalar":
            names.append(f"s_{args[0]}")
            homes.append(None)
            continue
        outs = outs_of.get(i, ())
        arg_names = [names[a] for a in args]
        name, home = f"v{i}", "t"
        if op in _IN_PLACE:
            symbol = BINARY[op]
            for j in (0, 1) if op in _COMMUTATIVE else (0,):
                mine, other = args[j], args[1 - j]
                h = homes[mine]
                if h is not None and last[mine] == i and (h == "t" or outs in ((), (h,))):
                    lines.append(f"{names[mine]} {symbol}= {names[other]}")
                    name, home = names[mine], h
                    break
            else:
                if free and program.kinds[args[0]] == "array":
                    name = free.pop()
                    lines.append(f"{name}[...] = {arg_names[0]}")
                    lines.append(f"{name} {symbol}= {arg_names[1]}")
                else:
                    lines.append(f"{name} = {arg_names[0]} {symbol} {arg_names[1]}")
        elif op in COMPARE:
            lines.append(f"{name} = {arg_names[0]} {COMPARE[op]} {arg_names[1]}")
            home = None
        elif op == "neg":
            lines.append(f"{name} = -{arg_names[0]}")
        elif op in ("maximum", "minimum", "where"):
            lines.append(f"{name} = _mixed(xp, like, {op!r}, {', '.join(arg_names)})")
        else:
            lines.append(f"{name} = xp.{_XP_FUNCS[op]}({', '.join(arg_names)})")
            home = None if program.kinds[i] == "bool" else "t"
        names.append(name)
        homes.append(home)
        for a in set(args):
            if last[a] == i and homes[a] == "t" and names[a] != name:
                free.append(names[a])
    result, claimed = [], set()
    for key, node in program.outputs:
        h = homes[node]
        if h not in (None, "t", key):
            return None
        if h == key:
            result.append(f"{key!r}: a_{key}")
        elif key in program.inputs:
            lines.append(f"a_{key}[...] = {names[node]}")
            result.append(f"{key!r}: a_{key}")
        elif h == "t" and node not in claimed:
            claimed.add(node)
            result.append(f"{key!r}: {names[node]}")
        else:
            result.append(f"{key!r}: xp.asarray({names[node]}, copy=True)")
    inputs = [f"a_{k}" for k in program.arrays if k in program.inputs]
    params = ", ".join(["xp", "like", *inputs, *(f"s_{k}" for k in program.scalars)])
    body = "\n".join(f"    {line}" for line in [*lines, f"return {{{', '.join(result)}}}"])
    return f"def kernel({params}):\n{body}\n"


def _mixed(xp: Any, like: Array, op: str, *operands: Any) -> Array:
    """``xp.<op>`` with Python floats as 0-d arrays of ``like``'s dtype and device."""
    return getattr(xp, op)(*(_as_array(xp, v, like) for v in operands))


def _compile_python(program: Program) -> Any:
    """(the function :func:`python_source` writes, its array inputs, its scalars), or False."""
    source = python_source(program)
    if source is None:
        return False
    namespace: dict[str, Any] = {"_mixed": _mixed}
    exec(compile(source, f"<neural_arch rule {program.name}>", "exec"), namespace)
    written = {k for k, _ in program.outputs}
    inputs = tuple((k, k in written) for k in program.arrays if k in program.inputs)
    return namespace["kernel"], inputs, program.scalars


# ----------------------------------------------------------------- numba


def _fingerprint(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _numba_expr(op: str, a: list[str]) -> str:
    if op in BINARY:
        return f"{a[0]} {BINARY[op]} {a[1]}"
    if op in COMPARE:
        return f"{a[0]} {COMPARE[op]} {a[1]}"
    if op in LOGIC:
        return f"{a[0]} {LOGIC[op]} {a[1]}"
    return {
        "neg": "-{0}",
        "not": "not {0}",
        "sqrt": "np.sqrt({0})",
        "abs": "abs({0})",
        "sign": "np.sign({0})",
        "maximum": "np.maximum({0}, {1})",
        "minimum": "np.minimum({0}, {1})",
        "where": "({1} if {0} else {2})",
    }[op].format(*a)


def numba_source(program: Program, storage: str | None = None, master: bool = False) -> str:
    """A module defining ``serial`` and ``threaded`` numba kernels for ``program``.

    Both take ``(table, sizes, like, *scalars)``: ``table[c, j]`` is the
    address of the ``c``-th segment of array ``program.arrays[j]``, a
    C-contiguous run of ``sizes[c]`` elements of ``like``'s dtype; the
    scalars come in the order of ``program.scalars``, already of that dtype.
    The threaded kernel hands segments to numba's threads.

    With ``storage`` ``"float16"`` or ``"bfloat16"`` the parameter and the
    gradient are 16-bit floats (their bits, ``uint16``) and ``like`` is the
    float32 table of their values (:func:`._numba.widening_table`): they are
    read as float32, the arithmetic is float32 (as the state), and the new
    parameter is rounded to the nearest 16-bit float, ties to even.  With
    ``master`` the parameter column is its float32 master copy, and one more
    column, last, is the 16-bit parameter, written with the rounding.
    """
    cols = {name: j for j, name in enumerate(program.arrays)}
    narrow = set() if storage is None else {"grad"} if master else {"param", "grad"}
    names = []
    for i, (op, args) in enumerate(program.nodes):
        names.append(f"s_{args[0]}" if op == "scalar" else f"v{i}")
    scalar_args = "".join(f", s_{name}" for name in program.scalars)
    body = [
        f"        a{j} = numba.carray(voidptr(table[c, {j}]), n, "
        f"{'np.uint16' if name in narrow else 'dt'})"
        for name, j in cols.items()
    ]
    if master:
        body.append(f"        low = numba.carray(voidptr(table[c, {len(cols)}]), n, np.uint16)")
    body.append("        for i in range(n):")
    for i, (op, args) in enumerate(program.nodes):
        if op == "input":
            j = cols[args[0]]
            body.append(
                f"            v{i} = like[a{j}[i]]"
                if args[0] in narrow
                else f"            v{i} = a{j}[i]"
            )
        elif op != "scalar":
            body.append(f"            v{i} = {_numba_expr(op, [names[a] for a in args])}")
    to_low = {"float16": "to_float16", "bfloat16": "to_bfloat16"}.get(storage or "")
    for key, node in program.outputs:
        if key == "param" and "param" in narrow:
            body.append(f"            a{cols[key]}[i] = {to_low}(v{node})")
        elif program.nodes[node] != ("input", (key,)):
            body.append(f"            a{cols[key]}[i] = v{node}")
        if key == "param" and master:
            body.append(f"            low[i] = {to_low}(v{node})")
    header = [
        f'"""Generated by neural_arch from the rule {program.name}: do not edit."""',
        "import numba",
        "import numpy as np",
        "",
        "from neural_arch.optim._numba import voidptr"
        + ("" if storage is None else f", {to_low}"),
        "",
        "_OPTIONS = dict(error_model='numpy', nogil=True, fastmath=False, boundscheck=False)",
    ]
    dtype_line = "    dt = like.dtype" if storage is None else "    dt = np.float32"
    out = list(header)
    for kernel, loop, options in (
        ("serial", "range", "cache=True"),
        ("threaded", "numba.prange", "cache=False, parallel=True"),
    ):
        out += [
            "",
            "",
            f"@numba.njit({options}, **_OPTIONS)",
            f"def {kernel}(table, sizes, like{scalar_args}):",
            dtype_line,
            f"    for c in {loop}(sizes.size):",
            "        n = sizes[c]",
            *body,
        ]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ CuPy


def _c_expr(op: str, a: list[str]) -> str:
    if op in BINARY:
        return f"{a[0]} {BINARY[op]} {a[1]}"
    if op in COMPARE:
        return f"{a[0]} {COMPARE[op]} {a[1]}"
    return {
        "and": "{0} && {1}",
        "or": "{0} || {1}",
        "not": "!{0}",
        "neg": "-{0}",
        "sqrt": "sqrt({0})",
        "abs": "fabs({0})",
        # NumPy's sign (+0 for either zero, NaN stays NaN) and NaN-propagating max/min
        "sign": "({0} > T(0)) ? T(1) : (({0} < T(0)) ? T(-1) : ({0} == {0} ? T(0) : {0}))",
        "maximum": "({0} > {1} || {0} != {0}) ? {0} : {1}",
        "minimum": "({0} < {1} || {0} != {0}) ? {0} : {1}",
        "where": "{0} ? {1} : {2}",
    }[op].format(*a)


def cupy_source(
    program: Program, storage: str | None = None, master: bool = False
) -> tuple[str, str, str, str]:
    """``(in_params, out_params, body, name)`` of an ElementwiseKernel for ``program``.

    Arrays the program writes are output parameters (read and written in
    place); the gradient and the other arrays it only reads, and every
    scalar, are typed ``T``, the parameter's dtype.

    With ``storage="float16"`` the parameter and the gradient are float16,
    the state and the scalars float32, and ``T`` is float32 in the body: the
    arithmetic is float32 and the new parameter is rounded to float16 (to
    nearest, ties to even) where it is stored.  With ``master`` the
    parameter is its float32 master copy and one more output, ``a_low``, is
    the float16 parameter.
    """
    written = [k for k, _ in program.outputs]
    read_only = [k for k in program.inputs if k not in written]
    if storage is None:
        types = dict.fromkeys(program.arrays, "T")
        scalar_type = "T"
    else:
        narrow = {"grad"} if master else {"param", "grad"}
        types = {k: storage if k in narrow else "float32" for k in program.arrays}
        scalar_type = "float32"
    ins = [f"{types[k]} a_{k}" for k in read_only]
    ins += [f"{scalar_type} s_{k}" for k in program.scalars]
    outs = [f"{types[k]} a_{k}" for k in program.arrays if k in written]
    if master:
        outs.append(f"{storage} a_low")
    names, body = [], [] if storage is None else ["typedef float T;"]
    for i, (op, args) in enumerate(program.nodes):
        if op == "scalar":
            names.append(f"s_{args[0]}")
            continue
        names.append(f"v{i}")
        if op == "input" and program.last_use[i] < 0:  # kept, never read (ASGD's ax): no copy
            continue
        ctype = "bool" if program.kinds[i] == "bool" else "T"
        if op == "input":
            expr = f"a_{args[0]}" if storage is None else f"static_cast<T>(a_{args[0]})"
        else:
            expr = _c_expr(op, [names[a] for a in args])
        body.append(f"{ctype} v{i} = {expr};")
    for key, node in program.outputs:
        if program.nodes[node] != ("input", (key,)):
            value = f"v{node}" if types[key] in ("T", "float32") else f"{storage}(v{node})"
            body.append(f"a_{key} = {value};")
        if key == "param" and master:
            body.append(f"a_low = {storage}(v{node});")
    source = "\n".join(body)
    name = f"neural_arch_{program.name.replace('.', '_')}_{_fingerprint(source)[:8]}"
    return ", ".join(ins), ", ".join(outs), source, name
