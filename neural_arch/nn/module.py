"""``Module``: the container that owns Parameters and sub-Modules.

Modelled on ``torch.nn.Module``.  Assigning a :class:`~neural_arch.Parameter`
or a :class:`Module` to an attribute registers it, in assignment order;
:meth:`Module.parameters` walks a module's own parameters first and then its
children's, recursively, exactly as PyTorch does, so names and order match a
PyTorch model built the same way.

A Module knows nothing of array libraries beyond what :mod:`neural_arch.backend`
tells it: :meth:`Module.to` and :meth:`Module.load_state_dict` move arrays with
:func:`~neural_arch.backend.to_backend`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any, NamedTuple

import array_api_compat
import numpy as np

from .. import backend
from ..tensor import Parameter, Tensor

__all__ = ["IncompatibleKeys", "Module", "StateDictKeyError"]


class StateDictKeyError(KeyError, ValueError):
    """A state dict lacks names the model has, or has names the model lacks.

    Both a ``KeyError`` (a name is wrong) and a ``ValueError`` (a bad argument).
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class IncompatibleKeys(NamedTuple):
    """What :meth:`Module.load_state_dict` did not match (``strict=False``)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class of every layer and model.

    Subclasses call ``super().__init__()`` first, assign Parameters and
    sub-Modules as attributes, and define :meth:`forward`.  Calling the module
    calls ``forward``.

    Attributes:
        training: True in training mode (the default), False after :meth:`eval`.
            Only layers such as :class:`~neural_arch.Dropout` look at it.
    """

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration ---------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_parameters")
        modules = self.__dict__.get("_modules")
        if params is None or modules is None:
            raise AttributeError(
                f"cannot assign {name!r} before Module.__init__() is called "
                f"(call super().__init__() first in {type(self).__name__}.__init__)"
            )
        if isinstance(value, Parameter):
            self._forget(name)
            params[name] = value
        elif isinstance(value, Module):
            self._forget(name)
            modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} as parameter {name!r} "
                    "(a Parameter or None expected)"
                )
            params[name] = None
        elif name in modules:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} as child module {name!r} "
                    "(a Module or None expected)"
                )
            modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name: str) -> None:
        self.__dict__.pop(name, None)
        self.__dict__["_parameters"].pop(name, None)
        self.__dict__["_modules"].pop(name, None)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; read __dict__ directly so that a
        # half-built object (copy, pickle) does not recurse.
        d = self.__dict__
        if name in d.get("_parameters", ()):
            return d["_parameters"][name]
        if name in d.get("_modules", ()):
            return d["_modules"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        if name in self._parameters:
            del self._parameters[name]
        elif name in self._modules:
            del self._modules[name]
        else:
            object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (or an empty slot, ``None``) under ``name``."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(
                f"parameter {name!r} must be a Parameter or None, got {type(param).__name__}"
            )
        self._forget(name)
        self._parameters[name] = param

    def add_module(self, name: str, module: Module | None) -> None:
        """Register ``module`` (or an empty slot, ``None``) as a child under ``name``."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(
                f"child {name!r} must be a Module or None, got {type(module).__name__}"
            )
        self._forget(name)
        self._modules[name] = module

    # -- traversal ------------------------------------------------------------

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """Yield ``(dotted name, parameter)``: own parameters first, then children's.

        Names look like ``"0.weight"`` inside a Sequential or
        ``"backbone.fc.bias"``.  A parameter shared by several modules is
        yielded once, under its first name, unless ``remove_duplicate=False``.
        """
        seen: set[int] = set()
        modules = (
            self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
            if recurse
            else iter([(prefix, self)])
        )
        for module_name, module in modules:
            for name, param in module._parameters.items():
                if param is None:
                    continue
                if remove_duplicate:
                    if id(param) in seen:
                        continue
                    seen.add(id(param))
                yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self, recurse: bool = True) -> list[Parameter]:
        """A list of the module's Parameters, in the order of :meth:`named_parameters`."""
        return [p for _, p in self.named_parameters(recurse=recurse)]

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """Yield ``(name, child)`` for the direct sub-Modules, in assignment order."""
        seen: set[int] = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self) -> Iterator[Module]:
        """Yield the direct sub-Modules, in assignment order."""
        for _, module in self.named_children():
            yield module

    def named_modules(
        self, prefix: str = "", remove_duplicate: bool = True, _seen: set[int] | None = None
    ) -> Iterator[tuple[str, Module]]:
        """Yield ``(dotted name, module)`` for this module (name ``prefix``) and all below."""
        seen = set() if _seen is None else _seen
        if remove_duplicate:
            if id(self) in seen:
                return
            seen.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is None:
                continue
            sub = f"{prefix}.{name}" if prefix else name
            yield from module.named_modules(sub, remove_duplicate, seen)

    def modules(self) -> Iterator[Module]:
        """Yield this module and every module below it, each once."""
        for _, module in self.named_modules():
            yield module

    # -- modes, gradients, calling --------------------------------------------

    def train(self, mode: bool = True) -> Module:
        """Set training mode (``mode=True``) or evaluation mode on every module; return self."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode must be a bool, got {mode!r}")
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Evaluation mode (``train(False)``); return self."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None (the next backward starts afresh)."""
        for p in self.parameters():
            p.grad = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # -- moving between backends ----------------------------------------------

    def to(
        self,
        backend: str | ModuleType | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> Module:
        """Move every parameter (and gradient) to ``backend``/``device``/``dtype``; return self.

        ``backend`` is a name (``"numpy"``, ``"cupy"``, ``"torch"``, ``"jax"``,
        ``"array_api_strict"``) or an array-API namespace; None keeps each
        parameter's own library.  ``device`` is a device of the target library
        (None: its default, or the current device when the library does not
        change).  ``dtype`` is a name such as ``"float64"`` or any library's
        dtype object (None: keep).

        Parameters keep their identity: only ``.data`` and ``.grad`` are
        rebound.  Moving to another library always copies, so arrays held from
        before the move never alias the moved parameters.  All arrays are
        converted before any is rebound: on error nothing is changed.
        """
        moves = []
        for p in self.parameters():
            new_data = _move(p.data, backend, device, dtype)
            new_grad = None if p.grad is None else _move(p.grad, backend, device, dtype)
            moves.append((p, new_data, new_grad))
        for p, new_data, new_grad in moves:
            p.data = new_data
            p.grad = new_grad
        return self

    # -- state dicts ----------------------------------------------------------

    def state_dict(self) -> OrderedDict[str, Any]:
        """An ordered dict from dotted parameter name to the parameter's array.

        The arrays are **references** to the parameters' ``.data`` (as
        PyTorch's ``state_dict()`` returns detached references), not copies:
        on mutable backends an in-place optimizer step changes them too.  Copy
        them (``{k: xp.asarray(v, copy=True) ...}``, or save with
        :func:`neural_arch.save`) to keep a snapshot.  A parameter shared by
        several modules appears under each of its names.
        """
        return OrderedDict(
            (name, p.data) for name, p in self.named_parameters(remove_duplicate=False)
        )

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True
    ) -> IncompatibleKeys:
        """Copy the values in ``state_dict`` into the parameters of the same names.

        Each value must be an array (of any backend) or a Tensor whose shape is
        the parameter's and whose dtype is of the parameter's kind (floating
        for a floating parameter, integer for an integer one, bool, complex);
        it is moved to the parameter's backend, device and dtype (a float64
        value into a float32 parameter is rounded, as PyTorch's ``copy_``
        does) and copied: the model never aliases the input.  Values are taken
        as they are, NaN included.  Mutable arrays (NumPy, CuPy, PyTorch,
        array-api-strict) are overwritten in place, so the parameters' arrays
        keep their identity; immutable ones (JAX) and read-only ones are rebound.

        All or nothing: every name, kind, shape and dtype is checked and every
        value converted before the first parameter is written, so on any
        error no parameter is modified.

        Raises:
            StateDictKeyError: (a KeyError and ValueError) with ``strict=True``,
                when names of the model are missing from ``state_dict`` or
                ``state_dict`` has names the model lacks.
            TypeError: when ``state_dict`` is not a mapping, ``strict`` not a
                bool, or a value no array or of another dtype kind, naming the key.
            ValueError: when a shape differs, naming the key and both shapes, or
                a value cannot be moved to its parameter's backend and device.

        Returns the missing and unexpected names (both empty under ``strict=True``).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a mapping of name to array, got {type(state_dict).__name__}"
            )
        if not isinstance(strict, (bool, np.bool_)):
            raise TypeError(f"strict must be a bool, got {strict!r}")
        own = OrderedDict(self.named_parameters(remove_duplicate=False))
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            problems = []
            if missing:
                problems.append(f"missing keys {missing}")
            if unexpected:
                problems.append(f"unexpected keys {unexpected}")
            raise StateDictKeyError(
                f"error loading state_dict into {type(self).__name__}: " + "; ".join(problems)
            )
        updates = [
            (p, _loaded_value(name, state_dict[name], p.data))
            for name, p in own.items()
            if name in state_dict
        ]
        for p, new in updates:
            if _writable_in_place(p.data):
                try:
                    p.data[...] = new
                    p._version += 1  # as rebinding does: a pending backward() must see it
                    continue
                except (RuntimeError, TypeError, ValueError):
                    pass  # a view the library will not write (a broadcast tensor): rebind it
            p.data = new
        return IncompatibleKeys(missing, unexpected)

    def save(self, path: Any) -> None:
        """Write :meth:`state_dict` to ``path`` with :func:`neural_arch.save` (safetensors)."""
        from ..checkpoint import save

        save(self.state_dict(), path)

    def load(self, path: Any, strict: bool = True) -> IncompatibleKeys:
        """Load parameters written by :meth:`save` (onto their current backend and device)."""
        from ..checkpoint import load

        return self.load_state_dict(load(path), strict=strict)

    # -- printing -------------------------------------------------------------

    def extra_repr(self) -> str:
        """The text inside the parentheses of this module's repr (override in layers)."""
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, module in self._modules.items():
            child = repr(module).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child}")
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        head = f"{type(self).__name__}(" + (f"\n  {extra}" if extra else "")
        return head + "\n" + "\n".join(lines) + "\n)"


def _move(x: Any, target: str | ModuleType | None, device: Any, dtype: Any) -> Any:
    """``x`` on ``target``/``device``/``dtype``; a copy whenever the library changes."""
    current = backend.namespace(x)
    xp = current if target is None else backend.resolve_backend(target)
    copy = None if xp is current else True
    return backend.to_backend(x, xp, device=device, dtype=dtype, copy=copy)


_KINDS = {
    "bool": "bool",
    **dict.fromkeys(("int8", "int16", "int32", "int64"), "integer"),
    **dict.fromkeys(("uint8", "uint16", "uint32", "uint64"), "integer"),
    **dict.fromkeys(("float16", "bfloat16", "float32", "float64"), "floating"),
    **dict.fromkeys(("complex64", "complex128"), "complex"),
}


def _loaded_value(name: str, value: Any, target: Any) -> Any:
    """``value`` checked against parameter array ``target`` and converted to its
    backend, device and dtype (a new array); errors name the key."""
    if isinstance(value, Tensor):
        value = value.data
    if array_api_compat.is_torch_array(value):
        value = value.detach()  # else the copy below would join value's autograd graph
    if not array_api_compat.is_array_api_obj(value):
        raise TypeError(
            f"state_dict[{name!r}] must be an array or a Tensor, got {type(value).__name__}"
        )
    kind = _KINDS.get(backend.dtype_name(value.dtype))
    expected = _KINDS.get(backend.dtype_name(target.dtype))
    if kind is None or kind != expected:
        raise TypeError(
            f"state_dict[{name!r}] has dtype {backend.dtype_name(value.dtype)}, but the "
            f"parameter is {backend.dtype_name(target.dtype)}: a {expected} array expected"
        )
    if tuple(value.shape) != tuple(target.shape):
        raise ValueError(
            f"shape mismatch for {name!r}: the state_dict has {tuple(value.shape)}, "
            f"the model has {tuple(target.shape)}"
        )
    xp = backend.namespace(target)
    try:
        new = backend.to_backend(
            value, xp, device=backend.device(target), dtype=target.dtype, copy=True
        )
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"cannot load state_dict[{name!r}] into its parameter "
            f"({backend.backend_name(xp)}, {backend.dtype_name(target.dtype)}): {exc}"
        ) from exc
    if tuple(new.shape) != tuple(target.shape) or new.dtype != target.dtype:
        raise ValueError(  # pragma: no cover - a library that converts unlike the standard
            f"cannot load state_dict[{name!r}]: it converted to {new.dtype}{tuple(new.shape)}"
        )
    return new


def _writable_in_place(x: Any) -> bool:
    """Whether ``x[...] = y`` will succeed: no JAX, no read-only NumPy array, no PyTorch
    tensor that autograd or inference mode guards."""
    if not array_api_compat.is_writeable_array(x):
        return False
    if array_api_compat.is_torch_array(x):
        return not (x.requires_grad or x.is_inference())
    return True
