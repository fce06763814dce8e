"""Layers: ``Linear``, ``Sequential``, the activations and ``Dropout``.

New parameters are drawn from :func:`neural_arch.backend.rng` in float64 and
then cast to the default dtype on the default backend, so one seed gives the
same model, to the last bit the dtype allows, on every backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from .. import backend
from .. import functional as F
from ..tensor import Parameter, Tensor
from .module import Module

__all__ = ["Dropout", "Linear", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh"]


def _as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _uniform_parameter(bound: float, shape: tuple[int, ...]) -> Parameter:
    draw = backend.rng().uniform(-bound, bound, size=shape)  # float64 on the host
    data = backend.to_backend(
        draw, backend.get_default_backend(), dtype=backend.get_default_dtype(), copy=True
    )
    return Parameter(data)


class Linear(Module):
    """``y = x @ weight.T + bias``, PyTorch's ``nn.Linear``.

    ``weight`` has shape ``(out_features, in_features)`` and ``bias`` shape
    ``(out_features,)``.  Both start as PyTorch's defaults: uniform on
    ``[-1/sqrt(in_features), 1/sqrt(in_features)]`` (for the weight this is
    ``kaiming_uniform_(a=sqrt(5))``), drawn weight first, then bias.

    The input may be a Tensor or a raw array of the parameters' backend, with
    any leading batch dimensions.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        bound = 1.0 / math.sqrt(in_features)
        self.weight = _uniform_parameter(bound, (out_features, in_features))
        if bias:
            self.bias = _uniform_parameter(bound, (out_features,))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Any) -> Tensor:
        return F.linear(_as_tensor(x), self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class Sequential(Module):
    """Modules applied one after the other; children are named ``"0"``, ``"1"``, ...

    ``Sequential(a, b, c)`` or ``Sequential({"name": a, ...})``.  Indexing with
    an int returns a child, with a slice a new Sequential sharing the children.
    """

    def __init__(self, *modules: Module | Mapping[str, Module]) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], Mapping):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, module in items:
            if not isinstance(module, Module):
                raise TypeError(
                    f"Sequential takes Modules, got {type(module).__name__} at {name!r}"
                )
            self.add_module(name, module)

    def forward(self, x: Any) -> Any:
        for module in self._modules.values():
            x = module(x)
        return x

    def append(self, module: Module) -> Sequential:
        """Add ``module`` at the end; return self."""
        self.add_module(str(len(self)), module)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int | slice) -> Any:
        modules = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*modules[index])
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"Sequential index must be an int or slice, got {index!r}")
        if not -len(modules) <= index < len(modules):
            raise IndexError(f"index {index} out of range for Sequential of length {len(modules)}")
        return modules[index]


class ReLU(Module):
    """``max(x, 0)`` elementwise."""

    def forward(self, x: Any) -> Tensor:
        return F.relu(_as_tensor(x))


class Tanh(Module):
    """``tanh(x)`` elementwise."""

    def forward(self, x: Any) -> Tensor:
        return F.tanh(_as_tensor(x))


class Sigmoid(Module):
    """``1 / (1 + exp(-x))`` elementwise."""

    def forward(self, x: Any) -> Tensor:
        return F.sigmoid(_as_tensor(x))


class Softmax(Module):
    """``softmax(x, axis)``: exponentials normalised to sum to one along ``axis``."""

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"axis must be an int, got {axis!r}")
        self.axis = axis

    def forward(self, x: Any) -> Tensor:
        return F.softmax(_as_tensor(x), axis=self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


class Dropout(Module):
    """Inverted dropout: in training mode, zero each element with probability ``p``
    and scale the rest by ``1/(1-p)``; the identity in evaluation mode.

    The mask is drawn from :func:`neural_arch.backend.rng` and moved to the
    input's backend, device and dtype, so a seed gives the same mask everywhere.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"p must be a probability in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: Any) -> Tensor:
        x = _as_tensor(x)
        if not self.training or self.p == 0.0:
            return x
        keep = backend.rng().random(tuple(x.data.shape)) >= self.p
        mask = backend.to_backend(
            keep, backend.namespace(x.data), device=backend.device(x.data), dtype=x.data.dtype
        )
        return x * Tensor(mask * (1.0 / (1.0 - self.p)))

    def extra_repr(self) -> str:
        return f"p={self.p}"
