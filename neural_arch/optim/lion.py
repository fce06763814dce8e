"""Lion (evolved sign momentum), the rule of its authors' reference implementation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .adam import Adam
from .optimizer import Optimizer
from .rule import Real, sign

__all__ = ["Lion"]


def lion(p, g, exp_avg, *, s, f):
    """Lion's update of one parameter (see :class:`Lion` for the math)."""
    if f.decay:
        p = p * s.decay  # p.data.mul_(1 - lr * weight_decay)
    update = sign(exp_avg * s.beta1 + g * s.one_minus_beta1)  # a multiply and an add, no lerp
    p = p + update * s.neg_lr  # p.add_(update, alpha=-lr)
    m = exp_avg * s.beta2 + g * s.one_minus_beta2  # exp_avg.mul_(beta2).add_(grad, 1 - beta2)
    return {"param": p, "exp_avg": m}


class Lion(Optimizer):
    r"""Lion, the sign of an interpolated momentum (Chen et al., 2023).

    With ``g`` the gradient and ``m`` the momentum (zeros at the start)::

        p = p * (1 - lr * weight_decay)                   (decoupled weight decay)
        p = p - lr * sign(beta1 * m + (1 - beta1) * g)
        m = beta2 * m + (1 - beta2) * g

    Every element moves by exactly ``lr`` (or not at all, where the
    interpolation is zero), so Lion wants a learning rate 3-10 times smaller
    than AdamW's and a weight decay 3-10 times larger (the authors' advice).
    The paper is Chen et al., "Symbolic Discovery of Optimization
    Algorithms" (NeurIPS 2023, arXiv:2302.06675).  This is the rule of the
    authors' PyTorch reference (google/automl ``lion/lion_pytorch.py``, also
    lucidrains/lion-pytorch) operation for operation: the decay first, with
    the group's current ``lr``; both interpolations as a multiply and an add
    (``m * beta1 + g * (1 - beta1)``, not ``torch.lerp``, which rounds
    differently); the momentum updated after the parameter.  The paper's
    pseudo-code writes the decay inside the update, ``p - lr * (sign(c) +
    weight_decay * p)``: the same step in exact arithmetic, rounded
    differently.  torch.optim has no Lion.  Optax's ``lion`` adds the decay
    to the signed update as the paper writes it, and its default
    ``weight_decay`` is 1e-3; Keras's ``Lion`` defaults to a learning rate of
    1e-3 and no weight decay.  Lion has no ``maximize`` (neither has the
    reference): negate the gradient to maximize.

    State per parameter: ``exp_avg`` (the reference's key), no step count.

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: learning rate (default 1e-4).
        betas: ``(beta1, beta2)``, the interpolation weight of the update and
            the momentum's decay rate, each in [0, 1) (default (0.9, 0.99)).
        weight_decay: decoupled weight decay rate (default 0).
        nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see :class:`Optimizer`).
        master_weights: for float16/bfloat16 parameters, also keep a float32
            copy of each parameter that the updates accumulate into (see
            :class:`Optimizer`); no effect on other dtypes.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay}
        super().__init__(params, defaults, nonfinite=nonfinite, master_weights=master_weights)

    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "betas": Adam.hyper["betas"],
        "weight_decay": Real(),
    }
    _rule = staticmethod(lion)

    def _state_spec(self, group: dict[str, Any]) -> frozenset[str]:
        return frozenset(("exp_avg",))

    def _flags(self, group: dict[str, Any], step: None, state: dict) -> dict[str, bool]:
        # multiplying by 1 - lr * 0 = 1 changes no bit: the reference's decay is skipped then
        return {"decay": group["weight_decay"] != 0}

    def _scalars(self, group: dict[str, Any], step: None, state: dict) -> dict[str, float]:
        lr, (beta1, beta2) = group["lr"], group["betas"]
        return {
            "decay": 1 - lr * group["weight_decay"],
            "beta1": beta1,
            "one_minus_beta1": 1 - beta1,
            "neg_lr": -lr,
            "beta2": beta2,
            "one_minus_beta2": 1 - beta2,
        }
