"""A 10,000-step float64 soak of every optimizer of the table against an independent reference.

Each optimizer of tests/optimizers.py runs 10,000 steps on NumPy (small
parameters) beside its reference: ``torch.optim``'s twin, or the table's own
``Entry.reference`` where torch has none (Lion).  The gradients are a fixed
random sequence, not the gradient of a loss at the current parameters: a
loss would feed every rounding difference back into the next gradient and
amplify it (chaotically for some losses), so that the test would measure
the loss, not the optimizer.  With fixed gradients both runs see the same
inputs at every step, and what the test measures is how the rounding
differences of the two implementations accumulate.

The promise checked: the largest relative difference of any parameter
element, ``|ours - ref| / max(|ref|, 1)``, stays within 1e-12 at every
checkpoint (every 1,000 steps) and at the end.  Measured (torch 2.13 CPU, the
case below): at most 1.8e-14 (Adafactor), about 1e-15 for the Adam family
and SGD, exactly 0 for Rprop and Lion (sign-based steps); the case is each
optimizer's first grid case that keeps state (SGD with momentum), whose
parameters drift freely (no weight decay), so that rounding differences
accumulate as much as they can.  Our side runs with ``nonfinite="ignore"``:
the gradients are finite by construction and the check is tested elsewhere.

About 1.5-4 s of CPU per optimizer (20-25 s in all), more on a busy machine:
marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import P
from optimizers import TABLE, Entry, cases

STEPS = 10_000
CHECK_EVERY = 1_000
SHAPES = ((7,), (2, 3))
TOLERANCE = 1e-12


def _stateful_case(entry: Entry) -> dict:
    """The first case of the entry's grid whose step keeps state arrays (SGD with momentum):
    the state is what accumulates over a long run."""
    for kwargs in cases(entry):
        p = P(np.ones((2, 3)), np.ones((2, 3)))
        opt = entry.make([p], **kwargs)
        opt.step()
        if any(hasattr(v, "shape") for v in (opt.state.get(p) or {}).values()):
            return kwargs
    raise AssertionError(f"{entry.name}: no case of the grid keeps state arrays")


def _gradients(seed: int = 7) -> list[np.ndarray]:
    """One (STEPS, *shape) float64 array of gradients per parameter."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((STEPS, *shape)) for shape in SHAPES]


def _relative_error(params, torch_params) -> float:
    worst = 0.0
    for p, tp in zip(params, torch_params, strict=True):
        ref = tp.detach().numpy()
        worst = max(worst, float(np.max(np.abs(p.data - ref) / np.maximum(np.abs(ref), 1.0))))
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("entry", [pytest.param(e, id=e.name) for e in TABLE])
def test_soak_against_the_reference(torch, entry):
    kwargs = _stateful_case(entry)
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(shape) for shape in SHAPES]
    params = [P(x.copy()) for x in start]
    torch_params = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in start]
    opt = entry.make(params, nonfinite="ignore", **kwargs)  # finite by construction
    topt = entry.make_torch(torch, torch_params, **kwargs)
    grads = _gradients()
    torch_grads = [torch.tensor(g) for g in grads]  # its own copy: nothing is shared
    errors = []
    for step in range(STEPS):
        for p, g in zip(params, grads, strict=True):
            p.grad = g[step]
        for tp, g in zip(torch_params, torch_grads, strict=True):
            tp.grad = g[step]
        opt.step()
        topt.step()
        if (step + 1) % CHECK_EVERY == 0:
            errors.append((step + 1, _relative_error(params, torch_params)))
    assert opt.step_count == STEPS
    for p in params:
        assert p.data.dtype == np.float64
        assert np.all(np.isfinite(p.data))
    worst = max(error for _, error in errors)
    listing = ", ".join(f"{step}: {error:.3g}" for step, error in errors)
    assert worst <= TOLERANCE, (
        f"{entry.name} {kwargs}: relative difference from the reference {worst:.3g} > "
        f"{TOLERANCE:g} (by step: {listing})"
    )
