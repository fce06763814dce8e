"""Hyperparameter specs: declared once per optimizer class, they check every group.

An optimizer lists its hyperparameters as ``{name: spec}``; the base class
checks each group against it when the group is added, when a state dict is
loaded (where a :class:`Pair` saved as a list becomes a tuple again) and when
``opt.lr`` is assigned.  The messages name the hyperparameter, its value and
what was expected.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

__all__ = ["Flag", "Pair", "Real", "as_python", "check_number"]


def check_number(
    name: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float | None = None,
    closed: bool = False,
    finite: bool = True,
) -> None:
    """Raise ValueError unless ``value`` is a real with ``low <= value < high``.

    ``closed`` admits ``value == high``; ``finite=False`` admits ``inf``
    (``clip_grad_norm_(max_norm=inf)`` only measures).  Python and NumPy
    numbers qualify; bools do not.
    """
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and (math.isfinite(value) or not finite)
        and value >= low
    )
    if ok and high is not None:
        ok = value <= high if closed else value < high
    if not ok:
        if high is None:
            expected = f"a finite number >= {low}" if finite else f"a number >= {low}"
        else:
            expected = f"a number in [{low}, {high}{']' if closed else ')'}"
        raise ValueError(f"Invalid {name}: {value!r} (expected {expected})")


def as_python(value: Any) -> Any:
    """A NumPy (or other) real scalar as the Python int or float of its value; Python
    numbers as they are."""
    if type(value) in (int, float):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


@dataclass(frozen=True)
class Real:
    """A finite real number in ``[low, high)`` (``[low, high]`` when ``closed``)."""

    low: float = 0.0
    high: float | None = None
    closed: bool = False

    def check(self, name: str, value: Any) -> Any:
        check_number(name, value, low=self.low, high=self.high, closed=self.closed)
        return as_python(value)


@dataclass(frozen=True)
class Flag:
    """A real bool (``True``/``False``, or a NumPy bool)."""

    def check(self, name: str, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if type(value).__name__ in ("bool", "bool_") and type(value).__module__ == "numpy":
            return bool(value)
        raise ValueError(f"Invalid {name}: {value!r} (expected True or False)")


@dataclass(frozen=True)
class Pair:
    """Two values, each checked by ``item``; named ``first``/``second`` in messages."""

    item: Real
    first: str
    second: str

    def check(self, name: str, value: Any) -> tuple:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
            raise ValueError(f"{name} must be a pair ({self.first}, {self.second}), got {value!r}")
        a, b = value
        a2 = self.item.check(f"{self.first} ({name}[0])", a)
        b2 = self.item.check(f"{self.second} ({name}[1])", b)
        if type(value) is tuple and a2 is a and b2 is b:
            return value
        return (a2, b2)
