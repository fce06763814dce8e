"""Stochastic gradient descent with momentum, as ``torch.optim.SGD``."""

from __future__ import annotations

from typing import Any

from . import _fastpath
from . import functional as F
from .optimizer import Optimizer, _check_number

__all__ = ["SGD"]


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with (Nesterov) momentum.

    With ``g`` the gradient (negated when ``maximize``), for every parameter::

        g = g + weight_decay * p                     if weight_decay  (L2, coupled)
        b = g                                        on the first step
        b = momentum * b + (1 - dampening) * g       afterwards
        g = g + momentum * b  if nesterov  else  b   if momentum
        p = p - lr * g

    This is PyTorch's formulation (Sutskever et al., 2013, with the learning
    rate outside the buffer): the first momentum buffer is the gradient
    itself, undamped.  State per parameter: ``momentum_buffer``.

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: learning rate (default 0.01).
        momentum: momentum factor μ ≥ 0 (default 0).
        dampening: dampening of the gradient in the buffer (default 0).
        weight_decay: L2 penalty (default 0).
        nesterov: use Nesterov momentum (needs momentum > 0 and dampening 0).
        maximize: maximize the objective instead of minimizing it.
        nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see :class:`Optimizer`).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.01,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
        *,
        nonfinite: str = "raise",
    ):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults, nonfinite=nonfinite)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        for name in ("momentum", "dampening", "weight_decay"):
            _check_number(name, group[name])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "Nesterov momentum requires momentum > 0 and dampening = 0, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )

    def _update_group(self, group: dict[str, Any], pairs: list[tuple[Any, Any]]) -> None:
        # Without momentum SGD keeps no state (as PyTorch); a throwaway record serves the rule.
        if group["momentum"] != 0:
            records = []
            for p, _ in pairs:
                record = self.state.get(p)
                if record is None:
                    record = self.state[p] = F.sgd_init(p.data)
                records.append(record)
        else:
            records = [F.sgd_init(p.data) for p, _ in pairs]
        # the fused kernels (NumPy + numba, CuPy) take what they can; the same rule does the rest
        rest = _fastpath.sgd_group(pairs, records, group)
        if not rest:
            return
        hyper = {
            k: group[k]
            for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
        }
        for i in rest:
            (p, g), record = pairs[i], records[i]
            p.data, new = F.sgd_step(p.data, g, record, **hyper, inplace=True)
            record.update(new)
