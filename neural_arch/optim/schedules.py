"""Schedules as pure functions of the step, Optax-style: ``f = cosine_decay(0.1, 1000); f(t)``.

Each constructor checks its arguments (ValueError/TypeError naming the
argument; Python or NumPy real scalars) and returns ``f(step) -> value``:

- a Python step (an int, an integral float or a NumPy scalar, ``>= 0``) gives
  a Python ``float``, computed with ``math`` and Python arithmetic in the same
  order as the scheduler classes, so their values agree to the last bit;
- a JAX array or tracer step (inside ``jax.jit``, for a functional optimizer)
  gives a JAX scalar, computed with ``jax.numpy`` (float32 unless x64 is on).
  A traced step cannot be checked: a negative step is the caller's bug there.

The chainable schedulers (StepLR, MultiStepLR, LinearLR, ExponentialLR,
PolynomialLR, CosineAnnealingLR) take their schedule ``f(t)`` from these
functions (with value 1, so ``base_lr * f(t)`` is PyTorch's closed form). Their
step-to-step update stays PyTorch's recursive ratio ``lr_{t-1} * f(t)/f(t-1)``,
which rounds differently from the closed form and is kept for bit-for-bit
agreement with ``torch.optim``. OneCycleLR, CosineAnnealingWarmRestarts,
CyclicLR and the Hugging Face warmup helpers keep their own code: OneCycleLR
reads its phase values from the param groups (a user may change them), the
warmup helpers are LambdaLR factors with their own rounding; ``one_cycle`` and
``warmup_then_decay`` reproduce their values (exactly for ``one_cycle``).
"""

from __future__ import annotations

import math
import numbers
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .lr_scheduler import _choice, _cos_pi, _flag, _integer, _milestones, _pow, _real, _show

__all__ = [
    "constant",
    "cosine_annealing",
    "cosine_decay",
    "exponential",
    "join",
    "linear",
    "multistep",
    "one_cycle",
    "polynomial",
    "step_decay",
    "warmup_stable_decay",
    "warmup_then_decay",
]

Schedule = Callable[[Any], Any]


def _xp(step: Any) -> Any:
    """``jax.numpy`` for a JAX array or tracer step, else None (Python arithmetic)."""
    if type(step).__module__.startswith(("jax", "jaxlib")):
        import jax.numpy as jnp

        return jnp
    return None


def _step(step: Any) -> tuple[Any, Any]:
    """``(xp, t)``: the namespace and the step (a Python int when xp is None)."""
    xp = _xp(step)
    if xp is not None:
        return xp, step
    if isinstance(step, bool) or not isinstance(step, numbers.Real):
        raise TypeError(f"step must be a non-negative integer or a JAX scalar, got {_show(step)}")
    if isinstance(step, numbers.Integral):
        t = int(step)
    else:
        f = float(step)
        if not math.isfinite(f) or f != math.floor(f):
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        t = int(f)
    if t < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    return None, t


def _out(xp: Any, value: Any) -> Any:
    return float(value) if xp is None else value


def _value(name: str, value: Any) -> int | float:
    return _real(name, value)


def _mul_pow(init: float, base: float, exponent: Any) -> float:
    """``init * base ** exponent`` as a float; inf (with init's sign) where it overflows."""
    try:
        return float(init * _pow(base, exponent))
    except OverflowError:  # an int power too large for a float
        return math.copysign(math.inf, init) if init else math.nan


def constant(value: float) -> Schedule:
    """``f(t) = value``."""
    value = _value("value", value)

    def schedule(step):
        xp, _ = _step(step)
        return float(value) if xp is None else xp.asarray(float(value))

    return schedule


def linear(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """``init + (end - init) * k / n`` with ``k = clip(t - transition_begin, 0, n)``.

    ``n = transition_steps >= 1``; LinearLR's factor with ``init = start_factor``
    (Optax's ``linear_schedule`` writes ``(init - end) * (1 - k/n) + end``,
    equal up to rounding).
    """
    init, end = _value("init_value", init_value), _value("end_value", end_value)
    n = _integer("transition_steps", transition_steps, low=1)
    begin = _integer("transition_begin", transition_begin, low=0)

    def schedule(step):
        xp, t = _step(step)
        k = min(max(t - begin, 0), n) if xp is None else xp.clip(t - begin, 0, n)
        return _out(xp, init + (end - init) * k / n)

    return schedule


def cosine_decay(init_value: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    """Optax's ``cosine_decay_schedule``: ``init * ((1 - alpha) * c + alpha)``,
    ``c = (1 + cos(pi * min(t, decay_steps) / decay_steps)) / 2``; ``alpha`` is the
    final value as a fraction of ``init_value``."""
    init = _value("init_value", init_value)
    n = _integer("decay_steps", decay_steps, low=1)
    alpha = _value("alpha", alpha)

    def schedule(step):
        xp, t = _step(step)
        if xp is None:
            c = 0.5 * (1 + math.cos(math.pi * min(t, n) / n))
        else:
            c = 0.5 * (1 + xp.cos(xp.pi * xp.minimum(t, n) / n))
        return _out(xp, init * ((1 - alpha) * c + alpha))

    return schedule


def cosine_annealing(base: float, eta_min: float, T_max: float) -> Schedule:
    """CosineAnnealingLR's closed form: ``eta_min + (base - eta_min) * f``,
    ``f = (1 + cos(pi t / T_max)) / 2``.

    Past ``T_max`` the cosine goes on (back up to ``base`` at ``2 T_max``), as in PyTorch.
    """
    base, eta_min = _value("base", base), _value("eta_min", eta_min)
    T = _real("T_max", T_max, low=0, low_open=True)

    def schedule(step):
        xp, t = _step(step)
        f = (1 + (_cos_pi(t, T) if xp is None else xp.cos(xp.pi * t / T))) / 2
        return _out(xp, eta_min + (base - eta_min) * f)

    return schedule


def exponential(init_value: float, gamma: float) -> Schedule:
    """ExponentialLR's closed form: ``init * gamma ** t`` (``gamma > 0``; inf past overflow)."""
    init = _value("init_value", init_value)
    gamma = _real("gamma", gamma, low=0, low_open=True)

    def schedule(step):
        xp, t = _step(step)
        return _mul_pow(init, gamma, t) if xp is None else init * xp.power(gamma, t)

    return schedule


def step_decay(init_value: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """StepLR's closed form: ``init * gamma ** (t // step_size)``."""
    init = _value("init_value", init_value)
    size = _integer("step_size", step_size, low=1)
    gamma = _real("gamma", gamma, low=0, low_open=True)

    def schedule(step):
        xp, t = _step(step)
        if xp is None:
            return _mul_pow(init, gamma, t // size)
        return init * xp.power(gamma, t // size)

    return schedule


def multistep(init_value: float, milestones: Iterable[int], gamma: float = 0.1) -> Schedule:
    """MultiStepLR's closed form: ``init * gamma ** #{m in milestones : m <= t}``
    (a milestone listed twice decays twice)."""
    init = _value("init_value", init_value)
    ms = sorted(_milestones("milestones", milestones, increasing=False))
    gamma = _real("gamma", gamma, low=0, low_open=True)

    def schedule(step):
        xp, t = _step(step)
        if xp is None:
            return _mul_pow(init, gamma, bisect_right(ms, t))
        passed = sum(((t >= m).astype(xp.int32) for m in ms), xp.zeros((), xp.int32))
        return init * xp.power(gamma, passed)

    return schedule


def polynomial(init_value: float, end_value: float, power: float, total_steps: int) -> Schedule:
    """PolynomialLR's closed form with an end value:
    ``(init - end) * (1 - min(t, n) / n) ** power + end`` (``power >= 0``, ``n >= 1``)."""
    init, end = _value("init_value", init_value), _value("end_value", end_value)
    power = _real("power", power, low=0)
    n = _integer("total_steps", total_steps, low=1)

    def schedule(step):
        xp, t = _step(step)
        if xp is None:
            return float((init - end) * _pow(1.0 - min(n, t) / n, power) + end)
        return (init - end) * xp.power(1.0 - xp.minimum(n, t) / n, power) + end

    return schedule


def _one_cycle_phases(T: int, pct_start: float, three_phase: bool, lrs: Mapping) -> list:
    """``[(end_step, start_value, end_value), ...]``: OneCycleLR's ``_schedule_phases``."""
    if three_phase:
        ends = [float(pct_start * T) - 1, float(2 * pct_start * T) - 2, T - 1]
        keys = [("initial_lr", "max_lr"), ("max_lr", "initial_lr"), ("initial_lr", "min_lr")]
    else:
        ends = [float(pct_start * T) - 1, T - 1]
        keys = [("initial_lr", "max_lr"), ("max_lr", "min_lr")]
    return [(end, lrs[a], lrs[b]) for end, (a, b) in zip(ends, keys, strict=True)]


def one_cycle(
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    """OneCycleLR's lr as a function of the step (the same values, to the last bit).

    ``initial = max_lr / div_factor``, ``min_lr = initial / final_div_factor``;
    warm up to ``max_lr`` until step ``pct_start * T - 1``, anneal to ``min_lr``
    at ``T - 1`` (``three_phase``: back to ``initial`` at ``2 pct_start T - 2``
    first). Step ``T`` holds ``min_lr``; a Python step beyond ``T`` is refused
    (a traced one holds ``min_lr``).
    """
    T = _integer("total_steps", total_steps, low=1)
    pct_start = _real("pct_start", pct_start, low=0.0, high=1.0)
    strategy = _choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
    three_phase = _flag("three_phase", three_phase)
    if three_phase and 2 * pct_start * T - 2 > T - 1:
        raise ValueError(
            f"pct_start must be <= (total_steps + 1) / (2 * total_steps) = {(T + 1) / (2 * T)!r} "
            f"with three_phase=True (the first two phases must fit), got {pct_start!r}"
        )
    top = _real("max_lr", max_lr, low=0)
    div = _real("div_factor", div_factor, low=0, low_open=True)
    final_div = _real("final_div_factor", final_div_factor, low=0, low_open=True)
    initial = top / div
    if not math.isfinite(initial):
        raise ValueError(f"max_lr / div_factor overflows: {top!r} / {div!r}")
    lrs = {
        "initial_lr": float(initial),
        "max_lr": float(top),
        "min_lr": float(initial / final_div),
    }
    phases = _one_cycle_phases(T, pct_start, three_phase, lrs)

    def anneal(xp, start, end, pct):
        if strategy == "cos":
            cos = math.cos if xp is None else xp.cos
            return end + (start - end) / 2.0 * (cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def schedule(step):
        xp, t = _step(step)
        if xp is None:
            if t > T:
                raise ValueError(f"step must be <= total_steps = {T}, got {step!r}")
            start = 0.0
            for i, (end, lr0, lr1) in enumerate(phases):  # OneCycleLR._phase
                if t <= end or i == len(phases) - 1:
                    pct = 1.0 if end <= start else min(1.0, (t - start) / (end - start))
                    return float(anneal(None, lr0, lr1, pct))
                start = end
        starts = [0.0] + [p[0] for p in phases[:-1]]
        out = None
        for start, (end, lr0, lr1) in reversed(list(zip(starts, phases, strict=True))):
            pct = 1.0 if end <= start else xp.minimum(1.0, (t - start) / (end - start))
            value = anneal(xp, lr0, lr1, pct)
            out = value if out is None else xp.where(t <= end, value, out)
        return out

    return schedule


def _decay_part(xp, peak, end, k, D, decay: str):
    """From ``peak`` (k = 0) to ``end`` (k = D), by cosine or linearly."""
    if decay == "cosine":
        cos = math.cos if xp is None else xp.cos
        return end + (peak - end) * (0.5 * (1.0 + cos(math.pi * (k / D))))
    return end + (peak - end) * ((D - k) / D)  # Hugging Face's (N - t) / (N - W)


def _warmup_stable_decay(peak, W, S, D, end, decay: str) -> Schedule:
    def schedule(step):
        xp, t = _step(step)
        if xp is None:
            if t < W:
                return float(peak * (t / W))
            if t < W + S:
                return float(peak)
            return float(_decay_part(None, peak, end, min(t - W - S, D), D, decay))
        k = xp.clip(t - W - S, 0, D)
        out = xp.where(t < W + S, peak, _decay_part(xp, peak, end, k, D, decay))
        return xp.where(t < W, peak * (t / max(W, 1)), out)

    return schedule


_DECAYS = ("cosine", "linear")


def warmup_then_decay(
    peak: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    decay: str = "cosine",
) -> Schedule:
    """``peak * t / W`` for ``t < W``, then ``peak`` to ``end_value`` over ``decay_steps``.

    With ``p = min(t - W, D) / D``: cosine ``end + (peak - end) * (1 + cos(pi p)) / 2``,
    or linear ``end + (peak - end) * (1 - p)``; ``end_value`` after ``W + D``.
    ``decay_steps`` counts the decay only (Optax's ``warmup_cosine_decay_schedule``
    counts the warmup in it). With ``end_value = 0`` it is Hugging Face's
    ``get_{cosine,linear}_schedule_with_warmup(W, W + D)`` up to rounding.
    """
    peak, end = _value("peak", peak), _value("end_value", end_value)
    W = _integer("warmup_steps", warmup_steps, low=0)
    D = _integer("decay_steps", decay_steps, low=1)
    decay = _choice("decay", decay, _DECAYS)
    return _warmup_stable_decay(peak, W, 0, D, end, decay)


def warmup_stable_decay(
    peak: float,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
) -> Schedule:
    """WSD (warmup-stable-decay, Hu et al. 2024 "MiniCPM"): linear warmup to ``peak``
    over ``W`` steps, ``peak`` for ``S`` steps, then a linear decay to ``end_value``
    over ``D`` steps: ``end + (peak - end) * (1 - min(t - W - S, D) / D)``."""
    peak, end = _value("peak", peak), _value("end_value", end_value)
    W = _integer("warmup_steps", warmup_steps, low=0)
    S = _integer("stable_steps", stable_steps, low=0)
    D = _integer("decay_steps", decay_steps, low=1)
    return _warmup_stable_decay(peak, W, S, D, end, "linear")


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Optax's ``join_schedules``: ``schedules[i](t - boundaries[i-1])`` between boundaries.

    ``len(boundaries) == len(schedules) - 1``; boundaries are non-decreasing
    non-negative integers; each schedule restarts its count at its boundary.
    """
    if isinstance(schedules, (str, bytes, Mapping)) or not isinstance(schedules, Iterable):
        raise TypeError(
            f"schedules must be a list of functions of the step, got {_show(schedules)}"
        )
    fns = list(schedules)
    if not fns:
        raise ValueError("schedules must hold at least one function of the step, got none")
    for i, fn in enumerate(fns):
        if not callable(fn):
            raise TypeError(f"schedules[{i}] must be a function of the step, got {_show(fn)}")
    bounds = _milestones("boundaries", boundaries, increasing=True)
    if len(bounds) != len(fns) - 1:
        raise ValueError(
            f"boundaries must have len(schedules) - 1 = {len(fns) - 1} entries, got {len(bounds)}"
        )

    def schedule(step):
        xp, t = _step(step)
        if xp is None:
            i = bisect_right(bounds, t)
            return float(fns[i](t - bounds[i - 1] if i else t))
        out = fns[0](t)
        for b, fn in zip(bounds, fns[1:], strict=True):
            out = xp.where(t < b, out, fn(xp.maximum(t - b, 0)))
        return out

    return schedule
