"""Differentiable operations and losses: each is a forward pass plus its gradient rule.

Every operation takes Tensors (arrays and Python numbers are accepted where it
makes sense), computes its result with the array-API namespace of its inputs
(``xp``), and records a vector-Jacobian product: a closure that maps the
gradient of the result to one gradient per input.  The gradients of
elementwise operations have the broadcast shape; the engine in
:mod:`neural_arch.tensor` sums them back to each input's shape with the one
:func:`unbroadcast` helper.

Python numbers stay Python numbers, so a float32 tensor times ``0.5`` stays
float32 (the standard's promotion rules).  Combining Tensors of different
array libraries is a TypeError naming both.

Each operation tells the engine which tensors its gradient reads (``saved``
of ``Tensor._from_op``), so that ``backward()`` refuses values changed in place
after the forward pass.  As in PyTorch, an operation ignores changes to what it
does not read: ``add``, ``sub``, ``neg``, ``sum``, ``mean``, ``reshape``,
``transpose``, ``getitem``, ``concat``, ``stack`` and ``relu`` (its mask is
taken in the forward pass) read no value; ``where`` reads only its condition;
``mul``, ``matmul`` and ``linear`` read each operand only for the other's gradient; ``exp``,
``sqrt``, ``tanh``, ``sigmoid``, ``softmax`` and ``log_softmax`` read their
result, not their input; ``div``, ``pow``, ``log``, ``max`` and
``binary_cross_entropy_with_logits`` read their inputs (``div``, ``pow`` and
``max`` also their result).  The other losses are built from these operations.
"""

from __future__ import annotations

import builtins
import itertools
import math
from collections.abc import Sequence
from typing import Any

import array_api_compat

from . import backend
from .tensor import Tensor, _ns

__all__ = [
    "add",
    "astype",
    "binary_cross_entropy_with_logits",
    "compare",
    "concat",
    "cross_entropy_loss",
    "div",
    "exp",
    "getitem",
    "linear",
    "log",
    "log_softmax",
    "matmul",
    "max",
    "mean",
    "mse_loss",
    "mul",
    "neg",
    "pow",
    "relu",
    "reshape",
    "sigmoid",
    "softmax",
    "sqrt",
    "stack",
    "sub",
    "sum",
    "tanh",
    "transpose",
    "unbroadcast",
    "where",
]

_SCALARS = (bool, int, float)
_REDUCTIONS = ("mean", "sum", "none")


# --- helpers ------------------------------------------------------------------------------


def unbroadcast(grad: Any, shape: Sequence[int]) -> Any:
    """Sum ``grad`` (of a broadcast result's shape) back to ``shape``, the input's shape."""
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    xp = _ns(grad)
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = xp.sum(grad, axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = xp.sum(grad, axis=axes, keepdims=True)
    if tuple(grad.shape) != shape:
        raise ValueError(f"cannot sum a gradient of shape {tuple(grad.shape)} to shape {shape}")
    return grad


def _tensor(x: Any, name: str = "input") -> Tensor:
    """``x`` as a Tensor (arrays are wrapped without a copy)."""
    if isinstance(x, Tensor):
        return x
    try:
        return Tensor(x)
    except TypeError:
        raise TypeError(
            f"{name} must be a Tensor, an array or a Python number, got {type(x).__name__}"
        ) from None


def _operand(x: Any) -> Any:
    """A Tensor, or a Python number kept as such (so it never changes the result's dtype)."""
    if isinstance(x, (Tensor, *_SCALARS)):
        return x
    if array_api_compat.is_array_api_obj(x):
        return Tensor(x)
    raise TypeError(f"operands must be Tensors, arrays or Python numbers, got {type(x).__name__}")


def _same_backend(*items: Any) -> Any:
    """The namespace shared by the Tensors among ``items``; TypeError naming both if not."""
    xp = None
    first = None
    for t in items:
        if not isinstance(t, Tensor):
            continue
        t_xp = _ns(t.data)
        if xp is None:
            xp, first = t_xp, t
        elif t_xp is not xp:
            raise TypeError(
                f"cannot combine a {backend.backend_name(first.data)} Tensor with a "
                f"{backend.backend_name(t.data)} Tensor; move one to the other's backend "
                "first (neural_arch.backend.to_backend)"
            )
    return xp


def _binary(a: Any, b: Any) -> tuple[Any, Any, Any, Any]:
    a, b = _operand(a), _operand(b)
    _same_backend(a, b)
    return a, b, _value(a), _value(b)


def _value(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def _needs(x: Any) -> bool:
    return isinstance(x, Tensor) and x.requires_grad


def _cross(a: Any, b: Any) -> tuple[Any, ...]:
    """What a product's gradient reads: ``b`` for ``a``'s gradient, ``a`` for ``b``'s."""
    if isinstance(a, Tensor) and a.requires_grad:
        return (b, a) if isinstance(b, Tensor) and b.requires_grad else (b,)
    return (a,)


def _axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """``axis`` as a tuple of non-negative axes (all axes for None)."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for ax in axes:
        if not isinstance(ax, int) or not -ndim <= ax < builtins.max(ndim, 1):
            raise ValueError(f"axis {axis!r} is out of range for a {ndim}-d Tensor")
    return tuple(ax % ndim if ndim else 0 for ax in axes)


def _expand_reduced(g: Any, shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> Any:
    """The gradient of a reduction over ``axes``, broadcast back to the input's ``shape``."""
    xp = _ns(g)
    if not keepdims:
        g = xp.reshape(g, tuple(1 if i in axes else n for i, n in enumerate(shape)))
    return xp.broadcast_to(g, shape)


# --- arithmetic ---------------------------------------------------------------------------


def add(a: Any, b: Any) -> Tensor:
    """``a + b`` with broadcasting."""
    a, b, x, y = _binary(a, b)
    return Tensor._from_op(x + y, (a, b), lambda g: (g, g), ())


def sub(a: Any, b: Any) -> Tensor:
    """``a - b`` with broadcasting."""
    a, b, x, y = _binary(a, b)
    return Tensor._from_op(x - y, (a, b), lambda g: (g, -g), ())


def mul(a: Any, b: Any) -> Tensor:
    """``a * b`` with broadcasting."""
    a, b, x, y = _binary(a, b)
    return Tensor._from_op(x * y, (a, b), lambda g: (g * y, g * x), _cross(a, b))


def div(a: Any, b: Any) -> Tensor:
    """``a / b``; d/da = 1/b, d/db = -a/b²."""
    a, b, x, y = _binary(a, b)
    out = x / y

    def vjp(g: Any) -> tuple[Any, Any]:
        return (g / y if _needs(a) else None, -(g * out) / y if _needs(b) else None)

    return Tensor._from_op(out, (a, b), vjp, (b, None) if _needs(b) else (b,))


def pow(a: Any, b: Any) -> Tensor:
    """``a ** b``; d/da = b·a^(b-1), d/db = a^b·log(a) (NaN where a < 0)."""
    a, b, x, y = _binary(a, b)
    out = x**y

    def vjp(g: Any) -> tuple[Any, Any]:
        ga = gb = None
        if _needs(a):
            # b == 0 would give 0·x^-1 = NaN at x = 0; the derivative of x^0 is 0.
            ga = g * 0.0 if isinstance(y, _SCALARS) and y == 0 else g * y * x ** (y - 1)
        if _needs(b):
            if isinstance(x, _SCALARS):
                gb = g * out * (math.log(x) if x > 0 else math.nan)
            else:
                gb = g * out * _ns(x).log(x)
        return ga, gb

    return Tensor._from_op(out, (a, b), vjp, (a, b, None) if _needs(b) else (a, b))


def compare(a: Any, b: Any, op: str) -> Tensor:
    """``a < b`` (op "<", "<=", ">", ">="): a boolean Tensor, not differentiable."""
    a, b, x, y = _binary(a, b)
    if op == "<":
        return Tensor(x < y)
    if op == "<=":
        return Tensor(x <= y)
    if op == ">":
        return Tensor(x > y)
    if op == ">=":
        return Tensor(x >= y)
    raise ValueError(f"op must be one of '<', '<=', '>', '>=', got {op!r}")


def neg(a: Any) -> Tensor:
    """``-a``."""
    a = _tensor(a)
    return Tensor._from_op(-a.data, (a,), lambda g: (-g,), ())


def matmul(a: Any, b: Any) -> Tensor:
    """Matrix product ``a @ b`` with NumPy's rules (1-D operands, broadcast batch dims)."""
    a, b = _tensor(a, "a"), _tensor(b, "b")
    xp = _same_backend(a, b)
    x, y = a.data, b.data
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(
            f"matmul needs operands with at least 1 dimension, got shapes {a.shape} and {b.shape}"
        )

    def vjp(g: Any) -> tuple[Any, Any]:
        # Work with 2-D (batched) operands; a 1-D operand is a row (a) or column (b).
        mx = x if x.ndim > 1 else xp.reshape(x, (1, -1))
        my = y if y.ndim > 1 else xp.reshape(y, (-1, 1))
        if x.ndim == 1:
            g = xp.expand_dims(g, axis=-1 if y.ndim == 1 else -2)
        if y.ndim == 1:
            g = xp.expand_dims(g, axis=-1)
        ga = gb = None
        if a.requires_grad:
            ga = g @ xp.matrix_transpose(my)
            ga = xp.reshape(unbroadcast(ga, mx.shape), x.shape) if x.ndim == 1 else ga
        if b.requires_grad:
            gb = xp.matrix_transpose(mx) @ g
            gb = xp.reshape(unbroadcast(gb, my.shape), y.shape) if y.ndim == 1 else gb
        return ga, gb

    return Tensor._from_op(x @ y, (a, b), vjp, _cross(a, b))


def linear(x: Any, weight: Any, bias: Any = None) -> Tensor:
    """``x @ weight.T + bias`` (``torch.nn.functional.linear``) as one operation.

    ``weight`` has shape ``(out, in)``, ``x`` ``(..., in)``.  Its weight
    gradient is ``g.T @ x``, a C-ordered array of the weight's own layout
    (the product and transpose written out would give the transpose of a
    product: an F-ordered gradient, slower for the optimizers and the clamp).
    """
    x, w = _tensor(x), _tensor(weight, "weight")
    b = None if bias is None else _tensor(bias, "bias")
    xp = _same_backend(x, w, b) if b is not None else _same_backend(x, w)
    if w.ndim != 2 or x.ndim == 0 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"linear needs weight of shape (out, in) and input of shape (..., in), got "
            f"input {x.shape} and weight {w.shape}"
        )
    out = x.data @ xp.matrix_transpose(w.data)
    if b is not None:
        out = out + b.data
    in_shape = x.shape

    def vjp(g: Any) -> tuple[Any, ...]:
        gx = g @ w.data if x.requires_grad else None
        flat = xp.reshape(g, (-1, g.shape[-1]))
        gw = None
        if w.requires_grad:
            gw = xp.matrix_transpose(flat) @ xp.reshape(x.data, (-1, in_shape[-1]))
        if b is None:
            return gx, gw
        return gx, gw, (xp.sum(flat, axis=0) if b.requires_grad else None)

    inputs = (x, w) if b is None else (x, w, b)
    return Tensor._from_op(out, inputs, vjp, _cross(x, w))


# --- reductions and shape -----------------------------------------------------------------


def sum(x: Any, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
    """Sum over ``axis`` (all axes when None)."""
    x = _tensor(x)
    xp = _ns(x.data)
    axes = _axes(axis, x.ndim)
    out = xp.sum(x.data, axis=axes, keepdims=keepdims)
    shape = x.shape
    return Tensor._from_op(out, (x,), lambda g: (_expand_reduced(g, shape, axes, keepdims),), ())


def mean(x: Any, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis`` (all axes when None)."""
    x = _tensor(x)
    xp = _ns(x.data)
    axes = _axes(axis, x.ndim)
    shape = x.shape
    n = math.prod(shape[i] for i in axes)
    out = xp.mean(x.data, axis=axes, keepdims=keepdims)
    return Tensor._from_op(
        out, (x,), lambda g: (_expand_reduced(g, shape, axes, keepdims) / n,), ()
    )


def max(x: Any, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
    """Maximum over ``axis``; the gradient is split evenly among tied maxima (torch's amax)."""
    x = _tensor(x)
    xp = _ns(x.data)
    axes = _axes(axis, x.ndim)
    data = x.data
    kept = xp.max(data, axis=axes, keepdims=True)

    def vjp(g: Any) -> tuple[Any]:
        mask = xp.astype(data == kept, g.dtype)
        count = xp.sum(mask, axis=axes, keepdims=True)
        g = g if keepdims else xp.reshape(g, kept.shape)
        return (mask * (g / count),)

    out = (
        kept
        if keepdims
        else xp.reshape(kept, tuple(n for i, n in enumerate(x.shape) if i not in axes))
    )
    return Tensor._from_op(out, (x,), vjp, (x, None))


def reshape(x: Any, shape: Sequence[int]) -> Tensor:
    """``x`` with a new shape of the same size (one entry may be -1)."""
    x = _tensor(x)
    xp = _ns(x.data)
    shape = tuple(shape)
    if not all(isinstance(n, int) for n in shape):
        raise TypeError(f"shape must be a tuple of ints, got {shape!r}")
    out = xp.reshape(x.data, shape)
    old = x.shape
    return Tensor._from_op(out, (x,), lambda g: (xp.reshape(g, old),), ())


def astype(x: Any, dtype: Any) -> Tensor:
    """``x`` cast to floating ``dtype`` (a name or a dtype of ``x``'s library); the gradient
    is cast back to ``x``'s dtype (e.g. a float16 model's logits to float32 for the loss)."""
    x = _tensor(x)
    xp = _ns(x.data)
    target = backend.resolve_dtype(xp, dtype)
    if not (xp.isdtype(target, "real floating") or "bfloat16" in str(target)):
        raise TypeError(f"astype needs a real floating dtype, got {dtype!r}")
    old = x.data.dtype
    out = xp.astype(x.data, target)
    return Tensor._from_op(out, (x,), lambda g: (xp.astype(g, old),), ())


def transpose(x: Any, axes: Sequence[int] | None = None) -> Tensor:
    """Permute the axes of ``x`` (reverse them when ``axes`` is None)."""
    x = _tensor(x)
    xp = _ns(x.data)
    n = x.ndim
    perm = tuple(reversed(range(n))) if axes is None else _axes(axes, n)
    if sorted(perm) != list(range(n)):
        raise ValueError(f"axes must be a permutation of {tuple(range(n))}, got {axes!r}")
    inverse = tuple(perm.index(i) for i in range(n))
    out = xp.permute_dims(x.data, perm)
    return Tensor._from_op(out, (x,), lambda g: (xp.permute_dims(g, inverse),), ())


def getitem(x: Any, key: Any) -> Tensor:
    """``x[key]``: basic indexing and integer/boolean array indexing.

    The gradient is a scatter-add of the output gradient into zeros of ``x``'s
    shape.  The standard has no scatter, so it is built from a sort of the flat
    positions that ``key`` selects, ``searchsorted`` and ``take``; repeated
    positions (``x[[0, 0]]``) are summed through a cumulative sum.
    """
    x = _tensor(x)
    xp = _ns(x.data)
    items = key if isinstance(key, tuple) else (key,)
    items = tuple(_index_item(xp, k, x) for k in items)
    has_array = any(array_api_compat.is_array_api_obj(k) for k in items)
    if not has_array and not any(k is Ellipsis for k in items):
        # t[1] on a matrix: NumPy's implicit trailing "..." (the standard asks for it).
        key = (*items, Ellipsis)
    else:
        key = items if isinstance(key, tuple) else items[0]
    out = x.data[key]
    shape = x.shape
    return Tensor._from_op(out, (x,), lambda g: (_scatter_add(g, shape, key, has_array),), ())


def _index_item(xp: Any, k: Any, x: Tensor) -> Any:
    if isinstance(k, Tensor):
        k = k.data
    if isinstance(k, list):
        k = xp.asarray(k, device=backend.device(x.data))
    if array_api_compat.is_array_api_obj(k) and _ns(k) is not xp:
        raise TypeError(
            f"index arrays must come from the Tensor's backend {backend.backend_name(xp)!r}, "
            f"got a {backend.backend_name(k)} array"
        )
    return k


def _scatter_add(g: Any, shape: tuple[int, ...], key: Any, may_repeat: bool) -> Any:
    """Zeros of ``shape`` with ``g`` added at the positions ``key`` selects."""
    xp = _ns(g)
    dev = backend.device(g)
    size = math.prod(shape)
    cells = xp.arange(size, device=dev)
    pos = xp.reshape(xp.reshape(cells, shape)[key], (-1,))
    m = pos.shape[0]
    if m == 0:
        return xp.zeros(shape, dtype=g.dtype, device=dev)
    order = xp.argsort(pos, stable=True)
    pos = xp.take(pos, order)
    vals = xp.take(xp.reshape(g, (-1,)), order)
    left = xp.searchsorted(pos, cells, side="left")
    if may_repeat and m > 1 and bool(xp.any(pos[1:] == pos[:-1])):
        right = xp.searchsorted(pos, cells, side="right")
        csum = xp.cumulative_sum(vals, include_initial=True)
        flat = xp.take(csum, right) - xp.take(csum, left)
    else:
        k = xp.where(left < m, left, m - 1)
        hit = xp.take(pos, k) == cells
        flat = xp.where(hit, xp.take(vals, k), xp.zeros_like(vals[:1]))
    return xp.reshape(flat, shape)


def concat(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Join tensors along an existing ``axis``."""
    ts = _sequence(tensors, "concat")
    xp = _same_backend(*ts)
    out = xp.concat([t.data for t in ts], axis=axis)
    ax = axis % out.ndim
    bounds = [0]
    for t in ts:
        bounds.append(bounds[-1] + t.shape[ax])

    def vjp(g: Any) -> tuple[Any, ...]:
        lead = (slice(None),) * ax
        return tuple(g[(*lead, slice(s, e), ...)] for s, e in itertools.pairwise(bounds))

    return Tensor._from_op(out, tuple(ts), vjp, ())


def stack(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Join tensors of one shape along a new ``axis``."""
    ts = _sequence(tensors, "stack")
    xp = _same_backend(*ts)
    out = xp.stack([t.data for t in ts], axis=axis)
    ax = axis % out.ndim

    def vjp(g: Any) -> tuple[Any, ...]:
        lead = (slice(None),) * ax
        return tuple(g[(*lead, i, ...)] for i in range(len(ts)))

    return Tensor._from_op(out, tuple(ts), vjp, ())


def _sequence(tensors: Any, name: str) -> list[Tensor]:
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)) or not tensors:
        raise TypeError(f"{name} expects a non-empty list or tuple of Tensors, got {tensors!r}")
    return [_tensor(t, f"{name} element") for t in tensors]


def where(condition: Any, a: Any, b: Any) -> Tensor:
    """Elementwise ``a`` where ``condition`` is true, else ``b`` (all broadcast together)."""
    cond = condition.data if isinstance(condition, Tensor) else condition
    a, b = _operand(a), _operand(b)
    xp = _same_backend(a, b)
    if not array_api_compat.is_array_api_obj(cond) or not _ns(cond).isdtype(cond.dtype, "bool"):
        raise TypeError(f"condition must be a boolean array or Tensor, got {condition!r}")
    if _ns(cond) is not xp:
        raise TypeError(
            f"condition is a {backend.backend_name(cond)} array but the values are "
            f"{backend.backend_name(xp)} Tensors"
        )
    out = xp.where(cond, _value(a), _value(b))

    def vjp(g: Any) -> tuple[Any, Any]:
        zero = xp.zeros_like(g)
        return xp.where(cond, g, zero), xp.where(cond, zero, g)

    # Reads the condition, not the values.
    return Tensor._from_op(out, (a, b), vjp, (condition,))


# --- elementwise functions ----------------------------------------------------------------


def exp(x: Any) -> Tensor:
    """``e**x``."""
    x = _tensor(x)
    out = _ns(x.data).exp(x.data)
    return Tensor._from_op(out, (x,), lambda g: (g * out,), (None,))


def log(x: Any) -> Tensor:
    """Natural logarithm."""
    x = _tensor(x)
    out = _ns(x.data).log(x.data)
    data = x.data
    return Tensor._from_op(out, (x,), lambda g: (g / data,))


def sqrt(x: Any) -> Tensor:
    """Square root."""
    x = _tensor(x)
    out = _ns(x.data).sqrt(x.data)
    return Tensor._from_op(out, (x,), lambda g: (g / (2.0 * out),), (None,))


def tanh(x: Any) -> Tensor:
    """Hyperbolic tangent."""
    x = _tensor(x)
    out = _ns(x.data).tanh(x.data)
    return Tensor._from_op(out, (x,), lambda g: (g * (1.0 - out * out),), (None,))


def _sigmoid(xp: Any, x: Any) -> Any:
    # exp(-|x|) never overflows: 1/(1+e) for x >= 0, e/(1+e) for x < 0.
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid(x: Any) -> Tensor:
    """Logistic function ``1 / (1 + exp(-x))``, computed without overflow."""
    x = _tensor(x)
    out = _sigmoid(_ns(x.data), x.data)
    return Tensor._from_op(out, (x,), lambda g: (g * out * (1.0 - out),), (None,))


def relu(x: Any) -> Tensor:
    """``max(x, 0)``; the gradient at 0 is 0 (as in PyTorch)."""
    x = _tensor(x)
    xp = _ns(x.data)
    positive = x.data > 0
    out = xp.where(positive, x.data, xp.zeros_like(x.data))
    return Tensor._from_op(out, (x,), lambda g: (xp.where(positive, g, xp.zeros_like(g)),), ())


def softmax(x: Any, axis: int = -1) -> Tensor:
    """``exp(x) / sum(exp(x))`` along ``axis``, with the maximum subtracted first."""
    x = _tensor(x)
    xp = _ns(x.data)
    e = xp.exp(x.data - xp.max(x.data, axis=axis, keepdims=True))
    out = e / xp.sum(e, axis=axis, keepdims=True)

    def vjp(g: Any) -> tuple[Any]:
        return (out * (g - xp.sum(g * out, axis=axis, keepdims=True)),)

    return Tensor._from_op(out, (x,), vjp, (None,))


def log_softmax(x: Any, axis: int = -1) -> Tensor:
    """``x - logsumexp(x)`` along ``axis`` (stable: the maximum is subtracted first)."""
    x = _tensor(x)
    xp = _ns(x.data)
    z = x.data - xp.max(x.data, axis=axis, keepdims=True)
    out = z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))

    def vjp(g: Any) -> tuple[Any]:
        return (g - xp.exp(out) * xp.sum(g, axis=axis, keepdims=True),)

    return Tensor._from_op(out, (x,), vjp, (None,))


# --- losses -------------------------------------------------------------------------------


def _check_reduction(reduction: Any) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _pair(pred: Any, target: Any, pred_name: str) -> tuple[Tensor, Tensor]:
    pred, target = _tensor(pred, pred_name), _tensor(target, "target")
    _same_backend(pred, target)
    if pred.shape != target.shape:
        raise ValueError(
            f"{pred_name} and target must have the same shape, got {pred_name} {pred.shape} "
            f"and target {target.shape}"
        )
    return pred, target


def mse_loss(pred: Any, target: Any, reduction: str = "mean") -> Tensor:
    """Squared error ``(pred - target)²``, reduced by ``reduction`` ("mean", "sum" or "none")."""
    _check_reduction(reduction)
    pred, target = _pair(pred, target, "pred")
    diff = pred - target
    return _reduce(diff * diff, reduction)


def cross_entropy_loss(logits: Any, target: Any, reduction: str = "mean") -> Tensor:
    """Cross-entropy of ``softmax(logits)`` against ``target``, classes on the last axis.

    ``logits`` has shape (N, C) (or (..., C)).  ``target`` is either integer class
    indices of shape (N,) (or (...)), or class probabilities / one-hot rows of the
    logits' shape.  Computed through :func:`log_softmax` (log-sum-exp with the
    maximum subtracted), so large logits do not overflow.  ``reduction`` "mean"
    averages over the N samples, "sum" adds them, "none" returns one loss per sample.
    """
    _check_reduction(reduction)
    logits, target = _tensor(logits, "logits"), _tensor(target, "target")
    xp = _same_backend(logits, target)
    if logits.ndim < 1:
        raise ValueError(f"logits must have shape (N, C), got {logits.shape}")
    logp = log_softmax(logits, axis=-1)
    n_classes = logits.shape[-1]
    if xp.isdtype(target.dtype, "integral"):
        if target.shape != logits.shape[:-1]:
            raise ValueError(
                f"integer class targets must have shape {logits.shape[:-1]} for logits of "
                f"shape {logits.shape}, got target {target.shape}"
            )
        labels = target.data
        if labels.ndim and bool(xp.any((labels < 0) | (labels >= n_classes))):
            raise ValueError(f"target class indices must lie in [0, {n_classes}), got {labels}")
        classes = xp.arange(n_classes, device=backend.device(labels))
        onehot = xp.astype(labels[..., None] == classes, logp.dtype)
        nll = -(logp * onehot).sum(axis=-1)
    elif xp.isdtype(target.dtype, "real floating"):
        if target.shape != logits.shape:
            raise ValueError(
                f"probability targets must have the logits' shape {logits.shape}, "
                f"got target {target.shape}"
            )
        nll = -(logp * target).sum(axis=-1)
    else:
        raise TypeError(
            "target must hold integer class indices or floating probabilities, "
            f"got dtype {backend.dtype_name(target.dtype)}"
        )
    return _reduce(nll, reduction)


def binary_cross_entropy_with_logits(logits: Any, target: Any, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy of ``sigmoid(logits)`` against ``target`` in [0, 1].

    Computed in the stable form ``max(x, 0) - x·y + log(1 + exp(-|x|))``; its
    gradient is ``sigmoid(x) - y`` with respect to the logits and ``-x`` with respect
    to the target.
    """
    _check_reduction(reduction)
    logits, target = _pair(logits, target, "logits")
    xp = _ns(logits.data)
    x, y = logits.data, target.data
    out = xp.where(x > 0, x, xp.zeros_like(x)) - x * y + xp.log1p(xp.exp(-xp.abs(x)))

    def vjp(g: Any) -> tuple[Any, Any]:
        return g * (_sigmoid(xp, x) - y), -(g * x)

    return _reduce(Tensor._from_op(out, (logits, target), vjp), reduction)
