"""Dynamic loss scaling for low-precision gradients: :class:`GradScaler`.

float16 holds values from about 6e-8 to 65504, so the small gradients of a
float16 model underflow to zero.  Multiplying the loss by a large factor
``S`` before ``backward()`` multiplies every gradient by ``S`` and lifts them
into range; dividing by ``S`` again before the optimizer step gives the true
gradients.  ``S`` is chosen dynamically: when a scaled gradient overflows
(inf or NaN), the step is skipped and ``S`` shrinks; after ``growth_interval``
good steps in a row, it grows.  This is ``torch.amp.GradScaler``'s scheme,
written against the Array API so it drives any neural_arch optimizer on any
backend.
"""

from __future__ import annotations

import math
import numbers
import struct
from collections.abc import Mapping
from typing import Any

import array_api_compat

from .backend import dtype_name, float_errors_ignored, namespace
from .optim._hyper import Flag, as_python, check_number
from .tensor import Tensor

__all__ = ["GradScaler"]

_UNSCALED, _STEPPED = "unscaled", "stepped"
_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
_DIRECT = ("float32", "float64")  # unscaled in their own precision
_VIA_FLOAT32 = ("float16", "bfloat16")  # unscaled in float32, rounded once (torch's opmath)
_MAX_DEPTH = 64  # nesting of scale()'s lists and tuples


def _f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (the precision torch keeps the scale in)."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:  # rounds past float32's largest finite value
        return math.copysign(math.inf, x)


def _scalar(value: Any) -> Any:
    """A 0-d array as the Python number it holds; anything else as it is."""
    if array_api_compat.is_array_api_obj(value) and tuple(getattr(value, "shape", (1,))) == ():
        xp = namespace(value)
        if xp.isdtype(value.dtype, "integral"):
            return int(value)
        if xp.isdtype(value.dtype, "real floating"):
            return float(value)
    return value


def _scale_value(name: str, value: Any, *, loaded: bool = False) -> float:
    """A scale: a finite number > 0 whose float32 rounding is finite and > 0; a loaded one
    may be 0 (where backing off again and again ends, as torch's)."""
    value = _scalar(value)
    check_number(name, value)
    rounded = _f32(float(value))
    if not (0 < rounded < math.inf or (loaded and value == 0)):
        raise ValueError(
            f"Invalid {name}: {value!r} (expected a number > 0 that float32 holds as a "
            "finite number > 0, about 1.4e-45 to 3.4e38)"
        )
    return rounded


def _growth_factor(value: Any, name: str = "growth_factor") -> float:
    value = _scalar(value)
    check_number(name, value, low=1.0)
    if value == 1:
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite number > 1)")
    return float(value)


def _backoff_factor(value: Any, name: str = "backoff_factor") -> float:
    value = _scalar(value)
    check_number(name, value, low=0.0, high=1.0)
    if value == 0:
        raise ValueError(f"Invalid {name}: {value!r} (expected a number in (0, 1))")
    return float(value)


def _count(value: Any, name: str, low: int) -> int:
    """An integer >= ``low`` (Python, NumPy, or a 0-d integer array); not a bool."""
    value = _scalar(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low:
        return int(as_python(value))
    raise ValueError(f"Invalid {name}: {value!r:.60} (expected an integer >= {low})")


class GradScaler:
    """Dynamic loss scaling, as ``torch.amp.GradScaler``, for any neural_arch optimizer.

    A training step with the scaler::

        scaler = na.GradScaler()
        for x, y in batches:
            optimizer.zero_grad()
            loss = na.mse_loss(model(x), y)
            scaler.scale(loss).backward()   # gradients of S * loss
            scaler.unscale_(optimizer)      # optional: true gradients now, e.g. to clip
            na.clip_grad_norm_(model.parameters(), 1.0)
            stepped = scaler.step(optimizer)  # False: an overflow, the step was skipped
            scaler.update()                 # S shrinks after an overflow, grows after a run

    The scale ``S`` starts at ``init_scale``.  :meth:`update` after each
    iteration sets ``S ← S·backoff_factor`` if any gradient :meth:`unscale_`
    saw this iteration was inf or NaN (and restarts the count of good
    iterations), else counts the iteration and, on the ``growth_interval``-th
    good iteration in a row, sets ``S ← S·growth_factor`` (unless that
    overflows float32) and restarts the count.  ``S`` is a Python float kept
    to float32 precision, rounded after each product as torch rounds its
    float32 scale tensor, so the sequence of scales is torch's bit for bit.

    Args:
        device: accepted for source compatibility with torch (``"cuda"``,
            ``"cpu"``, ...) and ignored: the scale is a Python number, and
            the gradients' own library and device are used.
        init_scale: the first scale, a number > 0.
        growth_factor: the factor (> 1) applied after ``growth_interval``
            good iterations in a row.
        backoff_factor: the factor in (0, 1) applied after an overflow.
        growth_interval: the number (>= 1) of good iterations in a row that
            grows the scale.
        enabled: False makes the scaler a pass-through: :meth:`scale`
            returns its argument, :meth:`unscale_` and :meth:`update` do
            nothing, :meth:`step` calls ``optimizer.step()``, and
            :meth:`get_scale` is 1.0.

    Where it differs from torch:

    * :meth:`step` returns whether the optimizer's step was applied (torch
      returns ``optimizer.step()``'s value), and a skipped step is counted in
      ``optimizer.skipped_steps``.
    * Gradients of every floating dtype are unscaled, float16 and bfloat16
      in float32 arithmetic rounded once (torch refuses float16 gradients,
      which it expects to find only on float32 master parameters).
    * The finiteness check looks at the unscaled gradients, what the
      optimizer would receive; an optimizer with no gradient at all is not
      an error (torch raises).
    * The scale grows on a good iteration once the count reaches
      ``growth_interval``, also after :meth:`set_growth_interval` lowered the
      interval below the count (torch waits for an overflow to reset it).
    * :meth:`scale` need not come first in an iteration (a program that
      computes its gradients itself may multiply by :meth:`get_scale`).
    * The automatic gradient clamp (:func:`neural_arch.set_grad_clip`) of a
      scaled loss's ``backward()`` is scaled too: it bounds the true
      gradients at ``clip``, as without the scaler.
    * Bad arguments raise ValueError/TypeError naming them; torch asserts,
      or accepts them.

    Keep the optimizer's default ``nonfinite="raise"``: the scaler checks
    the gradients first and skips the step itself, so the optimizer raises
    only for a gradient made non-finite after :meth:`unscale_` (by your own
    code between it and :meth:`step`).
    """

    def __init__(
        self,
        device: str | None = None,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ) -> None:
        if device is not None and not isinstance(device, str):
            raise TypeError(
                f"device must be None or a device type such as 'cuda' or 'cpu' (it is "
                f"ignored), got {type(device).__name__}"
            )
        self._scale = _scale_value("init_scale", init_scale)
        self._growth_factor = _growth_factor(growth_factor)
        self._backoff_factor = _backoff_factor(backoff_factor)
        self._growth_interval = _count(growth_interval, "growth_interval", 1)
        self._enabled = Flag().check("enabled", enabled)
        self._growth_tracker = 0
        # id(optimizer) -> [stage, found a non-finite gradient, the optimizer], for this
        # iteration (holding the optimizer keeps its id from being reused until update())
        self._per_optimizer: dict[int, list] = {}

    # ---------------------------------------------------------------- scale

    def scale(self, outputs: Any) -> Any:
        """``outputs`` multiplied by the scale: a Tensor, an array, or a (nested) list or
        tuple of them, returned in the same structure (the same type of list or tuple).

        The product has the dtype of each output (the scale is a Python
        number).  Compute the loss in float32: a float16 loss times 2**16
        overflows.

        Raises:
            TypeError: for anything else.
        """
        if not self._enabled:
            return outputs
        with float_errors_ignored():  # an overflow is what update() reacts to
            return self._apply_scale(outputs, 0)

    def _apply_scale(self, value: Any, depth: int) -> Any:
        if isinstance(value, Tensor):
            scaled = value * self._scale
            # backward() clamps the scaled gradients at clip * scale: the true ones at clip
            scaled._loss_scale = self._scale * getattr(value, "_loss_scale", 1.0)
            return scaled
        if array_api_compat.is_array_api_obj(value):
            return value * self._scale
        if isinstance(value, (list, tuple)):
            if depth >= _MAX_DEPTH:
                raise ValueError(f"outputs nests lists/tuples more than {_MAX_DEPTH} levels deep")
            return type(value)(self._apply_scale(v, depth + 1) for v in value)
        raise TypeError(
            "outputs must be a Tensor, an array, or a (nested) list or tuple of them, "
            f"got {type(value).__name__}"
        )

    # -------------------------------------------------------------- unscale

    def unscale_(self, optimizer: Any) -> None:
        """Divide every gradient of ``optimizer``'s parameters by the scale, in place.

        Writable arrays are changed in place (views stay valid); others
        (JAX, read-only NumPy) get the result bound to ``.grad``.  Whether
        some gradient is inf or NaN afterwards is recorded for :meth:`step`
        and :meth:`update`.  Each gradient is multiplied by the float32
        reciprocal of the scale (torch's); float16 and bfloat16 ones in
        float32, rounded back once.  The check is a sum per gradient and one
        host synchronisation per parameter group (gradients are looked at
        one by one only when that sum is not finite).  Call it at most once
        per optimizer between :meth:`update` calls, after the gradients
        are complete: then clip or inspect them.

        Raises:
            RuntimeError: when already called for ``optimizer`` since the
                last :meth:`update`, or called after :meth:`step`.
            TypeError: for an object that is not an optimizer, a gradient
                that is not a floating array, or a distributed optimizer.
        """
        if not self._enabled:
            return
        entry = self._per_optimizer.get(id(optimizer))
        if entry is not None:
            if entry[0] == _UNSCALED:
                raise RuntimeError(
                    "unscale_() has already been called on this optimizer since the last update()"
                )
            raise RuntimeError("unscale_() is being called after step()")
        groups = _grad_groups(optimizer)
        scale = self._scale
        inv = math.inf if scale == 0 else _f32(1.0 / scale)  # torch: float32(1 / float64 S)
        found = False
        with float_errors_ignored():
            for items in groups:
                found = _unscale_group(items, inv) or found
        self._per_optimizer[id(optimizer)] = [_UNSCALED, found, optimizer]

    # ----------------------------------------------------------------- step

    def step(self, optimizer: Any, *args: Any, **kwargs: Any) -> bool:
        """Unscale (unless :meth:`unscale_` did), then step ``optimizer`` unless a
        gradient is inf or NaN; return whether the step was applied.

        A skipped step adds 1 to ``optimizer.skipped_steps`` and changes
        nothing else.  ``args`` and ``kwargs`` go to ``optimizer.step``.
        True also means the optimizer did not skip the step itself (its
        ``skipped_steps`` did not grow), e.g. with ``nonfinite="skip"`` and
        a gradient made non-finite after :meth:`unscale_`.

        Raises:
            RuntimeError: for a closure (gradients recomputed inside the
                optimizer's step would not be scaled), or when already called
                for ``optimizer`` since the last :meth:`update`.
        """
        if not self._enabled:
            return _step(optimizer, args, kwargs)
        if "closure" in kwargs or any(callable(a) for a in args):
            raise RuntimeError("Closure use is not supported if GradScaler is enabled")
        entry = self._per_optimizer.get(id(optimizer))
        if entry is not None and entry[0] == _STEPPED:
            raise RuntimeError("step() has already been called since the last update()")
        if entry is None:
            self.unscale_(optimizer)
            entry = self._per_optimizer[id(optimizer)]
        if entry[1]:
            optimizer.skipped_steps = getattr(optimizer, "skipped_steps", 0) + 1
            stepped = False
        else:
            stepped = _step(optimizer, args, kwargs)
        entry[0] = _STEPPED
        return stepped

    # --------------------------------------------------------------- update

    def update(self, new_scale: Any = None) -> None:
        """Back off or grow the scale from this iteration's checks (see the class), or set
        it to ``new_scale`` (a number > 0 or a one-element array; the count of good
        iterations is kept).  Call it once per iteration, after every :meth:`step`.

        Raises:
            RuntimeError: when no :meth:`unscale_` or :meth:`step` ran since the
                last update (and ``new_scale`` is None).
        """
        if not self._enabled:
            return
        if new_scale is not None:
            self._scale = _scale_value("new_scale", _one_element(new_scale))
        elif not self._per_optimizer:
            raise RuntimeError(
                "No inf checks were recorded prior to update(): call scaler.step(optimizer) "
                "(or unscale_) first"
            )
        elif any(found for _, found, _ in self._per_optimizer.values()):
            self._scale = _f32(self._scale * self._backoff_factor)
            self._growth_tracker = 0
        else:
            successful = self._growth_tracker + 1
            if successful >= self._growth_interval:
                grown = _f32(self._scale * self._growth_factor)
                if math.isfinite(grown):
                    self._scale = grown
                successful = 0
            self._growth_tracker = successful
        self._per_optimizer = {}

    # ------------------------------------------------------------ accessors

    def get_scale(self) -> float:
        """The current scale (1.0 when disabled)."""
        return self._scale if self._enabled else 1.0

    def get_growth_factor(self) -> float:
        """The factor the scale grows by."""
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        """Set the factor the scale grows by (> 1)."""
        self._growth_factor = _growth_factor(new_factor, "new_factor")

    def get_backoff_factor(self) -> float:
        """The factor the scale backs off by."""
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        """Set the factor the scale backs off by (in (0, 1))."""
        self._backoff_factor = _backoff_factor(new_factor, "new_factor")

    def get_growth_interval(self) -> int:
        """The number of good iterations in a row that grows the scale."""
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        """Set the number (>= 1) of good iterations in a row that grows the scale."""
        self._growth_interval = _count(new_interval, "new_interval", 1)

    def is_enabled(self) -> bool:
        """Whether the scaler scales (the constructor's ``enabled``)."""
        return self._enabled

    # ------------------------------------------------------------ state dict

    def state_dict(self) -> dict[str, Any]:
        """torch's five entries: ``scale``, ``growth_factor``, ``backoff_factor`` (floats),
        ``growth_interval`` and ``_growth_tracker`` (the count of good iterations, ints);
        ``{}`` when disabled.  Take it after :meth:`update`."""
        if not self._enabled:
            return {}
        return {
            "scale": self._scale,
            "growth_factor": self._growth_factor,
            "backoff_factor": self._backoff_factor,
            "growth_interval": self._growth_interval,
            "_growth_tracker": self._growth_tracker,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load :meth:`state_dict`'s entries (ours or ``torch.amp.GradScaler``'s; 0-d arrays
        are accepted for numbers).  All or nothing: every entry is checked as the
        constructor checks it, and a missing or unknown key is refused.  Does nothing
        when disabled (as torch)."""
        if not self._enabled:
            return
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a dict with keys {_KEYS}, got {type(state_dict).__name__}"
            )
        if not state_dict:
            raise ValueError(
                "the GradScaler state dict is empty, possibly because it was saved from a "
                "disabled GradScaler"
            )
        missing = [k for k in _KEYS if k not in state_dict]
        unknown = sorted(map(str, set(state_dict) - set(_KEYS)))
        if missing or unknown:
            raise ValueError(
                f"GradScaler state dict lacks {missing} / has unknown keys {unknown}; "
                f"expected exactly {list(_KEYS)}"
            )
        new = (
            _scale_value("state_dict['scale']", state_dict["scale"], loaded=True),
            _growth_factor(state_dict["growth_factor"], "state_dict['growth_factor']"),
            _backoff_factor(state_dict["backoff_factor"], "state_dict['backoff_factor']"),
            _count(state_dict["growth_interval"], "state_dict['growth_interval']", 1),
            _count(state_dict["_growth_tracker"], "state_dict['_growth_tracker']", 0),
        )
        (
            self._scale,
            self._growth_factor,
            self._backoff_factor,
            self._growth_interval,
            self._growth_tracker,
        ) = new

    def __getstate__(self) -> dict[str, Any]:
        if self._per_optimizer:
            raise RuntimeError(
                "a GradScaler may be copied or pickled only between iterations (before "
                "unscale_/step or after update())"
            )
        return self.__dict__.copy()

    def __repr__(self) -> str:
        return (
            f"GradScaler(scale={self.get_scale()!r}, growth_factor={self._growth_factor!r}, "
            f"backoff_factor={self._backoff_factor!r}, "
            f"growth_interval={self._growth_interval!r}, enabled={self._enabled!r})"
        )


# ------------------------------------------------------------------ helpers


def _step(optimizer: Any, args: tuple, kwargs: dict) -> bool:
    """``optimizer.step(*args, **kwargs)``; whether it did not count a skip itself."""
    before = getattr(optimizer, "skipped_steps", None)
    optimizer.step(*args, **kwargs)
    return before is None or getattr(optimizer, "skipped_steps", None) == before


def _one_element(value: Any) -> Any:
    """A one-element array as a 0-d one; numbers as they are."""
    if array_api_compat.is_array_api_obj(value) and tuple(value.shape) != ():
        if math.prod(value.shape) != 1:
            raise ValueError(
                f"Invalid new_scale: an array of shape {tuple(value.shape)} (expected a "
                "number or a one-element array)"
            )
        return namespace(value).reshape(value, ())
    return value


def _grad_groups(optimizer: Any) -> list[list[tuple[Any, Any, bool]]]:
    """Per parameter group, ``(parameter, gradient, via float32)`` for each gradient,
    checked before any is changed."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not callable(getattr(optimizer, "step", None)):
        raise TypeError(
            "optimizer must be an optimizer (an object with a param_groups list and a step "
            f"method), got {type(optimizer).__name__}"
        )
    if callable(getattr(optimizer, "synchronize", None)):
        raise TypeError(
            f"GradScaler cannot drive {type(optimizer).__name__}: it reduces the gradients "
            "inside its step, so each process would check its own gradients and decide "
            "alone whether to skip. All-reduce them first "
            "(neural_arch.distributed.all_reduce_gradients(params)), then call "
            "scaler.step() on the plain optimizer"
        )
    out, seen = [], set()
    for gi, group in enumerate(groups):
        if not isinstance(group, Mapping) or "params" not in group:
            raise TypeError(f"optimizer.param_groups[{gi}] is not a dict with a 'params' entry")
        items, kinds = [], {}  # array type -> its namespace
        for pi, p in enumerate(group["params"]):
            g = getattr(p, "grad", None)
            if g is None or id(g) in seen:  # one array is unscaled once
                continue
            seen.add(id(g))
            where = f"the gradient of param_groups[{gi}]['params'][{pi}]"
            if not array_api_compat.is_array_api_obj(g):
                raise TypeError(f"{where} is a {type(g).__name__}, not an array")
            if type(g) not in kinds:
                kinds[type(g)] = namespace(g)
                if len(set(map(id, kinds.values()))) > 1:
                    raise TypeError(
                        f"{where} is a {type(g).__name__}, another array library than "
                        "the group's other gradients"
                    )
            name = dtype_name(g.dtype)
            if name not in _DIRECT and name not in _VIA_FLOAT32:
                raise TypeError(
                    f"{where} has dtype {name}; expected float16, bfloat16, float32 or float64"
                )
            items.append((p, g, name in _VIA_FLOAT32))
        if items:
            out.append(items)
    return out


def _unscale_group(items: list[tuple[Any, Any, bool]], inv: float) -> bool:
    """Multiply each gradient by ``inv``; whether some result is inf or NaN."""
    xp = namespace(items[0][1])
    sums, results = [], []
    for p, g, via_float32 in items:
        if via_float32:
            u = xp.astype(xp.astype(g, xp.float32) * inv, g.dtype)
            if array_api_compat.is_writeable_array(g):
                g[...] = u
            else:
                p.grad = g = u
            sums.append(xp.sum(g, dtype=xp.float32))
        else:
            if array_api_compat.is_writeable_array(g):
                g *= inv
            else:
                p.grad = g = g * inv
            sums.append(xp.sum(g))
        results.append(g)
    total = sums[0]
    for s in sums[1:]:
        total = total + s
    if bool(xp.isfinite(total)):  # the group's one host synchronisation
        return False
    # inf - inf, NaN, or a sum that overflowed although every element is finite
    return not all(bool(xp.all(xp.isfinite(g))) for g in results)
