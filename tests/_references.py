"""Reference optimizers for the ones torch.optim lacks, written in plain torch.

Each is a ``torch.optim.Optimizer`` (so it has ``param_groups``, ``state``
and ``state_dict()``) whose ``step`` is written from the paper, with torch
tensor operations only: nothing of neural_arch is used, so a test comparing
the library against it compares two independent implementations.  The
table (tests/optimizers.py) uses them through ``Entry.reference``:
``reference(torch, params, **kwargs)``.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["lion_reference"]


def lion_reference(
    torch: Any,
    params: Any,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float = 0.0,
) -> Any:
    """Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms").

    The paper's Algorithm 2, with ``g`` the gradient and ``m`` the momentum
    (zeros at the start)::

        c = beta1 * m + (1 - beta1) * g
        p = p - lr * (sign(c) + weight_decay * p)
        m = beta2 * m + (1 - beta2) * g

    with the decay written as the authors' reference implementation
    (google/automl ``lion/lion_pytorch.py``) orders it: ``p * (1 - lr *
    weight_decay)`` first, then ``- lr * sign(c)``.
    """
    return _lion_class(torch)(params, lr=lr, betas=betas, weight_decay=weight_decay)


@functools.cache
def _lion_class(torch: Any) -> type:
    class LionReference(torch.optim.Optimizer):
        def __init__(self, params, lr, betas, weight_decay):
            defaults = {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay}
            super().__init__(params, defaults)

        @torch.no_grad()
        def step(self, closure=None):
            loss = None if closure is None else closure()
            for group in self.param_groups:
                lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["exp_avg"] = torch.zeros_like(p)
                    m, g = state["exp_avg"], p.grad
                    c = m * beta1 + g * (1 - beta1)
                    p.copy_(p * (1 - lr * wd) - lr * torch.sign(c))
                    m.copy_(m * beta2 + g * (1 - beta2))
            return loss

    return LionReference
