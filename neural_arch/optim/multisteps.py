"""``MultiSteps``: gradient accumulation, one real step of the inner optimizer every k calls."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..backend import device, float_errors_ignored, is_immutable, namespace
from ._precision import state_dtype
from ._wrapper import Wrapper, check_keys, load_arrays, misfit, param_list
from .lbfgs import LBFGS
from .lr_scheduler import _integer
from .optimizer import _count

__all__ = ["MultiSteps"]

_KEYS = ("optimizer", "mini_step", "acc_grads")


class MultiSteps(Wrapper):
    """Accumulate gradients over ``every_k`` calls of :meth:`step`; step the inner optimizer
    on their mean every ``every_k``-th call (Optax's ``MultiSteps``).

    With ``g_1 ... g_k`` the gradients seen by ``k = every_k`` consecutive
    calls, the k-th call sets each parameter's ``.grad`` to
    ``(g_1 + ... + g_k) / k`` and runs ``optimizer.step()``; the other calls
    only add ``.grad`` into one buffer per parameter and leave parameters and
    the inner optimizer untouched.  Training with a batch split into k
    micro-batches therefore takes the step the whole batch would take (for a
    mean loss).  A parameter whose ``.grad`` is None in some calls adds
    nothing then (its mean still divides by k); one with no gradient in the
    whole window keeps ``.grad`` None and is not stepped.

    Args:
        optimizer: the inner optimizer (any neural_arch optimizer except
            LBFGS, which needs a closure).
        every_k: the number of calls per real step, a positive integer.

    The buffers are accumulated in place (JAX: rebound), in the parameter's
    dtype, or float32 for float16/bfloat16 parameters; they exist only while
    a window is open.  The k-th call makes the mean as a new array per
    parameter, which becomes ``.grad`` (float32 for float16/bfloat16
    parameters, which the inner optimizer computes in anyway).
    Optax keeps a running mean ``acc + (g - acc) / (n + 1)`` instead of a sum;
    the two agree up to rounding.

    :meth:`step` returns whether the inner optimizer stepped.  Step a
    learning-rate scheduler when it does, so that it counts real steps::

        if optimizer.step():
            scheduler.step()

    (a scheduler may be built on the wrapper or on its inner optimizer: they
    share ``param_groups``).  ``step_count`` and ``skipped_steps`` are the
    inner optimizer's, so they count real steps too.

    Non-finite gradients follow the inner optimizer's ``nonfinite`` policy,
    applied to each call's gradients: with ``"raise"`` the call raises
    FloatingPointError naming the parameter and changes nothing (the
    micro-batch is not added; the next call continues the window); with
    ``"skip"`` the window's real step is skipped at once: the accumulated
    gradients are discarded, ``skipped_steps`` grows by one, and the next
    call opens a new window (Optax's ``should_skip_update_fn`` would drop
    only the bad micro-batch).  The inner optimizer checks the mean again at
    the real step.  Any call that raises changes nothing; :meth:`reset`
    discards an open window.

    ``state_dict()`` is ``{"optimizer": inner state dict, "mini_step": int,
    "acc_grads": {parameter index: array}}`` and resumes a window midway.
    """

    def __init__(self, optimizer: Any, every_k: int = 4) -> None:
        super().__init__(optimizer)
        if isinstance(self.optimizer, LBFGS):
            raise TypeError(
                f"optimizer must not be {type(self.optimizer).__name__}: its step needs a "
                "closure, which MultiSteps does not take"
            )
        self.every_k = _integer("every_k", every_k, low=1)
        self._mini_step = 0
        self._acc: dict[int, tuple[Any, Any]] = {}  # id(param) -> (param, sum of gradients)

    @property
    def mini_step(self) -> int:
        """Calls accumulated in the open window (0 to ``every_k - 1``)."""
        return self._mini_step

    @property
    def accumulating(self) -> bool:
        """Whether a window is open (gradients are waiting for the real step)."""
        return self._mini_step > 0

    def reset(self) -> None:
        """Discard the accumulated gradients; the next call opens a new window."""
        self._acc.clear()
        self._mini_step = 0

    # ------------------------------------------------------------------ step

    def step(self, closure: Callable[[], Any] | None = None) -> bool:
        """Add the gradients to the window; on its ``every_k``-th call, step the inner
        optimizer on the mean.  Returns whether the inner optimizer stepped."""
        if closure is not None:
            raise TypeError(
                "MultiSteps.step() takes no closure: compute the gradients, then call step()"
            )
        self._check_buffers()
        with float_errors_ignored():
            work = self.optimizer._checked_work()  # the inner's checks, on this call's grads
            if work is None:  # nonfinite="skip": skipped_steps has counted the real step
                self.reset()
                return False
            grads = {id(p): g for _, pairs in work for p, g in pairs}
            if self._mini_step + 1 < self.every_k:
                self._accumulate(grads)
                self._mini_step += 1
                return False
            return self._real_step(grads)

    def _check_buffers(self) -> None:
        """Each buffer still fits its parameter (library, device, shape)."""
        bad = misfit(self._acc.values())
        if bad is not None:
            (p, buf), x = bad, bad[0].data
            name = self.optimizer._names.get(id(p), "?")
            raise ValueError(
                f"parameter {name!r} has changed (shape {tuple(x.shape)}, device "
                f"{device(x)}) since its gradients were accumulated (shape "
                f"{tuple(buf.shape)}, device {device(buf)}); call reset() to discard them"
            )

    def _accumulate(self, grads: dict[int, Any]) -> None:
        for p in param_list(self.optimizer):
            g = grads.get(id(p))
            if g is None:
                continue
            xp = namespace(p.data)
            dtype = state_dtype(xp, p.data.dtype)
            entry = self._acc.get(id(p))
            if entry is None:
                self._acc[id(p)] = (p, xp.astype(g, dtype, copy=True))
                continue
            buf = entry[1]
            if buf.dtype != dtype:  # .data rebound to another float dtype
                buf = xp.astype(buf, dtype)
            if g.dtype != dtype:
                g = xp.astype(g, dtype)
            self._acc[id(p)] = (p, _add(buf, g))

    def _real_step(self, grads: dict[int, Any]) -> bool:
        """Set each ``.grad`` to the window's mean and step the inner optimizer.

        The buffers are read, not written, until the inner step has returned:
        if it raises, the gradients are put back and the window stays as it was.
        """
        k = float(self.every_k)
        saved = []
        for p in param_list(self.optimizer):
            g, entry = grads.get(id(p)), self._acc.get(id(p))
            if g is None and entry is None:
                continue
            xp = namespace(p.data)
            dtype = state_dtype(xp, p.data.dtype)
            if entry is None:
                total = xp.astype(g, dtype, copy=True)
            elif g is None:
                total = xp.astype(entry[1], dtype, copy=True)
            else:
                total = xp.astype(entry[1], dtype, copy=True)
                total = _add(total, g if g.dtype == dtype else xp.astype(g, dtype))
            total = _divide(total, k)
            saved.append((p, p.grad))
            p.grad = total
        stepped = self.optimizer.step_count
        try:
            self.optimizer.step()
        except BaseException:
            for p, g in saved:
                p.grad = g
            raise
        self.reset()
        return self.optimizer.step_count != stepped

    # ------------------------------------------------------------ state dict

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizer": ..., "mini_step": int, "acc_grads": {index: array}}``; the
        arrays are the wrapper's own (as an optimizer's state dict)."""
        index = {id(p): i for i, p in enumerate(param_list(self.optimizer))}
        acc = {index[key]: buf for key, (_, buf) in self._acc.items() if key in index}
        return {
            "optimizer": self.optimizer.state_dict(),
            "mini_step": self._mini_step,
            "acc_grads": dict(sorted(acc.items())),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict` (of any backend): all or nothing.

        Checked before anything changes: exactly the three keys, ``mini_step``
        an integer in ``[0, every_k)`` (``every_k`` is this wrapper's, which
        may differ from the saving one's), ``acc_grads`` empty when
        ``mini_step`` is 0, each buffer a finite real floating array of its
        parameter's shape, and the inner state dict as the inner optimizer's
        ``load_state_dict`` checks it.
        """
        check_keys(state_dict, _KEYS, "MultiSteps")
        mini_step = _count(state_dict["mini_step"], "state_dict['mini_step']")
        if mini_step >= self.every_k:
            raise ValueError(
                f"state_dict['mini_step'] is {mini_step}, but this MultiSteps steps every "
                f"{self.every_k} calls: expected an integer in [0, {self.every_k})"
            )
        params = param_list(self.optimizer)
        acc = load_arrays(state_dict["acc_grads"], params, "state_dict['acc_grads']")
        if mini_step == 0 and acc:
            raise ValueError(
                "state_dict['acc_grads'] holds gradients, but state_dict['mini_step'] is 0 "
                "(no window is open)"
            )
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._acc = acc
        self._mini_step = mini_step

    def _options(self) -> str:
        return f"every_k={self.every_k}"


def _add(buf: Any, g: Any) -> Any:
    """``buf + g``, written into ``buf`` unless it is immutable (JAX)."""
    if is_immutable(buf):
        return buf + g
    buf += g
    return buf


def _divide(total: Any, k: float) -> Any:
    """``total / k``, written into ``total`` unless it is immutable (JAX)."""
    if is_immutable(total):
        return total / k
    total /= k
    return total
