"""Shared test utilities (imported as ``from _helpers import ...``)."""

from __future__ import annotations

import numpy as np

from neural_arch.backend import to_numpy

__all__ = ["P", "assert_close", "rtol_for", "to_np"]

to_np = to_numpy


class P:
    """The smallest parameter the optimizers accept: ``.data`` and ``.grad``."""

    def __init__(self, data, grad=None):
        self.data = data
        self.grad = grad

    def __repr__(self):
        return f"P(shape={tuple(self.data.shape)})"


def rtol_for(dtype) -> float:
    """Default relative tolerance for comparing results of one dtype."""
    name = str(dtype)
    if "float64" in name:
        return 1e-12
    if "float16" in name:
        return 1e-3
    return 1e-6


def assert_close(actual, expected, *, rtol: float | None = None, atol: float = 0.0) -> None:
    """Compare arrays of any backend (or Python numbers) with a tolerance from the dtype."""
    a = to_np(actual) if not isinstance(actual, (int, float)) else np.asarray(actual)
    e = to_np(expected) if not isinstance(expected, (int, float)) else np.asarray(expected)
    if rtol is None:
        rtol = rtol_for(a.dtype)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)
