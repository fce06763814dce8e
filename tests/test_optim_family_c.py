"""ASGD, Rprop and Lion: what the optimizer table does not cover.

The table (tests/optimizers.py, run by test_optimizer_table.py) compares
every option of each against its reference step by step (``torch.optim``;
for Lion, tests/_references.py), checks the fast path against the generic
engine, state-dict round trips, non-finite gradients, dtypes and refused
hyperparameters.  Here: the signatures against torch's, torch state dicts
loaded mid-run (two groups, ASGD averaging at the moment of the load),
ASGD's ``eta`` and ``mu`` equal to torch's float32 numbers over many steps,
its average written in place, and first steps in closed form.
"""

from __future__ import annotations

import inspect
import struct

import numpy as np
import pytest
from _helpers import P, to_np
from _references import lion_reference
from optimizers import (
    assert_params_match,
    assert_state_matches,
    grad_sequence,
    initial,
    ours,
    run_side_by_side,
    set_grads,
    theirs,
)

from neural_arch.backend import backend_name, resolve_backend, to_backend
from neural_arch.optim import _fastpath
from neural_arch.optim.asgd import ASGD, asgd
from neural_arch.optim.lion import Lion
from neural_arch.optim.rprop import Rprop
from neural_arch.optim.rule import trace

TORCH_ONLY = {"foreach", "fused", "capturable", "differentiable"}


def _param(xp, values, dtype="float64"):
    return P(to_backend(np.asarray(values, dtype=dtype), xp, dtype=dtype, copy=True))


def _grad(xp, p, values):
    p.grad = to_backend(np.asarray(values, dtype="float64"), xp, dtype=p.data.dtype, copy=True)


def _f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def _groups(params, second):
    return [{"params": params[:2]}, {"params": params[2:], **second}]


# ------------------------------------------------------------------ signatures


@pytest.mark.parametrize("cls", [ASGD, Rprop], ids=["ASGD", "Rprop"])
def test_signature_is_torchs(torch, cls):
    """Names, order, kinds and defaults of torch 2.13's constructor, less its engine switches."""
    theirs_ = inspect.signature(getattr(torch.optim, cls.__name__))
    expected = [
        (p.name, p.kind, p.default)
        for p in theirs_.parameters.values()
        if p.name not in TORCH_ONLY
    ]
    mine = [(p.name, p.kind, p.default) for p in inspect.signature(cls).parameters.values()]
    assert mine[:-2] == expected
    assert mine[-2:] == [
        ("nonfinite", inspect.Parameter.KEYWORD_ONLY, "raise"),
        ("master_weights", inspect.Parameter.KEYWORD_ONLY, False),
    ]


def test_lion_signature_is_the_references():
    """Lion(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0), plus our nonfinite."""
    params = list(inspect.signature(Lion).parameters.values())
    assert [(p.name, p.default) for p in params] == [
        ("params", inspect.Parameter.empty),
        ("lr", 1e-4),
        ("betas", (0.9, 0.99)),
        ("weight_decay", 0.0),
        ("nonfinite", "raise"),
        ("master_weights", False),
    ]
    assert params[-1].kind is inspect.Parameter.KEYWORD_ONLY


# --------------------------------------------------- torch state dicts mid-run

K_STEPS, N_STEPS = 12, 18


def _load_and_continue(xp, torch, ours_cls, torch_cls, groups, **kwargs):
    """k steps of torch, its state dict loaded into ours, then n steps of both, compared."""
    torch_params = theirs(torch, initial())
    topt = torch_cls(groups(torch_params), foreach=False, **kwargs)
    grads = grad_sequence(steps=K_STEPS + N_STEPS)
    for step_grads in grads[:K_STEPS]:
        for tp, g in zip(torch_params, step_grads, strict=True):
            tp.grad = torch.tensor(g)
        topt.step()
    params = ours(xp, [tp.detach().numpy() for tp in torch_params])
    opt = ours_cls(groups(params))  # defaults: the hyperparameters come from the state dict
    opt.load_state_dict(topt.state_dict())
    for group, tgroup in zip(opt.param_groups, topt.param_groups, strict=True):
        for key, value in group.items():
            if key not in ("params", "param_names"):
                assert value == tgroup[key], key
    assert_state_matches(opt, topt, params, torch_params)
    for step, step_grads in enumerate(grads[K_STEPS:], start=K_STEPS):
        set_grads(xp, params, torch_params, step_grads)
        opt.step()
        topt.step()
        assert_params_match(params, torch_params, step)
    assert_state_matches(opt, topt, params, torch_params)
    return opt, topt, params, torch_params


@pytest.mark.parametrize(
    ("second", "kwargs"),
    [
        # averaging since step 6: mu < 1 when the state dict is loaded
        ({"lr": 0.02, "t0": 2.5}, {"lr": 0.05, "t0": 3.5, "lambd": 0.1, "alpha": 0.6}),
        # averaging starts after the load: from step 17 in the second group, 23 in the first
        ({"t0": 14.5, "weight_decay": 0.1}, {"lr": 0.05, "t0": 20.5, "maximize": True}),
    ],
    ids=["averaging", "starts-after-load"],
)
def test_asgd_loads_a_torch_state_dict_and_continues(xp, torch, second, kwargs):
    opt, topt, params, torch_params = _load_and_continue(
        xp, torch, ASGD, torch.optim.ASGD, lambda ps: _groups(ps, second), **kwargs
    )
    for p, tp in zip(params, torch_params, strict=True):
        mine, ref = opt.state[p], topt.state[tp]
        assert list(mine) == ["step", "eta", "mu", "ax"]
        for key in ("eta", "mu"):  # torch's float32 numbers, to the bit
            assert type(mine[key]) is float
            assert mine[key] == ref[key].item(), key
        assert mine["mu"] < 1  # every parameter averages by the end


@pytest.mark.parametrize(
    ("second", "kwargs"),
    [
        ({"etas": (0.3, 1.5), "step_sizes": (1e-3, 0.08)}, {"lr": 0.05}),
        ({"lr": 0.2, "maximize": True}, {"lr": 0.01, "step_sizes": (1e-4, 0.05)}),
    ],
    ids=["clamped", "maximize"],
)
def test_rprop_loads_a_torch_state_dict_and_continues(xp, torch, second, kwargs):
    opt, *_ = _load_and_continue(
        xp, torch, Rprop, torch.optim.Rprop, lambda ps: _groups(ps, second), **kwargs
    )
    for group in opt.param_groups:
        low, high = group["step_sizes"]
        for p in group["params"]:
            sizes = to_np(opt.state[p]["step_size"])
            assert list(opt.state[p]) == ["step", "prev", "step_size"]
            assert np.all((low <= sizes) & (sizes <= high))


def test_lion_loads_its_references_state_dict_and_continues(xp, torch):
    """The reference's state dict (torch tensors, its group keys) loads mid-run."""
    _load_and_continue(
        xp,
        torch,
        Lion,
        lambda groups, foreach, **kw: lion_reference(torch, groups, **kw),
        lambda ps: _groups(ps, {"lr": 0.01, "betas": (0.2, 0.6)}),
        lr=0.05,
        weight_decay=0.3,
    )


# ------------------------------------------------------------ ASGD's scalars


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"lr": 0.1, "lambd": 0.3, "alpha": 0.6, "t0": 2.5},
        {"lr": 0.07, "lambd": 1e-3, "alpha": 1.0, "t0": 0.0, "weight_decay": 0.01},
    ],
    ids=["defaults", "fast-decay", "t0-zero"],
)
def test_asgd_eta_and_mu_are_torchs_after_many_steps(xp, torch, kwargs):
    """eta and mu after every one of 200 steps: torch's float32 0-d tensors, to the bit."""
    unrounded = []

    def same_scalars(step, opt, topt):
        group = opt.param_groups[0]
        for p, tp in zip(group["params"], topt.param_groups[0]["params"], strict=True):
            mine, ref = opt.state.get(p), topt.state.get(tp)
            if not ref:
                assert not mine
                continue
            for key in ("eta", "mu"):
                assert type(mine[key]) is float
                assert mine[key] == ref[key].item(), (step, key)
            lr, lambd, alpha = group["lr"], group["lambd"], group["alpha"]
            unrounded.append(mine["eta"] != lr / (1 + lambd * lr * step) ** alpha)

    run_side_by_side(
        xp,
        torch,
        lambda ps: ASGD(ps, **kwargs),
        lambda ps: torch.optim.ASGD(ps, foreach=False, **kwargs),
        steps=200,
        on_step=same_scalars,
        shapes=((3,), (2, 2)),
    )
    assert any(unrounded), "eta never differed from its float64 value: rounding untested"


def test_asgd_average_is_p_then_an_average_written_in_place(xp):
    """ax copies p while mu is 1 (t <= t0 + 2), then averages; it stays one array throughout."""
    p = _param(xp, [1.0, -2.0, 0.5])
    opt = ASGD([p], lr=0.1, t0=3.0)
    rng = np.random.default_rng(3)
    _grad(xp, p, rng.standard_normal(3))
    opt.step()
    ax = opt.state[p]["ax"]
    history = [to_np(p.data).copy()]
    for step in range(2, 11):
        _grad(xp, p, rng.standard_normal(3))
        opt.step()
        history.append(to_np(p.data).copy())
        mine = to_np(opt.state[p]["ax"])
        assert opt.state[p]["mu"] == _f32(1 / max(1, step - 3))  # the weight of the next step
        if step <= 5:
            np.testing.assert_array_equal(mine, history[-1])
        else:
            assert not np.array_equal(mine, history[-1])
        if opt.state[p]["ax"] is not ax:  # immutable arrays (JAX) are rebound
            assert backend_name(xp) == "jax"
    # from step 6 on, ax is the mean of the iterates since step 5 (mu = 1 / (t - 3))
    np.testing.assert_allclose(to_np(opt.state[p]["ax"]), np.mean(history[4:], axis=0))
    if backend_name(xp) != "jax":
        assert opt.state[p]["ax"] is ax
        assert not np.shares_memory(to_np(ax), to_np(p.data))


def test_asgd_copy_branch_keeps_ax_an_input():
    """ax = p reads no ax, but ax exists: the trace keeps it, so the engines write it in place."""
    program = trace(asgd, ("ax",), {"maximize": False, "l2": False, "average": False})
    assert "ax" in program.inputs
    outputs = dict(program.outputs)
    assert outputs["ax"] == outputs["param"]


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "generic"])
def test_asgd_ax_is_one_array_on_both_numpy_engines(fast):
    xp = resolve_backend("numpy")
    p = _param(xp, [1.0, -2.0, 0.5])
    old = _fastpath.set_enabled(fast)
    try:
        opt = ASGD([p], lr=0.1, t0=3.0)
        _grad(xp, p, [0.5, 0.5, -1.0])
        opt.step()
        ax = opt.state[p]["ax"]
        for step in range(2, 9):
            _grad(xp, p, [0.5, -0.5 * step, 1.0])
            opt.step()
            assert opt.state[p]["ax"] is ax, step
            assert not np.shares_memory(ax, p.data)
            if step <= 5:
                np.testing.assert_array_equal(ax, p.data)
    finally:
        _fastpath.set_enabled(old)


def test_asgd_eta_schedule_overflowing_is_zero_not_an_error(xp, torch):
    """(1 + lambd * lr * t) ** alpha beyond the float range: eta 0 (torch raises OverflowError)."""
    kwargs = {"lr": 1.0, "lambd": 1.0, "alpha": 2000.0}
    (tp,) = theirs(torch, [np.array([1.0, 2.0])])
    topt = torch.optim.ASGD([tp], foreach=False, **kwargs)
    tp.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
    with pytest.raises(OverflowError):
        topt.step()  # torch: (1 + 1) ** 2000 for the next eta
    p = _param(xp, [1.0, 2.0])
    opt = ASGD([p], **kwargs)
    _grad(xp, p, [1.0, -1.0])
    opt.step()  # eta for step 2: 1 / 2 ** 2000, 0 in float32 (and in float64)
    assert opt.state[p]["eta"] == 0.0 and opt.state[p]["step"] == 1
    np.testing.assert_array_equal(to_np(p.data), [-1.0, 1.0])  # p * (1 - 1) - 1 * g
    _grad(xp, p, [1.0, -1.0])
    opt.step()  # decay 1 - lambd * 0 = 1, step eta = 0: p unchanged
    np.testing.assert_array_equal(to_np(p.data), [-1.0, 1.0])


# ------------------------------------------------------- closed forms


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
@pytest.mark.parametrize("betas", [(0.9, 0.99), (0.0, 0.5), (0.6, 0.0)])
def test_lion_first_step_is_p_minus_lr_sign_g(xp, betas, weight_decay, dtype):
    """From a zero momentum: p * (1 - lr * wd) - lr * sign(g), and m = (1 - beta2) * g."""
    start = np.array([[0.5, -1.5, 0.0], [2.0, -0.25, 3.0]], dtype=dtype)
    g = np.array([[0.3, 0.0, -2.0], [-1e-30, 5.0, 0.0]], dtype=dtype)
    lr = 0.05
    p = _param(xp, start, dtype)
    opt = Lion([p], lr=lr, betas=betas, weight_decay=weight_decay)
    _grad(xp, p, g)
    opt.step()
    t = np.dtype(dtype).type
    decayed = start * t(1 - lr * weight_decay) if weight_decay else start
    expected = decayed + np.sign(g) * t(-lr)
    np.testing.assert_array_equal(to_np(p.data), expected, strict=True)
    np.testing.assert_array_equal(to_np(opt.state[p]["exp_avg"]), g * t(1 - betas[1]))
    assert list(opt.state[p]) == ["exp_avg"]
    assert np.all(to_np(p.data)[g == 0] == decayed[g == 0])  # a zero gradient does not move


def test_lion_reference_first_step_is_the_closed_form(torch):
    """The reference the table compares against passes the same closed form."""
    start, g = np.array([0.5, -1.5, 0.0, 2.0]), np.array([0.3, 0.0, -2.0, -4.0])
    (tp,) = theirs(torch, [start])
    ref = lion_reference(torch, [tp], lr=0.05, betas=(0.9, 0.99), weight_decay=0.3)
    tp.grad = torch.tensor(g)
    ref.step()
    np.testing.assert_array_equal(
        tp.detach().numpy(), start * (1 - 0.05 * 0.3) - 0.05 * np.sign(g)
    )


def test_rprop_grows_shrinks_and_clamps_its_step_sizes(xp):
    """Same sign: times etaplus; flipped: times etaminus and no move; clamped to the bounds."""
    p = _param(xp, [0.0, 0.0, 0.0, 0.0])
    opt = Rprop([p], lr=0.1, etas=(0.3, 2.0), step_sizes=(0.04, 0.3))
    moves = []
    for g in ([1.0, 1.0, -1.0, 0.0], [1.0, -1.0, -1.0, 1.0], [1.0, 1.0, -1.0, 1.0]):
        before = to_np(p.data).copy()
        _grad(xp, p, g)
        opt.step()
        moves.append(to_np(p.data) - before)
    state = opt.state[p]
    # element 0: 0.1, 0.2, 0.3 (0.4 clamped); 1: 0.1, 0.04 (0.03 clamped; a flip: no move),
    # 0.04 (prev was 0); element 2: as 0 (both signs negative); 3: 0.1 (zero gradient), 0.1, 0.2
    np.testing.assert_allclose(to_np(state["step_size"]), [0.3, 0.04, 0.3, 0.2], rtol=1e-15)
    np.testing.assert_allclose(
        np.array(moves),
        [[-0.1, -0.1, 0.1, 0.0], [-0.2, 0.0, 0.2, -0.1], [-0.3, -0.04, 0.3, -0.2]],
        rtol=1e-15,
    )
    np.testing.assert_array_equal(to_np(state["prev"]), [1.0, 1.0, -1.0, 1.0])
    assert state["step"] == 3
