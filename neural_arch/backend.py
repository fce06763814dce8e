"""The only module that knows about array libraries.

Everything else in neural_arch takes its array namespace from the data
(``xp = namespace(x)``) and does math through it.  This module answers the
questions that the Array API standard leaves to the libraries themselves:

* which namespace and device an array lives in (:func:`namespace`,
  :func:`device`);
* what the *default* backend and floating dtype are, used when a Tensor is
  built from a Python list or scalar (:func:`set_default_backend`,
  :func:`set_default_dtype`, environment variable ``NEURAL_ARCH_BACKEND``);
* how to move an array from one library or device to another
  (:func:`to_backend`, :func:`to_numpy`);
* where random numbers start from (:func:`manual_seed`, :func:`rng`): the
  standard has no random module, so every random draw is made by one NumPy
  Generator and then moved to the target backend.  The same seed therefore
  gives the same model on every backend.
"""

from __future__ import annotations

import importlib
import math
import os
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "BACKEND_NAMES",
    "backend_name",
    "clamp",
    "device",
    "dtype_name",
    "float_errors_ignored",
    "get_default_backend",
    "get_default_dtype",
    "is_immutable",
    "manual_seed",
    "namespace",
    "resolve_backend",
    "resolve_dtype",
    "rng",
    "set_default_backend",
    "set_default_dtype",
    "to_backend",
    "to_numpy",
]

#: Backend names accepted wherever a backend may be given by name.
BACKEND_NAMES = ("numpy", "cupy", "torch", "jax", "array_api_strict")

_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")

# (import path of the array-API namespace, pip requirement that provides it)
_BACKEND_MODULES = {
    "numpy": ("array_api_compat.numpy", "numpy"),
    "cupy": ("array_api_compat.cupy", "neural_arch[cupy] (cupy-cuda12x)"),
    "torch": ("array_api_compat.torch", "neural_arch[torch] (torch)"),
    "jax": ("jax.numpy", "neural_arch[jax] (jax)"),
    "array_api_strict": ("array_api_strict", "neural_arch[strict] (array-api-strict)"),
}


def namespace(*arrays: Any) -> ModuleType:
    """The array-API namespace of ``arrays`` (which must all share one library)."""
    return array_api_compat.array_namespace(*arrays)


def device(x: Any) -> Any:
    """The device an array lives on, in its own library's terms."""
    return array_api_compat.device(x)


def is_immutable(x: Any) -> bool:
    """Whether ``x`` belongs to a library whose arrays are never written (JAX).

    Such arrays are updated by rebinding, not in place; a read-only NumPy
    array is not immutable in this sense (writing to it is an error).
    """
    return array_api_compat.is_jax_array(x)


def backend_name(xp_or_array: Any) -> str:
    """The neural_arch name of a namespace or of an array's library.

    >>> backend_name(np.ones(2))
    'numpy'
    """
    xp = xp_or_array if isinstance(xp_or_array, ModuleType) else namespace(xp_or_array)
    name = xp.__name__
    if name.startswith("array_api_compat."):
        name = name.split(".")[1]
    # jax.numpy is "jax"; any other standard-conforming library keeps its module name
    return "jax" if name == "jax.numpy" else name


def resolve_backend(backend: str | ModuleType) -> ModuleType:
    """The array-API namespace for a backend name or namespace.

    Accepts the names in :data:`BACKEND_NAMES` or a module that is (or wraps)
    an array-API namespace, e.g. ``numpy``, ``torch``, ``cupy``,
    ``jax.numpy`` or ``array_api_strict``.  Plain ``torch``/``numpy``/``cupy``
    modules are mapped to their array-api-compat wrappers.

    Raises ValueError for an unknown name and ImportError, naming the package
    to install, for a backend that is not installed.
    """
    if isinstance(backend, ModuleType):
        name = backend.__name__
        if name in ("numpy", "cupy", "torch"):
            return importlib.import_module(f"array_api_compat.{name}")
        if name == "jax":
            return importlib.import_module("jax.numpy")
        return backend
    if not isinstance(backend, str):
        raise TypeError(
            f"backend must be a name in {BACKEND_NAMES} or an array-API namespace "
            f"module, got {backend!r}"
        )
    key = backend.lower().replace("-", "_")
    if key not in _BACKEND_MODULES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    module, requirement = _BACKEND_MODULES[key]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"backend {backend!r} is not installed; install {requirement}") from exc


_default_backend: ModuleType | None = None
_default_dtype = "float32"


def get_default_backend() -> ModuleType:
    """The namespace used for Tensors built from lists and Python scalars.

    NumPy unless changed by :func:`set_default_backend` or by the environment
    variable ``NEURAL_ARCH_BACKEND`` (read on first use).
    """
    global _default_backend
    if _default_backend is None:
        _default_backend = resolve_backend(os.environ.get("NEURAL_ARCH_BACKEND", "numpy"))
    return _default_backend


def set_default_backend(backend: str | ModuleType) -> None:
    """Set the default backend by name (``"numpy"``, ``"torch"``, ...) or namespace."""
    global _default_backend
    _default_backend = resolve_backend(backend)


def dtype_name(dtype: Any) -> str:
    """The standard name (``"float32"``, ``"int64"``, ...) of a dtype of any library."""
    if isinstance(dtype, str):
        return dtype
    if isinstance(dtype, type) and issubclass(dtype, np.generic):
        return np.dtype(dtype).name
    if isinstance(dtype, np.dtype):
        return dtype.name
    name = str(dtype).rsplit(".", 1)[-1]
    return name.strip("'>")


def get_default_dtype() -> str:
    """The name of the default floating dtype (``"float32"`` unless changed)."""
    return _default_dtype


def set_default_dtype(dtype: Any) -> None:
    """Set the default floating dtype: ``"float32"``, ``"float64"``, or a dtype object."""
    global _default_dtype
    name = dtype_name(dtype)
    if name not in _FLOAT_NAMES:
        raise ValueError(f"dtype must be a floating dtype {_FLOAT_NAMES}, got {dtype!r}")
    _default_dtype = name


def resolve_dtype(xp: ModuleType, dtype: Any = None) -> Any:
    """The dtype object of namespace ``xp`` named by ``dtype`` (default: the default float)."""
    name = _default_dtype if dtype is None else dtype_name(dtype)
    try:
        return getattr(xp, name)
    except AttributeError:
        if name == "bfloat16" and backend_name(xp) in ("numpy", "cupy"):
            try:  # NumPy's bfloat16 is ml_dtypes' (which JAX depends on)
                import ml_dtypes
            except ImportError:
                raise ValueError(
                    "bfloat16 arrays on NumPy need the ml_dtypes package (pip install ml_dtypes)"
                ) from None
            return np.dtype(ml_dtypes.bfloat16)
        raise ValueError(
            f"dtype {dtype!r} is not available in backend {backend_name(xp)!r}"
        ) from None


def _torch_int16() -> Any:
    import torch

    return torch.int16


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array with the values of ``x`` (copied to host memory if needed).

    May share memory with ``x`` when ``x`` already is on the CPU.
    """
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # NumPy's bfloat16 is ml_dtypes', same bits
            return x.view(_torch_int16()).numpy().view(resolve_dtype(np, "bfloat16"))
        return x.numpy()
    if array_api_compat.is_jax_array(x):
        return np.asarray(x)
    if array_api_compat.is_array_api_obj(x):
        return np.from_dlpack(x)
    return np.asarray(x)


def to_backend(
    x: Any,
    backend: str | ModuleType,
    *,
    device: Any = None,
    dtype: Any = None,
    copy: bool | None = None,
) -> Any:
    """``x`` as an array of ``backend`` on ``device`` (the backend's default if None).

    Within one library this is ``asarray``/``to_device``; between libraries
    the values pass through host memory.  ``copy=True`` guarantees the result
    shares no memory with ``x``; ``copy=None`` copies only when needed.
    """
    xp = resolve_backend(backend)
    device = _device(xp, device)
    target_dtype = None if dtype is None else resolve_dtype(xp, dtype)
    if array_api_compat.is_array_api_obj(x) and namespace(x) is xp:
        out, fresh = x, False  # fresh: ``out`` is already a new array
        if device is not None and array_api_compat.device(x) != device:
            out, fresh = array_api_compat.to_device(x, device), True
        if target_dtype is not None and out.dtype != target_dtype:
            out, fresh = xp.astype(out, target_dtype), True
        return xp.asarray(out, copy=True) if copy and not fresh else out
    host = to_numpy(x)
    if host.dtype == np.dtype("O"):
        raise TypeError(f"cannot convert {type(x).__name__} to an array")
    placement = {} if device is None else {"device": device}
    if host.dtype.name == "bfloat16" and backend_name(xp) == "torch":  # ml_dtypes' bits
        import torch

        out = torch.from_numpy(np.array(host.view(np.int16), copy=True)).view(torch.bfloat16)
        out = out if device is None else out.to(device)
    else:
        out = xp.asarray(host, copy=copy, **placement)
    if target_dtype is not None and out.dtype != target_dtype:
        out = xp.astype(out, target_dtype)
    return out


def _device(xp: ModuleType, device: Any) -> Any:
    """``device`` as ``xp`` wants it: CuPy users write a device as its ordinal (``0``)."""
    if isinstance(device, int) and not isinstance(device, bool) and backend_name(xp) == "cupy":
        import cupy

        return cupy.cuda.Device(device)
    return device


#: the largest finite value of the floating dtypes narrower than float64
_LARGEST = {
    "float16": 65504.0,
    "bfloat16": 3.3895313892515355e38,
    "float32": 3.4028234663852886e38,
}


def clamp(x: Any, bound: float) -> Any:
    """``x`` with every element clamped to ``[-bound, bound]`` (NaN stays NaN), ``x``'s dtype.

    One elementwise pass on every backend: ``xp.clip`` on NumPy and CuPy
    goes through array-api-compat's generic version, which is ~20x slower
    than ``np.clip`` on a transposed (F-ordered) array, the layout of a
    ``Linear`` weight's gradient, and on CuPy indexes with boolean masks
    (host synchronisations); the libraries' own ``clip`` is one kernel.
    A bound beyond the dtype's largest finite value (1e6 on float16) leaves
    ``x`` as it is: only ±inf lies beyond it, and the bound rounds to ±inf.
    """
    if bound >= _LARGEST.get(dtype_name(x.dtype), math.inf):
        return x
    if isinstance(x, np.ndarray):
        out = np.clip(x, -bound, bound)
        return out if out.dtype == x.dtype else out.astype(x.dtype)  # ml_dtypes' bfloat16
    if type(x).__module__.partition(".")[0] == "cupy":
        import cupy

        return cupy.clip(x, -bound, bound)
    return namespace(x).clip(x, -bound, bound)


def float_errors_ignored() -> Any:
    """A context in which NumPy does not warn about overflow, 0/0 or inf - inf.

    For computations that handle non-finite values themselves (the
    optimizers' finiteness check, an update whose NaN the user asked to
    propagate); other libraries do not warn in the first place.
    """
    return np.errstate(all="ignore")


_rng = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Seed the generator every random draw in neural_arch starts from."""
    global _rng
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    _rng = np.random.default_rng(seed)
    return _rng


def rng() -> np.random.Generator:
    """The NumPy Generator all random draws come from (see :func:`manual_seed`)."""
    return _rng
