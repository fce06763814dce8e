"""Every program the optimizers' rules can trace to: the kernels the CuPy fast path can launch.

Shared by ``tests/test_cupy_host.py`` (which checks, among other things, that
every kernel its runs launch is one of these) and ``.ci/cupy_compile_check.py``
(which compiles them all with NVRTC).
"""

from __future__ import annotations

import inspect
import itertools

import numpy as np

from neural_arch import optim
from neural_arch.optim.optimizer import Optimizer
from neural_arch.optim.rule import Program, trace

__all__ = ["flag_names", "reachable_programs", "rule_optimizers"]


class _Param:
    def __init__(self, data, grad):
        self.data, self.grad = data, grad


def rule_optimizers() -> list[type]:
    """The optimizer classes of ``neural_arch.optim`` whose update is a rule (``_rule``)."""
    classes = [getattr(optim, name) for name in optim.__all__]
    return [
        c
        for c in classes
        if isinstance(c, type) and issubclass(c, Optimizer) and c._rule is not None
    ]


def flag_names(cls: type) -> list[str]:
    """The flags ``cls._flags`` gives, asked after one step with default hyperparameters."""
    p = _Param(np.zeros(4), np.full(4, 0.5))
    opt = cls([p])
    if hasattr(opt, "train"):  # schedule-free optimizers step in train mode only
        opt.train()
    opt.step()
    record = opt.state[p]
    scalars = {k: record[k] for k in cls._scalar_state}
    return sorted(opt._flags(opt.param_groups[0], record.get("step"), scalars))


def reachable_programs() -> tuple[dict[str, list[tuple[str, Program]]], int]:
    """({optimizer: [(flags and state, program), ...]}, how many combinations the rules refuse).

    Every combination of the rule's flags (the keys of ``_flags``) and of its
    optional state arrays (those with a default) is traced.  The optimizer
    reaches at most these: a combination the rule refuses to trace (Adam's
    amsgrad without ``max_exp_avg_sq``) is one its own step could not run.
    """
    found: dict[str, list[tuple[str, Program]]] = {}
    refused = 0
    for cls in rule_optimizers():
        rule, flags = cls._rule, flag_names(cls)
        params = inspect.signature(rule).parameters
        states = [k for k in params if k not in ("p", "g", "s", "f")]
        optional = [k for k in states if params[k].default is not inspect.Parameter.empty]
        programs = found[cls.__name__] = []
        for bits in itertools.product((False, True), repeat=len(flags)):
            on = dict(zip(flags, bits, strict=True))
            for given in itertools.product((False, True), repeat=len(optional)):
                absent = {k for k, g in zip(optional, given, strict=True) if not g}
                present = tuple(k for k in states if k not in absent)
                try:
                    program = trace(rule, present, on)
                except TypeError:
                    refused += 1
                    continue
                flags_on = ", ".join(k for k, v in on.items() if v) or "no flags"
                origin = f"{cls.__name__} ({flags_on}; state: {', '.join(present) or 'none'})"
                programs.append((origin, program))
    return found, refused
