"""``MultiOptimizer``: one optimizer per part of a model, stepped, zeroed and saved as one."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from ..backend import float_errors_ignored
from ._wrapper import check_inner, param_list
from .lbfgs import LBFGS
from .lr_scheduler import _show
from .optimizer import Optimizer

__all__ = ["MultiOptimizer"]


class MultiOptimizer:
    """Several optimizers over disjoint sets of parameters, used as one (Optax's
    ``multi_transform``/``partition``, Keras's ``MultiOptimizer``).

    Args:
        optimizers: a dict name → optimizer (names are str), or a list of
            optimizers (named by their positions 0, 1, ...).  No parameter
            may belong to two of them.

    Example::

        opt = MultiOptimizer({
            "backbone": na.SGD(backbone.parameters(), lr=0.01, momentum=0.9),
            "head": na.Adam(head.parameters(), lr=1e-3),
        })

    :meth:`step` steps every optimizer, in order, on the gradients the
    parameters hold; ``zero_grad`` zeroes all; ``state_dict()`` is
    ``{name: that optimizer's state dict}``.  ``param_groups`` lists every
    optimizer's groups (the groups themselves: a scheduler built on the
    MultiOptimizer writes into them; the list is read-only); ``state`` looks
    a parameter up in the optimizer that holds it; ``optimizers`` maps the
    names to the optimizers.

    What is all-or-nothing: :meth:`step` first runs every optimizer's own
    checks of its gradients, hyperparameters and state (and, unless
    ``nonfinite="ignore"``, finiteness), and steps none if one refuses,
    so a ValueError, TypeError or FloatingPointError leaves every optimizer
    as it was.  Only then is each stepped (its own ``step()``, hooks
    included), those whose class defines its own ``step`` (with checks of
    its own, as ``AdamWScheduleFree``'s train mode) first: with one such
    optimizer, its refusal too changes nothing.  A failure the checks cannot
    foresee (a hook that raises) leaves the optimizers before it stepped.
    Each optimizer applies its own ``nonfinite`` policy: with ``"skip"``,
    the one whose gradients are not finite skips its step, the others step.
    The checks read the gradients twice (once before all steps, once in
    each step).
    :meth:`load_state_dict` checks the names, then loads each optimizer's
    part in order (each all or nothing); if one refuses its part, the
    optimizers loaded before it are put back as they were.
    """

    def __init__(self, optimizers: Any) -> None:
        if isinstance(optimizers, Mapping):
            items = list(optimizers.items())
            for name, _ in items:
                if not isinstance(name, str):
                    raise TypeError(f"optimizers must be keyed by str names, got {_show(name)}")
            where = [f"optimizers[{name!r}]" for name, _ in items]
        elif isinstance(optimizers, (list, tuple)):
            items = list(enumerate(optimizers))
            where = [f"optimizers[{i}]" for i, _ in items]
        else:
            raise TypeError(
                "optimizers must be a dict name -> optimizer or a list of optimizers, "
                f"got {_show(optimizers)}"
            )
        if not items:
            raise ValueError("optimizers must not be empty")
        owners: dict[int, tuple[str, Any]] = {}  # id(param) -> (where, its name there)
        seen: dict[int, str] = {}
        for (_, opt), at in zip(items, where, strict=True):
            check_inner(opt, at)
            if isinstance(opt, LBFGS):
                raise TypeError(
                    f"{at} must not be LBFGS: its step needs a closure, and a "
                    "MultiOptimizer steps its optimizers without one"
                )
            if id(opt) in seen:
                raise ValueError(f"{at} is {seen[id(opt)]} again: give each optimizer once")
            seen[id(opt)] = at
            for p in param_list(opt):
                mine = opt._names.get(id(p))
                if id(p) in owners:
                    other, theirs = owners[id(p)]
                    raise ValueError(
                        f"parameter {mine!r} of {at} is also parameter {theirs!r} of {other}; "
                        "each parameter may belong to one optimizer only"
                    )
                owners[id(p)] = (at, mine)
        self._optimizers: dict[Any, Optimizer] = dict(items)

    @property
    def optimizers(self) -> Mapping[Any, Optimizer]:
        """name → optimizer (read-only)."""
        return MappingProxyType(self._optimizers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Every optimizer's groups, in order (a read-only list of the groups themselves)."""
        return _Groups(g for opt in self._optimizers.values() for g in opt.param_groups)

    @property
    def state(self) -> Mapping[Any, dict[str, Any]]:
        """parameter → its state record, in the optimizer that holds the parameter."""
        return _State(self._optimizers)

    @property
    def lr(self) -> float:
        """The learning rate shared by every group (assigning sets every group's lr)."""
        lrs = [g["lr"] for g in self.param_groups]
        if any(lr != lrs[0] for lr in lrs):
            raise ValueError(
                f"the parameter groups have different learning rates ({lrs}); read or set "
                "param_groups[i]['lr'] (or one optimizer's lr) instead"
            )
        return lrs[0]

    @lr.setter
    def lr(self, value: float) -> None:
        for opt in self._optimizers.values():
            opt.hyper["lr"].check("lr", value)
        for opt in self._optimizers.values():
            opt.lr = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's gradient (each optimizer's ``zero_grad``)."""
        for opt in self._optimizers.values():
            opt.zero_grad(set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Check every optimizer's gradients, then step each; return ``closure()``'s loss.

        ``closure`` (optional) is called once, before the checks, to compute
        the gradients; the optimizers are stepped without it.
        """
        loss = closure() if closure is not None else None
        opts = list(self._optimizers.values())
        if len(opts) > 1:
            skipped = [opt.skipped_steps for opt in opts]
            try:
                with float_errors_ignored():
                    for opt in opts:
                        opt._checked_work()
            finally:  # a skip the checks found is counted by that optimizer's own step
                for opt, count in zip(opts, skipped, strict=True):
                    opt.skipped_steps = count
        # an optimizer with a step of its own (checks the pre-check cannot run) goes first
        for opt in sorted(opts, key=lambda opt: type(opt).step is Optimizer.step):
            opt.step()
        return loss

    # ------------------------------------------------------------ state dict

    def state_dict(self) -> dict[Any, Any]:
        """``{name: that optimizer's state_dict()}``."""
        return {name: opt.state_dict() for name, opt in self._optimizers.items()}

    def load_state_dict(self, state_dict: Mapping[Any, Any]) -> None:
        """Load a :meth:`state_dict`: every name must be there, and no other.

        Each optimizer checks and loads its own part (all or nothing); should
        one refuse, those loaded before it are restored, so a failed load
        changes nothing.  The names of a list may be ints or their decimal
        strings.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a dict name -> state dict, got {_show(state_dict)}"
            )
        parts = {}
        for key, value in state_dict.items():
            name = key
            if isinstance(key, str) and key.isdecimal() and key not in self._optimizers:
                name = int(key)
            if name not in self._optimizers or isinstance(name, bool):
                raise ValueError(
                    f"state_dict has an entry {key!r}, but this MultiOptimizer's optimizers "
                    f"are named {list(self._optimizers)}"
                )
            if name in parts:
                raise ValueError(f"state_dict names optimizer {name!r} twice")
            parts[name] = value
        missing = [name for name in self._optimizers if name not in parts]
        if missing:
            raise ValueError(f"state_dict has no entry for the optimizers named {missing}")
        done: list[tuple[Optimizer, tuple]] = []
        try:
            for name, opt in self._optimizers.items():
                snapshot = _snapshot(opt)
                try:
                    opt.load_state_dict(parts[name])
                except (TypeError, ValueError) as e:
                    if type(e) not in (TypeError, ValueError):
                        raise
                    raise type(e)(f"state_dict[{name!r}]: {e}") from None
                done.append((opt, snapshot))
        except BaseException:
            for opt, snapshot in reversed(done):
                _restore(opt, snapshot)
            raise

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for name, opt in self._optimizers.items():
            inner = repr(opt).splitlines()
            lines.append(f"  {name!r}: {inner[0]}")
            lines.extend("    " + line for line in inner[1:])
        lines.append(")")
        return "\n".join(lines)


def _snapshot(opt: Optimizer) -> tuple:
    """What ``load_state_dict`` replaces: attributes, group contents, state records."""
    return (
        dict(vars(opt)),
        [dict(g) for g in opt.param_groups],
        [(p, opt.state.get(p)) for p in opt.state],
    )


def _restore(opt: Optimizer, snapshot: tuple) -> None:
    attrs, groups, records = snapshot
    vars(opt).clear()
    vars(opt).update(attrs)
    for group, old in zip(opt.param_groups, groups, strict=True):
        group.clear()
        group.update(old)
    opt.state.clear()
    for p, record in records:
        opt.state[p] = record
    opt._caches.clear()


class _Groups(list):
    """A list that refuses to change (``MultiOptimizer.param_groups``)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "MultiOptimizer.param_groups is read-only: add a group to one of its optimizers "
            "(multi.optimizers[name].add_param_group(...))"
        )

    append = extend = insert = remove = pop = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse


class _State(Mapping):
    """``MultiOptimizer.state``: each parameter's record in the optimizer that holds it."""

    def __init__(self, optimizers: dict[Any, Optimizer]) -> None:
        self._optimizers = optimizers

    def _owner(self, param: Any) -> Optimizer | None:
        for opt in self._optimizers.values():
            if id(param) in opt._names:
                return opt
        return None

    def __getitem__(self, param: Any) -> dict[str, Any]:
        owner = self._owner(param)
        if owner is None:
            raise KeyError(param)
        return owner.state[param]

    def get(self, param: Any, default: Any = None) -> Any:
        owner = self._owner(param)
        return default if owner is None else owner.state.get(param, default)

    def __contains__(self, param: object) -> bool:
        owner = self._owner(param)
        return owner is not None and param in owner.state

    def __iter__(self) -> Iterator[Any]:
        for opt in self._optimizers.values():
            yield from opt.state

    def __len__(self) -> int:
        return sum(len(opt.state) for opt in self._optimizers.values())

    def __repr__(self) -> str:
        return f"<MultiOptimizer state of {len(self)} parameters>"
