"""Adafactor, as ``torch.optim.Adafactor`` (torch 2.13's single-tensor loop).

Adafactor is not elementwise: a parameter of two or more dimensions keeps
its second moment *factored*, as a row and a column average along its last
two dimensions, and each update is normalised by its own root mean square.
It therefore cannot be a rule (docs/adding_an_optimizer.md); it overrides
:meth:`Optimizer._update_group` and runs generic Array API code on every
backend (no fused or compiled fast path).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import array_api_compat

from ..backend import device, is_immutable, namespace
from ._precision import is_low, state_dtype, state_zeros
from .optimizer import Optimizer
from .rule import Flag, Real

__all__ = ["Adafactor"]


@dataclass(frozen=True)
class _Eps:
    """``eps``: the pair ``(eps1, eps2)``, ``eps1`` a number >= 0 or None, ``eps2`` >= 0."""

    def check(self, name: str, value: Any) -> tuple:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
            raise ValueError(f"{name} must be a pair (eps1, eps2), got {value!r}")
        eps1, eps2 = value
        if eps1 is not None:
            eps1 = Real().check(f"eps1 ({name}[0])", eps1)
        eps2 = Real().check(f"eps2 ({name}[1])", eps2)
        return (eps1, eps2)


def _norm(xp: Any, x: Any, axis: int | None = None) -> Any:
    """The 2-norm of ``x`` (over ``axis``, kept as a dimension of size 1), as ``torch.norm``."""
    linalg = getattr(xp, "linalg", None)
    if linalg is not None and hasattr(linalg, "vector_norm"):
        return linalg.vector_norm(x, axis=axis, keepdims=axis is not None)
    return xp.sqrt(xp.sum(x * x, axis=axis, keepdims=axis is not None))


def _lerp(start: Any, end: Any, weight: float) -> Any:
    """``start + weight * (end - start)``, in ``torch.lerp``'s two branches."""
    if abs(weight) < 0.5:
        return start + (end - start) * weight
    return end - (end - start) * (1.0 - weight)


def _rsqrt(xp: Any, x: Any) -> Any:
    """``1 / sqrt(x)``: torch's ``rsqrt_`` (on CPU, MKL's vdInvSqrt where torch has MKL)."""
    return 1.0 / xp.sqrt(x)


def _axpy(y: Any, alpha: float, x: Any) -> Any:
    """``y + alpha * x``: torch's ``y.add_(x, alpha=alpha)`` (which may fuse the multiply-add)."""
    return y + x * alpha


def _writable(x: Any) -> bool:
    flags = getattr(x, "flags", None)  # NumPy and CuPy
    if flags is not None:
        return bool(getattr(flags, "writeable", True))
    return array_api_compat.is_writeable_array(x)


def _store(x: Any, new: Any) -> Any:
    """``new`` written into ``x`` (kept, for mutable arrays) or ``new`` itself (JAX)."""
    if is_immutable(x):
        return new
    x[...] = new
    return x


class Adafactor(Optimizer):
    r"""Adafactor (Shazeer & Stern, 2018), as ``torch.optim.Adafactor`` in torch 2.13.

    With ``g`` the gradient (negated when ``maximize``), ``t`` the parameter's
    step count after this step, ``n`` its number of elements and ``RMS(x) =
    norm(x) / sqrt(numel(x))``::

        w     = t ** beta2_decay                          (1 - beta2_t)
        rho   = min(lr, 1 / sqrt(t))
        alpha = max(eps2, RMS(p)) * rho                   (p before the decay)
        p     = p * (1 - lr * weight_decay)               if weight_decay
        # p of 2 or more dimensions: factored over the last two (m rows, k columns)
        row_var = lerp(row_var, norm(g, dim=-1)**2 / k, w)       shape (..., m, 1)
        col_var = lerp(col_var, norm(g, dim=-2)**2 / m, w)       shape (..., 1, k)
        v = row_var * col_var / max(mean(row_var, dim=-2), eps1)
        # p of 0 or 1 dimensions:
        variance = lerp(variance, g * g, w);  v = variance
        u = g * (1 / sqrt(max(v, eps1**2)))
        p = p - alpha / max(1, RMS(u) / d) * u

    in torch's order of operations.  ``lerp`` takes ``torch.lerp``'s two
    branches (at ``|w| = 0.5``).  ``eps1=None`` (the default) is the machine
    epsilon of the dtype of the group's first parameter that has a gradient,
    and that value then serves the whole group (torch's loop does the same).
    Against torch's CPU kernels the result differs in the last bits only:
    torch fuses the multiply-adds of ``lerp_`` and ``add_(alpha=)`` and
    computes ``rsqrt_`` with MKL, which the Array API cannot reproduce.

    Where others differ: the paper (and Optax's ``adafactor``, Keras's
    ``Adafactor``, Hugging Face's) adds ``eps1`` (1e-30) to the squared
    gradient before the row and column averages; torch (and this class)
    leaves the factors alone and applies ``eps1`` as floors in ``v`` and
    ``u``, and uses averages (not sums) of squares.  The paper and Hugging
    Face cap the relative step at 1e-2 (``min(1e-2, 1/sqrt(t))``), torch and
    Keras at ``lr``.  torch decays the weights by ``lr * weight_decay``
    (decoupled, as AdamW).  Optax factors only dimensions of at least 128;
    Optax and Hugging Face offer momentum (``beta1``), torch and Keras none.

    Not a rule: the factored moments and the per-parameter norms are not
    elementwise, so this optimizer overrides ``_update_group`` and runs
    generic Array API code on every backend (in place on mutable arrays,
    new arrays bound on JAX), with no compiled fast path.

    State per parameter (torch's keys and shapes): ``step``; for a
    parameter of 2 or more dimensions ``row_var`` (its shape with the last
    dimension 1) and ``col_var`` (its shape with the second-to-last
    dimension 1); otherwise ``variance`` (its shape).

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: cap on the relative step size and weight-decay rate (default 1e-2).
        beta2_decay: exponent of ``t`` in the second-moment weight, <= 0
            (default -0.8).
        eps: ``(eps1, eps2)``: the floor of the variance estimate (None: the
            dtype's machine epsilon) and of the parameter's RMS in the step
            size (default ``(None, 1e-3)``).
        d: the update clipping threshold, >= 1 (default 1.0).
        weight_decay: decoupled weight-decay coefficient (default 0).
        maximize: maximize the objective instead of minimizing it.
        nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see :class:`Optimizer`).
        master_weights: for float16/bfloat16 parameters, also keep a float32
            copy of each parameter that the updates accumulate into (see
            :class:`Optimizer`); no effect on other dtypes.
    """

    _nonnegative_state: ClassVar[frozenset[str]] = frozenset(("row_var", "col_var", "variance"))
    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "beta2_decay": Real(low=-math.inf, high=0.0, closed=True),
        "eps": _Eps(),
        "d": Real(low=1.0),
        "weight_decay": Real(),
        "maximize": Flag(),
    }

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        defaults = {
            "lr": lr,
            "beta2_decay": beta2_decay,
            "eps": eps,
            "d": d,
            "weight_decay": weight_decay,
            "maximize": maximize,
        }
        super().__init__(params, defaults, nonfinite=nonfinite, master_weights=master_weights)

    # ------------------------------------------------------------ state

    def _state_shape(self, key: str, p: Any) -> tuple[int, ...]:
        shape = list(p.data.shape)
        if key == "row_var" and len(shape) > 1:
            shape[-1] = 1
        elif key == "col_var" and len(shape) > 1:
            shape[-2] = 1
        return tuple(shape)

    def _convert_record(self, record: Mapping[str, Any], p: Any, name: Any) -> dict[str, Any]:
        out = super()._convert_record(record, p, name)
        if out:
            factored = len(p.data.shape) > 1
            expected = {"step", "row_var", "col_var"} if factored else {"step", "variance"}
            if set(out) - {"master_param"} != expected:
                raise ValueError(
                    f"loaded state of parameter {name!r} (shape {tuple(p.data.shape)}) has "
                    f"keys {sorted(out)}; Adafactor keeps {sorted(expected)} for it"
                )
            for key in expected - {"step"}:
                if out[key] is None or not array_api_compat.is_array_api_obj(out[key]):
                    raise ValueError(
                        f"loaded state {key!r} of parameter {name!r} is {out[key]!r:.60}, "
                        "not an array"
                    )
            step = out["step"]
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ValueError(
                    f"loaded state 'step' of parameter {name!r} is {step!r}; "
                    "expected an integer >= 0"
                )
        return out

    def _init_record(self, p: Any, record: dict[str, Any]) -> None:
        xp, data = namespace(p.data), p.data
        record["step"] = 0
        shape = tuple(data.shape)
        if len(shape) > 1:
            for key in ("row_var", "col_var"):
                record[key] = xp.zeros(
                    self._state_shape(key, p),
                    dtype=state_dtype(xp, data.dtype),
                    device=device(data),
                )
        else:
            record["variance"] = state_zeros(xp, data)

    # ------------------------------------------------------------- step

    def _update_group(self, group: dict[str, Any], pairs: list[tuple[Any, Any]]) -> None:
        """Torch's ``_single_tensor_adafactor`` on each (parameter, gradient) pair, in order."""
        lr, beta2_decay, d = group["lr"], group["beta2_decay"], group["d"]
        weight_decay, maximize = group["weight_decay"], group["maximize"]
        eps1, eps2 = group["eps"]
        for p, g in pairs:
            stored = data = p.data
            xp = namespace(data)
            record = self.state[p]
            if not record:
                self._init_record(p, record)
            master = None
            if is_low(data.dtype):  # float16/bfloat16: computed in float32
                if self.master_weights:
                    master = record.get("master_param")
                    if master is None:
                        master = record["master_param"] = xp.astype(data, xp.float32)
                data = master if master is not None else xp.astype(data, xp.float32)
            if g.dtype != data.dtype:
                g = xp.astype(g, data.dtype)
            grad = -g if maximize else g
            if eps1 is None:  # as torch: the first parameter's dtype decides for the group
                eps1 = float(xp.finfo(data.dtype).eps)

            step = record["step"] + 1
            step_float = float(step)
            numel = math.prod(data.shape)
            one_minus_beta2_t = step_float**beta2_decay
            rho_t = min(lr, 1 / (step_float**0.5))
            alpha = max(eps2, float(_norm(xp, data)) / (numel**0.5)) * rho_t

            new = data * (1 - lr * weight_decay) if weight_decay != 0 else data

            if len(grad.shape) > 1:
                row_mean = _norm(xp, grad, axis=-1)
                row_mean = row_mean * row_mean / grad.shape[-1]
                row_var = _lerp(record["row_var"], row_mean, one_minus_beta2_t)
                col_mean = _norm(xp, grad, axis=-2)
                col_mean = col_mean * col_mean / grad.shape[-2]
                col_var = _lerp(record["col_var"], col_mean, one_minus_beta2_t)
                var_estimate = row_var * col_var  # torch's row_var @ col_var: inner size 1
                row_floor = xp.mean(row_var, axis=-2, keepdims=True)
                var_estimate = var_estimate / xp.clip(row_floor, min=eps1)
                states = {"row_var": row_var, "col_var": col_var}
            else:
                variance = _lerp(record["variance"], grad * grad, one_minus_beta2_t)
                var_estimate = variance
                states = {"variance": variance}

            update = _rsqrt(xp, xp.clip(var_estimate, min=eps1 * eps1))
            update = update * grad
            denom = max(1.0, float(_norm(xp, update)) / ((numel**0.5) * d))
            new = _axpy(new, -alpha / denom, update)

            if master is not None:
                record["master_param"] = _store(master, new)
            if stored is not data:
                new = xp.astype(new, stored.dtype)
            p.data = _store(stored, new)
            for key, value in states.items():
                record[key] = _store(record[key], value)
            record["step"] = step
