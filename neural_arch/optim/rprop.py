"""Resilient backpropagation, as ``torch.optim.Rprop``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ..backend import namespace
from ._precision import state_full, state_zeros
from .optimizer import Optimizer
from .rule import Flag, Pair, Real, maximum, minimum, sign, where

__all__ = ["Rprop"]


def rprop(p, g, prev, step_size, *, s, f):
    """Rprop's update of one parameter (see :class:`Rprop` for the math)."""
    if f.maximize:
        g = -g
    factor = sign(g * prev)  # torch: grad.mul(prev).sign()
    factor = where(factor > s.zero, s.etaplus, factor)  # sign[sign.gt(0)] = etaplus
    factor = where(factor < s.zero, s.etaminus, factor)  # sign[sign.lt(0)] = etaminus
    factor = where(factor == s.zero, s.one, factor)  # sign[sign.eq(0)] = 1
    # torch: step_size.mul_(sign).clamp_(step_size_min, step_size_max)
    step_size = minimum(maximum(step_size * factor, s.step_size_min), s.step_size_max)
    g = where(factor == s.etaminus, s.zero, g)  # torch: grad[sign.eq(etaminus)] = 0
    # torch: param.addcmul_(grad.sign(), step_size, value=-1)
    p = p + s.neg_one * sign(g) * step_size
    return {"param": p, "prev": g, "step_size": step_size}


class Rprop(Optimizer):
    r"""Resilient backpropagation (Riedmiller & Braun, 1993), as ``torch.optim.Rprop``.

    Each element keeps its own step size, grown while its gradient keeps its
    sign and shrunk when the sign flips; only the gradient's sign moves the
    parameter.  With ``g`` the gradient (negated when ``maximize``) and
    ``prev`` the gradient remembered from the last step, elementwise::

        factor = etaplus if g * prev > 0, etaminus if g * prev < 0, else 1
        step_size = min(max(step_size * factor, step_size_min), step_size_max)
        g = 0                                      where g * prev < 0
        p = p - sign(g) * step_size
        prev = g

    This is PyTorch's algorithm, operation for operation: the factor is the
    sign of ``g * prev`` with its values replaced by ``etaplus``, then
    ``etaminus``, then 1; the step size is multiplied by it and clamped to
    ``[step_size_min, step_size_max]``; the gradient is zeroed where the
    factor equals ``etaminus`` (a sign flip: no move, and no flip counted on
    the next step; the variant Igel & Hüsken, 2000, call iRprop-).
    ``step_size`` starts at ``lr`` for every element; ``lr`` is used only
    then (changing a group's ``lr`` later, e.g. by a scheduler, has no effect
    on a parameter that has taken a step, as in torch).  The paper is
    Riedmiller & Braun, "A direct adaptive method for faster backpropagation
    learning: the RPROP algorithm" (ICNN 1993), whose original variant also
    undoes the previous step on a sign flip (weight-backtracking); Optax's
    and Keras's optimizers include no Rprop.

    State per parameter (torch's keys, so torch state dicts load): ``step``,
    ``prev`` (zeros at the start) and ``step_size`` (``lr`` at the start).

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: the initial step size of every element (default 1e-2).
        etas: ``(etaminus, etaplus)``, the factors that shrink and grow a step
            size, ``0 < etaminus < 1 < etaplus`` (default (0.5, 1.2)).
        step_sizes: ``(step_size_min, step_size_max)``, the bounds of a step
            size, ``0 <= step_size_min <= step_size_max`` (default (1e-6, 50)).
        maximize: maximize the objective instead of minimizing it.
        nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see :class:`Optimizer`).
        master_weights: for float16/bfloat16 parameters, also keep a float32
            copy of each parameter that the updates accumulate into (see
            :class:`Optimizer`); no effect on other dtypes.

    torch checks only ``lr`` and ``etas``; ``step_sizes`` in the wrong order
    (which torch's clamp turns into every step size equal to
    ``step_size_max``) or negative is refused here.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        maximize: bool = False,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        defaults = {"lr": lr, "etas": etas, "step_sizes": step_sizes, "maximize": maximize}
        super().__init__(params, defaults, nonfinite=nonfinite, master_weights=master_weights)

    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "etas": Pair(Real(), "etaminus", "etaplus"),
        "step_sizes": Pair(Real(), "step_size_min", "step_size_max"),
        "maximize": Flag(),
    }
    _rule = staticmethod(rprop)
    _nonnegative_state: ClassVar[frozenset[str]] = frozenset(("step_size",))

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        etaminus, etaplus = group["etas"]
        if not 0 < etaminus < 1:
            raise ValueError(
                f"Invalid etaminus (etas[0]): {etaminus!r} (expected a number in (0, 1))"
            )
        if not etaplus > 1:
            raise ValueError(f"Invalid etaplus (etas[1]): {etaplus!r} (expected a number > 1)")
        low, high = group["step_sizes"]
        if low > high:
            raise ValueError(
                f"Invalid step_sizes: {group['step_sizes']!r} (expected step_size_min "
                "<= step_size_max)"
            )

    def _state_spec(self, group: dict[str, Any]) -> frozenset[str]:
        return frozenset(("step", "prev", "step_size"))

    def _init_state(self, p: Any, group: dict[str, Any], record: dict[str, Any]) -> None:
        xp = namespace(p.data)
        record.setdefault("step", 0)  # torch's order: step, prev, step_size
        if record.get("prev") is None:
            record["prev"] = state_zeros(xp, p.data)
        if record.get("step_size") is None:
            record["step_size"] = state_full(xp, p.data, float(group["lr"]))

    def _flags(self, group: dict[str, Any], step: int, state: dict) -> dict[str, bool]:
        return {"maximize": group["maximize"]}

    def _scalars(self, group: dict[str, Any], step: int, state: dict) -> dict[str, float]:
        (etaminus, etaplus), (low, high) = group["etas"], group["step_sizes"]
        return {
            "zero": 0.0,
            "one": 1.0,
            "neg_one": -1.0,
            "etaplus": etaplus,
            "etaminus": etaminus,
            "step_size_min": low,
            "step_size_max": high,
        }
