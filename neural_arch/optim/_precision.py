"""Low-precision parameters: float16 and bfloat16 train with float32 state and arithmetic.

A parameter whose dtype is float16 or bfloat16 (NumPy's float16,
``ml_dtypes.bfloat16`` on NumPy, torch's and JAX's own) keeps its optimizer
state in float32, and each step computes in float32: the parameter (or its
float32 master copy, with ``master_weights=True``) and its gradient are
read as float32, the rule runs as for a float32 parameter, and the result
is rounded to the parameter's dtype where it is written back.  The
hyperparameters keep their meaning: ``eps=1e-8`` does not round to zero,
a second moment of a small gradient does not underflow.
"""

from __future__ import annotations

from typing import Any

from ..backend import device

__all__ = ["is_low", "state_dtype", "state_full", "state_zeros"]

LOW = frozenset(("float16", "bfloat16"))
_low: dict[tuple[type, Any], bool] = {}


def is_low(dtype: Any) -> bool:
    """Whether ``dtype`` is float16 or bfloat16 (of any library)."""
    key = (type(dtype), dtype)  # the type first: dtypes of two libraries are never compared
    low = _low.get(key)
    if low is None:
        low = _low[key] = str(dtype).rsplit(".", 1)[-1] in LOW
    return low


def state_dtype(xp: Any, dtype: Any) -> Any:
    """The dtype of a parameter's state and arithmetic: float32 for float16/bfloat16."""
    return xp.float32 if is_low(dtype) else dtype


def state_zeros(xp: Any, x: Any) -> Any:
    """Zeros of ``x``'s shape and device, of its state dtype."""
    if not is_low(x.dtype):
        return xp.zeros_like(x)
    return xp.zeros(x.shape, dtype=xp.float32, device=device(x))


def state_full(xp: Any, x: Any, value: float) -> Any:
    """``value`` in ``x``'s shape and device, of its state dtype."""
    if not is_low(x.dtype):
        return xp.full_like(x, value)
    return xp.full(x.shape, value, dtype=xp.float32, device=device(x))
