"""Schedule-free AdamW and SGD (Defazio et al., 2024), as the authors' ``schedulefree`` package.

The step is elementwise once its per-group scalars are known, so each
optimizer is a rule (run by the generic engine and the generated fast
paths); what is particular to schedule-free learning lives in the class
beside it: the per-group counters (``k``, ``lr_max``, ``weight_sum``,
``scheduled_lr``, kept in the group dict as the reference keeps them) and
the ``train()`` / ``eval()`` switch between the two points the method
keeps.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import array_api_compat

from ..backend import backend_name, device, is_immutable, namespace
from ._engine import _writable
from ._precision import is_low, state_dtype
from .optimizer import Optimizer
from .rule import Flag, Pair, Real, lerp, sqrt

__all__ = ["AdamWScheduleFree", "SGDScheduleFree"]


def sgd_schedulefree(p, g, z, *, s, f):
    """Schedule-free SGD's step of one parameter (see :class:`SGDScheduleFree`)."""
    if f.decay:
        g = g + p * s.weight_decay  # the decay is taken at y, the point held in training
    y = lerp(p, z, s.ckp1, s.one_minus_ckp1, f.small_ckp1)  # y moves with x towards z ...
    y = y + g * s.y_step  # ... and by lr * (beta * (1 - ckp1) - 1) along the step
    return {"param": y, "z": z + g * s.neg_lr}


def adamw_schedulefree(p, g, z, exp_avg_sq, *, s, f):
    """Schedule-free AdamW's step: schedule-free SGD on the Adam-normalised gradient."""
    v = exp_avg_sq * s.beta2 + g * s.one_minus_beta2 * g
    u = g / (sqrt(v / s.bias_correction2) + s.eps)
    return {**sgd_schedulefree(p, u, z, s=s, f=f), "exp_avg_sq": v}


@dataclass(frozen=True)
class Count:
    """An integer >= 0 (a Python or NumPy integer, not a bool): ``warmup_steps``, ``k``."""

    def check(self, name: str, value: Any) -> int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0:
            return int(value)
        raise ValueError(f"Invalid {name}: {value!r:.60} (expected an integer >= 0)")


def schedule(group: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """``(lr, lr_max, weight_sum, ckp1)`` of the group's next step, as the reference computes them.

    Raises ValueError when the average's weight ``(k+1)**r * lr_max**weight_lr_power``
    or the sum of weights is not a finite float (too large an ``r``, ``lr`` or power).
    """
    k, warmup = group["k"], group["warmup_steps"]
    try:
        lr = group["lr"] * ((k + 1) / warmup if k < warmup else 1.0)
        lr_max = max(lr, group["lr_max"])
        weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
        weight_sum = group["weight_sum"] + weight
    except OverflowError:
        weight = weight_sum = math.inf
    if not (math.isfinite(weight) and math.isfinite(weight_sum)):
        raise ValueError(
            f"the weight of step {k + 1} in the average, (k+1)**r * lr_max**weight_lr_power "
            f"with r={group['r']!r}, lr_max={max(group['lr'], group['lr_max'])!r}, "
            f"weight_lr_power={group['weight_lr_power']!r}, or the sum of weights overflows; "
            "use a smaller r, lr or weight_lr_power"
        )
    ckp1 = weight / weight_sum if weight_sum != 0 else 0.0  # the reference's ZeroDivisionError
    return float(lr), float(lr_max), float(weight_sum), float(ckp1)


class _ScheduleFree(Optimizer):
    """What both schedule-free optimizers share: counters, the mode check, train()/eval()."""

    #: the name of the interpolation weight between x and z in messages
    _beta_name: ClassVar[str]
    _counters: ClassVar[Mapping[str, Any]] = {
        "k": Count(),
        "train_mode": Flag(),
        "weight_sum": Real(),
        "lr_max": Real(low=-1.0),  # -1 before the first step
        "scheduled_lr": Real(),
    }
    _optional_hyper: ClassVar[frozenset[str]] = Optimizer._optional_hyper | {"scheduled_lr"}

    @staticmethod
    def _start(hyper: dict[str, Any], weight_lr_power: float, weight_decay: float) -> dict:
        """The defaults with the counters' starting values, in the reference's order of keys."""
        warmup_steps = hyper.pop("warmup_steps")
        return {
            **hyper,
            "k": 0,
            "warmup_steps": warmup_steps,
            "train_mode": False,
            "weight_sum": 0.0,
            "lr_max": -1.0,
            "scheduled_lr": 0.0,
            "weight_lr_power": weight_lr_power,
            "weight_decay": weight_decay,
        }

    @property
    def train_mode(self) -> bool:
        """Whether every group is in train mode (the parameters hold y); see :meth:`train`."""
        return all(group["train_mode"] is True for group in self.param_groups)

    def add_param_group(self, param_group: Any) -> None:
        """As :meth:`Optimizer.add_param_group`; a later group takes the optimizer's mode.

        Its parameters have no state yet, so they are the same point in both
        modes (the reference gives a later group eval mode, which its
        ``eval()`` and ``train()`` then skip).
        """
        later = self.param_groups and isinstance(param_group, Mapping)
        if later and "train_mode" not in param_group:
            param_group = {**param_group, "train_mode": self.param_groups[0]["train_mode"]}
        super().add_param_group(param_group)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        beta = self._beta(group)
        if beta == 0:
            raise ValueError(
                f"Invalid {self._beta_name}: {beta!r} (expected a number in (0, 1): eval() "
                "divides by it)"
            )
        schedule(group)

    # ------------------------------------------------------------ the step

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step at y; RuntimeError, before ``closure`` runs, unless in train mode."""
        for i, group in enumerate(self.param_groups):
            mode = Flag().check(f"param_groups[{i}]['train_mode']", group.get("train_mode"))
            if not mode:
                raise RuntimeError(
                    f"{type(self).__name__}.step() was called in eval mode "
                    f"(param_groups[{i}]['train_mode'] is False): call optimizer.train() "
                    "before training steps (and optimizer.eval() before evaluating or saving "
                    "the model); nothing was changed"
                )
        return super().step(closure)

    def _init_state(self, p: Any, group: dict[str, Any], record: dict[str, Any]) -> None:
        """``z`` starts at the parameter (the reference's clone), other state at zeros."""
        if record.get("z") is None:
            xp = namespace(p.data)
            record["z"] = xp.astype(p.data, state_dtype(xp, p.data.dtype), copy=True)
        super()._init_state(p, group, record)

    def _update_group(self, group: dict[str, Any], pairs: list[tuple[Any, Any]]) -> None:
        lr, lr_max, weight_sum, _ = schedule(group)
        super()._update_group(group, pairs)
        group.update(scheduled_lr=lr, lr_max=lr_max, weight_sum=weight_sum, k=group["k"] + 1)

    def _flags(self, group: dict[str, Any], step: None, state: dict) -> dict[str, bool]:
        return {"decay": group["weight_decay"] != 0, "small_ckp1": abs(schedule(group)[3]) < 0.5}

    def _scalars(self, group: dict[str, Any], step: None, state: dict) -> dict[str, float]:
        lr, _, _, ckp1 = schedule(group)
        return {
            "weight_decay": group["weight_decay"],
            "ckp1": ckp1,
            "one_minus_ckp1": 1.0 - ckp1,
            "y_step": lr * (self._beta(group) * (1 - ckp1) - 1),
            "neg_lr": -lr,
        }

    # ------------------------------------------------------------ state dicts

    def _check_loaded_record(self, record: dict, p: Any, group: dict, name: Any) -> None:
        required = self._state_spec(group)
        allowed = required | {"master_param"} | (set() if group["train_mode"] else {"y"})
        unknown = sorted(set(record) - allowed)
        if unknown:
            why = " (it keeps 'y' only in eval mode)" if "y" in unknown else ""
            raise ValueError(
                f"loaded state of parameter {name!r} has {', '.join(map(repr, unknown))}, "
                f"which {type(self).__name__} does not keep{why}: is it another optimizer's "
                "state dict?"
            )
        missing = sorted(k for k in required if record.get(k) is None)
        if missing:
            raise ValueError(
                f"loaded state of parameter {name!r} lacks {', '.join(map(repr, missing))}"
            )

    # ------------------------------------------------------------ train / eval

    def eval(self) -> None:
        """Set every parameter to x, the averaged point to evaluate (and save for inference).

        ``x = lerp(y, z, 1 - 1/beta)``; y is kept (state ``"y"``, or the
        float32 master copy) so that :meth:`train` restores it bit for bit.
        A no-op for groups already in eval mode.
        """
        self._switch(to_train=False)

    def train(self) -> None:
        """Set every parameter to y, the point where gradients are taken; needed before step().

        Restores the y that :meth:`eval` kept, bit for bit, when the
        parameters still hold the x it wrote; if they were changed in eval
        mode, ``y = lerp(x, z, 1 - beta)`` from them (the reference's formula).
        A no-op for groups already in train mode.
        """
        self._switch(to_train=True)

    def _switch(self, *, to_train: bool) -> None:
        jobs = []  # checked first: nothing is changed unless every parameter can be
        for gi, group in enumerate(self.param_groups):
            if Flag().check(f"param_groups[{gi}]['train_mode']", group["train_mode"]) == to_train:
                continue
            jobs.append((group, [p for i, p in enumerate(group["params"]) if self._can(gi, i, p)]))
        changed = []
        for group, params in jobs:
            beta = self._beta(group)
            for p in params:
                self._move(p, self.state[p], beta, to_train)
                changed.append((p, None))
            group["train_mode"] = to_train
        self._bump_versions([(None, changed)])

    def _can(self, gi: int, i: int, p: Any) -> bool:
        """Whether ``p`` has state to move by; raises for what would fail half way."""
        record = self.state.get(p)
        if not record or record.get("z") is None:
            return False  # no step yet: x = y = z
        where = f"parameter {self._names.get(id(p), i)!r} (param_groups[{gi}]['params'][{i}])"
        x = p.data
        if not array_api_compat.is_array_api_obj(x):
            raise TypeError(f"{where} has .data of type {type(x).__name__}, not an array")
        xp = namespace(x)
        if not (is_low(x.dtype) or xp.isdtype(x.dtype, "real floating")):
            raise TypeError(f"{where} has dtype {x.dtype}, not a real floating dtype")
        if not _writable(x) and not is_immutable(x):
            raise ValueError(f"{where} is a read-only array; train()/eval() write into it")
        for key in ("z", "y", "master_param"):
            value = record.get(key)
            if value is None:
                continue
            if not array_api_compat.is_array_api_obj(value) or namespace(value) is not xp:
                raise TypeError(f"state {key!r} of {where} is not an array of {backend_name(xp)}")
            if tuple(value.shape) != tuple(x.shape) or device(value) != device(x):
                raise ValueError(
                    f"state {key!r} of {where} has shape {tuple(value.shape)} on "
                    f"{device(value)}, but the parameter has shape {tuple(x.shape)} on "
                    f"{device(x)}"
                )
        return True

    def _move(self, p: Any, record: dict, beta: float, to_train: bool) -> None:
        """Write x (eval) or y (train) into ``p``, computed in its state dtype."""
        x = p.data
        xp = namespace(x)
        compute = state_dtype(xp, x.dtype)
        z = record["z"] if record["z"].dtype == compute else xp.astype(record["z"], compute)
        master = record.get("master_param") if self.master_weights and is_low(x.dtype) else None
        if master is not None and master.dtype != compute:
            master = xp.astype(master, compute)
        current = master if master is not None else xp.astype(x, compute, copy=True)
        to_x = 1.0 - 1.0 / beta
        if not to_train:
            new = lerp(current, z, to_x, 1.0 - to_x, abs(to_x) < 0.5)
            if master is None:
                record["y"] = current  # a copy: ``new`` is written into x below
        else:
            saved = master if master is not None else record.pop("y", None)
            if saved is not None and saved.dtype != compute:
                saved = xp.astype(saved, compute)
            wrote = None if saved is None else lerp(saved, z, to_x, 1.0 - to_x, abs(to_x) < 0.5)
            if wrote is not None and bool(xp.all(xp.astype(wrote, x.dtype, copy=False) == x)):
                new = saved  # the parameters are eval()'s x: y as it was
            else:
                to_y = 1.0 - beta
                new = lerp(xp.astype(x, compute), z, to_y, 1.0 - to_y, abs(to_y) < 0.5)
            if master is not None:
                record["master_param"] = _store(record["master_param"], new)
        rounded = new if new.dtype == x.dtype else xp.astype(new, x.dtype)
        p.data = _store(x, rounded)


def _store(x: Any, new: Any) -> Any:
    """``new`` written into ``x`` (kept, for mutable arrays) or ``new`` itself (JAX)."""
    if is_immutable(x):
        return new
    x[...] = new
    return x


class SGDScheduleFree(_ScheduleFree):
    r"""Schedule-free SGD (Defazio et al., 2024), as ``schedulefree.SGDScheduleFree`` (1.4).

    Schedule-free learning replaces the learning-rate schedule by an average.
    It keeps two points per parameter: z, moved by plain SGD steps, and x, a
    weighted running average of the z's; the gradient is taken at y, between
    the two (``beta`` is ``momentum``)::

        y = (1 - beta) * z + beta * x                   (the parameters while training)
        g = grad(y) + weight_decay * y
        z = z - lr_t * g
        x = (1 - c) * x + c * z,   c = w_t / (w_1 + ... + w_t)
        lr_t = lr * min(1, t / warmup_steps),   w_t = t**r * max(lr_1..lr_t)**weight_lr_power

    where ``t`` is the group's step (``k + 1``).  As the reference, x is not
    stored: the step updates y in place (``y = lerp(y, z, c) + lr_t * (beta
    * (1 - c) - 1) * g``) and :meth:`eval` computes ``x = lerp(y, z, 1 -
    1/beta)``.  The paper is Defazio, Yang, Mehta, Mishchenko, Khaled &
    Cutkosky, "The Road Less Scheduled" (NeurIPS 2024, arXiv:2405.15682).

    Train and eval modes (what users get wrong).  Gradients must be taken at
    y, but the point to evaluate, and to ship, is x.  The optimizer starts in
    eval mode: call :meth:`train` before the first step (``step()`` raises
    RuntimeError otherwise, and in eval mode), :meth:`eval` before
    evaluating the model or saving it for inference, and :meth:`train`
    again before training on.  Evaluating or saving in train mode is not an
    error anyone can detect, it only gives worse numbers: check
    :attr:`train_mode`.  :meth:`state_dict` records the mode (each group's
    ``train_mode``), so a model and optimizer saved together resume in the
    mode they were saved in; a model saved for inference should be saved
    after :meth:`eval`.  A round trip ``eval(); train()`` restores the
    parameters bit for bit (y is kept while in eval mode, as state ``"y"``,
    one copy of each parameter; with ``master_weights`` the float32 copy is
    y), so evaluating during training does not change the trajectory.

    Per-group counters live in the group dict, under the reference's keys:
    ``k`` (steps taken), ``train_mode``, ``lr_max`` (the largest scheduled
    learning rate so far, -1 before the first step), ``weight_sum`` and
    ``scheduled_lr`` (this step's warmed-up learning rate, for logging).
    They are checked like hyperparameters and saved in state dicts.  State
    per parameter: ``z`` (the reference's key; it starts at the parameter),
    and ``y`` in eval mode; float32 for float16/bfloat16 parameters.

    Where this differs from the reference: ``step()`` raises RuntimeError
    (the reference a bare Exception) and checks every group (the reference
    the first); the gradients are not modified (the reference adds the
    decay into ``p.grad``); a group added later takes the optimizer's mode;
    ``eval(); train()`` is exact (the reference recomputes y, rounding
    differently); a group none of whose parameters has a gradient takes no
    step (its ``k`` and ``weight_sum`` stay, as every optimizer here skips
    such parameters; the reference advances them); no ``foreach`` argument;
    an average weight that overflows is a ValueError.  With ``r=0`` and
    ``weight_lr_power=0`` x is the plain average of the z's (Polyak); with
    ``lr=0`` nothing moves.

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: learning rate (default 1.0, the reference's: SGD here wants a
            larger learning rate than with a schedule).
        momentum: ``beta``, the interpolation between z and x, in (0, 1)
            (default 0.9).
        weight_decay: L2 penalty, taken at y (default 0).
        warmup_steps: steps of linear warmup of ``lr`` (default 0).
        r: power of ``t`` in the average's weights (default 0).
        weight_lr_power: power of the largest learning rate so far in the
            average's weights (default 2; 0 for none).
        nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see :class:`Optimizer`);
            a skipped step advances no counter.
        master_weights: for float16/bfloat16 parameters, also keep a float32
            copy of y (see :class:`Optimizer`); no effect on other dtypes.
    """

    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "momentum": Real(high=1.0),
        "weight_decay": Real(),
        "warmup_steps": Count(),
        "r": Real(),
        "weight_lr_power": Real(),
        **_ScheduleFree._counters,
    }
    _rule = staticmethod(sgd_schedulefree)
    _beta_name = "momentum"

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2,
        *,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        hyper = {"lr": lr, "momentum": momentum, "r": r, "warmup_steps": warmup_steps}
        defaults = self._start(hyper, weight_lr_power, weight_decay)
        super().__init__(params, defaults, nonfinite=nonfinite, master_weights=master_weights)

    @staticmethod
    def _beta(group: Mapping[str, Any]) -> float:
        return group["momentum"]

    def _state_spec(self, group: dict[str, Any]) -> frozenset[str]:
        return frozenset(("z",))


class AdamWScheduleFree(_ScheduleFree):
    r"""Schedule-free AdamW (Defazio et al., 2024), as ``schedulefree.AdamWScheduleFree`` (1.4).

    :class:`SGDScheduleFree` (see there for the method, the train/eval
    modes, the counters and where this differs from the reference) on the
    gradient normalised by Adam's second moment; ``beta`` is ``beta1``::

        v = beta2 * v + (1 - beta2) * g**2
        u = g / (sqrt(v / (1 - beta2**t)) + eps) + weight_decay * y
        z = z - lr_t * u;   y = lerp(y, z, c) + lr_t * (beta1 * (1 - c) - 1) * u

    There is no first moment: ``beta1`` is the interpolation between z and
    x, which plays its part.  ``eps`` is added after the bias-corrected
    square root, as in Adam.  The weight decay is added to the normalised
    step (decoupled, as AdamW's, but taken at y).  State per parameter:
    ``z`` and ``exp_avg_sq`` (the reference's keys), and ``y`` in eval mode;
    float32 for float16/bfloat16 parameters.  The reference validates no
    hyperparameter; here ``beta1`` is in (0, 1), ``beta2`` in [0, 1).

    Args:
        params: parameters, a dict name → parameter, or a list of group dicts.
        lr: learning rate (default 0.0025).
        betas: ``(beta1, beta2)``: the interpolation between z and x, in (0, 1),
            and the second moment's decay rate, in [0, 1) (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: weight decay, taken at y (default 0).
        warmup_steps: steps of linear warmup of ``lr`` (default 0).
        r: power of ``t`` in the average's weights (default 0).
        weight_lr_power: power of the largest learning rate so far in the
            average's weights (default 2.0; 0 for none).
        nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see :class:`Optimizer`);
            a skipped step advances no counter.
        master_weights: for float16/bfloat16 parameters, also keep a float32
            copy of y (see :class:`Optimizer`); no effect on other dtypes.
    """

    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "betas": Pair(Real(high=1.0), "beta1", "beta2"),
        "eps": Real(),
        "weight_decay": Real(),
        "warmup_steps": Count(),
        "r": Real(),
        "weight_lr_power": Real(),
        **_ScheduleFree._counters,
    }
    _rule = staticmethod(adamw_schedulefree)
    _nonnegative_state: ClassVar[frozenset[str]] = frozenset(("exp_avg_sq",))
    _beta_name = "beta1 (betas[0])"

    def __init__(
        self,
        params: Any,
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        *,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        hyper = {"lr": lr, "betas": betas, "eps": eps, "r": r, "warmup_steps": warmup_steps}
        defaults = self._start(hyper, weight_lr_power, weight_decay)
        super().__init__(params, defaults, nonfinite=nonfinite, master_weights=master_weights)

    @staticmethod
    def _beta(group: Mapping[str, Any]) -> float:
        return group["betas"][0]

    def _state_spec(self, group: dict[str, Any]) -> frozenset[str]:
        return frozenset(("z", "exp_avg_sq"))

    def _scalars(self, group: dict[str, Any], step: None, state: dict) -> dict[str, float]:
        beta2 = group["betas"][1]
        return {
            **super()._scalars(group, step, state),
            "beta2": beta2,
            "one_minus_beta2": 1.0 - beta2,
            "bias_correction2": 1.0 - beta2 ** (group["k"] + 1),
            "eps": group["eps"],
        }
