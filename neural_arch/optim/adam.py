"""Adam and AdamW, as ``torch.optim.Adam`` and ``torch.optim.AdamW``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .optimizer import Optimizer, StateView
from .rule import Flag, Pair, Real, lerp, maximum, sqrt

__all__ = ["Adam", "AdamW"]


def adam(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, s, f):
    """Adam's and AdamW's update of one parameter (see :class:`Adam` for the math)."""
    if f.maximize:
        g = -g
    if f.decoupled:
        p = p * s.decay  # AdamW: p * (1 - lr * weight_decay) first
    elif f.l2:
        g = g + p * s.weight_decay
    m = lerp(exp_avg, g, s.w1, s.one_minus_w1, f.small_w1)  # beta1 * m + (1 - beta1) * g
    v = exp_avg_sq * s.beta2 + g * s.one_minus_beta2 * g
    new = {"exp_avg": m, "exp_avg_sq": v}
    if f.amsgrad:
        v = new["max_exp_avg_sq"] = maximum(max_exp_avg_sq, v)
    new["param"] = p + m * s.step_size / (sqrt(v) / s.bias_correction2_sqrt + s.eps)
    return new


def flags(group: dict[str, Any]) -> dict[str, bool]:
    """The branches of :func:`adam` for ``group``."""
    decoupled = group["decoupled_weight_decay"]
    w1 = 1.0 - group["betas"][0]
    return {
        "maximize": group["maximize"],
        "amsgrad": group["amsgrad"],
        "decoupled": decoupled and group["weight_decay"] != 0,
        "l2": not decoupled and group["weight_decay"] != 0,
        "small_w1": abs(w1) < 0.5,  # the branch torch.lerp takes
    }


def scalars(group: dict[str, Any], step: int) -> dict[str, float]:
    """The scalars of :func:`adam` for ``group`` at ``step``: bias corrections, lerp weights."""
    lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
    w1 = 1.0 - beta1
    return {
        "decay": 1.0 - lr * wd,
        "weight_decay": wd,
        "w1": w1,
        "one_minus_w1": 1.0 - w1,
        "beta2": beta2,
        "one_minus_beta2": 1.0 - beta2,
        "step_size": -lr / (1.0 - beta1**step),
        "bias_correction2_sqrt": (1.0 - beta2**step) ** 0.5,
        "eps": group["eps"],
    }


def state_spec(group: dict[str, Any]) -> frozenset[str]:
    """The state keys Adam keeps for a parameter of ``group``."""
    if group["amsgrad"]:
        return frozenset(("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
    return frozenset(("step", "exp_avg", "exp_avg_sq"))


class _DefaultBetas(tuple):
    """The default ``betas``: equal to ``(0.9, 0.999)``, but recognisable as not given."""


_DEFAULT_BETAS = _DefaultBetas((0.9, 0.999))


def _resolve_betas(betas: Any, beta1: float | None, beta2: float | None) -> tuple[float, float]:
    """``betas`` (PyTorch's spelling) reconciled with ``beta1``/``beta2`` (the seed's)."""
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    for name, given, current in (("beta1", beta1, b1), ("beta2", beta2, b2)):
        if given is not None and betas is not _DEFAULT_BETAS and given != current:
            raise ValueError(
                f"{name}={given!r} disagrees with betas={tuple(betas)!r}; give one spelling"
            )
    return (b1 if beta1 is None else beta1, b2 if beta2 is None else beta2)


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015), with optional AMSGrad (Reddi et al., 2018).

    With ``g`` the gradient (negated when ``maximize``) and ``t`` the
    parameter's step count after this step::

        g = g + weight_decay * p                      if weight_decay (L2, coupled)
        m = beta1 * m + (1 - beta1) * g               (computed as a lerp, as PyTorch)
        v = beta2 * v + (1 - beta2) * g**2
        v_max = max(v_max, v)                          if amsgrad; used in place of v
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    ``eps`` is added after the bias-corrected square root (PyTorch's and the
    paper's algorithm; Optax's ``eps_root`` and Keras's ``epsilon`` sit
    elsewhere).  State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``
    and, with amsgrad, ``max_exp_avg_sq``; :attr:`m` and :attr:`v` are
    read-only views of the moments by parameter name.

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: learning rate (default 1e-3).
        betas: the moments' decay rates (default (0.9, 0.999)); ``beta1`` and
            ``beta2`` are accepted as keywords too (giving both spellings
            with different values is a ValueError).
        eps: added to the denominator (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0), or with
            ``decoupled_weight_decay`` the decay rate of AdamW.
        amsgrad: use the maximum of past second moments.
        maximize: maximize the objective instead of minimizing it.
        decoupled_weight_decay: decay the parameter instead of adding
            ``weight_decay * p`` to the gradient: ``Adam(...,
            decoupled_weight_decay=True)`` is :class:`AdamW` (torch 2.13's
            keyword; it is a per-group option).
        nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see :class:`Optimizer`).
        master_weights: for float16/bfloat16 parameters, also keep a float32
            copy of each parameter that the updates accumulate into (see
            :class:`Optimizer`); no effect on other dtypes.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = _DEFAULT_BETAS,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        maximize: bool = False,
        *,
        decoupled_weight_decay: bool = False,
        beta1: float | None = None,
        beta2: float | None = None,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        defaults = {
            "lr": lr,
            "betas": _resolve_betas(betas, beta1, beta2),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults, nonfinite=nonfinite, master_weights=master_weights)

    @property
    def m(self) -> StateView:
        """First-moment estimates by parameter name (read-only view of ``state``)."""
        return StateView(self, "exp_avg")

    @property
    def v(self) -> StateView:
        """Second-moment estimates by parameter name (read-only view of ``state``)."""
        return StateView(self, "exp_avg_sq")

    def add_param_group(self, param_group: Any) -> None:
        """As :meth:`Optimizer.add_param_group`; a group may spell betas as beta1/beta2."""
        if isinstance(param_group, dict) and ("beta1" in param_group or "beta2" in param_group):
            group = dict(param_group)
            beta1, beta2 = group.pop("beta1", None), group.pop("beta2", None)
            if "betas" in group:
                group["betas"] = _resolve_betas(group["betas"], beta1, beta2)
            else:
                d1, d2 = self.defaults["betas"]
                group["betas"] = (d1 if beta1 is None else beta1, d2 if beta2 is None else beta2)
            param_group = group
        super().add_param_group(param_group)

    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "betas": Pair(Real(high=1.0), "beta1", "beta2"),
        "eps": Real(),
        "weight_decay": Real(),
        "amsgrad": Flag(),
        "maximize": Flag(),
        "decoupled_weight_decay": Flag(),
    }
    _rule = staticmethod(adam)
    _nonnegative_state: ClassVar[frozenset[str]] = frozenset(("exp_avg_sq", "max_exp_avg_sq"))

    def _state_spec(self, group: dict[str, Any]) -> frozenset[str]:
        return state_spec(group)

    def _flags(self, group: dict[str, Any], step: int, state: dict) -> dict[str, bool]:
        return flags(group)

    def _scalars(self, group: dict[str, Any], step: int, state: dict) -> dict[str, float]:
        return scalars(group, step)


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    AdamW is Adam with one switch: instead of adding ``weight_decay * p`` to
    the gradient, every step first shrinks the parameter::

        p = p * (1 - lr * weight_decay)

    with the group's current ``lr``, then applies Adam's update: it is
    ``Adam(..., decoupled_weight_decay=True)``, as in torch 2.13.  Default
    ``weight_decay`` 0.01 (PyTorch's).  All other arguments as :class:`Adam`.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = _DEFAULT_BETAS,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        amsgrad: bool = False,
        maximize: bool = False,
        *,
        beta1: float | None = None,
        beta2: float | None = None,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            decoupled_weight_decay=True,
            beta1=beta1,
            beta2=beta2,
            nonfinite=nonfinite,
            master_weights=master_weights,
        )
