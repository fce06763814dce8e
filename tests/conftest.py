"""The backend matrix: every test that takes ``xp`` runs once per array library.

numpy and array_api_strict always run; torch, jax and cupy run where they
import and work (cupy only with a CUDA device).  ``NEURAL_ARCH_TEST_BACKENDS``
(comma-separated names) selects a subset, e.g. ``NEURAL_ARCH_TEST_BACKENDS=numpy,torch``.
"""

from __future__ import annotations

import importlib
import os

import pytest

import neural_arch as na
from neural_arch import backend

ALL_BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "cupy")

# The version of the standard we promise: the strict backend enforces exactly it.
ARRAY_API_VERSION = "2024.12"

try:
    import array_api_strict

    array_api_strict.set_array_api_strict_flags(api_version=ARRAY_API_VERSION)
except ImportError:  # pragma: no cover - array-api-strict is in the test extra
    array_api_strict = None


def _selected() -> tuple[str, ...]:
    env = os.environ.get("NEURAL_ARCH_TEST_BACKENDS")
    if not env:
        return ALL_BACKENDS
    names = tuple(n.strip() for n in env.split(",") if n.strip())
    unknown = set(names) - set(ALL_BACKENDS)
    if unknown:
        raise pytest.UsageError(
            f"NEURAL_ARCH_TEST_BACKENDS names unknown backends {sorted(unknown)}; "
            f"choose from {ALL_BACKENDS}"
        )
    return names


def _unavailable(name: str) -> str | None:
    """Why backend ``name`` cannot run here, or None when it can."""
    module = {"array_api_strict": "array_api_strict"}.get(name, name)
    try:
        importlib.import_module(module)
    except ImportError:
        return f"{name} is not installed"
    if name == "cupy":
        import cupy

        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                return "CuPy needs a CUDA device"
        except Exception:  # CUDARuntimeError when no driver is present
            return "CuPy needs a CUDA device"
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    return None


BACKENDS = _selected()


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array-API namespace of one backend of the matrix."""
    reason = _unavailable(request.param)
    if reason:
        pytest.skip(reason)
    return backend.resolve_backend(request.param)


@pytest.fixture(params=[b for b in BACKENDS if b != "numpy"])
def other_xp(request):
    """A backend other than NumPy (for cross-backend moves)."""
    reason = _unavailable(request.param)
    if reason:
        pytest.skip(reason)
    return backend.resolve_backend(request.param)


@pytest.fixture
def torch():
    """PyTorch itself, as a reference implementation (skips when not installed)."""
    return pytest.importorskip("torch", reason="the PyTorch reference needs torch installed")


@pytest.fixture(autouse=True)
def _restore_global_settings():
    """Every test starts from the library's defaults and leaves them as they were."""
    saved = (backend._default_backend, backend._default_dtype, na.get_grad_clip())
    na.manual_seed(0)
    yield
    backend._default_backend, backend._default_dtype = saved[:2]
    na.set_grad_clip(saved[2])
