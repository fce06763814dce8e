"""Optimizer hooks, as torch.optim's: step, state_dict and load_state_dict, before and after.

:class:`~neural_arch.optim.Optimizer` keeps one ordered dict of hooks per
kind; ``register_*_hook`` returns a :class:`RemovableHandle`.  The three
methods are wrapped (for every subclass that defines its own, by
``Optimizer.__init_subclass__``) so that the hooks run once per call, also
when a subclass's method calls its parent's.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

__all__ = ["KINDS", "RemovableHandle", "add_hook", "hooked"]

#: hook kind -> the attribute holding its dict
KINDS = (
    "step_pre",
    "step_post",
    "state_dict_pre",
    "state_dict_post",
    "load_state_dict_pre",
    "load_state_dict_post",
)
_ids = itertools.count()


class RemovableHandle:
    """The handle of a registered hook: ``handle.remove()`` (or a ``with`` block) removes it."""

    def __init__(self, hooks: dict[int, Callable]) -> None:
        self.id = next(_ids)
        self._hooks = hooks

    def remove(self) -> None:
        """Remove the hook (again: nothing)."""
        self._hooks.pop(self.id, None)

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def add_hook(hooks: dict[int, Callable], hook: Any, prepend: bool) -> RemovableHandle:
    """Register ``hook`` in ``hooks`` (first when ``prepend``); its handle."""
    if not callable(hook):
        raise TypeError(f"hook must be callable, got {hook!r:.80}")
    if not isinstance(prepend, bool):
        raise TypeError(f"prepend must be True or False, got {prepend!r:.80}")
    handle = RemovableHandle(hooks)
    if prepend:
        rest = dict(hooks)
        hooks.clear()
        hooks[handle.id] = hook
        hooks.update(rest)
    else:
        hooks[handle.id] = hook
    return handle


def _hooks(opt: Any, kind: str) -> list[Callable]:
    hooks = getattr(opt, "_hooks", None)
    return list(hooks[kind].values()) if hooks else []


def hooked(name: str, method: Callable) -> Callable:
    """``method`` (``step``, ``state_dict`` or ``load_state_dict``) running its hooks."""
    if getattr(method, "_hooked", None) == name:
        return method
    flag = f"_in_{name}_hooks"

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        hooks = getattr(self, "_hooks", None)
        if not hooks or getattr(self, flag, False):
            return method(self, *args, **kwargs)
        pre, post = hooks[f"{name}_pre"], hooks[f"{name}_post"]
        if not pre and not post:
            return method(self, *args, **kwargs)
        setattr(self, flag, True)
        try:
            if name == "step":  # torch's: args start with the optimizer itself
                args = (self, *args)
                for hook in list(pre.values()):
                    out = hook(self, args, kwargs)
                    if out is not None:
                        if not (isinstance(out, tuple) and len(out) == 2):
                            raise RuntimeError(
                                "a step pre-hook must return None or a tuple (args, kwargs), "
                                f"got {out!r:.80}"
                            )
                        args, kwargs = tuple(out[0]), dict(out[1])
                result = method(*args, **kwargs)
                for hook in list(post.values()):
                    hook(self, args, kwargs)
                return result
            if name == "state_dict":
                for hook in list(pre.values()):
                    hook(self)
                result = method(self, *args, **kwargs)
                for hook in list(post.values()):
                    out = hook(self, result)
                    if out is not None:
                        result = out
                return result
            # load_state_dict(state_dict)
            args = list(args)
            key = "state_dict" if "state_dict" in kwargs else None
            state_dict = kwargs[key] if key else args[0] if args else None
            for hook in list(pre.values()):
                out = hook(self, state_dict)
                if out is not None:
                    state_dict = out
            if key:
                kwargs[key] = state_dict
            elif args:
                args[0] = state_dict
            result = method(self, *args, **kwargs)
            for hook in list(post.values()):
                hook(self)
            return result
        finally:
            setattr(self, flag, False)

    run._hooked = name
    return run
