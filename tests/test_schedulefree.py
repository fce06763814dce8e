"""Schedule-free AdamW and SGD against the authors' ``schedulefree`` package, and the modes.

The reference runs on torch float64 tensors with the same gradients; ours on
every backend.  Parameters are compared in train mode after every step and
in eval mode every ten steps, the state (``z``, ``exp_avg_sq``) after every
step, the group counters exactly.  Tolerance: ``rtol=1e-12`` with
``atol=1e-14`` (parameters are of size 1): torch's CPU kernels fuse the
multiply-adds of ``lerp_`` and ``add_(alpha=)``, which the Array API cannot,
so the two differ by an ulp or so per step; relative to an element that
happens to lie near zero, that is unbounded, hence the small absolute term.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from _helpers import P, to_np

import neural_arch as na
from neural_arch.backend import backend_name, is_immutable, to_backend
from neural_arch.optim import _fastpath
from neural_arch.optim.schedulefree import AdamWScheduleFree, SGDScheduleFree

RTOL, ATOL = 1e-12, 1e-14
SHAPES = ((3, 4), (5,), (), (2, 1, 3))
COUNTERS = ("k", "train_mode", "weight_sum", "lr_max", "scheduled_lr")
CLASSES = {"AdamW": AdamWScheduleFree, "SGD": SGDScheduleFree}


def _reference(name):
    schedulefree = pytest.importorskip(
        "schedulefree", reason="the reference is the authors' schedulefree package"
    )
    return {"AdamW": schedulefree.AdamWScheduleFree, "SGD": schedulefree.SGDScheduleFree}[name]


def _values(seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


def _grads(steps, seed=1, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]


def _ours(xp, values, dtype="float64"):
    return [P(to_backend(v, xp, dtype=dtype, copy=True)) for v in values]


def _groups(params, second):
    """Two groups: the first two parameters with the defaults, the rest with ``second``."""
    return [{"params": params[:2]}, {"params": params[2:], **second}]


def _feed(xp, params, grads, dtype=None):
    for p, g in zip(params, grads, strict=True):
        p.grad = to_backend(g, xp, dtype=dtype or p.data.dtype, copy=True)


def _feed_torch(torch, tparams, grads):
    for tp, g in zip(tparams, grads, strict=True):
        tp.grad = torch.tensor(g)  # fresh: the reference divides p.grad in place


def _close(actual, expected, what):
    np.testing.assert_allclose(to_np(actual), expected, rtol=RTOL, atol=ATOL, err_msg=what)


def _compare(opt, topt, params, tparams, what):
    for i, (p, tp) in enumerate(zip(params, tparams, strict=True)):
        _close(p.data, tp.detach().numpy(), f"{what}: parameter {i}")
        state, tstate = opt.state[p], topt.state[tp]
        assert [k for k in state if k != "y"] == list(tstate), f"{what}: parameter {i}"
        for key, value in tstate.items():
            _close(state[key], value.numpy(), f"{what}: state {key!r} of parameter {i}")
    for gi, (group, tgroup) in enumerate(zip(opt.param_groups, topt.param_groups, strict=True)):
        for key in COUNTERS:
            assert group[key] == tgroup[key], f"{what}: param_groups[{gi}][{key!r}]"
            assert type(group[key]) is type(tgroup[key]), f"{what}: type of {key!r}"


CASES = [
    ("AdamW", {}, {}),
    ("AdamW", {"lr": 0.05, "warmup_steps": 7}, {"lr": 0.02, "warmup_steps": 3}),
    ("AdamW", {"lr": 0.05, "weight_decay": 0.3}, {"betas": (0.5, 0.9), "eps": 1e-3}),
    ("AdamW", {"lr": 0.05, "r": 1.5, "weight_lr_power": 0.0}, {"r": 0.5, "warmup_steps": 60}),
    ("AdamW", {"betas": (0.6, 0.99), "warmup_steps": 4, "weight_decay": 0.1, "r": 2.0}, {}),
    ("SGD", {"lr": 0.1}, {}),
    ("SGD", {"lr": 0.2, "warmup_steps": 10}, {"lr": 0.05, "momentum": 0.5}),
    ("SGD", {"lr": 0.1, "weight_decay": 0.2, "momentum": 0.3}, {"weight_decay": 0.01}),
    ("SGD", {"lr": 0.1, "r": 1.0, "weight_lr_power": 1.0}, {"r": 3.0, "warmup_steps": 5}),
]
CASE_IDS = [f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)]


@pytest.mark.parametrize(("name", "kwargs", "second"), CASES, ids=CASE_IDS)
def test_matches_reference_step_by_step(xp, torch, name, kwargs, second):
    """50 float64 steps; every 10 an eval() (compared) and a train() on both sides."""
    params = _ours(xp, _values())
    tparams = [torch.tensor(v, requires_grad=True) for v in _values()]
    opt = CLASSES[name](_groups(params, second), **kwargs)
    topt = _reference(name)(_groups(tparams, second), **kwargs)
    opt.train()
    topt.train()
    for step, grads in enumerate(_grads(50)):
        _feed(xp, params, grads)
        _feed_torch(torch, tparams, grads)
        opt.step()
        topt.step()
        _compare(opt, topt, params, tparams, f"step {step}")
        if step % 10 == 9:
            opt.eval()
            topt.eval()
            assert not opt.train_mode
            _compare(opt, topt, params, tparams, f"eval after step {step}")
            opt.train()
            topt.train()
            _compare(opt, topt, params, tparams, f"train after step {step}")


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_signature_defaults_and_group_keys_are_the_references(name):
    ours, theirs = CLASSES[name], _reference(name)
    mine = inspect.signature(ours).parameters
    ref = {k: v for k, v in inspect.signature(theirs).parameters.items() if k != "foreach"}
    positional = [k for k, v in mine.items() if v.kind is v.POSITIONAL_OR_KEYWORD]
    assert positional == list(ref)
    for key, param in ref.items():
        assert mine[key].default == param.default, key
    assert [k for k, v in mine.items() if v.kind is v.KEYWORD_ONLY] == [
        "nonfinite",
        "master_weights",
    ]
    torch = pytest.importorskip("torch")
    tgroup = theirs([torch.zeros(2)]).param_groups[0]
    group = ours([P(np.zeros(2))]).param_groups[0]
    assert [k for k in group if k != "params"] == [
        k for k in tgroup if k not in ("params", "foreach")
    ]
    for key in group:
        if key != "params":
            assert group[key] == tgroup[key], key


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_loads_the_references_state_dict_and_continues_as_it(xp, torch, name):
    """A state dict of the reference (eval mode, mid-run) loads and resumes as the reference."""
    kwargs = {"lr": 0.05, "warmup_steps": 5, "weight_decay": 0.1}
    tparams = [torch.tensor(v, requires_grad=True) for v in _values()]
    topt = _reference(name)(tparams, **kwargs)
    topt.train()
    grads = _grads(20)
    for g in grads[:10]:
        _feed_torch(torch, tparams, g)
        topt.step()
    topt.eval()
    params = [P(to_backend(tp.detach().numpy(), xp, dtype="float64", copy=True)) for tp in tparams]
    opt = CLASSES[name](params, **kwargs)
    opt.load_state_dict(topt.state_dict())
    assert not opt.train_mode
    opt.train()
    topt.train()
    for step, g in enumerate(grads[10:]):
        _feed(xp, params, g)
        _feed_torch(torch, tparams, g)
        opt.step()
        topt.step()
        _compare(opt, topt, params, tparams, f"step {step + 10}")


def _snapshot(opt, params):
    """Everything a step could change, as host copies (bytes compared)."""
    arrays = [to_np(p.data).copy() for p in params]
    state = [
        {k: to_np(v).copy() for k, v in opt.state[p].items()} for p in params if p in opt.state
    ]
    groups = [
        {k: v for k, v in g.items() if k not in ("params", "param_names")}
        for g in opt.param_groups
    ]
    return arrays, state, groups, opt.step_count


def _assert_same(a, b):
    arrays_a, state_a, groups_a, count_a = a
    arrays_b, state_b, groups_b, count_b = b
    for x, y in zip(arrays_a, arrays_b, strict=True):
        assert x.tobytes() == y.tobytes()
    assert len(state_a) == len(state_b)
    for ra, rb in zip(state_a, state_b, strict=True):
        assert list(ra) == list(rb)
        for key in ra:
            assert ra[key].tobytes() == rb[key].tobytes(), key
    assert groups_a == groups_b
    assert count_a == count_b


def _trained(xp, name, steps=5, **kwargs):
    params = _ours(xp, _values())
    opt = CLASSES[name](params, lr=0.05, **kwargs)
    opt.train()
    for g in _grads(steps):
        _feed(xp, params, g)
        opt.step()
    return opt, params


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_train_eval_round_trip_is_bit_for_bit(xp, name):
    opt, params = _trained(xp, name, weight_decay=0.1)
    before = [to_np(p.data).copy() for p in params]
    ids = [id(p.data) for p in params]
    opt.eval()
    assert not opt.train_mode
    assert all("y" in opt.state[p] for p in params)
    moved = [to_np(p.data) for p in params]
    assert any(not np.array_equal(a, b) for a, b in zip(moved, before, strict=True))
    opt.eval()  # a no-op in eval mode
    assert all(np.array_equal(to_np(p.data), m) for p, m in zip(params, moved, strict=True))
    opt.train()
    assert opt.train_mode
    for p, b in zip(params, before, strict=True):
        assert to_np(p.data).tobytes() == b.tobytes()
        assert "y" not in opt.state[p]
    if not is_immutable(params[0].data):  # updated in place: references stay valid
        assert [id(p.data) for p in params] == ids


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_evaluating_during_training_does_not_change_the_trajectory(xp, name):
    runs = []
    for evaluate in (False, True):
        params = _ours(xp, _values())
        opt = CLASSES[name](params, lr=0.05, warmup_steps=3)
        opt.train()
        for g in _grads(12):
            _feed(xp, params, g)
            opt.step()
            if evaluate:
                opt.eval()
                opt.train()
        runs.append([to_np(p.data).copy() for p in params])
    for a, b in zip(*runs, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_eval_is_the_average_x(xp, name):
    """x = (y - (1 - beta) z) / beta in eval mode; train() from a changed x uses the formula."""
    opt, params = _trained(xp, name)
    beta = 0.9
    ys = [to_np(p.data).copy() for p in params]
    zs = [to_np(opt.state[p]["z"]).copy() for p in params]
    opt.eval()
    for p, y, z in zip(params, ys, zs, strict=True):
        np.testing.assert_allclose(to_np(p.data), (y - (1 - beta) * z) / beta, rtol=1e-13)
    new_x = _values(seed=7)
    for p, x in zip(params, new_x, strict=True):  # the user changes the model in eval mode
        p.data = to_backend(x, xp, dtype="float64", copy=True)
    opt.train()
    for p, x, z in zip(params, new_x, zs, strict=True):
        np.testing.assert_allclose(to_np(p.data), beta * x + (1 - beta) * z, rtol=1e-13)
        assert "y" not in opt.state[p]


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_step_outside_train_mode_raises_and_changes_nothing(xp, name):
    params = _ours(xp, _values())
    opt = CLASSES[name](params)
    assert not opt.train_mode  # as the reference: eval mode until train()
    calls = []
    _feed(xp, params, _grads(1)[0])
    before = _snapshot(opt, params)
    with pytest.raises(RuntimeError, match=r"call optimizer\.train\(\) before training steps"):
        opt.step(lambda: calls.append(1))
    assert calls == []
    _assert_same(before, _snapshot(opt, params))
    assert len(opt.state) == 0

    opt, params = _trained(xp, name)
    opt.eval()
    _feed(xp, params, _grads(1, seed=5)[0])
    before = _snapshot(opt, params)
    with pytest.raises(RuntimeError, match=r"eval mode \(param_groups\[0\]\['train_mode'\]"):
        opt.step()
    _assert_same(before, _snapshot(opt, params))


def _save_load(tmp_path, xp, opt, params):
    path = tmp_path / "checkpoint.safetensors"
    na.save({"model": [p.data for p in params], "optimizer": opt.state_dict()}, path)
    loaded = na.load(path)
    new_params = [P(to_backend(a, xp, dtype="float64", copy=True)) for a in loaded["model"]]
    return loaded, new_params


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_state_dict_round_trip_resumes_identically(xp, tmp_path, name, mode):
    kwargs = {"warmup_steps": 8, "weight_decay": 0.05, "r": 0.5}
    opt, params = _trained(xp, name, steps=5, **kwargs)
    if mode == "eval":
        opt.eval()
    loaded, params2 = _save_load(tmp_path, xp, opt, params)
    assert [g["train_mode"] for g in loaded["optimizer"]["param_groups"]] == [mode == "train"]
    opt2 = CLASSES[name](params2, lr=0.05, **kwargs)
    opt2.load_state_dict(loaded["optimizer"])
    assert opt2.train_mode is (mode == "train")
    _assert_same(_snapshot(opt, params), _snapshot(opt2, params2))
    for o in (opt, opt2):
        o.train()
    for g in _grads(6, seed=3):
        for o, ps in ((opt, params), (opt2, params2)):
            _feed(xp, ps, g)
            o.step()
    for o in (opt, opt2):
        o.eval()
    _assert_same(_snapshot(opt, params), _snapshot(opt2, params2))


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_gradients_are_not_modified(xp, name):
    opt, params = _trained(xp, name, weight_decay=0.1)
    grads = _grads(1, seed=9)[0]
    _feed(xp, params, grads)
    opt.step()
    for p, g in zip(params, grads, strict=True):
        assert to_np(p.grad).tobytes() == g.tobytes()


def test_a_later_group_takes_the_mode_and_every_group_is_switched(xp):
    opt, _ = _trained(xp, "AdamW")
    extra = P(to_backend(np.arange(3.0), xp, dtype="float64", copy=True))
    opt.add_param_group({"params": [extra], "lr": 0.01})
    assert opt.param_groups[1]["train_mode"] is True and opt.train_mode
    extra.grad = to_backend(np.ones(3), xp, dtype="float64")
    opt.step()
    opt.eval()
    assert [g["train_mode"] for g in opt.param_groups] == [False, False]
    opt.add_param_group({"params": [P(to_backend(np.zeros(2), xp, dtype="float64"))]})
    assert opt.param_groups[2]["train_mode"] is False
    opt.param_groups[1]["train_mode"] = True  # mixed by hand: step still refuses
    assert not opt.train_mode
    with pytest.raises(RuntimeError, match=r"param_groups\[0\]"):
        opt.step()


def test_a_group_without_gradients_takes_no_step(xp):
    params = _ours(xp, _values())
    opt = SGDScheduleFree(_groups(params, {"lr": 0.5}), lr=0.1)
    opt.train()
    for g in _grads(3):
        _feed(xp, params[:2], g[:2])
        opt.step()
    assert [g["k"] for g in opt.param_groups] == [3, 0]
    assert [g["weight_sum"] for g in opt.param_groups][1] == 0.0
    assert all(p not in opt.state for p in params[2:])


def test_nonfinite_skip_advances_no_counter(xp):
    opt, params = _trained(xp, "AdamW")
    opt.nonfinite = "skip"
    grads = _grads(1)[0]
    grads[1][0] = np.nan
    _feed(xp, params, grads)
    before = _snapshot(opt, params)
    opt.step()
    _assert_same(before, _snapshot(opt, params))
    assert opt.skipped_steps == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_fast_path_equals_generic_engine(name, dtype):
    runs = []
    for fast in (True, False):
        old = _fastpath.set_enabled(fast)
        try:
            params = _ours(np, _values(), dtype)
            opt = CLASSES[name](params, lr=0.05, warmup_steps=4, weight_decay=0.1, r=1.0)
            opt.train()
            for g in _grads(30):
                _feed(np, params, g)
                opt.step()
            opt.eval()
            runs.append([p.data.copy() for p in params] + [opt.state[p]["z"] for p in params])
        finally:
            _fastpath.set_enabled(old)
    for a, b in zip(*runs, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_float16_keeps_float32_state_and_master_weights_follow_float32(xp, name):
    """With master weights a float16 run is the float32 run, rounded where written back."""
    if not hasattr(xp, "float16"):
        pytest.skip(f"{backend_name(xp)} has no float16")
    values = [v.astype(np.float16) for v in _values()]
    grads = [[g.astype(np.float16) for g in step] for step in _grads(10)]
    low = [P(to_backend(v, xp, dtype="float16", copy=True)) for v in values]
    ref = [P(to_backend(v, xp, dtype="float32", copy=True)) for v in values]
    opt = CLASSES[name](low, lr=0.05, weight_decay=0.1, master_weights=True)
    ropt = CLASSES[name](ref, lr=0.05, weight_decay=0.1)
    for o in (opt, ropt):
        o.train()
    for g in grads:
        _feed(xp, low, g)
        _feed(xp, ref, g, dtype="float32")
        opt.step()
        ropt.step()
    for p, r in zip(low, ref, strict=True):
        assert p.data.dtype == xp.float16
        for key, value in opt.state[p].items():
            assert value.dtype == xp.float32, key
        assert to_np(opt.state[p]["master_param"]).tobytes() == to_np(r.data).tobytes()
        assert to_np(p.data).tobytes() == to_np(r.data).astype(np.float16).tobytes()
    before = [to_np(p.data).copy() for p in low]
    for o in (opt, ropt):
        o.eval()
    for p, r in zip(low, ref, strict=True):
        assert "y" not in opt.state[p]  # the master copy is y
        assert to_np(p.data).tobytes() == to_np(r.data).astype(np.float16).tobytes()
    opt.train()
    for p, b in zip(low, before, strict=True):
        assert to_np(p.data).tobytes() == b.tobytes()


def test_float16_without_master_weights_round_trips(xp):
    if not hasattr(xp, "float16"):
        pytest.skip(f"{backend_name(xp)} has no float16")
    params = [P(to_backend(v, xp, dtype="float16", copy=True)) for v in _values()]
    opt = AdamWScheduleFree(params, lr=0.05)
    opt.train()
    for g in _grads(3):
        _feed(xp, params, g)
        opt.step()
    before = [to_np(p.data).copy() for p in params]
    opt.eval()
    assert all(opt.state[p]["y"].dtype == xp.float32 for p in params)
    opt.train()
    for p, b in zip(params, before, strict=True):
        assert p.data.dtype == xp.float16 and to_np(p.data).tobytes() == b.tobytes()


# ------------------------------------------------------------- hostile input

HOSTILE = {
    "AdamW": [
        ({"lr": -0.1}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"lr": True}, "lr"),
        ({"betas": (0.0, 0.999)}, r"beta1 \(betas\[0\]\): 0.0 \(expected a number in \(0, 1\)"),
        ({"betas": (1.0, 0.999)}, r"beta1 \(betas\[0\]\)"),
        ({"betas": (0.9, 1.0)}, r"beta2 \(betas\[1\]\)"),
        ({"betas": (0.9, -0.1)}, r"beta2 \(betas\[1\]\)"),
        ({"betas": 0.9}, "betas must be a pair"),
        ({"betas": (0.9, 0.99, 0.9)}, "betas must be a pair"),
        ({"eps": -1e-8}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"warmup_steps": 2.5}, "warmup_steps"),
        ({"warmup_steps": True}, "warmup_steps"),
        ({"warmup_steps": "10"}, "warmup_steps"),
        ({"r": -1.0}, "Invalid r"),
        ({"r": float("inf")}, "Invalid r"),
        ({"weight_lr_power": -2.0}, "weight_lr_power"),
        ({"weight_lr_power": None}, "weight_lr_power"),
        ({"lr": 10.0, "weight_lr_power": 1000.0}, "overflows"),
    ],
    "SGD": [
        ({"lr": -1.0}, "lr"),
        ({"momentum": 0.0}, r"momentum: 0.0 \(expected a number in \(0, 1\)"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.5}, "momentum"),
        ({"momentum": float("nan")}, "momentum"),
        ({"weight_decay": float("inf")}, "weight_decay"),
        ({"warmup_steps": 1.0}, "warmup_steps"),
        ({"r": "2"}, "Invalid r"),
        ({"weight_lr_power": float("nan")}, "weight_lr_power"),
        ({"lr": 1e200}, "overflows"),
    ],
}


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [(n, kw, m) for n, cases in HOSTILE.items() for kw, m in cases],
    ids=[f"{n}-{i}" for n, cases in HOSTILE.items() for i in range(len(cases))],
)
def test_hostile_hyperparameters_are_refused(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CLASSES[name]([P(np.zeros(3))], **kwargs)
    with pytest.raises(ValueError, match=match):
        CLASSES[name]([{"params": [P(np.zeros(3))], **kwargs}])


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("lr", float("nan"), "lr"),
        ("k", -1, "Invalid k"),
        ("k", 1.5, "Invalid k"),
        ("weight_sum", -1.0, "weight_sum"),
        ("lr_max", float("inf"), "lr_max"),
        ("r", 1e6, "overflows"),
        ("lr", 1e200, "overflows"),
        ("train_mode", "yes", "train_mode"),
    ],
)
def test_hostile_group_values_are_refused_at_the_step_and_change_nothing(xp, key, value, match):
    opt, params = _trained(xp, "AdamW", steps=3)
    _feed(xp, params, _grads(1, seed=4)[0])
    opt.param_groups[0][key] = value
    before = _snapshot(opt, params)
    with pytest.raises(ValueError, match=match):
        opt.step()
    _assert_same(before, _snapshot(opt, params))


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_hostile_state_dicts_are_refused_and_change_nothing(xp, name):
    opt, params = _trained(xp, name)
    good = opt.state_dict()
    before = _snapshot(opt, params)

    def variant(change):
        sd = {
            "state": {i: dict(r) for i, r in good["state"].items()},
            "param_groups": [dict(g) for g in good["param_groups"]],
        }
        change(sd)
        return sd

    bad = [
        (lambda sd: sd["state"][0].update(z=None), "lacks 'z'"),
        (lambda sd: sd["state"][0].update(y=sd["state"][0]["z"]), "'y' only in eval mode"),
        (lambda sd: sd["state"][0].update(step=3), "'step'"),
        (lambda sd: sd["param_groups"][0].update(k=-2), "Invalid k"),
        (lambda sd: sd["param_groups"][0].pop("weight_sum"), "weight_sum"),
        (lambda sd: sd["param_groups"][0].update(train_mode=1), "train_mode"),
        (lambda sd: sd["param_groups"][0].update(lr_max=-3.0), "lr_max"),
    ]
    if name == "AdamW":
        negative = -to_np(good["state"][0]["exp_avg_sq"]) - 1.0
        bad.append((lambda sd: sd["state"][0].update(exp_avg_sq=negative), "negative"))
    for change, match in bad:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(variant(change))
        _assert_same(before, _snapshot(opt, params))


def test_switch_refuses_a_reshaped_parameter_before_changing_anything(xp):
    opt, params = _trained(xp, "SGD")
    params[3].data = to_backend(np.zeros(4), xp, dtype="float64")
    before = _snapshot(opt, params[:3])
    with pytest.raises(ValueError, match=r"state 'z' of parameter 3 .* has shape \(2, 1, 3\)"):
        opt.eval()
    _assert_same(before, _snapshot(opt, params[:3]))
    assert opt.train_mode


def test_exports():
    assert na.AdamWScheduleFree is na.optim.AdamWScheduleFree is AdamWScheduleFree
    assert na.SGDScheduleFree is na.optim.SGDScheduleFree is SGDScheduleFree
