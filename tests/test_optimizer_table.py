"""What every optimizer of the table (tests/optimizers.py) must do, on every backend.

* step by step against ``torch.optim`` in float64, every option of the grid;
* the NumPy fast path equal to the generic path bit for bit, every option;
* ``state_dict``/``load_state_dict`` (and ``neural_arch.save``/``load``)
  resuming a run bit for bit;
* a non-finite gradient refused all-or-nothing ("raise" and "skip");
* float32 kept float32;
* the table's invalid hyperparameters refused, naming them, changing nothing.

Plus checks of the table itself: its grid names every constructor option and
its ``valid`` predicate is exactly what the constructor accepts.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import itertools
import re

import numpy as np
import pytest
from _helpers import P, to_np
from optimizers import (
    SHAPES,
    TABLE,
    assert_same_run,
    assert_unchanged,
    case_params,
    covering_cases,
    covering_params,
    entry_params,
    grad_sequence,
    initial,
    ours,
    run_side_by_side,
    snapshot,
)

import neural_arch as na
from neural_arch.backend import backend_name, resolve_backend, to_backend
from neural_arch.optim import _fastpath

GRID = case_params()
COVERING = covering_params()
ACCEPTED = [
    pytest.param(e, kw, expected, id=f"{e.name}-{kw}")
    for e in TABLE
    for kw, expected in e.accepted
]
INVALID = [
    pytest.param(e, kw, exc, match, id=f"{e.name}-{kw}")
    for e in TABLE
    for kw, exc, match in e.invalid
]

NAMES = ("scalar", "one", "vector", "matrix", "cube")  # one per shape of SHAPES
assert len(NAMES) == len(SHAPES)


def _set(xp, params, grads):
    """Give each parameter a private copy of its gradient, in its backend and dtype."""
    for p, g in zip(params, grads, strict=True):
        p.grad = to_backend(g, xp, dtype=p.data.dtype, copy=True)


def _train(xp, opt, params, grads):
    for step_grads in grads:
        _set(xp, params, step_grads)
        opt.step()


def _copies(xp, params):
    return [P(to_backend(to_np(p.data), xp, dtype=p.data.dtype, copy=True)) for p in params]


def _two_groups(entry, kwargs, params):
    """Two groups, the second with half the learning rate."""
    lr = {**entry.base, **kwargs}["lr"]
    return [{"params": params[:2]}, {"params": params[2:], "lr": lr / 2}]


def _named_groups(params):
    """Two groups of named parameters (names from NAMES)."""
    named = dict(zip(NAMES, params, strict=True))
    return [{"params": dict(list(named.items())[:2])}, {"params": dict(list(named.items())[2:])}]


def _options(opt):
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


# ------------------------------------------------------------------ the table


@pytest.mark.parametrize("entry", entry_params())
def test_grid_names_every_constructor_option(entry):
    """Each keyword of the constructor is gridded, fixed in ``base``, or another spelling."""
    options = set(inspect.signature(entry.cls).parameters) - {
        "params",
        "nonfinite",
        "master_weights",
    }
    covered = set(entry.grid) | set(entry.base) | set(entry.aliases)
    assert options == covered, f"missing: {options - covered}; unknown: {covered - options}"
    assert not set(entry.grid) & set(entry.base), "an option is both gridded and fixed"
    for option, values in entry.grid.items():
        assert len(set(map(repr, values))) >= 2, f"grid option {option!r} has one value"
    assert entry.invalid, "no invalid hyperparameters listed"


@pytest.mark.parametrize("entry", entry_params())
def test_valid_predicate_is_what_the_constructor_accepts(entry):
    """Every combination of grid values: the constructor refuses it iff ``valid`` does."""
    params = ours(resolve_backend("numpy"), initial())
    names = list(entry.grid)
    for values in itertools.product(*entry.grid.values()):
        kwargs = dict(zip(names, values, strict=True))
        if entry.valid(kwargs):
            entry.make(params, **kwargs)
        else:
            with pytest.raises(ValueError):
                entry.make(params, **kwargs)


def test_covering_cases_use_every_value():
    for entry in TABLE:
        chosen = covering_cases(entry)
        assert all(entry.valid(kw) for kw in chosen)
        for option, values in entry.grid.items():
            used = {repr(kw[option]) for kw in chosen}
            assert used == {repr(v) for v in values}, (entry.name, option)


# ------------------------------------------------------------- a. vs torch


@pytest.mark.parametrize(("entry", "kwargs"), GRID)
def test_matches_torch_step_by_step(xp, torch, entry, kwargs):
    """30 steps in float64: parameters after every step, state (torch's keys) at the end."""
    run_side_by_side(
        xp,
        torch,
        lambda ps: entry.make(ps, **kwargs),
        lambda ps: entry.make_torch(torch, ps, **kwargs),
    )


# --------------------------------------------------- b. fast path == generic


@pytest.fixture
def fastpath():
    """The fast-path switch (tests of the NumPy fast path skip without numba)."""
    pytest.importorskip("numba", reason="the NumPy fast path needs numba (neural_arch[fast])")
    if not _fastpath.enabled():
        pytest.skip("the fast path is switched off (NEURAL_ARCH_FASTPATH=0)")
    return _fastpath


@contextlib.contextmanager
def _generic_engine_refused(monkeypatch):
    """Fail the run if it calls ``neural_arch.optim._engine.run_generic``; yields the calls.

    Where that module does not exist (before the rule engine),
    test_the_generic_engine_can_be_refused fails instead and this guards nothing.
    """
    calls = []
    if importlib.util.find_spec("neural_arch.optim._engine") is None:
        yield calls
        return
    engine = importlib.import_module("neural_arch.optim._engine")

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the fast path fell back to the generic engine (run_generic)")

    with monkeypatch.context() as m:
        m.setattr(engine, "run_generic", refuse)  # raising=True: a renamed function fails here
        yield calls


def _train_numpy(entry, kwargs, dtype, steps):
    rng = np.random.default_rng(0)
    params = [P(rng.standard_normal(s).astype(dtype)) for s in SHAPES]
    opt = entry.make(params, **kwargs)
    for _ in range(steps):
        for p in params:
            p.grad = rng.standard_normal(p.data.shape).astype(dtype)
        opt.step()
    return params, opt


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("entry", "kwargs"), GRID)
def test_fast_path_matches_generic_bit_for_bit(fastpath, monkeypatch, entry, kwargs, dtype):
    old = fastpath.set_enabled(False)
    try:
        generic, opt_generic = _train_numpy(entry, kwargs, dtype, 100)
    finally:
        fastpath.set_enabled(old)
    assert fastpath.enabled()
    with _generic_engine_refused(monkeypatch) as calls:
        fast, opt_fast = _train_numpy(entry, kwargs, dtype, 100)
    assert calls == [], "the fast run went through the generic engine"
    assert opt_fast.step_count == 100
    assert_same_run(opt_fast, fast, opt_generic, generic)
    for p in fast:
        assert p.data.dtype == dtype
    assert opt_fast.state_dict()["param_groups"] == opt_generic.state_dict()["param_groups"]


def test_the_generic_engine_can_be_refused():
    """The fast-path tests refuse ``_engine.run_generic``; it must exist to be refused."""
    assert importlib.util.find_spec("neural_arch.optim._engine") is not None, (
        "neural_arch.optim._engine is missing: the fast-path tests cannot check "
        "that the fast path does not fall back to the generic engine"
    )
    engine = importlib.import_module("neural_arch.optim._engine")
    assert callable(getattr(engine, "run_generic", None)), "_engine.run_generic is missing"


# -------------------------------------------------------- c. state dict


K_STEPS, N_STEPS = 4, 5


def _resume_check(xp, entry, kwargs, transfer):
    """k steps, transfer the state dict to a fresh optimizer, n more steps each: same bits."""
    params = ours(xp, initial())
    grads = grad_sequence(steps=K_STEPS + N_STEPS)
    opt = entry.make(_two_groups(entry, kwargs, params), **kwargs)
    _train(xp, opt, params, grads[:K_STEPS])
    twin = _copies(xp, params)
    # the base hyperparameters only: the state dict brings the others
    fresh = entry.make([{"params": twin[:2]}, {"params": twin[2:]}])
    fresh.load_state_dict(transfer(opt.state_dict()))
    assert _options(fresh) == _options(opt)
    assert_same_run(fresh, twin, opt, params)
    _train(xp, opt, params, grads[K_STEPS:])
    _train(xp, fresh, twin, grads[K_STEPS:])
    assert fresh.step_count == K_STEPS + N_STEPS
    assert_same_run(fresh, twin, opt, params)


@pytest.mark.parametrize(("entry", "kwargs"), COVERING)
def test_state_dict_round_trip_is_bit_exact(xp, entry, kwargs):
    _resume_check(xp, entry, kwargs, lambda sd: sd)


@pytest.mark.parametrize(("entry", "kwargs"), GRID)
def test_state_dict_round_trip_through_a_file(tmp_path, entry, kwargs):
    path = tmp_path / "optimizer.safetensors"

    def through_file(sd):
        na.save({"optimizer": sd}, path)
        return na.load(path)["optimizer"]

    _resume_check(resolve_backend("numpy"), entry, kwargs, through_file)


# ------------------------------------------------------------ d. nonfinite

BAD = (float("nan"), float("inf"), -float("inf"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", ["raise", "skip"])
@pytest.mark.parametrize(("entry", "kwargs"), COVERING)
def test_nonfinite_gradient_changes_nothing(xp, entry, kwargs, mode, dtype):
    """NaN or ±inf in any one element of any gradient: nothing changes, in either group."""
    params = ours(xp, initial(), dtype=dtype)
    opt = entry.make(_named_groups(params), nonfinite=mode, **kwargs)
    grads = grad_sequence(steps=4)
    _train(xp, opt, params, grads[:3])
    refused = 0
    for i, name in enumerate(NAMES):  # every parameter, and nan, inf, -inf in turn
        _set(xp, params, grads[3])
        g = grads[3][i].copy()
        g.flat[-1] = BAD[i % len(BAD)]
        params[i].grad = to_backend(g, xp, dtype=params[i].data.dtype)
        before = snapshot(opt, params)
        if mode == "raise":
            named = rf"gradient of parameter {re.escape(repr(name))} contains NaN or infinity"
            with pytest.raises(FloatingPointError, match=named):
                opt.step()
        else:
            assert opt.step(lambda: 3.5) == 3.5
            refused += 1
            data, state, groups, (steps, _) = before
            before = (data, state, groups, (steps, refused))
        assert_unchanged(before, snapshot(opt, params))
        assert opt.step_count == 3 and opt.skipped_steps == refused
    # the refused steps left no trace: the next step is the one a clean run takes
    _set(xp, params, grads[3])
    opt.step()
    assert (opt.step_count, opt.skipped_steps) == (4, refused)
    clean = ours(xp, initial(), dtype=dtype)
    clean_opt = entry.make(_named_groups(clean), nonfinite=mode, **kwargs)
    _train(xp, clean_opt, clean, grads)
    clean_opt.skipped_steps = refused  # the one difference, checked above
    assert_same_run(opt, params, clean_opt, clean)


# ------------------------------------------------------------ e. dtype kept


@pytest.mark.parametrize(("entry", "kwargs"), COVERING)
def test_float32_stays_float32(xp, entry, kwargs):
    """Parameters and state stay float32 (the covering cases: every value of every option)."""
    params = ours(xp, initial(), dtype="float32")
    opt = entry.make(params, **kwargs)
    _train(xp, opt, params, grad_sequence(steps=3))
    for i, p in enumerate(params):
        assert p.data.dtype == xp.float32, f"parameter {i}"
        assert backend_name(p.data) == backend_name(xp)
        for key, value in (opt.state.get(p) or {}).items():
            if key == "step":
                assert type(value) is int and value == 3
            elif key in type(opt)._scalar_state:  # a number, not an array (NAdam's mu_product)
                assert type(value) is float, f"parameter {i}: {key} is {value!r}"
            elif value is not None:
                assert value.dtype == xp.float32, f"parameter {i}: {key}"
                assert backend_name(value) == backend_name(xp), f"parameter {i}: {key}"
                shape = opt._state_shape(key, p)  # the parameter's, or e.g. Adafactor's factors
                assert tuple(value.shape) == shape, f"parameter {i}: {key}"


# ------------------------------------------------- f. refused hyperparameters


@pytest.mark.parametrize(("entry", "kwargs", "exc", "match"), INVALID)
def test_invalid_hyperparameters_are_refused(xp, entry, kwargs, exc, match):
    """In the constructor, in a group given to it, and in add_param_group (changing nothing)."""
    params = ours(xp, initial())
    with pytest.raises(exc, match=match):
        entry.make(params, **kwargs)
    with pytest.raises(exc, match=match):
        entry.make([{"params": params[:2]}, {"params": params[2:], **kwargs}])
    opt = entry.make(params[:2])
    _train(xp, opt, params[:2], [g[:2] for g in grad_sequence(steps=2)])
    before = snapshot(opt, params)
    with pytest.raises(exc, match=match):
        opt.add_param_group({"params": params[2:], **kwargs})
    assert len(opt.param_groups) == 1
    assert_unchanged(before, snapshot(opt, params))
    opt.add_param_group({"params": params[2:]})  # the refused call registered nothing
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize(("entry", "kwargs", "expected"), ACCEPTED)
def test_accepted_hyperparameters(xp, entry, kwargs, expected):
    """Edge values and other spellings are accepted, in the constructor and add_param_group."""
    params = ours(xp, initial())
    opt = entry.make(params[:2], **kwargs)
    plain = entry.make(params[2:])
    plain.add_param_group({"params": params[:2], **kwargs})
    for group in (opt.param_groups[0], plain.param_groups[1]):
        for key, value in expected.items():
            assert group[key] == value and type(group[key]) is type(value), (key, group[key])
    _set(xp, params, grad_sequence(steps=1)[0])
    opt.step()
    plain.step()
    assert opt.step_count == plain.step_count == 1


@pytest.mark.parametrize("entry", entry_params())
@pytest.mark.parametrize("mode", ["zero", "warn", None, True])
def test_unknown_nonfinite_mode_is_refused(entry, mode):
    params = ours(resolve_backend("numpy"), initial())
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        entry.make(params, nonfinite=mode)
