"""L-BFGS with an optional strong-Wolfe line search, as ``torch.optim.LBFGS``.

L-BFGS is not elementwise: it works on all parameters at once, flattened
into one vector, and each step evaluates the objective several times
through a closure.  It therefore cannot be a rule (docs/adding_an_optimizer.md):
it overrides :meth:`Optimizer.step` and runs generic Array API code on every
backend (no fused or compiled fast path).  The line search and the cubic
interpolation are ports of torch 2.13's ``_strong_wolfe`` and
``_cubic_interpolate``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import array_api_compat

from ..backend import device, float_errors_ignored, is_immutable, namespace, to_backend
from . import _validate
from .optimizer import Optimizer
from .rule import Real

__all__ = ["LBFGS"]

#: the state keys torch keeps (on the first parameter)
_STATE_KEYS = (
    "func_evals",
    "n_iter",
    "al",
    "d",
    "t",
    "old_dirs",
    "old_stps",
    "ro",
    "H_diag",
    "prev_flat_grad",
    "prev_loss",
)

#: what an iteration leaves for the next one
_HISTORY_KEYS = ("d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad", "prev_loss")

#: a curvature pair (y, s) enters the history only when y·s exceeds this (torch's constant)
_CURVATURE_MIN = 1e-10


# ------------------------------------------------------------------ scalars


class _Scalar(float):
    """A Python float that stands where torch holds a 0-d float64 tensor.

    Arithmetic on such a tensor rounds as on a Python float, with one
    exception that this class reproduces: ``number / tensor`` is computed by
    torch as ``tensor.reciprocal() * number`` (two roundings), which decides
    the last bits of the cubic interpolation's ``3 * (f1 - f2) / (x1 - x2)``
    when a step size is such a tensor.  Every result involving a
    :class:`_Scalar` is one again, as every result involving a tensor is.
    """

    __slots__ = ()

    def __add__(self, other: Any) -> Any:
        return _wrap(float.__add__(self, other))

    def __radd__(self, other: Any) -> Any:
        return _wrap(float.__radd__(self, other))

    def __sub__(self, other: Any) -> Any:
        return _wrap(float.__sub__(self, other))

    def __rsub__(self, other: Any) -> Any:
        return _wrap(float.__rsub__(self, other))

    def __mul__(self, other: Any) -> Any:
        return _wrap(float.__mul__(self, other))

    def __rmul__(self, other: Any) -> Any:
        return _wrap(float.__rmul__(self, other))

    def __truediv__(self, other: Any) -> Any:
        if not isinstance(other, (int, float)):
            return NotImplemented
        return _Scalar(_divide(float(self), float(other)))

    def __rtruediv__(self, other: Any) -> Any:
        if not isinstance(other, (int, float)):
            return NotImplemented
        return _Scalar(_divide(1.0, float(self)) * other)  # torch: self.reciprocal() * other

    def __neg__(self) -> _Scalar:
        return _Scalar(-float(self))

    def __abs__(self) -> _Scalar:
        return _Scalar(abs(float(self)))


def _wrap(x: Any) -> Any:
    return x if x is NotImplemented else _Scalar(x)


def _divide(a: float, b: float) -> float:
    """``a / b`` as IEEE 754 (and a tensor) divides: by zero gives an infinity or NaN."""
    if b != 0:
        return a / b
    if a == 0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _sqrt(x: Any) -> Any:
    root = math.sqrt(x)
    return _Scalar(root) if isinstance(x, _Scalar) else root


def _plain(x: Any) -> Any:
    """A step size as stored and as given to arrays: an int stays an int, else a float."""
    return float(x) if isinstance(x, float) else x


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimiser of the cubic through two points with values and slopes (torch's port).

    ``bounds`` (default: the interval between ``x1`` and ``x2``) clamps the
    result; when the cubic has no real minimiser the interval's midpoint is
    returned.
    """
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 * d1 - g1 * g2  # torch's d1**2 on a tensor multiplies d1 by itself
    if d2_square >= 0:
        d2 = _sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _strong_wolfe(
    obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25, *, dot, amax
):
    """A step size satisfying the strong Wolfe conditions along ``d`` (torch's port).

    ``obj_func(x, t, d)`` gives the loss and flat gradient at ``x + t * d``;
    ``dot`` and ``amax`` are the dot product and the largest magnitude of
    flat arrays, as Python numbers.  Returns ``(loss, flat gradient, t,
    number of evaluations)``.
    """
    d_norm = amax(d)
    # evaluate objective and gradient using initial step
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = dot(g_new, d)

    # bracket an interval containing a point satisfying the Wolfe criteria
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        # check conditions
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket = [t_prev, t]
            bracket_f = [f_prev, f_new]
            bracket_g = [g_prev, g_new]
            bracket_gtd = [gtd_prev, gtd_new]
            break

        if abs(gtd_new) <= -c2 * gtd:
            bracket = [t]
            bracket_f = [f_new]
            bracket_g = [g_new]
            done = True
            break

        if gtd_new >= 0:
            bracket = [t_prev, t]
            bracket_f = [f_prev, f_new]
            bracket_g = [g_prev, g_new]
            bracket_gtd = [gtd_prev, gtd_new]
            break

        # interpolate
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(
            t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step)
        )

        # next step
        t_prev = tmp
        f_prev = f_new
        g_prev = g_new
        gtd_prev = gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = dot(g_new, d)
        ls_iter += 1

    # reached max number of iterations?
    if ls_iter == max_ls:
        bracket = [0, t]
        bracket_f = [f, f_new]
        bracket_g = [g, g_new]

    # zoom phase: we now have a point satisfying the criteria, or a bracket
    # around it; refine the bracket until the criteria hold
    insuf_progress = False
    # find high and low points in bracket
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        # line-search bracket is so small
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break

        # compute new trial value
        t = _cubic_interpolate(
            bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1]
        )

        # test that we are making sufficient progress: when t is within 10% of the
        # bracket's length from a boundary, and we made insufficient progress in the
        # last step or t is at a boundary, move t to 10% away from the nearest boundary
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            # interpolation close to boundary
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                # evaluate at 0.1 away from boundary
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False

        # Evaluate new point
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = dot(g_new, d)
        ls_iter += 1

        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            # Armijo condition not satisfied or not lower than lowest point
            bracket[high_pos] = t
            bracket_f[high_pos] = f_new
            bracket_g[high_pos] = g_new
            bracket_gtd[high_pos] = gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                # Wolfe conditions satisfied
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                # old high becomes new low
                bracket[high_pos] = bracket[low_pos]
                bracket_f[high_pos] = bracket_f[low_pos]
                bracket_g[high_pos] = bracket_g[low_pos]
                bracket_gtd[high_pos] = bracket_gtd[low_pos]

            # new point becomes new low
            bracket[low_pos] = t
            bracket_f[low_pos] = f_new
            bracket_g[low_pos] = g_new
            bracket_gtd[low_pos] = gtd_new

    # return stuff
    t = bracket[low_pos]
    f_new = bracket_f[low_pos]
    g_new = bracket_g[low_pos]
    return f_new, g_new, t, ls_func_evals


# ------------------------------------------------------- hyperparameter specs


@dataclass(frozen=True)
class _Int:
    """An integer (Python or NumPy, not a bool) >= ``low``."""

    low: int = 1

    def check(self, name: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < self.low:
            raise ValueError(f"Invalid {name}: {value!r} (expected an integer >= {self.low})")
        return int(value)


@dataclass(frozen=True)
class _Choice:
    """One of a few values (compared by equality and type)."""

    choices: tuple

    def check(self, name: str, value: Any) -> Any:
        for choice in self.choices:
            if type(value) is type(choice) and value == choice:
                return value
        raise ValueError(
            f"Invalid {name}: {value!r} (expected one of {', '.join(map(repr, self.choices))})"
        )


class _Refused(Exception):
    """A gradient the step would accept is not finite (carries the parameter's name)."""

    def __init__(self, name: Any, loss: Any) -> None:
        super().__init__(name, loss)
        self.name, self.loss = name, loss


# ------------------------------------------------------------------ LBFGS


class LBFGS(Optimizer):
    r"""L-BFGS (Liu & Nocedal, 1989; Nocedal & Wright, *Numerical Optimization*, alg. 7.4-7.5).

    The parameters are treated as one flat vector ``x``, with flat gradient
    ``g``.  ``step(closure)`` runs up to ``max_iter`` iterations (and about
    ``max_eval`` evaluations of ``closure``)::

        d = -H g            two-loop recursion over the last history_size pairs
                            s = t*d, y = g_new - g (kept only if y·s > 1e-10),
                            initial scaling H_diag = y·s / y·y; the first
                            iteration ever uses d = -g
        t = min(1, 1 / sum|g|) * lr   on the first iteration ever, else lr
        t = strong-Wolfe line search from t      if line_search_fn="strong_wolfe"
                                                   (c1=1e-4, c2=0.9, cubic interpolation)
        x = x + t * d

    stopping early when ``max|g| <= tolerance_grad``, when ``g·d >
    -tolerance_change``, when ``max|t*d| <= tolerance_change`` or when the
    loss changes by less than ``tolerance_change``.  Without a line search
    the closure is evaluated again after each move except the last.

    This is torch 2.13's ``LBFGS`` and follows it operation for operation
    (its ``_strong_wolfe`` and ``_cubic_interpolate`` are ported, with
    torch's quirks: the line search always uses ``tolerance_change=1e-9``,
    not the group's).  SciPy's ``L-BFGS-B`` and Optax's ``lbfgs`` use other
    line searches, stopping rules and initial step sizes, so they take other
    paths.

    Not a rule: it overrides :meth:`step` and runs generic Array API code
    on every backend (in place on mutable arrays, new arrays bound on JAX),
    with no compiled fast path.  Scalars (dot products, step sizes, ``ro``,
    ``H_diag``, ``al``) are Python floats where torch keeps 0-d tensors:
    identical in float64 (torch's ``number / tensor``, a reciprocal and a
    product, included); with float32 parameters torch rounds them to
    float32 and the two agree to float32 precision only.  Against torch's
    CPU kernels the last bits differ where the Array API leaves rounding to
    each library: dot products (summation order), ``add_(alpha=)`` (which
    torch fuses into multiply-adds) and torch's 0-d ``sqrt`` (MKL's, not
    always correctly rounded); with those three from torch the port
    reproduces ``torch.optim.LBFGS`` bit for bit (tested).

    ``step(closure)`` requires the closure: a function that evaluates the
    objective at the current parameters, sets every parameter's ``.grad``
    (calling ``backward()`` itself, after ``zero_grad()``), and returns the
    loss (a number, a 0-d array or a Tensor).  ``step`` returns the first
    evaluation's loss, as torch.  A parameter whose ``.grad`` is None
    counts as a zero gradient.  The closure runs in the caller's grad mode.

    The step is all-or-nothing: if the closure raises, or (unless
    ``nonfinite="ignore"``) a gradient the step accepts holds NaN or
    infinity (the first evaluation's, and each point an iteration moves
    to), the parameters are restored to their values before the step and
    the state is unchanged; ``"raise"`` then raises FloatingPointError
    naming the parameter, ``"skip"`` counts a skipped step and returns the
    first loss.  Trial points inside the line search may be non-finite, as
    in torch, whose bracketing then backs off.

    One parameter group only, as in torch.  The state (torch's keys
    ``func_evals``, ``n_iter``, ``d``, ``t``, ``old_dirs``, ``old_stps``,
    ``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``, ``al``) lives on
    the first parameter; its arrays are flat (the total number of elements
    of the parameters); a torch state dict loads.

    Args:
        params: parameters, or a dict name → parameter (one group).
        lr: learning rate: the initial step size of each iteration (default 1).
        max_iter: iterations per ``step`` (default 20).
        max_eval: closure evaluations per ``step`` (default ``max_iter * 5 // 4``).
        tolerance_grad: stop when the largest gradient magnitude is at most this
            (default 1e-7).
        tolerance_change: stop when the loss or the parameters change by less
            (default 1e-9).
        history_size: curvature pairs kept (default 100).
        line_search_fn: None (fixed step ``lr``) or ``"strong_wolfe"``.
        nonfinite: ``"raise"``, ``"skip"`` or ``"ignore"`` (see above).
    """

    hyper: ClassVar[Mapping[str, Any]] = {
        "lr": Real(),
        "max_iter": _Int(1),
        "max_eval": _Int(1),
        "tolerance_grad": Real(),
        "tolerance_change": Real(),
        "history_size": _Int(1),
        "line_search_fn": _Choice((None, "strong_wolfe")),
    }

    def __init__(
        self,
        params: Any,
        lr: float = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
        *,
        nonfinite: str = "raise",
    ):
        if max_eval is None:  # torch's default, made here as torch makes it
            max_eval = self.hyper["max_iter"].check("max_iter", max_iter) * 5 // 4
        defaults = {
            "lr": lr,
            "max_iter": max_iter,
            "max_eval": max_eval,
            "tolerance_grad": tolerance_grad,
            "tolerance_change": tolerance_change,
            "history_size": history_size,
            "line_search_fn": line_search_fn,
        }
        super().__init__(params, defaults, nonfinite=nonfinite)

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """As :meth:`Optimizer.add_param_group`, for the one group LBFGS has."""
        if self.param_groups:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        super().add_param_group(param_group)

    def _check_group(self, group: dict[str, Any]) -> None:
        if group.get("max_eval", 0) is None:  # torch's default, from max_iter
            group["max_iter"] = self.hyper["max_iter"].check("max_iter", group.get("max_iter"))
            group["max_eval"] = group["max_iter"] * 5 // 4
        super()._check_group(group)

    # ------------------------------------------------------- flat vectors

    def _params(self) -> list[Any]:
        return self.param_groups[0]["params"]

    def _flat_layout(self) -> tuple[Any, Any, Any, list[int]]:
        """(namespace, device, dtype, numbers of elements) of the flat vector."""
        params = self._params()
        xp = namespace(params[0].data)
        dtype = xp.result_type(*(p.data.dtype for p in params))
        sizes = [math.prod(p.data.shape) for p in params]
        return xp, device(params[0].data), dtype, sizes

    def _gather_flat_grad(self, layout: tuple) -> Any:
        """The gradients, flattened and concatenated (a new array; None counts as zeros)."""
        xp, dev, dtype, sizes = layout
        views = []
        for i, (p, n) in enumerate(zip(self._params(), sizes, strict=True)):
            g = p.grad
            if g is None:
                views.append(xp.zeros((n,), dtype=dtype, device=dev))
                continue
            # library, device, shape and a real floating dtype, as every optimizer's step checks
            g = _validate.check_gradient(self, 0, i, p, p.data, g)
            view = xp.reshape(g, (n,))
            views.append(view if view.dtype == dtype else xp.astype(view, dtype))
        return xp.concat(views)

    def _nonfinite_name(self, flat: Any, layout: tuple) -> Any:
        """Name of the first parameter whose part of ``flat`` is not finite, or None."""
        xp, _, _, sizes = layout
        if bool(xp.all(xp.isfinite(flat))):
            return None
        offset = 0
        for p, n in zip(self._params(), sizes, strict=True):
            if not bool(xp.all(xp.isfinite(flat[offset : offset + n]))):
                return self._names[id(p)]
            offset += n
        return self._names[id(self._params()[0])]  # pragma: no cover - unreachable

    def _add_grad(self, step_size: Any, update: Any) -> None:
        """``p += step_size * (p's part of update)`` for every parameter."""
        step_size = _plain(step_size)
        offset = 0
        for p in self._params():
            data = p.data
            n = math.prod(data.shape)
            xp = namespace(data)
            part = xp.reshape(update[offset : offset + n], tuple(data.shape))
            new = _axpy(data, step_size, part)
            if new.dtype != data.dtype:
                new = xp.astype(new, data.dtype)
            if is_immutable(data):
                p.data = new
            else:
                data[...] = new
            offset += n

    def _clone_param(self) -> list[Any]:
        return [
            p.data if is_immutable(p.data) else namespace(p.data).asarray(p.data, copy=True)
            for p in self._params()
        ]

    def _set_param(self, params_data: list[Any]) -> None:
        for p, data in zip(self._params(), params_data, strict=True):
            if is_immutable(p.data):
                p.data = data
            else:
                p.data[...] = data

    # ---------------------------------------------------------------- step

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run up to ``max_iter`` L-BFGS iterations; return the first evaluation's loss.

        ``closure`` (required) re-evaluates the model: it sets the
        parameters' gradients and returns the loss.
        """
        if closure is None:
            raise TypeError(
                "LBFGS.step() requires a closure: a function that zeroes the gradients, "
                "computes the loss, calls backward() (or sets each parameter's .grad) and "
                "returns the loss, e.g. opt.step(closure)"
            )
        if not callable(closure):
            raise TypeError(f"LBFGS.step() takes a callable closure, got {closure!r:.80}")
        group = self.param_groups[0]
        cache = self._caches.setdefault(id(group), {})
        group.update(_validate.check_hyper(self, 0, group, cache))  # as given, normalized
        params = self._params()
        for p in params:
            data = p.data
            name = self._names[id(p)]
            # the checks every optimizer's step makes (a bfloat16 dtype NumPy's isdtype
            # cannot name; a read-only buffer a library does not report)
            if not _validate.is_real_float(namespace(data), data.dtype):
                raise TypeError(
                    f"LBFGS supports real floating-point parameters only; parameter "
                    f"{name!r} has dtype {data.dtype}"
                )
            if not is_immutable(data) and not _validate.writable(data):
                raise ValueError(
                    f"the optimizer updates arrays in place, but parameter {name!r} is read-only"
                )
        record = self.state.get(params[0])
        state = dict(record) if record is not None else {}
        start = self._clone_param()
        try:
            with float_errors_ignored():
                loss = self._iterate(closure, state)
        except _Refused as refused:
            self._set_param(start)
            if self.nonfinite == "skip":
                self.skipped_steps += 1
                return refused.loss
            raise FloatingPointError(
                f"gradient of parameter {refused.name!r} contains NaN or infinity; no "
                "parameter or optimizer state was changed (pass nonfinite='skip' to skip "
                "such steps)"
            ) from None
        except BaseException:
            self._set_param(start)
            raise
        if record is None:
            self.state[params[0]] = state
        else:
            record.update(state)
        self._bump_versions([(group, [(p, None) for p in params])])
        self.step_count += 1
        return loss

    def _iterate(self, closure: Callable[[], Any], state: dict[str, Any]) -> Any:
        """torch's ``LBFGS.step`` on the working copy ``state``; returns the first loss."""
        group = self.param_groups[0]
        lr = group["lr"]
        max_iter = group["max_iter"]
        max_eval = group["max_eval"]
        tolerance_grad = group["tolerance_grad"]
        tolerance_change = group["tolerance_change"]
        line_search_fn = group["line_search_fn"]
        history_size = group["history_size"]
        layout = self._flat_layout()
        xp = layout[0]
        check = self.nonfinite != "ignore"

        def dot(a: Any, b: Any) -> _Scalar:
            return _vecdot(xp, a, b)

        def amax(a: Any) -> _Scalar:
            return _Scalar(float(xp.max(xp.abs(a))))

        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        # evaluate initial f(x) and df/dx
        orig_loss = closure()
        loss = _loss_value(orig_loss)
        current_evals = 1
        state["func_evals"] += 1

        def accept(flat: Any) -> Any:
            if check:
                name = self._nonfinite_name(flat, layout)
                if name is not None:
                    raise _Refused(name, orig_loss)
            return flat

        flat_grad = accept(self._gather_flat_grad(layout))
        opt_cond = amax(flat_grad) <= tolerance_grad

        # optimal condition
        if opt_cond:
            return orig_loss

        # state (the lists copied: the record keeps its own until the step is done)
        d = state.get("d")
        t = state.get("t")
        old_dirs = _copy(state.get("old_dirs"))
        old_stps = _copy(state.get("old_stps"))
        ro = _copy(state.get("ro"))
        H_diag = state.get("H_diag")
        prev_flat_grad = state.get("prev_flat_grad")
        prev_loss = state.get("prev_loss")
        if "al" in state:
            state["al"] = _copy(state["al"])

        n_iter = 0
        # optimize for a max of max_iter iterations
        while n_iter < max_iter:
            # keep track of nb of iterations
            n_iter += 1
            state["n_iter"] += 1

            # compute gradient descent direction
            if state["n_iter"] == 1:
                d = -flat_grad
                old_dirs, old_stps, ro = [], [], []
                H_diag = 1
            else:
                # do lbfgs update (update memory)
                y = flat_grad - prev_flat_grad
                s = d * _plain(t)
                ys = dot(y, s)  # y*s
                if ys > _CURVATURE_MIN:
                    # updating memory
                    if len(old_dirs) == history_size:
                        # shift history by one (limited-memory)
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)

                    # store new direction/step
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)

                    # update scale of initial Hessian approximation
                    H_diag = ys / dot(y, y)  # (y*y)

                # compute the approximate (L-BFGS) inverse Hessian multiplied by the gradient
                num_old = len(old_dirs)

                if "al" not in state:
                    state["al"] = [None] * history_size
                al = state["al"]
                if len(al) < num_old:  # history_size was raised since al was made
                    al.extend([None] * (num_old - len(al)))

                # iteration in L-BFGS loop collapsed to use just one buffer
                q = -flat_grad
                for i in range(num_old - 1, -1, -1):
                    al[i] = dot(old_stps[i], q) * ro[i]
                    q = _axpy(q, float(-al[i]), old_dirs[i])

                # multiply by initial Hessian; r/d is the final direction
                r = q * _plain(H_diag)
                for i in range(num_old):
                    be_i = dot(old_dirs[i], r) * ro[i]
                    r = _axpy(r, float(al[i] - be_i), old_stps[i])
                d = r

            prev_flat_grad = flat_grad  # torch copies; nothing here writes flat arrays
            prev_loss = loss

            # compute step length: reset initial guess for step size
            if state["n_iter"] == 1:
                t = min(1.0, 1.0 / _Scalar(float(xp.sum(xp.abs(flat_grad))))) * lr
            else:
                t = lr

            # directional derivative
            gtd = dot(flat_grad, d)  # g * d

            # directional derivative is below tolerance
            if gtd > -tolerance_change:
                break

            # optional line search: user function
            ls_func_evals = 0
            if line_search_fn is not None:
                x_init = self._clone_param()

                def obj_func(x: Any, t: Any, d: Any) -> tuple[float, Any]:
                    self._add_grad(t, d)
                    value = _loss_value(closure())
                    flat = self._gather_flat_grad(layout)
                    self._set_param(x)
                    return value, flat

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    obj_func,
                    x_init,
                    t,
                    d,
                    loss,
                    flat_grad,
                    gtd,
                    max_ls=max_eval - current_evals,
                    dot=dot,
                    amax=amax,
                )
                accept(flat_grad)
                self._add_grad(t, d)
                opt_cond = amax(flat_grad) <= tolerance_grad
            else:
                # no line search, simply move with fixed-step
                self._add_grad(t, d)
                if n_iter != max_iter:
                    # re-evaluate function only if not in last iteration (in a
                    # stochastic setting there is no use in re-evaluating it here)
                    loss = _loss_value(closure())
                    flat_grad = accept(self._gather_flat_grad(layout))
                    opt_cond = amax(flat_grad) <= tolerance_grad
                    ls_func_evals = 1

            # update func eval
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            # check conditions
            if n_iter == max_iter:
                break

            if current_evals >= max_eval:
                break

            # optimal condition
            if opt_cond:
                break

            # lack of progress
            if amax(d * _plain(t)) <= tolerance_change:
                break

            if abs(loss - prev_loss) < tolerance_change:
                break

        state["d"] = d
        state["t"] = _plain(t)
        state["old_dirs"] = old_dirs
        state["old_stps"] = old_stps
        state["ro"] = _numbers(ro)
        state["H_diag"] = _plain(H_diag)
        state["prev_flat_grad"] = prev_flat_grad
        state["prev_loss"] = prev_loss
        if "al" in state:
            state["al"] = _numbers(state["al"])
        return orig_loss

    # ---------------------------------------------------------- state dict

    def _convert_record(self, record: Mapping[str, Any], p: Any, name: Any) -> dict[str, Any]:
        """Validate and convert a loaded state (of this class or of torch.optim.LBFGS)."""
        if p is not self._params()[0]:
            raise ValueError(
                f"loaded state for parameter {name!r}: LBFGS keeps its state on the first "
                "parameter only"
            )
        _, dev, dtype, sizes = self._flat_layout()
        xp = namespace(p.data)
        flat = (sum(sizes),)
        where = f"loaded LBFGS state (parameter {name!r})"
        out: dict[str, Any] = {}
        for key, value in record.items():
            if key not in _STATE_KEYS:
                raise ValueError(f"{where} has an unknown key {key!r}; LBFGS keeps {_STATE_KEYS}")
            if key in ("func_evals", "n_iter"):
                out[key] = _count(value, f"{where}[{key!r}]")
            elif key in ("d", "prev_flat_grad"):
                out[key] = (
                    None if value is None else _flat(value, xp, dev, dtype, flat, key, where)
                )
            elif key in ("old_dirs", "old_stps"):
                items = _list(value, f"{where}[{key!r}]")
                out[key] = [
                    _flat(v, xp, dev, dtype, flat, f"{key}[{i}]", where)
                    for i, v in enumerate(items)
                ]
            elif key == "ro":
                items = _list(value, f"{where}['ro']")
                out[key] = [
                    _number(v, f"{where}['ro'][{i}]", positive=True) for i, v in enumerate(items)
                ]
            elif key == "al":
                items = _list(value, f"{where}['al']")
                out[key] = [
                    None if v is None else _number(v, f"{where}['al'][{i}]")
                    for i, v in enumerate(items)
                ]
            elif key == "H_diag":
                out[key] = (
                    None if value is None else _number(value, f"{where}['H_diag']", positive=True)
                )
            elif key == "t":
                out[key] = None if value is None else _number(value, f"{where}['t']")
            else:  # prev_loss: any real number (a loss may be infinite)
                out[key] = (
                    None if value is None else _number(value, f"{where}[{key!r}]", finite=False)
                )
        lengths = {k: len(out[k]) for k in ("old_dirs", "old_stps", "ro") if k in out}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{where}: old_dirs, old_stps and ro differ in length ({lengths})")
        if out.get("n_iter", 0) > 0:  # an iteration was made: what the next one reads is there
            missing = [k for k in _HISTORY_KEYS if out.get(k) is None]
            if missing:
                raise ValueError(
                    f"{where}: n_iter is {out['n_iter']}, but {', '.join(missing)} "
                    f"{'is' if len(missing) == 1 else 'are'} missing"
                )
        return out


# --------------------------------------------------------------- helpers


def _vecdot(xp: Any, a: Any, b: Any) -> _Scalar:
    """The dot product of two flat arrays, as a number (torch: ``a.dot(b)``, a 0-d tensor)."""
    return _Scalar(float(xp.vecdot(a, b)))


def _axpy(y: Any, alpha: Any, x: Any) -> Any:
    """``y + alpha * x``: torch's ``y.add_(x, alpha=alpha)`` (which may fuse the multiply-add)."""
    return y + x * alpha


def _loss_value(loss: Any) -> float:
    """The closure's loss as a Python float (a number, a 0-d array, or anything with .item())."""
    if isinstance(loss, numbers.Real) or array_api_compat.is_array_api_obj(loss):
        return float(loss)
    item = getattr(loss, "item", None)  # a neural_arch Tensor
    if callable(item):
        return float(item())
    raise TypeError(
        f"the LBFGS closure must return the loss (a number, a 0-d array or a Tensor), "
        f"got {type(loss).__name__}"
    )


def _copy(items: list | None) -> list | None:
    return None if items is None else list(items)


def _numbers(items: list | None) -> list | None:
    return None if items is None else [_plain(v) for v in items]


def _list(value: Any, where: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where} must be a list, got {type(value).__name__}")
    return list(value)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{where} must be an integer >= 0, got {value!r:.60}")
    return int(value)


def _number(value: Any, where: str, *, positive: bool = False, finite: bool = True) -> Any:
    """A loaded scalar (a number or a 0-d array, torch's 0-d tensors) as an int or float."""
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if isinstance(value, numbers.Integral):
        number: Any = int(value)
    elif isinstance(value, numbers.Real):
        number = float(value)
    elif array_api_compat.is_array_api_obj(value) and tuple(value.shape) in ((), (1,)):
        number = float(value[0] if tuple(value.shape) == (1,) else value)
    else:
        raise ValueError(f"{where} must be a number, got {value!r:.60}")
    if (
        (finite and not math.isfinite(number))
        or math.isnan(number)
        or (positive and not number > 0)
    ):
        expected = "a positive finite number" if positive else "a finite number"
        raise ValueError(f"{where} must be {expected if finite else 'a number'}, got {number!r}")
    return number


def _flat(value: Any, xp: Any, dev: Any, dtype: Any, shape: tuple, key: str, where: str) -> Any:
    if not array_api_compat.is_array_api_obj(value):
        raise ValueError(f"{where}: {key} must be an array, got {type(value).__name__}")
    if tuple(value.shape) != shape:
        raise ValueError(
            f"{where}: {key} has shape {tuple(value.shape)}, but the parameters have "
            f"{shape[0]} elements in all (expected shape {shape})"
        )
    return to_backend(value, xp, device=dev, dtype=dtype, copy=True)
