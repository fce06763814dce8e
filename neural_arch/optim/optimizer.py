"""The optimizer base: parameter groups, per-parameter state, state dicts, the step.

An elementwise optimizer is its signature, docstring, hyperparameter spec
(:attr:`Optimizer.hyper`) and rule (:attr:`Optimizer._rule`, with
``_flags``, ``_scalars`` and ``_init_state`` beside it; see
docs/adding_an_optimizer.md).  Everything else lives here and behaves as in
``torch.optim``: groups, state, state dicts, the all-or-nothing step, and the
per-group loop that runs the rule on the fast path where the arrays qualify
and on the generic engine elsewhere.  A non-elementwise optimizer overrides
``_update_group`` instead.

A parameter is any object with ``.data`` (an array of an Array API library)
and ``.grad`` (``None`` or an array of the same shape): :class:`neural_arch.Parameter`,
or a small class of your own.  The optimizer knows nothing of ``nn``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import itertools
import math
import numbers
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import array_api_compat

from ..backend import backend_name, device, float_errors_ignored, namespace, to_backend
from . import _engine, _fastpath, _hooks, _hyper, _validate
from ._hyper import Real
from ._precision import is_low, state_dtype, state_zeros
from .rule import trace

__all__ = ["Optimizer"]

_NONFINITE_MODES = ("raise", "skip", "ignore")


class _Record(dict):
    """A parameter's state record: a dict that tells its optimizer when it is changed.

    The step checks a record when it first sees it and again only after a
    change (``state._version``), so that the steady state of training costs
    no check per parameter; writes from outside (``opt.state[p]["exp_avg"]
    = ...``) go through these methods, the optimizer's own through
    ``dict``'s.  A copy or a pickle is a record of no optimizer until its
    :class:`_ParamState` adopts it.
    """

    __slots__ = ("_owner",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner: _ParamState | None = None

    def _touch(self) -> None:
        owner = self._owner
        if owner is not None:
            owner._version += 1

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, value)
        self._touch()

    def __delitem__(self, key: Any) -> None:
        dict.__delitem__(self, key)
        self._touch()

    def update(self, *args: Any, **kwargs: Any) -> None:
        dict.update(self, *args, **kwargs)
        self._touch()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self._touch()
        return dict.setdefault(self, key, default)

    def pop(self, *args: Any) -> Any:
        self._touch()
        return dict.pop(self, *args)

    def popitem(self) -> tuple:
        self._touch()
        return dict.popitem(self)

    def clear(self) -> None:
        dict.clear(self)
        self._touch()

    def __ior__(self, other: Any) -> _Record:
        self.update(other)
        return self

    def __reduce__(self) -> tuple:
        return (_Record, (dict(self),))

    def __copy__(self) -> _Record:
        return _Record(self)

    def __deepcopy__(self, memo: dict) -> _Record:
        return _Record(copy.deepcopy(dict(self), memo))


class _ParamState(Mapping):
    """``optimizer.state``: parameter → its state record, keyed by identity.

    Parameters need not be hashable (a Tensor may define elementwise ``==``),
    so records are stored under ``id(param)`` together with the parameter.
    Like PyTorch's ``defaultdict(dict)``, reading the state of a parameter
    that has none yet gives (and stores) an empty record; ``get`` and ``in``
    do not store anything.  A record assigned with ``state[p] = d`` is
    stored as a record of its own holding ``d``'s entries (later changes to
    ``d`` itself are not seen: change ``state[p]``).
    """

    def __init__(self) -> None:
        self._records: dict[int, tuple[Any, _Record]] = {}
        self._version = 0  # changes whenever a record is added, replaced, removed or changed

    def _adopt(self, record: Any) -> _Record:
        if type(record) is not _Record or (
            record._owner is not None and record._owner is not self
        ):
            record = _Record(record)
        record._owner = self
        return record

    def __getitem__(self, param: Any) -> dict[str, Any]:
        entry = self._records.get(id(param))
        if entry is None:
            entry = self._records[id(param)] = (param, self._adopt({}))
            self._version += 1
        return entry[1]

    def get(self, param: Any, default: Any = None) -> Any:
        entry = self._records.get(id(param))
        return default if entry is None else entry[1]

    def __setitem__(self, param: Any, record: dict[str, Any]) -> None:
        if not isinstance(record, Mapping):
            raise TypeError(f"a state record is a dict, got {type(record).__name__}")
        self._records[id(param)] = (param, self._adopt(record))
        self._version += 1

    def __contains__(self, param: object) -> bool:
        return id(param) in self._records

    def __iter__(self) -> Iterator[Any]:
        return (param for param, _ in self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def clear(self) -> None:
        self._records.clear()
        self._version += 1

    def __setstate__(self, state: dict) -> None:  # a copy or an unpickled one adopts its records
        self.__dict__.update(state)
        for _, record in self._records.values():
            record._owner = self

    def __repr__(self) -> str:
        return f"<optimizer state of {len(self)} parameters>"


class StateView(Mapping):
    """A read-only view ``name → state[param][key]`` (e.g. ``Adam.m``, ``Adam.v``).

    Names are the keys of a dict of parameters, else positions (``0, 1, ...``)
    in the order the parameters were given; ``"3"`` finds position 3 too.
    Only parameters that have taken a step appear.  The arrays are the
    optimizer's own state, not copies.
    """

    def __init__(self, optimizer: Optimizer, key: str) -> None:
        self._optimizer = optimizer
        self._key = key

    def _items(self) -> Iterator[tuple[Any, Any]]:
        opt = self._optimizer
        for group in opt.param_groups:
            for p in group["params"]:
                record = opt.state.get(p)
                if record is not None and record.get(self._key) is not None:
                    yield opt._names[id(p)], record[self._key]

    def __getitem__(self, name: Any) -> Any:
        for key, value in self._items():
            if key == name or (isinstance(key, int) and str(key) == name):
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[Any]:
        return (name for name, _ in self._items())

    def __len__(self) -> int:
        return sum(1 for _ in self._items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._key!r}, names={list(self)})"


def _is_param(obj: Any) -> bool:
    return hasattr(obj, "data") and hasattr(obj, "grad")


def _as_param_list(params: Any, where: str) -> tuple[list[Any], list[Any] | None]:
    """(parameters, names or None) from a parameter, an iterable, or a dict name → parameter."""
    if isinstance(params, Mapping):
        return list(params.values()), list(params.keys())
    if _is_param(params):
        return [params], None
    if isinstance(params, (set, frozenset)):
        raise TypeError(
            f"{where} must be an ordered collection of parameters (a list, tuple or dict); "
            "a set has no stable order, so state_dict indices would not be reproducible"
        )
    if isinstance(params, Iterable) and not isinstance(params, (str, bytes)):
        return list(params), None
    raise TypeError(
        f"{where} must be an iterable of parameters, a dict name -> parameter, or a list "
        f"of parameter-group dicts, got {type(params).__name__}"
    )


_get_step = operator.itemgetter("step")


class _Caches(dict):
    """The fast path's per-group tables (raw data addresses among them).

    A copy or a pickle of an optimizer starts without them: copied
    addresses would point into the original's arrays.
    """

    def __copy__(self) -> _Caches:
        return _Caches()

    def __deepcopy__(self, memo: dict) -> _Caches:
        return _Caches()

    def __reduce__(self) -> tuple:
        return (_Caches, ())


def _as_tuple(values: Any, keys: tuple[str, ...]) -> tuple:
    """What ``itemgetter(*keys)`` returned, as a tuple also for one key."""
    return (values,) if len(keys) == 1 else tuple(values)


def _has_none(records: list[dict], key: str) -> bool:
    """Whether some record's ``key`` is None (compared by identity: values may be arrays)."""
    return any(map(operator.is_, map(operator.itemgetter(key), records), itertools.repeat(None)))


def _state_keys(rule: Callable) -> tuple[str, ...]:
    """The state arrays a rule takes: its parameters other than ``p, g, s, f``."""
    keys = _STATE_KEYS.get(rule)
    if keys is None:
        names = inspect.signature(rule).parameters
        keys = _STATE_KEYS[rule] = tuple(k for k in names if k not in ("p", "g", "s", "f"))
    return keys


_STATE_KEYS: dict[Callable, tuple[str, ...]] = {}


def zero_state(rule: Callable, spec: frozenset[str], data: Any, record: dict) -> dict:
    """Fill ``record``: ``step`` 0 if ``spec`` has it, then zeros like ``data`` for the
    rule's state arrays in ``spec`` that are missing, in the rule's order (torch's)."""
    if "step" in spec:
        record.setdefault("step", 0)
    for key in _state_keys(rule):
        if key in spec and record.get(key) is None:
            record[key] = state_zeros(namespace(data), data)
    return record


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """No cyclic garbage collection while a step runs.

    A step makes a few small tuples and lists per parameter, all freed by
    reference counting; with thousands of parameters they would trigger
    collections that traverse every object of the program (two thirds of a
    step of 10,000 small parameters, measured).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _by_name(i: int, saved: Mapping, group: dict) -> list[int]:
    """For each saved parameter of group ``i``, the position of its parameter in ``group``:
    by name when both carry ``param_names`` (a reordered model resumes), else by position."""
    ours, theirs = group.get("param_names"), saved.get("param_names")
    n = len(group["params"])
    if ours is None or theirs is None:
        return list(range(n))
    if not isinstance(theirs, (list, tuple)) or len(theirs) != n:
        raise ValueError(f"loaded param_groups[{i}]['param_names'] must list {n} names")
    position = {name: k for k, name in enumerate(ours)}
    missing = [name for name in theirs if name not in position]
    if missing or len(set(map(str, theirs))) != n:
        unexpected = sorted(set(map(str, ours)) - set(map(str, theirs)))
        raise ValueError(
            f"loaded param_groups[{i}] names parameters {missing[:5]} that this optimizer's "
            f"group does not have (it has {unexpected[:5]} instead): remove 'param_names' "
            "from the loaded groups to load by position"
        )
    return [position[name] for name in theirs]


def _count(value: Any, where: str) -> int:
    """An integer >= 0 (``step``, ``step_count``): Python, NumPy or a 0-d array of an
    integral value, as torch keeps ``step`` as a float tensor; not a bool."""
    number = value
    if array_api_compat.is_array_api_obj(value) and getattr(value, "shape", None) == ():
        number = float(value)
    if (
        isinstance(number, numbers.Real)
        and not isinstance(number, bool)
        and not isinstance(value, bool)
        and math.isfinite(number)
        and number >= 0
        and number == int(number)
    ):
        return int(number)
    raise ValueError(f"{where} is {value!r:.60}; expected an integer >= 0")


def _real(value: Any, where: str) -> float:
    """A finite real number (NAdam's ``mu_product``), also from a 0-d array."""
    number = value
    if array_api_compat.is_array_api_obj(value) and getattr(value, "shape", None) == ():
        number = float(value)
    if isinstance(number, numbers.Real) and not isinstance(number, bool) and math.isfinite(number):
        return float(number)
    raise ValueError(f"{where} is {value!r:.60}; expected a finite number")


def _index(value: Any, where: str) -> int:
    """A parameter index of a state dict: an int, or its decimal string (a JSON key)."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0:
        return int(value)
    raise ValueError(f"{where} has parameter index {value!r:.60}; expected an integer >= 0")


class Optimizer:
    """Base class of all optimizers: parameter groups, state, and the all-or-nothing step.

    Args:
        params: an iterable of parameters, a dict name → parameter, or a list
            of group dicts ``{"params": ..., "lr": ..., ...}`` whose keys
            override ``defaults`` for that group.
        defaults: the hyperparameters every group starts from.
        nonfinite: what a step does when a gradient holds NaN or ±inf:
            ``"raise"`` (default) raises FloatingPointError naming the
            parameter, ``"skip"`` skips the whole step and counts it in
            :attr:`skipped_steps`, ``"ignore"`` does not check (fastest).
            In both checking modes nothing is changed by a refused step.
            The check costs one read of every gradient before the update:
            on NumPy with numba (``neural_arch[fast]``) a compiled pass over
            the exponent bits; elsewhere a sum per gradient and one
            device-to-host synchronisation per parameter group (only when
            that sum is not finite are the gradients checked elementwise).
            See docs/performance.md for its measured cost.
        master_weights: for float16 and bfloat16 parameters, which always
            keep float32 state and compute in float32, also keep a float32
            copy of each parameter (state ``"master_param"``): the update is
            applied to the copy and the parameter is its rounding, so that
            updates smaller than half a unit in the last place of float16
            accumulate instead of being lost.  The copy is the truth: a value
            written into ``p.data`` between steps is overwritten by the next
            step.  No effect on float32/float64 parameters.

    Attributes:
        param_groups: list of dicts, each with ``"params"`` and hyperparameters.
        state: parameter → dict of state (``step``, ``exp_avg``, ...), as in PyTorch.
        defaults: the constructor's hyperparameters.
        step_count: number of steps applied (skipped steps excluded).
        skipped_steps: number of steps skipped by ``nonfinite="skip"``.
    """

    #: hyperparameter name -> spec (:mod:`._hyper`), checked for every group
    hyper: ClassVar[Mapping[str, Any]] = {"lr": Real()}
    #: the update rule (:mod:`.rule`), or None when ``_update_group`` is overridden
    _rule: Callable[..., Mapping[str, Any]] | None = None

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        nonfinite: str = "raise",
        master_weights: bool = False,
    ):
        if nonfinite not in _NONFINITE_MODES:
            raise ValueError(f"nonfinite must be one of {_NONFINITE_MODES}, got {nonfinite!r}")
        self.defaults = dict(defaults)
        self.nonfinite = nonfinite
        self.master_weights = _hyper.Flag().check("master_weights", master_weights)
        self.param_groups: list[dict[str, Any]] = []
        self.state = _ParamState()
        self.step_count = 0
        self.skipped_steps = 0
        self._names: dict[int, Any] = {}
        self._caches = _Caches()  # id(group) -> the fast path's tables for it
        self._hooks: dict[str, dict[int, Callable]] = {kind: {} for kind in _hooks.KINDS}

        if isinstance(params, Mapping):
            is_group = "params" in params and not all(_is_param(v) for v in params.values())
            groups: list[Any] = [params] if is_group else [{"params": params}]
        else:
            items, _ = _as_param_list(params, "params")
            is_list_of_groups = bool(items) and all(isinstance(g, Mapping) for g in items)
            groups = items if is_list_of_groups else [{"params": items}]
        for group in groups:
            self.add_param_group(group)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("step", "state_dict", "load_state_dict"):  # a subclass's own runs hooks too
            if name in cls.__dict__:
                setattr(cls, name, _hooks.hooked(name, cls.__dict__[name]))

    # --------------------------------------------------------------- hooks

    def register_step_pre_hook(self, hook: Callable) -> _hooks.RemovableHandle:
        """``hook(optimizer, args, kwargs)`` before each :meth:`step`, ``args`` starting with
        the optimizer (torch's); it may return ``(new_args, new_kwargs)``.  Returns a handle
        whose ``remove()`` removes it."""
        return _hooks.add_hook(self._hooks["step_pre"], hook, False)

    def register_step_post_hook(self, hook: Callable) -> _hooks.RemovableHandle:
        """``hook(optimizer, args, kwargs)`` after each :meth:`step` (not one that raised)."""
        return _hooks.add_hook(self._hooks["step_post"], hook, False)

    def register_state_dict_pre_hook(
        self, hook: Callable, prepend: bool = False
    ) -> _hooks.RemovableHandle:
        """``hook(optimizer)`` before :meth:`state_dict` builds the dict."""
        return _hooks.add_hook(self._hooks["state_dict_pre"], hook, prepend)

    def register_state_dict_post_hook(
        self, hook: Callable, prepend: bool = False
    ) -> _hooks.RemovableHandle:
        """``hook(optimizer, state_dict)`` after :meth:`state_dict`; it may return a new dict."""
        return _hooks.add_hook(self._hooks["state_dict_post"], hook, prepend)

    def register_load_state_dict_pre_hook(
        self, hook: Callable, prepend: bool = False
    ) -> _hooks.RemovableHandle:
        """``hook(optimizer, state_dict)`` before :meth:`load_state_dict`; it may return the
        dict to load instead."""
        return _hooks.add_hook(self._hooks["load_state_dict_pre"], hook, prepend)

    def register_load_state_dict_post_hook(
        self, hook: Callable, prepend: bool = False
    ) -> _hooks.RemovableHandle:
        """``hook(optimizer)`` after :meth:`load_state_dict` succeeded."""
        return _hooks.add_hook(self._hooks["load_state_dict_post"], hook, prepend)

    # -------------------------------------------------------------- groups

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group of parameters with its own hyperparameters (defaults fill the rest).

        Raises ValueError for an empty group or a parameter already optimized,
        TypeError for a non-parameter or a group mixing backends or devices.
        """
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise TypeError(
                f"param_group must be a dict with a 'params' entry, got {param_group!r:.80}"
            )
        index = len(self.param_groups)
        where = f"param_groups[{index}]['params']"
        params, names = _as_param_list(param_group["params"], where)
        if not params:
            raise ValueError(f"optimizer got an empty parameter list in {where}")
        group = {k: v for k, v in param_group.items() if k != "params"}
        if "param_names" in group and names is None:
            names = list(group.pop("param_names"))
        group.pop("param_names", None)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group)

        seen = {id(p) for g in self.param_groups for p in g["params"]}
        first = len(self._names)
        for i, p in enumerate(params):
            name = names[i] if names is not None else first + i
            if not _is_param(p):
                raise TypeError(
                    f"parameter {name!r} in {where} is a {type(p).__name__}; the optimizer "
                    "needs objects with .data and .grad arrays (e.g. neural_arch.Parameter)"
                )
            if not array_api_compat.is_array_api_obj(p.data):
                raise TypeError(
                    f"parameter {name!r} in {where} has .data of type "
                    f"{type(p.data).__name__}, not an array of an Array API library"
                )
            if id(p) in seen:
                raise ValueError(
                    f"parameter {name!r} in {where} appears more than once in this optimizer; "
                    "each parameter may belong to one group only, once"
                )
            seen.add(id(p))
        self._check_same_backend(params, names, where)
        group["params"] = params
        for i, p in enumerate(params):
            self._names[id(p)] = names[i] if names is not None else first + i
        if names is not None:
            group["param_names"] = list(names)
        self.param_groups.append(group)

    @staticmethod
    def _check_same_backend(params: list[Any], names: list[Any] | None, where: str) -> None:
        xp0, dev0 = namespace(params[0].data), device(params[0].data)
        for i, p in enumerate(params[1:], start=1):
            xp, dev = namespace(p.data), device(p.data)
            if xp is not xp0 or dev != dev0:
                name = names[i] if names is not None else i
                raise TypeError(
                    f"parameter {name!r} in {where} lives in {backend_name(xp)} on {dev}, "
                    f"but the group's first parameter lives in {backend_name(xp0)} on {dev0}; "
                    "one parameter group holds one backend and device (use separate groups)"
                )

    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate a group's hyperparameters against :attr:`hyper` (subclasses may extend)."""
        for name, spec in self.hyper.items():
            if name not in group:
                raise ValueError(f"parameter group has no {name!r} hyperparameter")
            group[name] = spec.check(name, group[name])

    # ------------------------------------------------------------------ lr

    @property
    def lr(self) -> float:
        """The learning rate shared by every group (assigning sets every group's lr)."""
        lrs = [g["lr"] for g in self.param_groups]
        if any(lr != lrs[0] for lr in lrs):
            listing = ", ".join(f"param_groups[{i}]['lr'] = {lr}" for i, lr in enumerate(lrs))
            raise ValueError(
                f"the parameter groups have different learning rates ({listing}); "
                "read or set optimizer.param_groups[i]['lr'] instead of optimizer.lr"
            )
        return lrs[0]

    @lr.setter
    def lr(self, value: float) -> None:
        self.hyper["lr"].check("lr", value)
        for group in self.param_groups:
            group["lr"] = value

    # ---------------------------------------------------------------- step

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's gradient: to ``None`` (default) or to zeros in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                elif array_api_compat.is_writeable_array(p.grad):
                    p.grad[...] = 0
                else:
                    p.grad = namespace(p.grad).zeros_like(p.grad)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply one update to every parameter that has a gradient; return ``closure()``.

        The step is all-or-nothing: gradient shapes (and, unless
        ``nonfinite="ignore"``, finiteness) are checked for every parameter
        before any parameter or state changes.  Parameters whose ``.grad`` is
        None are skipped entirely (no state, no step count).
        """
        loss = closure() if closure is not None else None
        with float_errors_ignored(), _no_gc():  # non-finite values are handled here
            work = self._checked_work()
            if work is None:
                return loss
            for group, pairs in work:
                self._update_group(group, pairs)
        self._bump_versions(work)
        self.step_count += 1
        return loss

    #: parameters updated by a step get ``_version`` incremented (autograd's check)
    _bumps_versions: ClassVar[bool] = True

    def _checked_work(self) -> list[tuple[dict, list]] | None:
        """Every group's ``(parameter, gradient)`` pairs, checked before anything is written.

        Raises ValueError/TypeError naming the parameter for anything the
        update could trip over (see :mod:`._validate`), FloatingPointError for
        a non-finite gradient with ``nonfinite="raise"``; returns None for a
        step skipped by ``nonfinite="skip"``.  Only when every check passed
        are its staged fixes applied (hyperparameters as Python numbers,
        state cast to a parameter's new dtype).
        """
        work, staged = [], []
        for name in ("step_count", "skipped_steps"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise TypeError(f"optimizer.{name} is {value!r:.60}; expected an integer >= 0")
        if not isinstance(self.param_groups, list):
            raise TypeError(
                f"optimizer.param_groups is a {type(self.param_groups).__name__}, not a list"
            )
        for gi, group in enumerate(self.param_groups):
            if not isinstance(group, dict) or not isinstance(group.get("params"), list):
                raise TypeError(
                    f"param_groups[{gi}] is {group!r:.60}; a parameter group is a dict whose "
                    "'params' is a list (add groups with add_param_group)"
                )
            cache = self._caches.setdefault(id(group), {})
            pairs = _validate.check_group(self, gi, group, cache, staged)
            if pairs:
                work.append((group, pairs))
        if self.nonfinite != "ignore":
            bad = self._first_nonfinite(work)
            if bad is not None:
                if self.nonfinite == "skip":
                    self.skipped_steps += 1
                    return None
                raise FloatingPointError(
                    f"gradient of parameter {bad!r} contains NaN or infinity; no parameter "
                    "or optimizer state was changed (pass nonfinite='skip' to skip such "
                    "steps, or clip/scale the loss)"
                )
        for target, key, value in staged:
            target[key] = value
        return work

    @staticmethod
    def _bump_versions(work: list[tuple[dict, list]]) -> None:
        """Tell autograd the parameters changed (a graph recorded before now is stale)."""
        for _, pairs in work:
            for p, _ in pairs:
                version = getattr(p, "_version", None)
                if type(version) is int:
                    # torch's own counter (a torch.nn.Parameter) is read-only: torch keeps it
                    with contextlib.suppress(AttributeError):
                        p._version = version + 1

    def _first_nonfinite(self, work: list[tuple[dict, list]]) -> Any:
        """Name of the first parameter with a non-finite gradient, or None."""
        for group, pairs in work:
            cache = self._caches.setdefault(id(group), {})
            fast = _fastpath.first_nonfinite(pairs, cache)  # index, -1 if all finite, or None
            if fast is not None:
                if fast >= 0:
                    return self._names[id(pairs[fast][0])]
                continue
            xp = namespace(pairs[0][1])
            total = xp.sum(pairs[0][1])
            for _, g in pairs[1:]:
                total = total + xp.sum(g)
            if bool(xp.isfinite(total)):  # the one host synchronisation of the check
                continue
            for p, g in pairs:
                if not bool(xp.all(xp.isfinite(g))):
                    return self._names[id(p)]
        return None

    # ----------------------------------------------------------- the rule

    #: per-parameter state that is a number, not an array (NAdam's ``mu_product``)
    _scalar_state: ClassVar[tuple[str, ...]] = ()

    def _flags(self, group: dict[str, Any], step: int | None, state: dict) -> dict[str, bool]:
        """The rule's flags (``f`` in the rule): branches chosen before tracing.

        ``step`` is the step being taken (None when no step count is kept);
        ``state`` holds the parameters' :attr:`_scalar_state` before it.
        """
        return {}

    def _scalars(self, group: dict[str, Any], step: int | None, state: dict) -> dict[str, float]:
        """The rule's scalars (``s``) for ``group`` at ``step``.

        ``state`` is a copy of the parameters' :attr:`_scalar_state`; update
        it to the values after this step (they are stored once the step has
        been applied).
        """
        return {}

    def _init_state(self, p: Any, group: dict[str, Any], record: dict[str, Any]) -> None:
        """Add to ``record`` (a new parameter's empty record, or an older one) what is missing.

        By default: ``step`` 0, then zeros like the parameter for every array
        of :meth:`_state_spec`, in the order of the rule's arguments (torch's
        order of state keys).  An optimizer whose state starts otherwise (a
        fill value, a scalar, an array the rule creates on its first step,
        stored as None) overrides this.
        """
        zero_state(self._rule, self._state_spec(group), p.data, record)

    def _state_spec(self, group: dict[str, Any]) -> frozenset[str]:
        """The state keys a parameter of ``group`` keeps (none: SGD without momentum)."""
        return frozenset()

    def _update_group(self, group: dict[str, Any], pairs: list[tuple[Any, Any]]) -> None:
        """Run the rule on every (parameter, gradient) pair of ``group``.

        Parameters are bucketed by their step and by which state arrays exist
        (a state the rule creates on its first step); each bucket is one
        traced program and one set of scalars, handed to the fast path, whose
        leftovers go through the generic engine one by one.
        """
        rule = self._rule
        if rule is None:
            name = type(self).__name__
            raise NotImplementedError(f"{name} defines neither _rule nor _update_group")
        cache = self._caches.setdefault(id(group), {})
        buckets = self._buckets(group, pairs, _state_keys(rule), cache)
        for (present, step, values), items in buckets.items():
            old = dict(zip(self._scalar_state, values, strict=True))
            program = trace(rule, present, self._flags(group, step, old))
            new = dict(old)
            scalars = {k: float(v) for k, v in self._scalars(group, step, new).items()}
            missing = [k for k in program.scalars if k not in scalars]
            if missing:
                raise KeyError(f"{type(self).__name__}._scalars() does not provide {missing}")
            kind, xp = None, None
            if self.master_weights:
                self._make_masters(items)
            for i in _fastpath.run(program, items, scalars, cache, self.master_weights):
                p, g, record = items[i]
                arrays = {k: record.get(k) for k in program.arrays}
                x = p.data
                if type(x) is not kind:  # a group holds one library: look it up once
                    kind, xp = type(x), namespace(x)
                if is_low(x.dtype):
                    self._run_low(program, xp, p, g, record, arrays, scalars)
                    continue
                arrays["param"], arrays["grad"] = x, g
                out = _engine.run_generic(program, xp, arrays, scalars)
                p.data = out.pop("param")
                dict.update(record, out)
            if step is not None:
                new["step"] = step
            if new:
                for _, _, record in items:
                    dict.update(record, new)

    @staticmethod
    def _make_masters(items: list) -> None:
        """The float32 master copies of float16/bfloat16 parameters that have none yet."""
        for p, _, record in items:
            if record.get("master_param") is None and is_low(p.data.dtype):
                record["master_param"] = namespace(p.data).astype(
                    p.data, namespace(p.data).float32
                )

    def _run_low(self, program, xp, p, g, record, arrays, scalars) -> None:
        """The rule on a float16/bfloat16 parameter: in float32, rounded where written back."""
        x, f32 = p.data, xp.float32
        master = record.get("master_param") if self.master_weights else None
        arrays["param"] = master if master is not None else xp.astype(x, f32)
        arrays["grad"] = g if g.dtype == f32 else xp.astype(g, f32)
        out = _engine.run_generic(program, xp, arrays, scalars)
        new = out.pop("param")
        if master is not None:
            out["master_param"] = new
        rounded = xp.astype(new, x.dtype)
        if _engine._writable(x):
            x[...] = rounded
        else:
            p.data = rounded
        dict.update(record, out)

    def _buckets(self, group: dict, pairs: list, keys: tuple, cache: dict) -> dict:
        """``{(present state arrays, step): [(param, grad, record), ...]}`` for this step.

        A new parameter's record is made here.  When the group's parameters,
        the optimizer's records and their steps are those of the last step
        (the steady state of training), the buckets are made without a loop
        over the parameters in Python.
        """
        required = self._state_spec(group)
        full = tuple(k for k in keys if k in required)  # the arrays when all exist
        counts = "step" in required
        params = [p for p, _ in pairs]
        memo = cache.get("memo")
        numbers_of = operator.itemgetter(*self._scalar_state) if self._scalar_state else None
        if memo is not None and memo[0] == (self.state._version, required, len(params)):
            _, old_params, records, present, step = memo
            if (
                all(map(operator.is_, params, old_params))
                and (not counts or set(map(_get_step, records)) == {step})
                and not any(_has_none(records, k) for k in present)
            ):
                if counts:
                    step += 1
                    cache["memo"] = (memo[0], old_params, records, present, step)
                items = list(zip(params, [g for _, g in pairs], records, strict=True))
                return {(present, step, ()): items}
        records_by_id = self.state._records
        buckets: dict[tuple, list[tuple[Any, Any, dict]]] = {}
        last_key, last = None, None
        for p, g in pairs:  # the hot loop of a step: keep it lean
            if required:
                entry = records_by_id.get(id(p))
                if entry is None:
                    record = self.state[p]
                    self._init_state(p, group, record)
                else:
                    record = entry[1]
                    if not record.keys() >= required:
                        self._init_state(p, group, record)
                present = full
                for k in full:
                    if record[k] is None:  # made by the rule on its first step
                        present = tuple(k for k in full if record[k] is not None)
                        break
            elif self.master_weights and is_low(p.data.dtype):  # a record for the copy
                record, present = self.state[p], ()
            else:
                record, present = {}, ()
            key = (
                present,
                record["step"] + 1 if counts else None,
                () if numbers_of is None else _as_tuple(numbers_of(record), self._scalar_state),
            )
            if key != last_key:
                last_key, last = key, buckets.setdefault(key, [])
            last.append((p, g, record))
        cache.pop("memo", None)
        if len(buckets) == 1 and required and numbers_of is None:  # next step may skip the loop
            ((present, step, _),) = buckets
            if present == full:
                records = [record for _, _, record in last]
                memo_key = (self.state._version, required, len(params))
                cache["memo"] = (memo_key, params, records, present, step)
        return buckets

    # ---------------------------------------------------------- state dict

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state in PyTorch's layout.

        ``{"state": {index: {"step": int, "exp_avg": array, ...}},
        "param_groups": [{hyperparameters..., "params": [index, ...]}],
        "step_count": int, "skipped_steps": int}`` where indices number the
        parameters across groups in order.  Arrays are the optimizer's own
        (not copies); :func:`neural_arch.save` writes them to a file.
        """
        state: dict[int, dict[str, Any]] = {}
        groups = []
        index = 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(index, index + len(group["params"])))
            for p in group["params"]:
                if p in self.state:
                    state[index] = dict(self.state[p])
                index += 1
            groups.append(packed)
        return {
            "state": state,
            "param_groups": groups,
            "step_count": self.step_count,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state from :meth:`state_dict` (of this or another backend, or of torch.optim).

        All or nothing: everything is checked and converted before anything
        is replaced.  Arrays are copied onto each parameter's backend, device
        and dtype (never the file's dtype).  Raises ValueError or TypeError
        naming the group, parameter or key for a layout that does not match
        (group count and sizes, state shapes), a state dict of another
        optimizer (hyperparameters or state keys this one does not have),
        missing state, a ``step`` that is not an integer >= 0, arrays that
        are not real floating or not finite, negative second moments, and
        hyperparameters this optimizer would refuse.
        """
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' entries")
        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, (list, tuple)):
            raise TypeError(
                "state_dict['param_groups'] must be a list of group dicts, got "
                f"{type(saved_groups).__name__}"
            )
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, "
                f"this optimizer has {len(self.param_groups)}"
            )
        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise TypeError(
                "state_dict['state'] must be a dict parameter index -> state dict, got "
                f"{type(saved_state).__name__}"
            )
        counters = {
            key: _count(state_dict.get(key, 0), f"state_dict[{key!r}]")
            for key in ("step_count", "skipped_steps")
        }
        by_index: dict[int, tuple[Any, dict]] = {}
        new_groups = []
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            merged = self._loaded_group(i, saved, group)
            new_groups.append(merged)
            order = _by_name(i, saved, group)
            for j, raw in enumerate(saved["params"]):
                index = _index(raw, f"loaded param_groups[{i}]['params']")
                if index in by_index:
                    raise ValueError(
                        f"loaded param_groups list parameter index {index} more than once"
                    )
                by_index[index] = (group["params"][order[j]], merged)

        new_state = []
        for key, record in saved_state.items():
            try:
                p, merged = by_index[_index(key, "loaded state")]
            except KeyError:
                raise ValueError(
                    f"loaded state refers to parameter index {key!r}, which is not in any "
                    "loaded param_groups entry"
                ) from None
            name = self._names[id(p)]
            if not isinstance(record, Mapping):
                raise TypeError(
                    f"loaded state of parameter {name!r} is a {type(record).__name__}, "
                    "not a dict of state entries"
                )
            if not record:
                continue
            out = self._convert_record(record, p, name)
            self._check_loaded_record(out, p, merged, name)
            new_state.append((p, out))

        for group, merged in zip(self.param_groups, new_groups, strict=True):
            group.update(merged)
        self.state.clear()
        for p, record in new_state:
            self.state[p] = record
        self.step_count = counters["step_count"]
        self.skipped_steps = counters["skipped_steps"]
        self._caches.clear()

    #: hyperparameters a state dict may lack (torch added them in later versions):
    #: the optimizer keeps its own value
    _optional_hyper: ClassVar[frozenset[str]] = frozenset(
        ("maximize", "decoupled_weight_decay", "foreach", "capturable", "differentiable")
    )
    #: state arrays that hold no negative value (second moments): refused when loaded so
    _nonnegative_state: ClassVar[frozenset[str]] = frozenset()
    #: state arrays that may be None (made by the rule on its first step)
    _nullable_state: ClassVar[frozenset[str]] = frozenset()

    def _loaded_group(self, i: int, saved: Any, group: dict[str, Any]) -> dict[str, Any]:
        """``group`` with the saved hyperparameters, checked (not yet applied)."""
        if not isinstance(saved, Mapping) or "params" not in saved:
            raise TypeError(f"loaded param_groups[{i}] must be a dict with a 'params' entry")
        ids = saved["params"]
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple)):
            raise TypeError(
                f"loaded param_groups[{i}]['params'] must be a list of parameter indices, "
                f"got {type(ids).__name__}"
            )
        if len(ids) != len(group["params"]):
            raise ValueError(
                f"loaded param_groups[{i}] has {len(ids)} parameters, this optimizer's "
                f"param_groups[{i}] has {len(group['params'])}"
            )
        missing = sorted(set(self.hyper) - set(saved) - self._optional_hyper)
        if missing:
            raise ValueError(
                f"loaded param_groups[{i}] has no {', '.join(map(repr, missing))}: "
                f"it is not a state dict of {type(self).__name__} (whose hyperparameters are "
                f"{', '.join(self.hyper)})"
            )
        new = {k: v for k, v in saved.items() if k not in ("params", "param_names")}
        merged = {**group, **new}
        try:
            self._check_group(merged)
            if "initial_lr" in merged:  # a scheduler's
                _hyper.check_number("initial_lr", merged["initial_lr"])
        except (TypeError, ValueError) as e:
            raise type(e)(f"loaded param_groups[{i}]: {e}") from None
        merged.pop("params")
        return merged

    def _check_loaded_record(self, record: dict, p: Any, group: dict, name: Any) -> None:
        """A converted record holds what the rule needs for ``group`` and nothing foreign."""
        if self._rule is None:
            return
        allowed = {"step", *self._scalar_state, *_state_keys(self._rule), "master_param"}
        unknown = sorted(set(record) - allowed)
        if unknown:
            raise ValueError(
                f"loaded state of parameter {name!r} has {', '.join(map(repr, unknown))}, "
                f"which {type(self).__name__} does not keep (its state: "
                f"{', '.join(sorted(allowed))}): is it another optimizer's state dict?"
            )
        required = self._state_spec(group)
        missing = sorted(k for k in required if record.get(k) is None)
        missing = [k for k in missing if not (k in self._nullable_state and k in record)]
        if missing:
            raise ValueError(
                f"loaded state of parameter {name!r} lacks {', '.join(map(repr, missing))}, "
                f"which {type(self).__name__} needs with these hyperparameters"
            )

    def _convert_record(self, record: Mapping[str, Any], p: Any, name: Any) -> dict[str, Any]:
        """The loaded ``record`` of ``p`` on its backend, device and dtype, checked."""
        xp, dev = namespace(p.data), device(p.data)
        out: dict[str, Any] = {}
        for key, value in record.items():
            where = f"loaded state {key!r} of parameter {name!r}"
            if not isinstance(key, str):
                raise TypeError(f"loaded state of parameter {name!r} has a key {key!r}, not a str")
            if key in self._scalar_state:  # torch keeps these as 0-d tensors
                out[key] = _real(value, where)
            elif key == "step":
                out[key] = _count(value, where)
            elif value is None:
                out[key] = value
            elif not array_api_compat.is_array_api_obj(value):
                raise TypeError(f"{where} is a {type(value).__name__}, not an array")
            else:
                expected = self._state_shape(key, p)
                if tuple(value.shape) != expected:
                    shown = "" if expected == tuple(p.data.shape) else f" (expected {expected})"
                    raise ValueError(
                        f"loaded state {key!r} of parameter {name!r} has shape "
                        f"{tuple(value.shape)}, but the parameter has shape "
                        f"{tuple(p.data.shape)}{shown}"
                    )
                src = namespace(value)
                if not src.isdtype(value.dtype, "real floating"):
                    raise TypeError(f"{where} has dtype {value.dtype}, not a real floating dtype")
                dtype = state_dtype(xp, p.data.dtype)  # float32 for float16/bfloat16
                array = to_backend(value, xp, device=dev, dtype=dtype, copy=True)
                if not bool(xp.all(xp.isfinite(array))):
                    raise ValueError(f"{where} holds NaN or infinity")
                if key in self._nonnegative_state and not bool(xp.all(array >= 0)):
                    raise ValueError(f"{where} holds negative values (it is a second moment)")
                out[key] = array
        return out

    def _state_shape(self, key: str, p: Any) -> tuple[int, ...]:
        """The shape of state array ``key`` of parameter ``p``: the parameter's own by default.

        :meth:`load_state_dict` refuses a loaded array of another shape.  An
        optimizer whose state arrays are shaped otherwise (Adafactor's row and
        column factors) overrides this.
        """
        return tuple(p.data.shape)

    # ---------------------------------------------------------------- repr

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(group):
                if key not in ("params", "param_names"):
                    lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)


for _name in ("step", "state_dict", "load_state_dict"):
    setattr(Optimizer, _name, _hooks.hooked(_name, getattr(Optimizer, _name)))
