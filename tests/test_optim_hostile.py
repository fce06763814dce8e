"""The optimizers' ``step()`` and ``load_state_dict()`` attacked with hostile input.

Every optimizer of the table (tests/optimizers.py), one representative case
each (the first case of its grid that keeps state arrays), on every backend
and on NumPy with the fast path switched off.  The invariant of every
refusal:

* the exception is ValueError or TypeError (FloatingPointError for a
  non-finite gradient with ``nonfinite="raise"``), never another type;
* the message names the parameter (``parameter 'b'
  (param_groups[0]['params'][1])``), the group's hyperparameter
  (``param_groups[1]: Invalid lr``) or the entry of the state dict;
* parameters, state, groups and counters are byte-identical afterwards
  (:func:`optimizers.assert_unchanged`), with good parameters before the bad
  one so that a partial update would show;
* once the input is fixed, the run continues bit for bit as a run that never
  saw the bad input.

The tables (:data:`STEP_CASES`, :func:`_hyper_cases`,
:func:`_load_corruptions`) are looped over inside one test per optimizer and
backend, and every case that is not refused cleanly is listed in the
failure, by its id: thousands of one-case tests would cost more in pytest's
overhead than the cases themselves on a small machine.

Accepted on purpose (the library's documented choices, checked here too): a
gradient of another real floating dtype is rounded to the parameter's; state
of another float dtype follows the parameter's dtype; NumPy scalars are
accepted as hyperparameters and stored as Python numbers; a state record
left empty means "no state yet".

LBFGS is not in the table (its step needs a closure, it has one group and
its own state layout; tests/test_lbfgs.py covers it):
:func:`test_lbfgs_refuses_hostile_gradients` drives its step through a
closure with the table's hostile gradients.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from _helpers import P, to_np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optimizers import (
    BY_NAME,
    TABLE,
    Entry,
    assert_params_match,
    assert_same_run,
    assert_state_matches,
    assert_unchanged,
    cases,
    grad_sequence,
    initial,
    ours,
    snapshot,
    theirs,
)

import neural_arch as na
from neural_arch.backend import backend_name, namespace, resolve_backend, to_backend
from neural_arch.optim import _fastpath

REFUSED = (ValueError, TypeError)
SHAPES3 = ((7,), (2, 3), (4,))
NAMES = ("a", "b", "c")
PLACES = {"a": (0, 0), "b": (0, 1), "c": (1, 0)}
GRADS = grad_sequence(SHAPES3, 6, seed=1)
NAN, INF = float("nan"), float("inf")
NUMPY = resolve_backend("numpy")


def where(name: str) -> str:
    """How a message must name parameter ``name``: a regex."""
    g, i = PLACES[name]
    return re.escape(f"parameter {name!r} (param_groups[{g}]['params'][{i}])")


def _groups(params: list) -> list[dict]:
    """Two groups of named parameters: ``a``, ``b`` in the first, ``c`` in the second."""
    return [{"params": {"a": params[0], "b": params[1]}}, {"params": {"c": params[2]}}]


def _representative(entry: Entry) -> dict[str, Any]:
    """The first case of the entry's grid whose step leaves state arrays (a partial
    update of state would show)."""
    for kwargs in cases(entry):
        p = P(np.ones((2, 3)), np.ones((2, 3)))
        opt = entry.make([p], **kwargs)
        opt.step()
        if any(hasattr(v, "shape") for v in (opt.state.get(p) or {}).values()):
            return kwargs
    raise AssertionError(f"{entry.name}: no case of the grid keeps state arrays")


REPRESENTATIVE = {e.name: _representative(e) for e in TABLE}
ENTRIES = [pytest.param(e, id=e.name) for e in TABLE]


def _build(xp, entry, *, seed=0, dtype="float64", kwargs=None):
    params = ours(xp, initial(SHAPES3, seed), dtype=dtype)
    kw = REPRESENTATIVE[entry.name] if kwargs is None else kwargs
    return params, entry.make(_groups(params), **kw)


def _give(xp, params, grads, dtype=None) -> None:
    """Private copies of ``grads`` as gradients (in the parameter's dtype unless given)."""
    for p, g in zip(params, grads, strict=True):
        p.grad = to_backend(g, xp, dtype=dtype or p.data.dtype, copy=True)


def _train(xp, opt, params, grads, dtype=None) -> None:
    for step_grads in grads:
        _give(xp, params, step_grads, dtype)
        opt.step()


def _warm(xp, entry, steps, **kwargs):
    params, opt = _build(xp, entry, **kwargs)
    _train(xp, opt, params, GRADS[:steps])
    return params, opt


_REFERENCES: dict[tuple, tuple] = {}


def _reference(xp, entry, steps: int, kwargs=None):
    """(params, optimizer) of a run that never saw bad input (cached: never mutated)."""
    kw = REPRESENTATIVE[entry.name] if kwargs is None else kwargs
    key = (backend_name(xp), _fastpath.enabled(), entry.name, steps, repr(kw))
    if key not in _REFERENCES:
        _REFERENCES[key] = _warm(xp, entry, steps, kwargs=kw)
    return _REFERENCES[key]


def _other_library(xp, value):
    """``value`` (NumPy) as an array of another library than ``xp``'s."""
    if backend_name(xp) == "numpy":
        return to_backend(value, "array_api_strict", copy=True)
    return np.array(value)


def _array(xp, value):
    return to_backend(np.asarray(value), xp, copy=True)


# ------------------------------------------------------- checks that report, not raise


def _refusal(call: Callable, exc: tuple, match: str, *args: Any) -> str | None:
    """None when ``call(*args)`` raises one of ``exc`` whose message matches ``match``;
    else what happened instead."""
    try:
        call(*args)
    except exc as e:
        if re.search(match, str(e)):
            return None
        return f"{type(e).__name__} does not name {match!r}: {e!s:.300}"
    except Exception as e:
        expected = "/".join(t.__name__ for t in exc)
        return f"{type(e).__name__} instead of {expected}: {e!s:.300}"
    return "accepted (no exception)"


def _raise(error: BaseException) -> None:
    raise error


def _unchanged(before, after) -> str | None:
    try:
        assert_unchanged(before, after)
    except AssertionError as e:
        return f"changed state: {e!s:.300}"
    return None


def _verdict(refusal: str | None, before, after) -> str | None:
    """The refusal's problem and, unless the input was accepted, whether state changed."""
    changed = None if refusal and refusal.startswith("accepted") else _unchanged(before, after)
    return "; ".join(p for p in (refusal, changed) if p) or None


def _same_run(opt_a, params_a, params_b, opt_b) -> str | None:
    try:
        assert_same_run(opt_a, params_a, opt_b, params_b)
    except AssertionError as e:
        return f"{e!s:.300}"
    return None


def _report(what: str, failures: list[str]) -> None:
    assert not failures, f"{what}: {len(failures)} not refused cleanly:\n" + "\n".join(failures)


@pytest.fixture
def numpy_generic():
    """NumPy with the fast path switched off (the generic engine), restored afterwards."""
    old = _fastpath.set_enabled(False)
    try:
        yield NUMPY
    finally:
        _fastpath.set_enabled(old)


# ------------------------------------------------------------------ hostile steps


@dataclass(frozen=True)
class Case:
    """A hostile input: ``corrupt(xp, params, opt)`` makes it and returns the fix."""

    id: str
    corrupt: Callable[[Any, list, Any], Callable[[], None]]
    match: str
    exc: tuple = REFUSED
    numpy_only: bool = False  # read-only arrays: NumPy's flags (JAX's arrays are immutable)
    needs_step: bool = False  # the case tampers with parameter c's state "step"


def _bad_grad(name: str, make: Callable) -> Callable:
    """Give parameter ``name`` the gradient ``make(xp, its good gradient)``."""
    k = NAMES.index(name)

    def corrupt(xp, params, opt):
        params[k].grad = make(xp, to_np(params[k].grad).copy())
        return lambda: None

    return corrupt


def _bad_data(name: str, make: Callable, grad: Callable | None = None) -> Callable:
    """Rebind ``.data`` of parameter ``name`` to ``make(xp, its value)`` (and its
    gradient to ``grad(xp, its gradient)``); the fix rebinds the original array."""
    k = NAMES.index(name)

    def corrupt(xp, params, opt):
        p = params[k]
        old, old_grad = p.data, p.grad
        p.data = make(xp, to_np(old).copy())
        if grad is not None:
            p.grad = grad(xp, to_np(old_grad).copy())

        def fix():
            p.data, p.grad = old, old_grad

        return fix

    return corrupt


def _read_only(xp, params, opt):
    params[1].data.flags.writeable = False
    return lambda: setattr(params[1].data.flags, "writeable", True)


def _append_to_group(obj):
    def corrupt(xp, params, opt):
        opt.param_groups[0]["params"].append(obj)
        return opt.param_groups[0]["params"].pop

    return corrupt


def _appended_group(xp, params, opt):
    """A group appended to ``param_groups`` by hand, without hyperparameters."""
    extra = P(_array(xp, np.ones(3)), _array(xp, np.ones(3)))
    opt.param_groups.append({"params": [extra]})
    return opt.param_groups.pop


def _group_replaced(make):
    def corrupt(xp, params, opt):
        old = opt.param_groups[1]
        opt.param_groups[1] = make(old)
        return lambda: opt.param_groups.__setitem__(1, old)

    return corrupt


def _step_count(value):
    def corrupt(xp, params, opt):
        old = opt.step_count
        opt.step_count = value
        return lambda: setattr(opt, "step_count", old)

    return corrupt


def _state_entry(name: str, make: Callable, key: str | None = None) -> Callable:
    """Replace a state entry of parameter ``name`` in ``opt.state`` (its first array, or
    ``key``) by ``make(xp, old)``."""
    k = NAMES.index(name)

    def corrupt(xp, params, opt):
        record = opt.state[params[k]]
        chosen = key or next(k for k, v in record.items() if hasattr(v, "shape"))
        old = record[chosen]
        record[chosen] = make(xp, old)
        return lambda: record.__setitem__(chosen, old)

    return corrupt


GRAD_MAKERS = {
    "grad-complex": lambda xp, g: _array(xp, g.astype(np.complex128)),
    "grad-int64": lambda xp, g: _array(xp, np.round(10 * g).astype(np.int64)),
    "grad-int32": lambda xp, g: _array(xp, np.round(10 * g).astype(np.int32)),
    "grad-bool": lambda xp, g: _array(xp, g > 0),
    "grad-other-library": _other_library,
    "grad-transposed": lambda xp, g: _array(xp, g.T.copy()),
    "grad-broadcastable-row": lambda xp, g: _array(xp, g[0]),
    "grad-broadcastable-1x3": lambda xp, g: _array(xp, g[:1]),
    "grad-0d": lambda xp, g: _array(xp, g[0, 0]),
    "grad-flattened": lambda xp, g: _array(xp, g.reshape(-1)),
    "grad-extra-axis": lambda xp, g: _array(xp, g[None]),
    "grad-python-list": lambda xp, g: g.tolist(),
    "grad-python-float": lambda xp, g: 0.5,
    "grad-numpy-scalar": lambda xp, g: np.float64(0.5),
    "grad-str": lambda xp, g: "0.5",
    "grad-object": lambda xp, g: object(),
    "grad-nan": lambda xp, g: _array(xp, np.where(g > 0, NAN, g)),
}

B = where("b")
STEP_CASES = [
    # gradients of 'b', after 'a' in the same group
    *(
        Case(cid, _bad_grad("b", make), B)
        for cid, make in GRAD_MAKERS.items()
        if cid != "grad-nan"
    ),
    Case(
        "grad-nan", _bad_grad("b", GRAD_MAKERS["grad-nan"]), "parameter 'b'", (FloatingPointError,)
    ),
    # a bad gradient in the second group, after both parameters of the first
    Case("grad-complex-group-1", _bad_grad("c", GRAD_MAKERS["grad-complex"]), where("c")),
    Case("grad-other-library-group-1", _bad_grad("c", _other_library), where("c")),
    Case("grad-shape-group-1", _bad_grad("c", lambda xp, g: _array(xp, g[:2])), where("c")),
    # parameters
    Case("param-read-only", _read_only, B, numpy_only=True),
    Case("param-int64", _bad_data("b", lambda xp, x: _array(xp, np.round(x).astype(np.int64))), B),
    Case("param-bool", _bad_data("b", lambda xp, x: _array(xp, x > 0)), B),
    Case(
        "param-complex",
        _bad_data("b", GRAD_MAKERS["grad-complex"], GRAD_MAKERS["grad-complex"]),
        B,
    ),
    Case("param-python-list", _bad_data("b", lambda xp, x: x.tolist()), B),
    Case("param-python-float", _bad_data("b", lambda xp, x: 0.5), B),
    Case("param-other-library", _bad_data("b", _other_library, _other_library), B),
    Case(
        "param-rebound-transposed",
        _bad_data("b", GRAD_MAKERS["grad-transposed"], GRAD_MAKERS["grad-transposed"]),
        B,
    ),
    Case(
        "param-rebound-flat",
        _bad_data("b", GRAD_MAKERS["grad-flattened"], GRAD_MAKERS["grad-flattened"]),
        B,
    ),
    Case(
        "param-rebound-group-1",
        _bad_data("c", lambda xp, x: _array(xp, x[:2]), lambda xp, g: _array(xp, g[:2])),
        where("c"),
    ),
    Case("not-a-parameter", _append_to_group(object()), r"param_groups\[0\]\['params'\]\[2\]"),
    Case("none-as-parameter", _append_to_group(None), r"param_groups\[0\]\['params'\]\[2\]"),
    # groups and counters tampered with
    Case("group-appended-by-hand", _appended_group, r"param_groups\[2\]"),
    Case("group-not-a-dict", _group_replaced(lambda g: list(g.items())), r"param_groups\[1\]"),
    Case(
        "group-params-a-str",
        _group_replaced(lambda g: {**g, "params": "ab"}),
        r"param_groups\[1\]",
    ),
    Case("step-count-str", _step_count("3"), "step_count"),
    Case("step-count-none", _step_count(None), "step_count"),
    # state arrays replaced through opt.state
    Case("state-as-list", _state_entry("b", lambda xp, v: to_np(v).tolist()), B),
    Case("state-other-library", _state_entry("b", lambda xp, v: _other_library(xp, to_np(v))), B),
    Case("state-int64", _state_entry("b", lambda xp, v: _array(xp, to_np(v).astype(np.int64))), B),
    Case("state-transposed", _state_entry("b", lambda xp, v: _array(xp, to_np(v).T.copy())), B),
    Case(
        "state-step-str-group-1",
        _state_entry("c", lambda xp, v: "3", key="step"),
        where("c"),
        needs_step=True,
    ),
    Case(
        "state-step-none-group-1",
        _state_entry("c", lambda xp, v: None, key="step"),
        where("c"),
        needs_step=True,
    ),
]


def _applies(case: Case, xp, opt, params) -> bool:
    if case.numpy_only and backend_name(xp) != "numpy":
        return False
    return not case.needs_step or "step" in (opt.state.get(params[2]) or {})


def _try_case(xp, opt, params, case: Case, warm: int) -> str | None:
    """Step ``warm`` + 1 with the case's bad input: None if refused cleanly (the fix is
    applied then), else what happened."""
    _give(xp, params, GRADS[warm])
    clean = snapshot(opt, params)
    fix = case.corrupt(xp, params, opt)
    try:
        before = snapshot(opt, params)
    except (AttributeError, TypeError):  # a group that is not a dict: compared once fixed
        before = None
    refusal = _refusal(opt.step, case.exc, case.match)
    after = None if before is None else snapshot(opt, params)
    fix()
    if before is None:
        before, after = clean, snapshot(opt, params)
    return _verdict(refusal, before, after)


def _retry_differs(xp, entry, case: Case, warm: int) -> bool:
    """Whether the case alone, refused and fixed, leaves a run that differs from a clean one."""
    params, opt = _warm(xp, entry, warm)
    if not _applies(case, xp, opt, params) or _try_case(xp, opt, params, case, warm):
        return False
    _train(xp, opt, params, GRADS[warm:4])
    return _same_run(opt, params, *_reference(xp, entry, 4)) is not None


def _fresh_case(xp, entry, case: Case, warm: int) -> str | None:
    """The case on a fresh optimizer after ``warm`` good steps: None if refused cleanly."""
    params, opt = _warm(xp, entry, warm)
    return _try_case(xp, opt, params, case, warm)


def _step_table(xp, entry) -> None:
    """Every case of STEP_CASES at the second step (records just made) and at the third
    (the steady state, where the step recognises last step's arrays).

    The cases run one after the other on one optimizer (a refusal changes nothing, so the
    next case finds it as it was); a case that fails there is run again on a fresh one,
    and the failure says whether it fails alone too.
    """
    failures = []
    for warm in (1, 2):
        params, opt = _warm(xp, entry, warm)
        for case in STEP_CASES:
            if not _applies(case, xp, opt, params):
                continue
            problem = _try_case(xp, opt, params, case, warm)
            if problem:
                alone = _fresh_case(xp, entry, case, warm)
                if alone:
                    failures.append(f"step {warm + 1}, {case.id}: {alone}")
                else:
                    failures.append(
                        f"step {warm + 1}, {case.id}: refused cleanly on a fresh optimizer, "
                        f"but not after the earlier cases' refused steps: {problem}"
                    )
                params, opt = _warm(xp, entry, warm)
        # the refusals left nothing behind: the run goes on as a clean run
        _train(xp, opt, params, GRADS[warm:4])
        problem = _same_run(opt, params, *_reference(xp, entry, 4))
        if problem:
            culprits = [c.id for c in STEP_CASES if _retry_differs(xp, entry, c, warm)]
            failures.append(
                f"step {warm + 1}: after the refusals, the run differs from a clean run "
                f"({problem}); cases whose retry alone differs: {culprits}"
            )
    _report(f"{entry.name} on {backend_name(xp)} (fast path {_fastpath.enabled()})", failures)


@pytest.mark.parametrize("entry", ENTRIES)
def test_hostile_steps_are_refused_cleanly(xp, entry):
    _step_table(xp, entry)


@pytest.mark.parametrize("entry", ENTRIES)
def test_hostile_steps_are_refused_cleanly_generic(numpy_generic, entry):
    _step_table(numpy_generic, entry)


# ------------------------------------------------- hyperparameters written into a group

HOSTILE_VALUES = (None, "0.1", NAN, INF, -INF, -1, True, [], {}, b"1", 1e400, -1e-300)


def _refused_by(spec, name, value) -> bool:
    try:
        spec.check(name, value)
    except (TypeError, ValueError):
        return True
    return False


def _hostile_values(entry: Entry, name: str, current: Any) -> list:
    """The values of HOSTILE_VALUES that the spec of ``name`` refuses; for a pair also
    pairs with one hostile element, and sequences of other lengths."""
    values = list(HOSTILE_VALUES)
    if isinstance(current, tuple) and len(current) == 2:
        for bad in (None, "0.1", NAN, INF, -1, True):
            values += [(bad, current[1]), (current[0], bad)]
        values += [(current[0],), (*current, current[1]), "ab"]
    return [v for v in values if _refused_by(entry.cls.hyper[name], name, v)]


def _hyper_cases(entry: Entry, group: dict) -> list[tuple[str, dict, str]]:
    """(id, values to write into the second group, regex of the message)."""
    out = []
    for name in entry.cls.hyper:
        named = rf"^param_groups\[1\]: .*{re.escape(name)}"
        values = _hostile_values(entry, name, group[name])
        assert values, f"no hostile value is refused by {entry.name}'s spec of {name}"
        out += [(f"{name}={v!r}", {name: v}, named) for v in values]
    return out


def _hyper_table(xp, entry) -> None:
    failures = []
    params, opt = _warm(xp, entry, 2)
    for cid, values, pattern in _hyper_cases(entry, opt.param_groups[1]):
        group = opt.param_groups[1]
        old = {k: group[k] for k in values}
        _give(xp, params, GRADS[2])
        group.update(values)
        before = snapshot(opt, params)
        problem = _verdict(_refusal(opt.step, REFUSED, pattern), before, snapshot(opt, params))
        group.update(old)
        if problem:
            failures.append(f"{cid}: {problem}")
            params, opt = _warm(xp, entry, 2)
    for name in entry.cls.hyper:  # a hyperparameter deleted from the group
        group = opt.param_groups[1]
        old = group.pop(name)
        before = snapshot(opt, params)
        pattern = rf"^param_groups\[1\]: .*{re.escape(name)}"
        problem = _verdict(_refusal(opt.step, REFUSED, pattern), before, snapshot(opt, params))
        group[name] = old
        if problem:
            failures.append(f"del {name}: {problem}")
            params, opt = _warm(xp, entry, 2)
    _train(xp, opt, params, GRADS[2:4])
    problem = _same_run(opt, params, *_reference(xp, entry, 4))
    if problem:
        failures.append(f"after the refusals the run differs from a clean run: {problem}")

    # the table's refused constructor arguments, written into a group of an optimizer
    # built with the defaults: refused by the next step with the constructor's message
    params, opt = _warm(xp, entry, 2, kwargs={})
    for kwargs, exc, match in entry.invalid:
        if set(kwargs) & set(entry.aliases):
            continue  # beta1/beta2: constructor spellings, not group keys
        group = opt.param_groups[1]
        old = {k: group[k] for k in kwargs}
        _give(xp, params, GRADS[2])
        group.update(kwargs)
        before = snapshot(opt, params)
        refusal = _refusal(opt.step, (exc,), r"^param_groups\[1\]: " + match)
        problem = _verdict(refusal, before, snapshot(opt, params))
        group.update(old)
        if problem:
            failures.append(f"table's invalid {kwargs}: {problem}")
            params, opt = _warm(xp, entry, 2, kwargs={})
    _train(xp, opt, params, GRADS[2:4])
    problem = _same_run(opt, params, *_reference(xp, entry, 4, kwargs={}))
    if problem:
        failures.append(f"after the table's refusals the run differs from a clean run: {problem}")
    _report(f"{entry.name} on {backend_name(xp)} (fast path {_fastpath.enabled()})", failures)


@pytest.mark.parametrize("entry", ENTRIES)
def test_hostile_hyperparameters_in_a_group_are_refused_at_step(xp, entry):
    _hyper_table(xp, entry)


@pytest.mark.parametrize("entry", ENTRIES)
def test_hostile_hyperparameters_in_a_group_are_refused_at_step_generic(numpy_generic, entry):
    _hyper_table(numpy_generic, entry)


# -------------------------------------------------------------------- numpy scalars


def _as_numpy_scalars(value: Any, k: int = 0) -> Any:
    """Python numbers as NumPy scalars (floats alternately float64 and float32)."""
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, int):
        return np.int64(value)
    if isinstance(value, float):
        return (np.float64, np.float32)[k % 2](value)
    if isinstance(value, tuple):
        return tuple(_as_numpy_scalars(v, k + i) for i, v in enumerate(value))
    return value


def _as_python(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_as_python(v) for v in value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _python_typed(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(map(_python_typed, value))
    return value is None or type(value) in (bool, int, float)


def _not_python(opt, when: str) -> list[str]:
    return [
        f"{when}: param_groups[{i}][{key!r}] is {group[key]!r}"
        for i, group in enumerate(opt.param_groups)
        for key in type(opt).hyper
        if not _python_typed(group[key])
    ]


@pytest.mark.parametrize("entry", ENTRIES)
def test_numpy_scalar_hyperparameters(xp, entry):
    """NumPy scalars in the constructor and written into a group: accepted, stored as Python
    numbers, and the run is the run with those Python numbers, bit for bit."""
    kwargs = {**entry.base, **REPRESENTATIVE[entry.name]}
    numpy_kwargs = {k: _as_numpy_scalars(v, i) for i, (k, v) in enumerate(kwargs.items())}
    python_kwargs = {k: _as_python(v) for k, v in numpy_kwargs.items()}
    params, opt = _build(xp, entry, kwargs=numpy_kwargs)
    failures = _not_python(opt, "constructed")
    twin, ref = _build(xp, entry, kwargs=python_kwargs)
    assert [g[k] for g in opt.param_groups for k in python_kwargs] == [
        g[k] for g in ref.param_groups for k in python_kwargs
    ]
    _train(xp, opt, params, GRADS[:2])
    _train(xp, ref, twin, GRADS[:2])
    assert_same_run(opt, params, ref, twin)
    # written into the groups between steps, as a scheduler or a user may do
    for key, value in numpy_kwargs.items():
        opt.param_groups[1][key] = value
    opt.param_groups[0]["lr"] = np.float32(0.5) * np.float32(python_kwargs["lr"])
    ref.param_groups[0]["lr"] = float(np.float32(0.5) * np.float32(python_kwargs["lr"]))
    _train(xp, opt, params, GRADS[2:4])
    _train(xp, ref, twin, GRADS[2:4])
    failures += _not_python(opt, "written into a group, after a step")
    assert not failures, "\n".join(failures)
    assert_same_run(opt, params, ref, twin)


# ---------------------------------------------------------------------- state dtype


def _state_arrays(opt, params):
    for i, p in enumerate(params):
        for key, value in (opt.state.get(p) or {}).items():
            if hasattr(value, "dtype"):
                yield i, key, value


def _dtypes_are(opt, params, dtype: str) -> list[str]:
    wrong = [
        f"state {key!r} of parameter {i} is {value.dtype}"
        for i, key, value in _state_arrays(opt, params)
        if not str(value.dtype).endswith(dtype)
    ]
    return wrong + [
        f"parameter {i} is {p.data.dtype}"
        for i, p in enumerate(params)
        if not str(p.data.dtype).endswith(dtype)
    ]


@pytest.mark.parametrize("entry", ENTRIES)
def test_gradient_of_another_float_dtype_is_rounded_to_the_parameter(xp, entry):
    """float32 parameters, float64 gradients: state float32, the run that of the gradients
    rounded to float32 beforehand, bit for bit; float32 gradients of float64 parameters:
    the run of the gradients widened beforehand."""
    params, opt = _build(xp, entry, dtype="float32")
    twin, ref = _build(xp, entry, dtype="float32")
    _train(xp, opt, params, GRADS[:3], dtype="float64")
    _train(xp, ref, twin, GRADS[:3], dtype="float32")
    assert not _dtypes_are(opt, params, "float32"), _dtypes_are(opt, params, "float32")
    assert_same_run(opt, params, ref, twin)

    params, opt = _build(xp, entry)
    twin, ref = _build(xp, entry)
    f32 = [[np.asarray(g, dtype=np.float32) for g in step] for step in GRADS[:3]]
    _train(xp, opt, params, f32, dtype="float32")
    _train(xp, ref, twin, f32, dtype="float64")
    assert not _dtypes_are(opt, params, "float64"), _dtypes_are(opt, params, "float64")
    assert_same_run(opt, params, ref, twin)


@pytest.mark.parametrize("entry", ENTRIES)
def test_state_follows_data_rebound_to_float32(xp, entry):
    """``.data`` rebound float64 -> float32 between steps: the state becomes float32, as if
    it had been cast by hand."""
    params, opt = _warm(xp, entry, 2)
    twin, ref = _warm(xp, entry, 2)
    for ps, o, by_hand in ((params, opt, False), (twin, ref, True)):
        for p in ps:
            p.data = xp.astype(p.data, xp.float32)
            if by_hand:
                record = o.state.get(p) or {}
                for key, value in list(record.items()):
                    if hasattr(value, "dtype"):
                        record[key] = xp.astype(value, xp.float32)
    _train(xp, opt, params, GRADS[2:4])
    _train(xp, ref, twin, GRADS[2:4])
    assert not _dtypes_are(opt, params, "float32"), _dtypes_are(opt, params, "float32")
    assert_same_run(opt, params, ref, twin)


def test_sgd_momentum_buffer_has_the_parameter_dtype(xp):
    params, opt = _build(xp, BY_NAME["SGD"], dtype="float32", kwargs={"momentum": 0.9})
    _train(xp, opt, params, GRADS[:1], dtype="float64")
    for p in params:
        assert str(opt.state[p]["momentum_buffer"].dtype).endswith("float32")


def test_adam_state_after_data_rebound_to_float32(xp):
    params, opt = _warm(xp, BY_NAME["Adam"], 1, kwargs={})
    for p in params:
        p.data = xp.astype(p.data, xp.float32)
    _train(xp, opt, params, GRADS[1:2])
    for p in params:
        for key in ("exp_avg", "exp_avg_sq"):
            assert str(opt.state[p][key].dtype).endswith("float32"), key


@pytest.mark.parametrize("entry", ENTRIES)
def test_read_only_numpy_buffer_under_array_api_strict(entry):
    """An array_api_strict parameter over a read-only NumPy buffer (not visible through
    the standard): refused cleanly, or updated as a writable one would be."""
    xp = resolve_backend("array_api_strict")
    params, opt = _warm(xp, entry, 2)
    host = to_np(params[1].data).copy()
    host.flags.writeable = False
    old = params[1].data
    params[1].data = xp.asarray(host)
    _give(xp, params, GRADS[2])
    before = snapshot(opt, params)
    error = None
    try:
        opt.step()
    except Exception as e:  # judged below, as every refusal
        error = e
    if error is not None:
        problem = _verdict(_refusal(_raise, REFUSED, B, error), before, snapshot(opt, params))
        assert problem is None, f"{entry.name}: {problem}"
        params[1].data = old
        opt.step()
    _train(xp, opt, params, GRADS[3:4])
    assert_same_run(opt, params, *reversed(_reference(xp, entry, 4)))


# ------------------------------------------------------------- hostile state dicts


def _np_like(value, new):
    """``new`` (NumPy) in the library of array ``value``."""
    return to_backend(np.asarray(new), namespace(value), copy=True)


def _with_element(v, value):
    a = to_np(v).copy()
    a.flat[0] = value
    return _np_like(v, a)


def _set(path: tuple, make: Callable) -> Callable:
    """A corruption: the entry at ``path`` replaced by ``make(old)``."""

    def corrupt(sd):
        parent = sd
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = make(parent[path[-1]])
        return sd

    return corrupt


def _delete(path: tuple) -> Callable:
    def corrupt(sd):
        parent = sd
        for k in path[:-1]:
            parent = parent[k]
        del parent[path[-1]]
        return sd

    return corrupt


def _names(*needles: str) -> str:
    """A regex matching a message that contains every one of ``needles``, in any order."""
    return "(?s)" + "".join(f"(?=.*{re.escape(n)})" for n in needles)


def _source_state_dict(xp, entry) -> dict:
    _, opt = _warm(xp, entry, 2)
    return copy.deepcopy(opt.state_dict())


def _load_corruptions(entry: Entry, sd: dict) -> list[tuple[str, Callable, str]]:
    """(id, corruption, regex the message must match) for ``sd``, a state dict of ``entry``."""
    out = [
        ("not-a-dict-list", lambda sd: [sd], "state_dict"),
        ("not-a-dict-none", lambda sd: None, "state_dict"),
        ("not-a-dict-str", lambda sd: "state", "state_dict"),
        ("no-state", _delete(("state",)), "state_dict"),
        ("no-param-groups", _delete(("param_groups",)), "state_dict"),
        ("state-is-list", _set(("state",), lambda s: list(s.values())), r"state_dict\['state'\]"),
        ("state-is-none", _set(("state",), lambda s: None), r"state_dict\['state'\]"),
        ("groups-dict", _set(("param_groups",), lambda g: dict(enumerate(g))), r"param_groups"),
        ("groups-str", _set(("param_groups",), lambda g: "ab"), r"param_groups"),
        ("one-group-fewer", _set(("param_groups",), lambda g: g[:1]), r"parameter groups"),
        (
            "one-group-more",
            _set(("param_groups",), lambda g: [*g, copy.deepcopy(g[1])]),
            r"parameter groups",
        ),
        ("group-list", _set(("param_groups", 1), lambda g: list(g.items())), r"param_groups\[1\]"),
        ("group-no-params", _delete(("param_groups", 1, "params")), r"param_groups\[1\]"),
        ("params-str", _set(("param_groups", 1, "params"), lambda p: "2"), r"param_groups\[1\]"),
        ("params-int", _set(("param_groups", 1, "params"), lambda p: 2), r"param_groups\[1\]"),
        ("params-set", _set(("param_groups", 1, "params"), lambda p: {2}), r"param_groups\[1\]"),
        (
            "params-one-more",
            _set(("param_groups", 1, "params"), lambda p: [2, 3]),
            r"param_groups\[1\]",
        ),
        (
            "params-one-fewer",
            _set(("param_groups", 0, "params"), lambda p: [0]),
            r"param_groups\[0\]",
        ),
        ("duplicate-index", _set(("param_groups", 1, "params"), lambda p: [1]), r"index 1"),
        ("index-bool", _set(("param_groups", 0, "params"), lambda p: [False, 1]), "False"),
        ("index-negative", _set(("param_groups", 0, "params"), lambda p: [-1, 1]), "-1"),
        ("index-str", _set(("param_groups", 0, "params"), lambda p: ["x", 1]), "'x'"),
        ("index-float", _set(("param_groups", 0, "params"), lambda p: [0.5, 1]), r"0\.5"),
        ("index-none", _set(("param_groups", 0, "params"), lambda p: [None, 1]), "None"),
        ("state-index-unknown", _set(("state",), lambda s: {**s, 99: s[1]}), "99"),
        ("state-index-str", _set(("state",), lambda s: {**s, "x": s[1]}), "'x'"),
        ("state-index-negative", _set(("state",), lambda s: {**s, -1: s[1]}), "-1"),
        (
            "state-index-bool",
            _set(("state",), lambda s: {(True if k == 1 else k): v for k, v in s.items()}),
            "True",
        ),
        ("record-list", _set(("state", 1), lambda r: list(r.items())), "'b'"),
        ("record-none", _set(("state", 1), lambda r: None), "'b'"),
        ("record-str", _set(("state", 1), lambda r: "exp_avg"), "'b'"),
        ("record-non-str-key", _set(("state", 1), lambda r: {**r, 5: 1.0}), "'b'"),
        (
            "record-foreign-key",
            _set(("state", 1), lambda r: {**r, "momentum_buffer_x": np.zeros((2, 3))}),
            _names("'b'", "momentum_buffer_x"),
        ),
    ]
    for key in ("step_count", "skipped_steps"):
        for bad in (-1, 2.5, "2", True, None, NAN, INF, [], np.float64(1.5)):
            out.append((f"{key}={bad!r}", _set((key,), lambda v, bad=bad: bad), key))
    for name in entry.cls.hyper:
        named = rf"param_groups\[1\].*{re.escape(name)}"
        if name not in entry.cls._optional_hyper:
            out.append((f"missing-hyper-{name}", _delete(("param_groups", 1, name)), named))
        for bad in _hostile_values(entry, name, sd["param_groups"][1][name]):
            replace = _set(("param_groups", 1, name), lambda v, bad=bad: bad)
            out.append((f"hyper-{name}={bad!r}", replace, named))
    record = sd["state"][1]
    for key, value in record.items():
        path = ("state", 1, key)
        named = _names("'b'", repr(key))
        if len(record) > 1:  # without its only key a record is empty: "no state yet"
            out.append((f"missing-state-{key}", _delete(path), named))
        if key == "step":
            bads = [-1, 2.7, True, "3", NAN, INF, None, [], "abc", np.float64(2.5), -0.5]
        elif key in entry.cls._scalar_state:
            bads = [NAN, INF, -INF, True, "3", None, [], "abc"]
        elif hasattr(value, "shape"):
            bads = []
        else:
            continue
        for bad in bads:
            out.append((f"state-{key}={bad!r}", _set(path, lambda v, bad=bad: bad), named))
        if not hasattr(value, "shape"):
            continue
        arrays = {
            "nan": lambda v: _with_element(v, NAN),
            "inf": lambda v: _with_element(v, INF),
            "-inf": lambda v: _with_element(v, -INF),
            "int64": lambda v: _np_like(v, np.round(to_np(v)).astype(np.int64)),
            "complex": lambda v: _np_like(v, to_np(v).astype(np.complex128)),
            "bool": lambda v: _np_like(v, to_np(v) > 0),
            "extra-axis": lambda v: _np_like(v, to_np(v)[None]),
            "flattened": lambda v: _np_like(v, to_np(v).reshape(-1)),
            "list": lambda v: to_np(v).tolist(),
            "float": lambda v: 0.0,
            "str": lambda v: "0",
            "object": lambda v: object(),
        }
        if key not in entry.cls._nullable_state:
            arrays["none"] = lambda v: None
        if len(value.shape) == 2 and value.shape[0] != value.shape[1]:
            arrays["transposed"] = lambda v: _np_like(v, to_np(v).T.copy())
        if key in entry.cls._nonnegative_state:
            arrays["negative"] = lambda v: _with_element(v, -1.0)
            arrays["tiny-negative"] = lambda v: _with_element(v, -1e-300)  # normal, not flushed
        for what, make in arrays.items():
            out.append((f"state-{key}-{what}", _set(path, make), named))
    return out


def _target(xp, entry):
    """An optimizer with a state of its own (another seed, another lr, one step)."""
    params, opt = _build(xp, entry, seed=3)
    opt.param_groups[1]["lr"] = opt.param_groups[1]["lr"] / 2
    _train(xp, opt, params, GRADS[3:4])
    return params, opt


@pytest.mark.parametrize("entry", ENTRIES)
def test_hostile_state_dicts_are_refused_cleanly(xp, entry):
    """Every corruption of a valid state dict: refused naming what is wrong, the optimizer
    untouched, and afterwards it steps as one that never saw the dicts."""
    sd = _source_state_dict(xp, entry)
    failures = []
    params, opt = _target(xp, entry)
    for cid, corrupt, needle in _load_corruptions(entry, sd):
        bad = corrupt(copy.deepcopy(sd))
        before = snapshot(opt, params)
        refusal = _refusal(opt.load_state_dict, REFUSED, needle, bad)
        problem = _verdict(refusal, before, snapshot(opt, params))
        if problem:
            failures.append(f"{cid}: {problem}")
            params, opt = _target(xp, entry)
    twin, ref = _target(xp, entry)
    _train(xp, opt, params, GRADS[4:5])
    _train(xp, ref, twin, GRADS[4:5])
    problem = _same_run(opt, params, twin, ref)
    if problem:
        failures.append(f"after the refused loads the run differs from a clean run: {problem}")
    _report(f"{entry.name} on {backend_name(xp)}", failures)


@pytest.mark.parametrize("entry", ENTRIES)
def test_state_dict_variants_that_are_accepted(xp, entry):
    """What a valid state dict may look like: arrays of another float dtype (cast to the
    parameter's, never the file's), JSON's string indices, 0-d or float steps of an integral
    value (torch's), an empty record (no state yet), another backend's arrays."""
    sd = _source_state_dict(xp, entry)

    def variant(change):
        new = copy.deepcopy(sd)
        change(new)
        return new

    def cast(dtype):
        def change(new):
            for record in new["state"].values():
                for k, v in record.items():
                    if hasattr(v, "shape"):
                        record[k] = to_backend(v, namespace(v), dtype=dtype)

        return change

    def string_indices(new):
        new["state"] = {str(k): v for k, v in new["state"].items()}

    def steps(make):
        def change(new):
            for record in new["state"].values():
                if "step" in record:
                    record["step"] = make(record["step"])

        return change

    def numpy_arrays(new):
        for record in new["state"].values():
            for k, v in record.items():
                if hasattr(v, "shape"):
                    record[k] = to_np(v).copy()

    variants = {
        "float32-state": cast("float32"),
        **({"float16-state": cast("float16")} if hasattr(xp, "float16") else {}),
        "string-indices": string_indices,
        "float-step": steps(float),
        "numpy-int-step": steps(np.int64),
        "0-d-array-step": steps(lambda s: _array(xp, np.float64(s))),
        "numpy-state": numpy_arrays,
        "empty-record": lambda new: new["state"].__setitem__(1, {}),
    }
    failures = []
    params, opt = _target(xp, entry)
    for vid, change in variants.items():  # each load replaces the whole state
        try:
            opt.load_state_dict(variant(change))
            if _dtypes_are(opt, params, "float64"):
                failures.append(f"{vid}: {_dtypes_are(opt, params, 'float64')}")
            _train(xp, opt, params, GRADS[4:5])
        except Exception as e:
            failures.append(f"{vid}: {type(e).__name__}: {e!s:.300}")
            params, opt = _target(xp, entry)
    # a float64 dict into float32 parameters: cast down
    params, opt = _build(xp, entry, dtype="float32", seed=3)
    opt.load_state_dict(copy.deepcopy(sd))
    wrong = _dtypes_are(opt, params, "float32")
    failures += [f"float64 dict into float32 parameters: {w}" for w in wrong]
    _train(xp, opt, params, GRADS[4:5])
    assert not failures, "\n".join(failures)


# -------------------------------------------------- another optimizer's state dict


def test_state_dict_of_another_optimizer():
    """Every other optimizer's state dict: refused cleanly, or loaded and the next step
    works (Adam's and AdamW's are one layout)."""
    failures = []
    for source, target in ((a, b) for a in TABLE for b in TABLE if a is not b):
        sd = _source_state_dict(NUMPY, source)
        params, opt = _target(NUMPY, target)
        before = snapshot(opt, params)
        try:
            opt.load_state_dict(sd)
        except REFUSED:
            problem = _unchanged(before, snapshot(opt, params))
            if problem:
                failures.append(f"{source.name} into {target.name}: {problem}")
            continue
        except Exception as e:
            failures.append(f"{source.name} into {target.name}: {type(e).__name__}: {e!s:.200}")
            continue
        try:
            _train(NUMPY, opt, params, GRADS[4:5])
        except Exception as e:
            failures.append(
                f"{source.name} into {target.name}: loaded, then the step raised "
                f"{type(e).__name__}: {e!s:.200}"
            )
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("source", "target"), [("SGD", "Adam"), ("Adam", "SGD"), ("SGD", "Lion"), ("Adam", "Rprop")]
)
def test_state_dict_of_another_optimizer_is_refused(xp, source, target):
    sd = _source_state_dict(xp, BY_NAME[source])
    params, opt = _target(xp, BY_NAME[target])
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=rf"{target}"):
        opt.load_state_dict(sd)
    assert_unchanged(before, snapshot(opt, params))


def _torch_run(torch, entry, kwargs, steps, name=None):
    """torch's twin (or ``torch.optim.<name>``) on the two groups after ``steps`` steps."""
    tparams = theirs(torch, initial(SHAPES3))
    groups = [{"params": tparams[:2]}, {"params": tparams[2:]}]
    if name is None:
        topt = entry.make_torch(torch, groups, **kwargs)
    else:
        topt = getattr(torch.optim, name)(groups, foreach=False, **{**entry.base, **kwargs})
    for grads in GRADS[:steps]:
        for tp, g in zip(tparams, grads, strict=True):
            tp.grad = torch.tensor(g, dtype=torch.float64)
        topt.step()
    return tparams, topt


def _continue_both(xp, torch, opt, params, topt, tparams):
    for step, grads in enumerate(GRADS[2:5], start=2):
        _give(xp, params, grads)
        for tp, g in zip(tparams, grads, strict=True):
            tp.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        topt.step()
        assert_params_match(params, tparams, step)
    assert_state_matches(opt, topt, params, tparams)


@pytest.mark.parametrize("entry", ENTRIES)
def test_torch_state_dict_loads_and_continues(xp, torch, entry):
    kwargs = REPRESENTATIVE[entry.name]
    tparams, topt = _torch_run(torch, entry, kwargs, 2)
    params = ours(xp, [tp.detach().numpy() for tp in tparams])
    opt = entry.make(_groups(params), **kwargs)
    opt.load_state_dict(topt.state_dict())
    _continue_both(xp, torch, opt, params, topt, tparams)


def test_torch_adamw_state_dict_into_adam_decouples(xp, torch):
    """torch's AdamW state dict (decoupled_weight_decay=True) makes our Adam decouple."""
    tparams, topt = _torch_run(torch, BY_NAME["Adam"], {"weight_decay": 0.1}, 2, "AdamW")
    assert topt.state_dict()["param_groups"][0]["decoupled_weight_decay"] is True
    params = ours(xp, [tp.detach().numpy() for tp in tparams])
    opt = na.Adam(_groups(params), lr=0.5)
    opt.load_state_dict(topt.state_dict())
    assert [g["decoupled_weight_decay"] for g in opt.param_groups] == [True, True]
    _continue_both(xp, torch, opt, params, topt, tparams)


# ----------------------------------------------------------------- random corruptions


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _array_variants(v):
    """Arrays like ``v`` (of its library) that a corrupted file could hold."""
    a = to_np(v)
    out = [
        _np_like(v, a > 0),
        _np_like(v, a.reshape(-1)),
        _np_like(v, a[None]),
        _np_like(v, np.zeros(a.shape)),
        _np_like(v, np.zeros(a.shape, dtype=np.int64)),
        _np_like(v, np.zeros(a.shape, dtype=np.complex128)),
        a.tolist(),
    ]
    if a.dtype.kind == "f" and a.size:
        out += [
            _with_element(v, NAN),
            _with_element(v, -1.0),
            _with_element(v, np.finfo(a.dtype).max),
            _np_like(v, a.astype(np.float32)),
        ]
    return out


POOL = (
    None, -1, 0, 2.7, True, False, "3", "abc", "", NAN, INF, -INF, 1e308, [], {}, (),
    (1, 2, 3), np.float64(NAN), np.int64(-1), np.float32(0.5), np.bool_(True), b"x",
)  # fmt: skip


@st.composite
def _corrupted(draw, sd):
    """``sd`` with one to three random keys deleted or values replaced."""
    sd = copy.deepcopy(sd)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(sd))))
        if not path:
            continue
        parent = sd
        for k in path[:-1]:
            parent = parent[k]
        old = parent[path[-1]]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
            continue
        choices = [*POOL, *(_array_variants(old) if hasattr(old, "shape") else ())]
        parent[path[-1]] = draw(st.sampled_from(choices))
    return sd


_TEMPLATES = {e.name: _source_state_dict(NUMPY, e) for e in TABLE}


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(name=st.sampled_from(sorted(_TEMPLATES)), data=st.data())
def test_random_corruptions_are_refused_or_work(name, data):
    """Random keys deleted and values replaced: a clean refusal (ValueError/TypeError,
    nothing changed) or a load after which a step works; never another exception."""
    entry = BY_NAME[name]
    sd = data.draw(_corrupted(_TEMPLATES[name]))
    params, opt = _target(NUMPY, entry)
    before = snapshot(opt, params)
    try:
        opt.load_state_dict(sd)
    except REFUSED:
        assert_unchanged(before, snapshot(opt, params))
        return
    _train(NUMPY, opt, params, GRADS[4:5])


# ----------------------------------------------------------------------------- LBFGS


def _lbfgs(xp):
    params = ours(xp, initial(SHAPES3))
    return params, na.LBFGS({"a": params[0], "b": params[1], "c": params[2]}, max_iter=3)


def _closure(xp, params, bad=None):
    """The loss 0.5 * |x - t|^2 (gradient x - t); parameter 'b' gets ``bad(xp, gradient)``."""

    def closure():
        loss = 0.0
        for k, (p, t) in enumerate(zip(params, GRADS[0], strict=True)):
            diff = to_np(p.data) - t
            loss += 0.5 * float(np.sum(diff * diff))
            p.grad = to_backend(diff, xp, copy=True) if k != 1 or bad is None else bad(xp, diff)
        return loss

    return closure


def test_lbfgs_refuses_hostile_gradients(xp):
    """LBFGS (its own step, one group): the table's hostile gradients through a closure,
    one after the other on one optimizer; then it steps as a clean run."""
    failures = []
    twin, ref = _lbfgs(xp)
    ref.step(_closure(xp, twin))
    ref.step(_closure(xp, twin))
    params, opt = _lbfgs(xp)
    opt.step(_closure(xp, params))
    for cid, make in GRAD_MAKERS.items():
        exc = (FloatingPointError,) if cid == "grad-nan" else REFUSED
        before = snapshot(opt, params)
        refusal = _refusal(opt.step, exc, "parameter 'b'", _closure(xp, params, make))
        problem = _verdict(refusal, before, snapshot(opt, params))
        if problem:
            failures.append(f"{cid}: {problem}")
            params, opt = _lbfgs(xp)
            opt.step(_closure(xp, params))
    opt.step(_closure(xp, params))
    for i, (p, q) in enumerate(zip(params, twin, strict=True)):
        if to_np(p.data).tobytes() != to_np(q.data).tobytes():
            failures.append(f"after the refusals, parameter {i} differs from a clean run")
    _report(f"LBFGS on {backend_name(xp)}", failures)
