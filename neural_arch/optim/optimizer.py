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

import inspect
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import array_api_compat

from ..backend import backend_name, device, float_errors_ignored, namespace, to_backend
from . import _engine, _fastpath
from ._hyper import Real
from .rule import trace

__all__ = ["Optimizer"]

_NONFINITE_MODES = ("raise", "skip", "ignore")


class _ParamState(Mapping):
    """``optimizer.state``: parameter → its state record, keyed by identity.

    Parameters need not be hashable (a Tensor may define elementwise ``==``),
    so records are stored under ``id(param)`` together with the parameter.
    Like PyTorch's ``defaultdict(dict)``, reading the state of a parameter
    that has none yet gives (and stores) an empty record; ``get`` and ``in``
    do not store anything.
    """

    def __init__(self) -> None:
        self._records: dict[int, tuple[Any, dict[str, Any]]] = {}
        self._version = 0  # changes whenever a record is added, replaced or removed

    def __getitem__(self, param: Any) -> dict[str, Any]:
        entry = self._records.get(id(param))
        if entry is None:
            entry = self._records[id(param)] = (param, {})
            self._version += 1
        return entry[1]

    def get(self, param: Any, default: Any = None) -> Any:
        entry = self._records.get(id(param))
        return default if entry is None else entry[1]

    def __setitem__(self, param: Any, record: dict[str, Any]) -> None:
        self._records[id(param)] = (param, record)
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
            record[key] = namespace(data).zeros_like(data)
    return record


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

    def __init__(self, params: Any, defaults: dict[str, Any], *, nonfinite: str = "raise"):
        if nonfinite not in _NONFINITE_MODES:
            raise ValueError(f"nonfinite must be one of {_NONFINITE_MODES}, got {nonfinite!r}")
        self.defaults = dict(defaults)
        self.nonfinite = nonfinite
        self.param_groups: list[dict[str, Any]] = []
        self.state = _ParamState()
        self.step_count = 0
        self.skipped_steps = 0
        self._names: dict[int, Any] = {}
        self._caches = _Caches()  # id(group) -> the fast path's tables for it

        if isinstance(params, Mapping):
            is_group = "params" in params and not all(_is_param(v) for v in params.values())
            groups: list[Any] = [params] if is_group else [{"params": params}]
        else:
            items, _ = _as_param_list(params, "params")
            is_list_of_groups = bool(items) and all(isinstance(g, Mapping) for g in items)
            groups = items if is_list_of_groups else [{"params": items}]
        for group in groups:
            self.add_param_group(group)

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
        work = []
        for group in self.param_groups:
            pairs = [(p, p.grad) for p in group["params"] if p.grad is not None]
            for p, g in pairs:
                if g.shape != p.data.shape and tuple(g.shape) != tuple(p.data.shape):
                    raise ValueError(
                        f"gradient of parameter {self._names[id(p)]!r} has shape "
                        f"{tuple(g.shape)}, but the parameter has shape {tuple(p.data.shape)}"
                    )
            if pairs:
                work.append((group, pairs))
        with float_errors_ignored():  # non-finite values are handled here, not warned about
            if self.nonfinite != "ignore":
                bad = self._first_nonfinite(work)
                if bad is not None:
                    if self.nonfinite == "skip":
                        self.skipped_steps += 1
                        return loss
                    raise FloatingPointError(
                        f"gradient of parameter {bad!r} contains NaN or infinity; no parameter "
                        "or optimizer state was changed (pass nonfinite='skip' to skip such "
                        "steps, or clip/scale the loss)"
                    )
            for group, pairs in work:
                self._update_group(group, pairs)
        self.step_count += 1
        return loss

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
            for i in _fastpath.run(program, items, scalars, cache):
                p, g, record = items[i]
                arrays = {k: record.get(k) for k in program.arrays}
                x = p.data
                arrays["param"], arrays["grad"] = x, g
                if type(x) is not kind:  # a group holds one library: look it up once
                    kind, xp = type(x), namespace(x)
                out = _engine.run_generic(program, xp, arrays, scalars)
                p.data = out.pop("param")
                record.update(out)
            if step is not None:
                new["step"] = step
            if new:
                for _, _, record in items:
                    record.update(new)

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
                    record = self.state[p] = {}
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

        Arrays are copied onto each parameter's backend, device and dtype.
        Raises ValueError naming the group or parameter when the saved layout
        (group count, group sizes, state shapes) does not match; on error
        nothing is changed.
        """
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' entries")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, "
                f"this optimizer has {len(self.param_groups)}"
            )
        by_index: dict[int, Any] = {}
        new_groups = []
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            ids = list(saved["params"])
            if len(ids) != len(group["params"]):
                raise ValueError(
                    f"loaded param_groups[{i}] has {len(ids)} parameters, this optimizer's "
                    f"param_groups[{i}] has {len(group['params'])}"
                )
            by_index.update(zip((int(j) for j in ids), group["params"], strict=True))
            new = {k: v for k, v in saved.items() if k not in ("params", "param_names")}
            merged = {**group, **new}
            self._check_group(merged)
            new_groups.append(merged)

        new_state = []
        for key, record in dict(state_dict["state"]).items():
            try:
                p = by_index[int(key)]
            except (KeyError, ValueError):
                raise ValueError(
                    f"loaded state refers to parameter index {key!r}, which is not in any "
                    "loaded param_groups entry"
                ) from None
            new_state.append((p, self._convert_record(record, p, self._names[id(p)])))

        for group, merged in zip(self.param_groups, new_groups, strict=True):
            group.update(merged)
        self.state.clear()
        for p, record in new_state:
            self.state[p] = record
        self.step_count = int(state_dict.get("step_count", 0))
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))

    def _convert_record(self, record: Mapping[str, Any], p: Any, name: Any) -> dict[str, Any]:
        xp, dev = namespace(p.data), device(p.data)
        out: dict[str, Any] = {}
        for key, value in record.items():
            if key in self._scalar_state:  # torch keeps these as 0-d tensors
                out[key] = float(value)
            elif key == "step":
                out[key] = int(float(value)) if not isinstance(value, int) else value
            elif value is None or not array_api_compat.is_array_api_obj(value):
                out[key] = value
            else:
                expected = self._state_shape(key, p)
                if tuple(value.shape) != expected:
                    shown = "" if expected == tuple(p.data.shape) else f" (expected {expected})"
                    raise ValueError(
                        f"loaded state {key!r} of parameter {name!r} has shape "
                        f"{tuple(value.shape)}, but the parameter has shape "
                        f"{tuple(p.data.shape)}{shown}"
                    )
                out[key] = to_backend(value, xp, device=dev, dtype=p.data.dtype, copy=True)
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
