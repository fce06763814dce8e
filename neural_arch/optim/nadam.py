"""NAdam (Adam with Nesterov momentum), as ``torch.optim.NAdam``."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, ClassVar

from ..backend import namespace
from ._precision import state_zeros
from .adam import Adam
from .optimizer import Optimizer
from .rule import Flag, Real, lerp, sqrt

__all__ = ["NAdam"]


def nadam(p, g, exp_avg, exp_avg_sq, *, s, f):
    """NAdam's update of one parameter (see :class:`NAdam` for the math)."""
    if f.maximize:
        g = -g
    if f.decoupled:
        p = p * s.decay  # NAdamW: p * (1 - lr * weight_decay) first
    elif f.l2:
        g = g + p * s.weight_decay
    m = lerp(exp_avg, g, s.w1, s.one_minus_w1, f.small_w1)  # beta1 * m + (1 - beta1) * g
    v = exp_avg_sq * s.beta2 + g * s.one_minus_beta2 * g
    denom = sqrt(v / s.bias_correction2) + s.eps
    p = p + g * s.grad_coef / denom  # torch: param.addcdiv_(grad, denom, value=...)
    p = p + m * s.exp_avg_coef / denom  # then param.addcdiv_(exp_avg, denom, value=...)
    return {"exp_avg": m, "exp_avg_sq": v, "param": p}


def float32(x: float) -> float:
    """``x`` (a number in float32's range) rounded to the nearest float32, as torch rounds it."""
    return struct.unpack("f", struct.pack("f", x))[0]


def momentum_cache(beta1: float, momentum_decay: float, t: float) -> float:
    """mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay)), as torch computes it."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (t * momentum_decay)))


class NAdam(Optimizer):
    r"""NAdam: Adam with Nesterov momentum (Dozat, 2016), as ``torch.optim.NAdam``.

    With ``g`` the gradient (negated when ``maximize``), ``t`` the parameter's
    step count after this step and ``psi = momentum_decay``::

        p = p * (1 - lr * weight_decay)           if weight_decay and decoupled_weight_decay
        g = g + weight_decay * p                   if weight_decay, otherwise (L2, coupled)
        mu_t      = beta1 * (1 - 0.5 * 0.96 ** (t * psi))
        mu_{t+1}  = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
        mu_product = mu_product * mu_t            (prod of mu_1 .. mu_t, kept in float32)
        m = beta1 * m + (1 - beta1) * g           (computed as a lerp, as PyTorch)
        v = beta2 * v + (1 - beta2) * g**2
        denom = sqrt(v / (1 - beta2**t)) + eps
        p = p - lr * (1 - mu_t) / (1 - mu_product) * g / denom
        p = p - lr * mu_{t+1} / (1 - mu_product * mu_{t+1}) * m / denom

    This is PyTorch's algorithm, operation for operation: the momentum
    schedule ``mu_t`` with its 0.96 base and ``momentum_decay`` (``psi``,
    default 4e-3) comes from the paper (Dozat, 2016, "Incorporating Nesterov
    Momentum into Adam"); ``decoupled_weight_decay`` gives NAdamW.  Like
    PyTorch, ``mu_product`` is rounded to float32 after every step (torch
    keeps it as a float32 0-d tensor under its default dtype).  Two torch
    behaviours are not followed: under ``torch.set_default_dtype(float64)``
    torch keeps ``mu_product`` in float64, and a torch optimizer that has
    *loaded* a state dict casts it to the parameter's dtype; we always round
    to float32, as a fresh torch optimizer under the default dtype does.
    ``eps`` is added after the bias-corrected square root, as in torch.
    Elsewhere: Optax's ``nadam`` (Adam with ``nesterov=True``) uses
    a constant ``beta1`` (no ``mu_t`` schedule, no ``mu_product``); Keras's
    ``Nadam`` uses ``0.96 ** t`` (``momentum_decay`` fixed at 1, not
    4e-3), keeps ``u_product`` in the variables' dtype and defaults to
    ``epsilon=1e-7``.  Their trajectories differ from this one.

    State per parameter (torch's keys, so torch state dicts load): ``step``,
    ``mu_product`` (a Python float; a 0-d tensor in torch), ``exp_avg`` and
    ``exp_avg_sq``.

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: learning rate (default 2e-3).
        betas: the moments' decay rates (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0), or with
            ``decoupled_weight_decay`` the decay rate of NAdamW.
        momentum_decay: ``psi`` of the momentum schedule (default 4e-3).
        decoupled_weight_decay: decay the parameter instead of adding
            ``weight_decay * p`` to the gradient (NAdamW).
        maximize: maximize the objective instead of minimizing it.
        nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see :class:`Optimizer`).
        master_weights: for float16/bfloat16 parameters, also keep a float32
            copy of each parameter that the updates accumulate into (see
            :class:`Optimizer`); no effect on other dtypes.

    ``betas[0]`` and ``momentum_decay`` together must keep ``mu_1`` below 1
    in float32 (else torch divides by ``1 - mu_product = 0`` on the first
    step): only ``beta1 >= 1 - 2**-25`` with a ``momentum_decay`` of about
    400 or more is refused for that.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        maximize: bool = False,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum_decay": momentum_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize,
        }
        super().__init__(params, defaults, nonfinite=nonfinite, master_weights=master_weights)

    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "betas": Adam.hyper["betas"],
        "eps": Real(),
        "weight_decay": Real(),
        "momentum_decay": Real(),
        "decoupled_weight_decay": Flag(),
        "maximize": Flag(),
    }
    _rule = staticmethod(nadam)
    _nonnegative_state: ClassVar[frozenset[str]] = frozenset(("exp_avg_sq",))
    _scalar_state: ClassVar[tuple[str, ...]] = ("mu_product",)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        beta1, psi = group["betas"][0], group["momentum_decay"]
        if float32(momentum_cache(beta1, psi, 1.0)) >= 1.0:
            raise ValueError(
                f"Invalid betas[0] with momentum_decay: beta1={beta1!r}, momentum_decay={psi!r} "
                "make the first momentum factor mu_1 round to 1.0 in float32, where "
                "mu_product is kept, and 1 - mu_product (a divisor) zero"
            )

    def _state_spec(self, group: dict[str, Any]) -> frozenset[str]:
        return frozenset(("step", "mu_product", "exp_avg", "exp_avg_sq"))

    def _init_state(self, p: Any, group: dict[str, Any], record: dict[str, Any]) -> None:
        xp = namespace(p.data)
        record.setdefault("step", 0)  # torch's order of keys
        record.setdefault("mu_product", 1.0)
        for key in ("exp_avg", "exp_avg_sq"):
            if record.get(key) is None:
                record[key] = state_zeros(xp, p.data)

    def _convert_record(self, record: Mapping[str, Any], p: Any, name: Any) -> dict[str, Any]:
        out = super()._convert_record(record, p, name)
        if "mu_product" in out:
            mu_product = out["mu_product"]
            if not 0.0 <= mu_product <= 1.0 or (mu_product == 1.0 and out.get("step", 0) != 0):
                raise ValueError(
                    f"loaded state 'mu_product' of parameter {name!r} is {mu_product!r}; "
                    "expected a number in [0, 1], and below 1 after the first step"
                )
        return out

    def _flags(self, group: dict[str, Any], step: int, state: dict) -> dict[str, bool]:
        decoupled = group["decoupled_weight_decay"]
        return {
            "maximize": group["maximize"],
            "decoupled": decoupled and group["weight_decay"] != 0,
            "l2": not decoupled and group["weight_decay"] != 0,
            "small_w1": abs(1.0 - group["betas"][0]) < 0.5,  # the branch torch.lerp takes
        }

    def _scalars(self, group: dict[str, Any], step: int, state: dict) -> dict[str, float]:
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        psi = group["momentum_decay"]
        t = float(step)  # torch's step is a float tensor, read with .item()
        mu = momentum_cache(beta1, psi, t)
        mu_next = momentum_cache(beta1, psi, t + 1)
        # torch: mu_product *= mu, on a float32 0-d tensor (mu rounded to float32 first;
        # the product of two float32 numbers is exact in a double, then rounded once)
        mu_product = float32(state["mu_product"] * float32(mu))
        state["mu_product"] = mu_product
        mu_product_next = mu_product * mu_next
        w1 = 1.0 - beta1
        return {
            "decay": 1 - lr * wd,
            "weight_decay": wd,
            "w1": w1,
            "one_minus_w1": 1.0 - w1,
            "beta2": beta2,
            "one_minus_beta2": 1 - beta2,
            "bias_correction2": 1 - beta2**t,
            "eps": group["eps"],
            "grad_coef": -lr * (1.0 - mu) / (1.0 - mu_product),
            "exp_avg_coef": (-lr * mu_next) / (1.0 - mu_product_next),
        }
