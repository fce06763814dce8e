"""Arrays of any backend seen as MPI buffers, and written back.

MPI reads and writes memory.  NumPy arrays are that memory; PyTorch CPU
tensors and array-api-strict arrays share theirs with a NumPy view
(:func:`neural_arch.backend.to_numpy`); CuPy arrays stay on their device
(:mod:`._device`); JAX arrays, which are immutable, are copied out and new
arrays are bound in their place.  This module is the one place that knows
which is which.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import array_api_compat
import numpy as np

from ..backend import device, dtype_name, namespace, to_backend, to_numpy

__all__ = [
    "host_dtype",
    "is_cupy",
    "param_list",
    "shares_host_memory",
    "store",
    "wire_dtype",
]


def is_cupy(x: Any) -> bool:
    return array_api_compat.is_cupy_array(x)


def param_list(params: Any, where: str = "params") -> list[Any]:
    """A list of parameters from a list, a dict name -> parameter, a Module or an optimizer."""
    if hasattr(params, "param_groups") and isinstance(params.param_groups, list):
        return [p for group in params.param_groups for p in group["params"]]
    if callable(getattr(params, "parameters", None)) and not hasattr(params, "data"):
        return list(params.parameters())
    if isinstance(params, Mapping):
        items = list(params.values())
    elif hasattr(params, "data") and hasattr(params, "grad"):
        items = [params]
    elif isinstance(params, (set, frozenset)):
        raise TypeError(
            f"{where} must be an ordered collection of parameters (a list, tuple or dict); "
            "a set has no order that every rank shares"
        )
    elif isinstance(params, Iterable) and not isinstance(params, (str, bytes)):
        items = list(params)
    else:
        raise TypeError(
            f"{where} must be an iterable of parameters, a dict name -> parameter, a Module "
            f"or an optimizer, got {type(params).__name__}"
        )
    for i, p in enumerate(items):
        if not (hasattr(p, "data") and hasattr(p, "grad")):
            raise TypeError(
                f"{where}[{i}] is a {type(p).__name__}; expected a parameter "
                "(an object with .data and .grad arrays, e.g. neural_arch.Parameter)"
            )
    return items


_HOST_DTYPES: dict[tuple[type, Any], np.dtype] = {}


def host_dtype(x: Any, what: str) -> np.dtype:
    """The NumPy dtype of array ``x``; TypeError naming ``what`` when NumPy has none."""
    key = (type(x), x.dtype)  # the type first: dtypes of two libraries are never compared
    found = _HOST_DTYPES.get(key)
    if found is None:
        try:
            found = _HOST_DTYPES[key] = np.dtype(dtype_name(x.dtype))
        except TypeError:
            raise TypeError(
                f"{what} has dtype {x.dtype}, which MPI buffers cannot carry; use float16, "
                "float32 or float64"
            ) from None
    return found


def wire_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a gradient is summed in: its own, float32 for float16 (MPI has no half sum)."""
    return np.dtype(np.float32) if dtype == np.float16 else dtype


_SHARES: dict[tuple[Any, str], bool] = {}


def shares_host_memory(x: Any) -> bool:
    """Whether ``to_numpy(x)`` is a writable view of ``x``'s own memory.

    True for NumPy, PyTorch CPU and array-api-strict arrays; False for CuPy
    (device memory) and JAX (immutable).  Found once per library and device
    by writing through the view of a small array and reading it back.
    """
    if isinstance(x, np.ndarray):
        return bool(x.flags.writeable)
    if is_cupy(x) or array_api_compat.is_jax_array(x):
        return False
    key = (type(x), str(device(x)))
    found = _SHARES.get(key)
    if found is None:
        xp = namespace(x)
        probe = xp.zeros((4,), dtype=x.dtype, device=device(x))
        view = xp.reshape(probe[2:4], (2, 1))
        try:
            host = to_numpy(probe)
            found = bool(host.flags.writeable)
            if found:
                host[...] = np.arange(1, 5)
                found = [float(v) for v in to_numpy(view).reshape(-1)] == [3.0, 4.0]
        except (TypeError, ValueError, RuntimeError, BufferError):
            found = False
        _SHARES[key] = found
    if found and array_api_compat.is_torch_array(x):
        return not x.requires_grad and x.device.type == "cpu"
    return found


def store(owner: Any, attr: str, value: Any, like: Any) -> None:
    """Make ``owner.<attr>`` hold ``value`` (a NumPy or CuPy array of the right shape).

    Written in place where the current array can be (so views a user holds
    stay valid); otherwise a new array of ``like``'s backend, device and
    dtype (the current array's dtype when there is one) is bound.
    """
    cur = getattr(owner, attr)
    if cur is not None and tuple(cur.shape) == tuple(value.shape):
        if isinstance(cur, np.ndarray) and cur.flags.writeable and isinstance(value, np.ndarray):
            np.copyto(cur, value, casting="same_kind")
            return
        if is_cupy(cur) and is_cupy(value):
            cur[...] = value
            return
        if isinstance(value, np.ndarray) and shares_host_memory(cur):
            np.copyto(to_numpy(cur), value, casting="same_kind")
            return
    template = like if cur is None else cur
    new = to_backend(value, namespace(like), device=device(like), dtype=template.dtype, copy=True)
    same_shape = cur is not None and tuple(cur.shape) == tuple(value.shape)
    if same_shape and array_api_compat.is_writeable_array(cur):
        cur[...] = new
        return
    setattr(owner, attr, new)
