"""Tensor, Parameter and the reverse-mode autograd engine.

A :class:`Tensor` wraps one array of any array-API library (NumPy, CuPy,
PyTorch, JAX, array-api-strict) without copying it.  Every differentiable
operation (in :mod:`neural_arch.functional`) computes its result and records a
closure, its vector-Jacobian product: given the gradient of the output, it
returns one gradient per input.  :meth:`Tensor.backward` sorts the graph
topologically (iteratively, so deep graphs never reach Python's recursion
limit), runs the closures in reverse order, sums each input's gradient back to
its shape (:func:`neural_arch.functional.unbroadcast`) and accumulates the
result into the ``.grad`` array of every leaf that requires grad.

Gradient safety (from the project this one grew from): every element of a
leaf's ``.grad`` is clamped to ``[-clip, clip]`` with ``clip = 1e6`` by
default.  NaN stays NaN.  ``set_grad_clip(None)`` turns the clamp off,
``set_grad_clip(v)`` changes the bound; explicit norm/value clipping for real
training is :func:`neural_arch.clip_grad_norm_` / ``clip_grad_value_``.

In-place changes: every Tensor has a version counter ``_version`` that every
change of its values in place increments (rebinding ``.data``, an optimizer's
step).  Each recorded operation remembers the versions of the tensors its
closure reads; :meth:`Tensor.backward` compares them before it runs any closure
and raises RuntimeError naming the tensor when one changed, as PyTorch does
(a gradient computed from the new values would be silently wrong).  Writes
straight into the array (``t.data[...] = 0``) cannot be seen.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

import array_api_compat

from . import backend

__all__ = [
    "Parameter",
    "Tensor",
    "enable_grad",
    "get_grad_clip",
    "is_grad_enabled",
    "no_grad",
    "set_grad_clip",
]

_grad_enabled = True
_grad_clip: float | None = 1e6

# array_namespace() is slow-ish and depends only on the array's type.
_namespaces: dict[type, Any] = {}


def _ns(x: Any) -> Any:
    """The array-API namespace of array ``x`` (cached per array type)."""
    xp = _namespaces.get(type(x))
    if xp is None:
        xp = backend.namespace(x)
        _namespaces[type(x)] = xp
    return xp


# --- grad mode and gradient clamp ------------------------------------------------------------


def is_grad_enabled() -> bool:
    """Whether operations currently record the graph for :meth:`Tensor.backward`."""
    return _grad_enabled


class _GradMode(contextlib.ContextDecorator):
    _mode = True

    def __init__(self) -> None:
        # A stack, not one slot: a decorated function may call itself recursively.
        self._saved: list[bool] = []

    def __enter__(self) -> None:
        global _grad_enabled
        self._saved.append(_grad_enabled)
        _grad_enabled = self._mode

    def __exit__(self, *exc: object) -> None:
        global _grad_enabled
        _grad_enabled = self._saved.pop()


class no_grad(_GradMode):
    """Context manager (and decorator) in which no graph is recorded.

    Results of operations inside have ``requires_grad=False``::

        with na.no_grad():
            y = model(x)

        @na.no_grad()
        def evaluate(model, x): ...
    """

    _mode = False


class enable_grad(_GradMode):
    """Context manager (and decorator) that turns graph recording back on inside ``no_grad``."""

    _mode = True


def set_grad_clip(value: float | None) -> None:
    """Set the bound of the automatic gradient clamp (default ``1e6``), or None to disable it.

    After every :meth:`Tensor.backward`, each element of each leaf's ``.grad`` is
    clamped to ``[-value, value]``; NaN stays NaN.
    """
    global _grad_clip
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"grad clip must be a positive float or None, got {value!r}")
        if not value > 0:  # also rejects NaN
            raise ValueError(f"grad clip must be a positive float or None, got {value!r}")
        value = float(value)
    _grad_clip = value


def get_grad_clip() -> float | None:
    """The bound of the automatic gradient clamp (None when off); see :func:`set_grad_clip`."""
    return _grad_clip


# --- Tensor ---------------------------------------------------------------------------------


def _to_array(data: Any, dtype: Any) -> Any:
    """``data`` as an array: arrays stay in their library (no copy), the rest go to the default."""
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, (bool, int, float, list, tuple)):
        if isinstance(data, (list, tuple)) and any(isinstance(v, Tensor) for v in data):
            raise TypeError(
                "data must be an array, a Tensor, a Python number or a (nested) list of "
                "numbers; to combine Tensors use na.stack or na.concat"
            )
        xp = backend.get_default_backend()
        out = backend.to_backend(data, xp)
        if dtype is not None:
            target = backend.resolve_dtype(xp, dtype)
        elif xp.isdtype(out.dtype, "real floating"):
            target = backend.resolve_dtype(xp, None)  # the default float dtype
        else:
            return out  # integer labels and booleans keep their kind
        return out if out.dtype == target else xp.astype(out, target)
    if not array_api_compat.is_array_api_obj(data):
        raise TypeError(
            "data must be an array of an array-API library (NumPy, CuPy, PyTorch, JAX, "
            f"array-api-strict), a Tensor, a Python number or a list; got {type(data).__name__}"
        )
    xp = _ns(data)
    data = _array(data)
    if dtype is not None:
        target = backend.resolve_dtype(xp, dtype)
        if data.dtype != target:
            data = xp.astype(data, target)
    return data


def _array(data: Any) -> Any:
    """``data``, with a NumPy scalar (``np.float64(1.0)``) turned into a 0-d array.

    NumPy returns scalars from 0-d arithmetic and full reductions; they cannot be
    updated in place the way optimizers update ``.data`` and ``.grad``.
    """
    if data.ndim == 0 and not hasattr(data, "__setitem__"):
        return _ns(data).asarray(data)
    return data


class Tensor:
    """An array of any array-API library, with reverse-mode automatic differentiation.

    Parameters
    ----------
    data
        An array (kept as is, in its own library and on its own device: no copy
        unless ``dtype`` asks for a conversion), a Tensor (its array is used), or a
        Python number / nested list, which becomes an array of the default backend
        (:func:`neural_arch.set_default_backend`).  Floating lists and numbers get the
        default float dtype (float32 unless :func:`neural_arch.set_default_dtype`);
        integer data stays integer (class labels) and booleans stay boolean.  An
        array given directly keeps its dtype (a float64 NumPy array stays float64).
    requires_grad
        Record operations on this tensor so :meth:`backward` can fill ``.grad``.
        Needs a floating dtype.
    dtype
        Optional dtype (a name such as ``"float64"`` or a dtype object) to convert to.

    Attributes
    ----------
    data
        The array.  May be rebound (optimizers do so for immutable backends like JAX);
        rebinding it counts as an in-place change (see below).
    grad
        None, or an array of the same shape, library and device as ``data``, owned
        by this tensor alone; :meth:`backward` accumulates into it.

    In-place changes and :meth:`backward`: the tensor's version counter ``_version``
    (an int, 0 at creation) goes up by one whenever its values change in place:
    ``.data`` is rebound, or an optimizer's ``step()`` updates it.  An operation
    records the versions of the tensors its gradient reads (``x * w`` reads both,
    ``x + w`` neither); ``backward()`` raises RuntimeError, naming the tensor, if any
    changed since, for example after ``opt.step()`` between the forward pass and
    ``backward()`` (``t.data += 1`` rebinds ``data``, so it counts too).  Writes
    straight into the array (``t.data[...] = 0``, ``np.copyto(t.data, v)``) cannot be
    seen and give gradients of the new values: after such a write, bump
    ``t._version += 1`` yourself or recompute the forward pass.  A Tensor that shares
    another's array (:meth:`detach`, ``Tensor(t)``) has its own counter.

    Operators ``+ - * / ** @`` and unary ``-`` work with Tensors, Python numbers and
    arrays of the same library on either side (an array-api-strict array on the
    *left* refuses foreign operands, so write ``tensor + array`` there).
    """

    # NumPy defers to our reflected operators (ndarray + Tensor -> Tensor.__radd__).
    __array_ufunc__ = None

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None) -> None:
        self._data = _to_array(data, dtype)
        self._version = 0
        self.grad: Any = None
        self.requires_grad = False
        self._inputs: tuple[Any, ...] = ()
        self._vjp: Callable[[Any], Sequence[Any]] | None = None
        self._saved: tuple[tuple[Tensor | None, int], ...] = ()
        self._freed = False
        if requires_grad:
            self.requires_grad_(True)

    def _set_data(self, value: Any) -> None:
        self._data = value
        self._version += 1

    # A property so that rebinding bumps the version; attrgetter keeps reads at C speed.
    data = property(
        attrgetter("_data"), _set_data, doc="The array (rebinding it bumps ``_version``)."
    )

    @classmethod
    def _from_op(
        cls,
        data: Any,
        inputs: tuple[Any, ...],
        vjp: Callable[[Any], Sequence[Any]],
        saved: tuple[Any, ...] | None = None,
    ) -> Tensor:
        """The result of an operation; records ``vjp`` when grad mode is on and an input needs it.

        ``vjp(g)`` returns one gradient per entry of ``inputs`` (None where not needed),
        each of the broadcast shape; the engine sums it back to the input's shape.
        ``saved`` lists the Tensors whose values ``vjp`` reads (None in it stands for
        the result itself; entries that are not Tensors are ignored); their versions
        are recorded and checked by :meth:`backward`.  Default: every input.
        """
        out = Tensor.__new__(Tensor)
        out._data = _array(data)
        out._version = 0
        out.grad = None
        out._freed = False
        if _grad_enabled and any(isinstance(t, Tensor) and t.requires_grad for t in inputs):
            out.requires_grad = True
            out._inputs = inputs
            out._vjp = vjp
            if saved is None:
                saved = inputs
            out._saved = _versions(saved) if saved else ()
        else:
            out.requires_grad = False
            out._inputs = ()
            out._vjp = None
            out._saved = ()
        return out

    # --- properties ---------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        """Number of elements (a Python int, like NumPy's ``size``)."""
        return math.prod(self.data.shape)

    @property
    def device(self) -> Any:
        return backend.device(self.data)

    @property
    def is_leaf(self) -> bool:
        """True for tensors not produced by a recorded operation (they collect ``.grad``)."""
        return self._vjp is None and not self._freed

    @property
    def T(self) -> Tensor:
        """The tensor with its axes reversed (the transpose for 2-D)."""
        return F.transpose(self)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d Tensor")
        return self.data.shape[0]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        values = str(backend.to_numpy(self.data)).replace("\n", "\n       ")
        name = type(self).__name__
        extra = ", requires_grad=True" if self.requires_grad else ""
        return (
            f"{name}({values}, dtype={backend.dtype_name(self.dtype)}, "
            f"backend={backend.backend_name(self.data)}{extra})"
        )

    # --- autograd -----------------------------------------------------------------------------

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Set ``requires_grad`` in place (floating dtypes only); returns self."""
        if requires_grad and not _ns(self.data).isdtype(self.data.dtype, "real floating"):
            raise TypeError(
                "requires_grad=True needs a floating dtype, got "
                f"{backend.dtype_name(self.data.dtype)}"
            )
        self.requires_grad = bool(requires_grad)
        return self

    def detach(self) -> Tensor:
        """A new leaf Tensor sharing this one's array, outside the graph."""
        return Tensor(self.data)

    def item(self) -> float | int | bool:
        """The value of a one-element tensor as a Python number."""
        if self.size != 1:
            raise ValueError(f"item() needs a one-element Tensor, got shape {self.shape}")
        xp = _ns(self.data)
        x = xp.reshape(self.data, ())
        if xp.isdtype(x.dtype, "bool"):
            return bool(x)
        if xp.isdtype(x.dtype, "integral"):
            return int(x)
        return float(x)

    def numpy(self) -> Any:
        """The values as a host NumPy array (may share memory with ``data`` on the CPU)."""
        return backend.to_numpy(self.data)

    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into the ``.grad`` of every leaf that requires grad.

        ``grad`` (a Tensor or array of ``self``'s shape) is the gradient of some scalar
        with respect to ``self``; it may be omitted for a one-element tensor (then 1).
        The graph is freed afterwards unless ``retain_graph=True``.  Each element of a
        leaf's resulting ``.grad`` is clamped to ``[-clip, clip]``
        (:func:`set_grad_clip`, default 1e6; NaN stays NaN); for a loss scaled by
        :meth:`neural_arch.GradScaler.scale` the bound is ``clip * scale``, so that
        the unscaled gradient is clamped at ``clip``.

        Raises RuntimeError, before any ``.grad`` changes, when a tensor whose value
        the gradient needs was changed in place after it was used (its version
        counter moved; see the class docstring), e.g. by ``opt.step()``.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a Tensor that does not require grad: no input of the "
                "computation had requires_grad=True (or it ran under no_grad())"
            )
        xp = _ns(self.data)
        if grad is None:
            if self.size != 1:
                raise RuntimeError(
                    "backward() without a gradient needs a one-element Tensor; this one has "
                    f"shape {self.shape}: pass grad= (an array of that shape)"
                )
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            if not array_api_compat.is_array_api_obj(grad) or _ns(grad) is not xp:
                raise TypeError(
                    f"grad must be a Tensor or {backend.backend_name(xp)} array, "
                    f"got {type(grad).__name__}"
                )
            if tuple(grad.shape) != self.shape:
                raise ValueError(
                    f"grad must have the shape of the Tensor {self.shape}, got {tuple(grad.shape)}"
                )
        order = _topological_order(self)
        _check_versions(order)
        scale = getattr(self, "_loss_scale", 1.0)  # set by GradScaler.scale()
        grads: dict[int, Any] = {id(self): grad}
        for node in reversed(order):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._vjp is None:
                _accumulate_leaf(node, g, scale)
                continue
            for inp, gi in zip(node._inputs, node._vjp(g), strict=True):
                if gi is None or not isinstance(inp, Tensor) or not inp.requires_grad:
                    continue
                if tuple(gi.shape) != inp.shape:
                    gi = F.unbroadcast(gi, inp.shape)
                prev = grads.get(id(inp))
                grads[id(inp)] = gi if prev is None else prev + gi
        if not retain_graph:
            for node in order:
                if node._vjp is not None:
                    node._vjp = None
                    node._inputs = ()
                    node._saved = ()
                    node._freed = True

    # --- operators (the gradient rules live in neural_arch.functional) -----------------------

    def __add__(self, other: Any) -> Tensor:
        return F.add(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return F.add(other, self)

    def __sub__(self, other: Any) -> Tensor:
        return F.sub(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return F.sub(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return F.mul(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return F.mul(other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return F.div(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return F.div(other, self)

    def __pow__(self, other: Any) -> Tensor:
        return F.pow(self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return F.pow(other, self)

    def __matmul__(self, other: Any) -> Tensor:
        return F.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return F.matmul(other, self)

    def __neg__(self) -> Tensor:
        return F.neg(self)

    def __pos__(self) -> Tensor:
        return self

    # Comparisons give boolean Tensors outside the graph (masks for na.where).
    # == and != stay identity comparisons so Tensors remain hashable dict keys.
    def __lt__(self, other: Any) -> Tensor:
        return F.compare(self, other, "<")

    def __le__(self, other: Any) -> Tensor:
        return F.compare(self, other, "<=")

    def __gt__(self, other: Any) -> Tensor:
        return F.compare(self, other, ">")

    def __ge__(self, other: Any) -> Tensor:
        return F.compare(self, other, ">=")

    def __getitem__(self, key: Any) -> Tensor:
        return F.getitem(self, key)

    # --- methods (as in PyTorch) --------------------------------------------------------------

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return F.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return F.mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return F.max(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape: Any) -> Tensor:
        """``t.reshape(2, 3)`` or ``t.reshape((2, 3))``; one entry may be -1."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return F.reshape(self, shape)

    def astype(self, dtype: Any) -> Tensor:
        """This tensor cast to floating ``dtype``; differentiable (see ``functional.astype``)."""
        return F.astype(self, dtype)

    def transpose(self, *axes: Any) -> Tensor:
        """Permute the axes (reversed when none are given), like NumPy's ``transpose``."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return F.transpose(self, axes or None)

    permute = transpose

    def matmul(self, other: Any) -> Tensor:
        return F.matmul(self, other)

    def exp(self) -> Tensor:
        return F.exp(self)

    def log(self) -> Tensor:
        return F.log(self)

    def sqrt(self) -> Tensor:
        return F.sqrt(self)

    def tanh(self) -> Tensor:
        return F.tanh(self)

    def sigmoid(self) -> Tensor:
        return F.sigmoid(self)

    def relu(self) -> Tensor:
        return F.relu(self)

    def softmax(self, axis: int = -1) -> Tensor:
        return F.softmax(self, axis=axis)

    def log_softmax(self, axis: int = -1) -> Tensor:
        return F.log_softmax(self, axis=axis)


class Parameter(Tensor):
    """A Tensor that is a trainable parameter: ``requires_grad`` defaults to True."""

    def __init__(self, data: Any, requires_grad: bool = True, dtype: Any = None) -> None:
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)


def _topological_order(root: Tensor) -> list[Tensor]:
    """The graph's tensors that need a gradient, inputs before outputs (iterative DFS)."""
    if root._freed:
        raise _freed_error()
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:  # all of node's inputs are in order already
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for inp in node._inputs:
            if isinstance(inp, Tensor) and inp.requires_grad and id(inp) not in visited:
                if inp._freed:
                    raise _freed_error()
                stack.append((inp, False))
    return order


def _versions(saved: tuple[Any, ...]) -> tuple[tuple[Tensor | None, int], ...]:
    """``(tensor, its version)`` for each Tensor of ``saved``; ``(None, 0)`` for the result."""
    records = []
    for t in saved:
        if isinstance(t, Tensor):
            records.append((t, t._version))
        elif t is None:  # the result itself, fresh: at version 0
            records.append((None, 0))
    return tuple(records)


def _check_versions(order: list[Tensor]) -> None:
    """RuntimeError if a tensor saved by a node of ``order`` changed in place since."""
    for node in order:
        for t, version in node._saved:
            if (node if t is None else t)._version != version:
                raise _modified_error(node, t, version)


def _op_name(node: Tensor) -> str:
    # The closures are defined inside the op: "mul.<locals>.<lambda>" -> "mul".
    qualname = getattr(node._vjp, "__qualname__", "")
    return qualname.split(".", 1)[0] or "an operation"


def _describe(t: Tensor, node: Tensor) -> str:
    desc = f"tensor of shape {t.shape}, dtype {backend.dtype_name(t.dtype)}"
    name = getattr(t, "name", None)
    if isinstance(name, str) and name:
        desc += f", named {name!r}"
    if t is node:
        return f"{desc} (the output of {_op_name(node)}())"
    if isinstance(t, Parameter):
        return f"{desc} (a Parameter)"
    if t._vjp is not None:
        return f"{desc} (the output of {_op_name(t)}())"
    return f"{desc} (a leaf Tensor)"


def _modified_error(node: Tensor, t: Tensor | None, version: int) -> RuntimeError:
    t = node if t is None else t
    return RuntimeError(
        "one of the variables needed for gradient computation has been modified by an "
        f"inplace operation: {_describe(t, node)} is at version {t._version}; expected "
        f"version {version} instead. {_op_name(node)}() saved it for the backward pass; "
        "it changed between the forward pass and backward(), most likely through an "
        "optimizer step (opt.step() before loss.backward()) or by rebinding its .data. "
        "Call backward() before changing it, or run the forward pass again."
    )


def _freed_error() -> RuntimeError:
    return RuntimeError(
        "Trying to backward through the graph a second time: its intermediate results "
        "were freed by the first backward(). Call backward(retain_graph=True) the first "
        "time if you need to backward through it again."
    )


def _accumulate_leaf(leaf: Tensor, g: Any, scale: float = 1.0) -> None:
    """``leaf.grad += g`` into a fresh array owned by the leaf, then the clamp.

    ``scale`` is the loss scale of a :class:`neural_arch.GradScaler`'s scaled
    loss: the clamp's bound grows with it, so that it bounds the true gradient.
    """
    xp = _ns(leaf.data)
    if g.dtype != leaf.data.dtype:
        g = xp.astype(g, leaf.data.dtype)
    if leaf.grad is None:
        # g may be an upstream gradient or shared with another leaf: the copy makes it ours.
        new = xp.asarray(g, copy=True) if _grad_clip is None else g
    else:
        new = leaf.grad + g
    if _grad_clip is not None:
        new = backend.clamp(new, _grad_clip * scale)
    leaf.grad = _array(new)


# Imported last: functional imports Tensor from this module.
from . import functional as F  # noqa: E402
