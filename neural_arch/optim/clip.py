"""Gradient clipping by total norm or by value, on any backend (``torch.nn.utils`` semantics)."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

from ..backend import namespace
from ._hyper import check_number
from .optimizer import _as_param_list

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(params: Any, where: str) -> list[Any]:
    plist, _ = _as_param_list(params, where)
    return [p for p in plist if p.grad is not None]


def _set_grad(p: Any, value: Any) -> None:
    """Store ``value`` into ``p.grad`` in place when possible (JAX: rebind)."""
    if array_api_compat.is_writeable_array(p.grad):
        p.grad[...] = value
    else:
        p.grad = value


def clip_grad_norm_(
    parameters: Any,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> Any:
    """Scale gradients in place so that their total norm is at most ``max_norm``.

    The total norm is the ``norm_type``-norm of all gradients seen as one
    vector (``float("inf")`` for the largest magnitude).  Every gradient is
    multiplied by ``min(1, max_norm / (total_norm + 1e-6))``, as in
    ``torch.nn.utils.clip_grad_norm_``.  Parameters without a gradient are
    ignored.

    Returns:
        The total norm before clipping, as a 0-d array of the gradients'
        backend (no host synchronisation); ``0.0`` when no parameter has a
        gradient.

    Raises:
        RuntimeError: if ``error_if_nonfinite`` and the total norm is NaN or inf.
    """
    check_number("max_norm", max_norm, finite=False)
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"Invalid norm_type: {norm_type!r} (expected a number > 0 or inf)")
    params = _grads(parameters, "parameters")
    if not params:
        return 0.0
    xp = namespace(params[0].grad)
    for p in params[1:]:
        if namespace(p.grad) is not xp:
            raise TypeError(
                "clip_grad_norm_ needs the gradients of one backend; clip each "
                "backend's parameters separately"
            )
    if math.isinf(norm_type):
        total = xp.max(xp.stack([xp.max(xp.abs(p.grad)) for p in params]))
    else:
        powers = [xp.sum(xp.abs(p.grad) ** norm_type) for p in params]
        total = xp.sum(xp.stack(powers)) ** (1.0 / norm_type)
    total = xp.asarray(total)  # NumPy reductions give scalars; the promise is a 0-d array
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is non-finite, so it "
            "cannot be clipped; pass error_if_nonfinite=False to scale anyway"
        )
    coef = xp.clip(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        _set_grad(p, p.grad * xp.astype(coef, p.grad.dtype))
    return total


def clip_grad_value_(parameters: Any, clip_value: float) -> None:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` in place."""
    check_number("clip_value", clip_value, finite=False)
    for p in _grads(parameters, "parameters"):
        xp = namespace(p.grad)
        _set_grad(p, xp.clip(p.grad, -clip_value, clip_value))
