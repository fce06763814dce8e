"""The model, data and training steps shared by the MPI rank scripts and test_distributed.py.

A float64 MLP 8-32-32-4 on 96 random samples; step ``t`` takes the global
batch ``t``, 12 samples, and part ``k`` of ``parts`` takes its ``k``-th
contiguous share (what rank ``k`` of ``parts`` ranks trains on).
:func:`emulated_step` is one process doing what ``parts`` ranks do: the
mean of the parts' gradients, summed in rank order.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np

import neural_arch as na
from neural_arch.backend import resolve_backend, to_backend, to_numpy

SIZES = (8, 32, 32, 4)
BATCH = 12  # divisible by 1, 2, 3, 4
N_SAMPLES = 96
STEPS = 4  # steps of a run; a checkpoint is taken after them, then as many again

OPTIMIZERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "Adam": (na.Adam, {"lr": 0.01}),
    "AdamW": (na.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    "SGD": (na.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
}


def build_model(seed: int, backend: Any = "numpy", dtype: str = "float64") -> na.Sequential:
    na.manual_seed(seed)
    layers: list[na.Module] = []
    for a, b in itertools.pairwise(SIZES):
        layers += [na.Linear(a, b), na.Tanh()]
    return na.Sequential(*layers[:-1]).to(backend, dtype=dtype)


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N_SAMPLES, SIZES[0]))
    y = rng.integers(0, SIZES[-1], N_SAMPLES)
    return x, y


X, Y = data()


def part_slice(step: int, part: int = 0, parts: int = 1) -> slice:
    lo = (step * BATCH) % N_SAMPLES
    share = BATCH // parts
    return slice(lo + part * share, lo + (part + 1) * share)


def inputs(model: na.Module, sl: slice) -> tuple[Any, Any]:
    """The samples ``sl`` in the model's backend."""
    first = model.parameters()[0].data
    xp = na.backend.namespace(first)
    return to_backend(X[sl], xp, dtype=first.dtype), to_backend(Y[sl], xp)


def backward(model: na.Module, sl: slice) -> Any:
    """Fresh gradients of the mean cross-entropy on samples ``sl``; returns the loss."""
    for p in model.parameters():
        p.grad = None
    x, y = inputs(model, sl)
    loss = na.cross_entropy_loss(model(x), y)
    loss.backward()
    return loss


def local_step(model: na.Module, opt: Any, step: int, rank: int, world: int) -> None:
    """What one rank does: gradients of its part, then the (distributed) optimizer's step."""
    backward(model, part_slice(step, rank, world))
    opt.step()


def emulated_step(model: na.Module, opt: Any, step: int, parts: int) -> None:
    """One process doing what ``parts`` ranks do: step on the mean of the parts' gradients."""
    total = None
    for part in range(parts):
        backward(model, part_slice(step, part, parts))
        grads = [to_numpy(p.grad).copy() for p in model.parameters()]
        total = grads if total is None else [t + g for t, g in zip(total, grads, strict=True)]
    for p, g in zip(model.parameters(), total, strict=True):
        p.grad = to_backend(g / parts, na.backend.namespace(p.data), dtype=p.data.dtype)
    opt.step()


def flat(model_or_params: Any) -> np.ndarray:
    """All parameter values in one float64 vector (for bitwise comparisons)."""
    params = getattr(model_or_params, "parameters", lambda: model_or_params)()
    return np.concatenate([to_numpy(p.data).reshape(-1) for p in params])


def flat_state(state_dict: dict) -> tuple[np.ndarray, list[str]]:
    """A state dict's arrays in one vector, with a description of its layout."""
    arrays, layout = [], []
    for index, record in state_dict["state"].items():
        for key, value in record.items():
            if hasattr(value, "shape"):
                host = to_numpy(value)
                arrays.append(host.reshape(-1).astype(np.float64))
                layout.append(f"{index}.{key}{list(host.shape)}:{host.dtype}")
            else:
                layout.append(f"{index}.{key}={value!r}")
    layout.append(f"param_groups={state_dict['param_groups']!r}")
    layout.append(f"step_count={state_dict['step_count']} skipped={state_dict['skipped_steps']}")
    return (np.concatenate(arrays) if arrays else np.zeros(0)), layout


def available_backends() -> list[str]:
    """The host backends to train on: those of ``NEURAL_ARCH_TEST_BACKENDS`` (as the
    suite's ``xp`` fixture) among numpy, array_api_strict and torch, where installed."""
    chosen = os.environ.get("NEURAL_ARCH_TEST_BACKENDS")
    names = ["numpy", "array_api_strict", "torch"]
    if chosen:
        names = [n for n in names if n in {c.strip() for c in chosen.split(",")}]
    found = []
    for name in names:
        try:
            resolve_backend(name)
            found.append(name)
        except ImportError:
            pass
    return found
