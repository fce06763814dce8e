"""An optimizer's arithmetic, written once as a rule and traced into a program.

This module is the vocabulary of rules (see docs/adding_an_optimizer.md):
the functions a rule may call (:func:`sqrt`, :func:`abs`, :func:`sign`,
:func:`maximum`, :func:`minimum`, :func:`where`, :func:`lerp`) and the
hyperparameter specs an optimizer declares (:class:`Real`, :class:`Flag`,
:class:`Pair`).

An elementwise optimizer writes its update as a plain Python function of the
parameter ``p``, its gradient ``g``, its state arrays (by their state keys)
and two namespaces: ``s``, the named per-step scalars, and ``f``, the flags::

    def sgd(p, g, momentum_buffer=None, *, s, f):
        if f.maximize:
            g = -g
        ...
        return {"param": p + g * s.neg_lr}

The rule never sees an array.  It is called once per combination of flags
(and of which state arrays exist yet) with symbolic values that record every
operation, and the recording, a :class:`Program`, is what the engines run:
the generic Array API evaluator, the generated numba loop, the generated CuPy
kernel (:mod:`._engine`).  Python ``if`` on a flag therefore selects a branch
before tracing; a branch on array values is :func:`where`.

A rule may use ``+ - * /``, unary ``-``, comparisons, ``& | ~`` on booleans
and the functions below.  It may not use numeric literals: a literal would
be a Python float in one engine and a typed constant in another, and could
change the dtype; every number is a scalar from the optimizer's
``scalars(group, step)``, rounded to the arrays' dtype where the engines meet
the arrays (as NumPy and PyTorch round a Python float against a float32
array).  Arithmetic between two scalars belongs in ``scalars()`` for the
same reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from types import SimpleNamespace
from typing import Any

from ._hyper import Flag, Pair, Real

__all__ = [
    "Flag",
    "Pair",
    "Program",
    "Real",
    "abs",
    "lerp",
    "maximum",
    "minimum",
    "sign",
    "sqrt",
    "trace",
    "where",
]

#: ops with two operands (arrays or scalars); their symbols in Python and C
BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
COMPARE = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
LOGIC = {"and": "&", "or": "|"}
#: functions of one array
UNARY = ("neg", "sqrt", "abs", "sign", "not")


class Sym:
    """A symbolic value inside a rule: an array (``"array"``), a scalar or a mask (``"bool"``)."""

    __slots__ = ("_index", "_kind", "_tape")

    def __init__(self, tape: _Tape, index: int, kind: str) -> None:
        self._tape, self._index, self._kind = tape, index, kind

    def _op(self, op: str, *others: Any, swap: bool = False) -> Sym:
        args = (self, *others)
        if swap:
            args = args[::-1]
        return self._tape.emit(op, args)

    def __add__(self, o: Any) -> Sym:
        return self._op("add", o)

    def __radd__(self, o: Any) -> Sym:
        return self._op("add", o, swap=True)

    def __sub__(self, o: Any) -> Sym:
        return self._op("sub", o)

    def __rsub__(self, o: Any) -> Sym:
        return self._op("sub", o, swap=True)

    def __mul__(self, o: Any) -> Sym:
        return self._op("mul", o)

    def __rmul__(self, o: Any) -> Sym:
        return self._op("mul", o, swap=True)

    def __truediv__(self, o: Any) -> Sym:
        return self._op("div", o)

    def __rtruediv__(self, o: Any) -> Sym:
        return self._op("div", o, swap=True)

    def __neg__(self) -> Sym:
        return self._op("neg")

    def __lt__(self, o: Any) -> Sym:
        return self._op("lt", o)

    def __le__(self, o: Any) -> Sym:
        return self._op("le", o)

    def __gt__(self, o: Any) -> Sym:
        return self._op("gt", o)

    def __ge__(self, o: Any) -> Sym:
        return self._op("ge", o)

    def __eq__(self, o: Any) -> Sym:  # type: ignore[override]
        return self._op("eq", o)

    def __ne__(self, o: Any) -> Sym:  # type: ignore[override]
        return self._op("ne", o)

    def __and__(self, o: Any) -> Sym:
        return self._op("and", o)

    def __or__(self, o: Any) -> Sym:
        return self._op("or", o)

    def __invert__(self) -> Sym:
        return self._op("not")

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        raise TypeError(
            "a rule cannot branch on array values with if/and/or; use where(cond, a, b), "
            "or a flag (f.name) for a branch chosen before tracing"
        )

    def __repr__(self) -> str:
        return f"<{self._kind} %{self._index} of a rule being traced>"


def sqrt(x: Sym) -> Sym:
    """Elementwise square root (IEEE-rounded in every engine)."""
    return _unary("sqrt", x)


def abs(x: Sym) -> Sym:
    """Elementwise absolute value."""
    return _unary("abs", x)


def sign(x: Sym) -> Sym:
    """Elementwise sign: -1, 0 or 1 (NaN stays NaN)."""
    return _unary("sign", x)


def maximum(a: Any, b: Any) -> Sym:
    """Elementwise maximum; NaN in either operand gives NaN (``xp.maximum``)."""
    return _tape_of(a, b).emit("maximum", (a, b))


def minimum(a: Any, b: Any) -> Sym:
    """Elementwise minimum; NaN in either operand gives NaN (``xp.minimum``)."""
    return _tape_of(a, b).emit("minimum", (a, b))


def where(cond: Sym, a: Any, b: Any) -> Sym:
    """``a`` where ``cond`` holds, else ``b`` (``cond`` a comparison of arrays)."""
    return _tape_of(cond, a, b).emit("where", (cond, a, b))


def lerp(start: Sym, end: Sym, weight: Sym, one_minus_weight: Sym, small: bool) -> Sym:
    """``start + weight * (end - start)``, rounded as ``torch.lerp`` rounds it.

    PyTorch computes ``start + w * (end - start)`` when ``|w| < 0.5`` and
    ``end - (1 - w) * (end - start)`` otherwise.  ``small`` (a flag: whether
    ``|w| < 0.5``) picks the branch before tracing; ``one_minus_weight`` is
    the scalar ``1 - w``, computed in Python like ``weight``.
    """
    if small:
        return start + (end - start) * weight
    return end + (start - end) * one_minus_weight


def _unary(op: str, x: Any) -> Sym:
    if not isinstance(x, Sym):
        raise TypeError(f"{op}() in a rule takes an array of the rule, got {x!r}")
    return x._tape.emit(op, (x,))


def _tape_of(*args: Any) -> _Tape:
    for a in args:
        if isinstance(a, Sym):
            return a._tape
    raise TypeError(f"a rule's function needs at least one array of the rule, got {args!r}")


class _Tape:
    """The recording of one trace: nodes ``(op, args)``, args being node indices."""

    def __init__(self) -> None:
        self.nodes: list[tuple[str, tuple]] = []
        self.kinds: list[str] = []
        self.scalar_nodes: dict[str, Sym] = {}

    def new(self, op: str, args: tuple, kind: str) -> Sym:
        self.nodes.append((op, args))
        self.kinds.append(kind)
        return Sym(self, len(self.nodes) - 1, kind)

    def emit(self, op: str, args: tuple) -> Sym:
        kinds = []
        for a in args:
            if not isinstance(a, Sym):
                raise TypeError(
                    f"numeric literal {a!r} in a rule (operation {op!r}): a literal can change "
                    "the dtype; compute it in the optimizer's scalars() and use s.<name>"
                )
            if a._tape is not self:
                raise TypeError("a rule mixes values of two traces")
            kinds.append(a._kind)
        if op in COMPARE:
            if "bool" in kinds:
                raise TypeError(f"comparison {op!r} in a rule got a comparison as an operand")
            kind = "bool" if "array" in kinds else "scalar"
        elif op in LOGIC or op == "not":
            if any(k != "bool" for k in kinds):
                raise TypeError(f"{LOGIC.get(op, '~')} in a rule combines comparisons only")
            kind = "bool"
        elif op == "where":
            if kinds[0] != "bool" or "bool" in kinds[1:]:
                raise TypeError("where(cond, a, b) takes a comparison and two numeric values")
            kind = "array"  # the shape of the comparison, which involves an array
        else:
            if "bool" in kinds:
                raise TypeError(f"operation {op!r} in a rule got a comparison as an operand")
            kind = "array" if "array" in kinds else "scalar"
        if kind == "scalar":
            raise TypeError(
                f"operation {op!r} on scalars only in a rule: compute it once per step in "
                "the optimizer's scalars(), which keeps it a Python float in every engine"
            )
        return self.new(op, tuple(a._index for a in args), kind)


class _Scalars:
    """The ``s`` of a rule being traced: ``s.lr`` is the scalar input named ``lr``."""

    def __init__(self, tape: _Tape) -> None:
        self._tape = tape

    def __getattr__(self, name: str) -> Sym:
        if name.startswith("_"):
            raise AttributeError(name)
        tape = self._tape
        sym = tape.scalar_nodes.get(name)
        if sym is None:
            sym = tape.scalar_nodes[name] = tape.new("scalar", (name,), "scalar")
        return sym


class _Flags(SimpleNamespace):
    """The ``f`` of a rule being traced: Python bools; a flag not given reads as an error."""

    def __getattr__(self, name: str) -> bool:
        raise AttributeError(
            f"the rule reads flag {name!r}, which the optimizer's flags() does not provide"
        )


@dataclass(frozen=True, eq=False)
class Program:
    """A traced rule: the engines' common input.

    ``nodes[i]`` is ``(op, args)``: ``("input", (name,))`` for an array the
    rule reads (``"param"``, ``"grad"`` or a state key), ``("scalar",
    (name,))`` for a per-step scalar, or an operation whose ``args`` are
    indices of earlier nodes.  ``outputs`` maps ``"param"`` and the state
    keys the rule writes to the node holding their new value.  Nodes that no
    output needs are removed, except the input of a state array the rule
    writes (it exists, and is written in place, even when it is not read).
    ``last_use[i]`` is the index of the last node reading node ``i``
    (``len(nodes)`` for an output's value, -1 for a kept input never read).
    """

    name: str
    nodes: tuple[tuple[str, tuple], ...]
    kinds: tuple[str, ...]
    outputs: tuple[tuple[str, int], ...]
    last_use: tuple[int, ...]

    @cached_property
    def inputs(self) -> tuple[str, ...]:
        """Names of the arrays the program reads, in node order."""
        return tuple(args[0] for op, args in self.nodes if op == "input")

    @cached_property
    def scalars(self) -> tuple[str, ...]:
        """Names of the scalars the program reads, in node order."""
        return tuple(args[0] for op, args in self.nodes if op == "scalar")

    @cached_property
    def arrays(self) -> tuple[str, ...]:
        """Every array the program touches: its inputs, then outputs it only writes."""
        names = list(self.inputs)
        names += [k for k, _ in self.outputs if k not in names]
        return tuple(names)


_programs: dict[tuple, Program] = {}


def trace(rule: Callable[..., Mapping], present: tuple[str, ...], flags: Mapping) -> Program:
    """The :class:`Program` of ``rule`` for the state arrays ``present`` and the ``flags``.

    ``present`` names the state arrays that exist (the others are passed as
    their defaults, None).  Cached: a rule is traced once per key.
    """
    key = (rule, present, tuple(sorted(flags.items())))
    program = _programs.get(key)
    if program is None:
        program = _programs[key] = _trace(rule, present, flags)
    return program


def _trace(rule: Callable, present: tuple[str, ...], flags: Mapping) -> Program:
    tape = _Tape()
    p = tape.new("input", ("param",), "array")
    g = tape.new("input", ("grad",), "array")
    states = {k: tape.new("input", (k,), "array") for k in present}
    s = _Scalars(tape)
    result = rule(p, g, **states, s=s, f=_Flags(**flags))
    name = getattr(rule, "__qualname__", "rule")
    if not isinstance(result, Mapping) or "param" not in result:
        raise TypeError(f"rule {name} must return a dict with 'param' and the new state arrays")
    allowed = {"param"} | set(inspect.signature(rule).parameters) - {"p", "g", "s", "f"}
    for key, value in result.items():
        if key not in allowed:
            raise TypeError(f"rule {name} returns {key!r}, which is not one of its state arrays")
        if not isinstance(value, Sym) or value._tape is not tape or value._kind != "array":
            raise TypeError(f"rule {name} returns {value!r} for {key!r}; expected an array")
    # a state array that exists and is written stays an input even when the rule does not read
    # it (ASGD's ax = p): the engines then write it in place instead of making a new array
    written = {states[k]._index for k in result if k in states}
    return _compact(name, tape, {k: v._index for k, v in result.items()}, written)


def _compact(
    name: str, tape: _Tape, outputs: dict[str, int], keep: set[int] = frozenset()
) -> Program:
    """Drop the nodes no output needs but ``keep``, renumber, compute each node's last use."""
    needed = set(outputs.values()) | keep
    for i in range(len(tape.nodes) - 1, -1, -1):
        op, args = tape.nodes[i]
        if i in needed and op not in ("input", "scalar"):
            needed.update(args)
    order = [i for i in range(len(tape.nodes)) if i in needed]
    new_index = {old: new for new, old in enumerate(order)}
    nodes = []
    for old in order:
        op, args = tape.nodes[old]
        if op not in ("input", "scalar"):
            args = tuple(new_index[a] for a in args)
        nodes.append((op, args))
    last_use = [-1] * len(nodes)
    for i, (op, args) in enumerate(nodes):
        if op not in ("input", "scalar"):
            for a in args:
                last_use[a] = i
    outs = tuple((k, new_index[v]) for k, v in outputs.items())
    for _, v in outs:
        last_use[v] = len(nodes)
    kinds = tuple(tape.kinds[old] for old in order)
    return Program(name, tuple(nodes), kinds, outs, tuple(last_use))
