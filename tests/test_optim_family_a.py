"""RMSprop, Adagrad, Adadelta and Adamax: what the optimizer table does not cover.

The table (tests/optimizers.py, run by test_optimizer_table.py) compares
every option of each against ``torch.optim`` step by step, checks the fast
path against the generic engine, state-dict round trips, non-finite
gradients, dtypes and refused hyperparameters.  Here: the signatures and
defaults against torch's, torch state dicts loaded mid-run (two groups with
their own options), Adagrad's state existing from construction on, the
first steps in closed form, and Adamax's NaN-propagating maximum.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from _helpers import P, assert_close, to_np
from optimizers import (
    BY_NAME,
    assert_params_match,
    assert_state_matches,
    grad_sequence,
    initial,
    ours,
    run_side_by_side,
    set_grads,
    theirs,
)

from neural_arch.backend import resolve_backend, to_backend
from neural_arch.optim.adadelta import Adadelta
from neural_arch.optim.adagrad import Adagrad
from neural_arch.optim.adamax import Adamax
from neural_arch.optim.rmsprop import RMSprop

FAMILY = (RMSprop, Adagrad, Adadelta, Adamax)
NAMES = [cls.__name__ for cls in FAMILY]
TORCH_ONLY = {"foreach", "fused", "capturable", "differentiable"}


def _param(xp, values, dtype="float64"):
    return P(to_backend(np.asarray(values, dtype=dtype), xp, dtype=dtype, copy=True))


def _grad(xp, p, values):
    p.grad = to_backend(np.asarray(values, dtype="float64"), xp, dtype=p.data.dtype, copy=True)


# ------------------------------------------------------------ signature, defaults


@pytest.mark.parametrize("cls", FAMILY, ids=NAMES)
def test_signature_is_torchs(torch, cls):
    """Names, order, kinds and defaults of torch 2.13's constructor, less its engine switches."""
    theirs_ = inspect.signature(getattr(torch.optim, cls.__name__))
    mine = inspect.signature(cls)
    expected = [
        (p.name, p.kind, p.default)
        for p in theirs_.parameters.values()
        if p.name not in TORCH_ONLY
    ]
    got = [(p.name, p.kind, p.default) for p in mine.parameters.values()]
    assert got[:-2] == expected
    assert got[-2:] == [
        ("nonfinite", inspect.Parameter.KEYWORD_ONLY, "raise"),
        ("master_weights", inspect.Parameter.KEYWORD_ONLY, False),
    ]
    assert cls.__doc__ and cls.__doc__.splitlines()[0].strip()


@pytest.mark.parametrize("cls", FAMILY, ids=NAMES)
def test_defaults_match_torch(xp, torch, cls):
    torch_cls = getattr(torch.optim, cls.__name__)
    run_side_by_side(xp, torch, cls, lambda ps: torch_cls(ps, foreach=False), steps=8)


# ------------------------------------------------------- groups and torch state


GROUPS = {
    "RMSprop": ({"momentum": 0.9, "centered": True}, {"alpha": 0.3, "weight_decay": 0.1}),
    "Adagrad": ({"lr_decay": 0.05}, {"lr": 0.02, "weight_decay": 0.1, "maximize": True}),
    "Adadelta": ({"rho": 0.5}, {"lr": 0.3, "eps": 1e-3, "maximize": True}),
    "Adamax": ({"betas": (0.3, 0.6)}, {"lr": 0.05, "weight_decay": 0.1, "eps": 1e-3}),
}


def _groups(params, name):
    first, second = GROUPS[name]
    return [{"params": params[:2], **first}, {"params": params[2:], **second}]


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_and_lr_changes_match_torch(xp, torch, name):
    entry = BY_NAME[name]
    torch_cls = getattr(torch.optim, entry.torch_name)

    def change_lr(step, opt, topt):
        if step == 10:
            opt.param_groups[0]["lr"] = topt.param_groups[0]["lr"] = 0.004
        if step == 20:
            opt.lr = 0.001
            for group in topt.param_groups:
                group["lr"] = 0.001

    opt, _ = run_side_by_side(
        xp,
        torch,
        lambda ps: entry.cls(_groups(ps, name), **entry.base),
        lambda ps: torch_cls(_groups(ps, name), foreach=False, **entry.base),
        on_step=change_lr,
    )
    assert opt.lr == 0.001


@pytest.mark.parametrize("name", NAMES)
def test_load_torch_state_dict_mid_run_and_continue(xp, torch, name):
    """Two groups with their own options: torch's state dict after 12 steps, then 18 more."""
    entry = BY_NAME[name]
    torch_cls = getattr(torch.optim, entry.torch_name)
    torch_params = theirs(torch, initial())
    topt = torch_cls(_groups(torch_params, name), foreach=False, **entry.base)
    all_grads = grad_sequence()
    for grads in all_grads[:12]:
        for tp, g in zip(torch_params, grads, strict=True):
            tp.grad = torch.tensor(g)
        topt.step()
    params = ours(xp, [tp.detach().numpy() for tp in torch_params])
    # constructed with other hyperparameters: the state dict brings torch's
    opt = entry.cls([{"params": params[:2]}, {"params": params[2:]}], lr=0.5)
    opt.load_state_dict(topt.state_dict())
    for mine, ref in zip(opt.param_groups, topt.param_groups, strict=True):
        for key in entry.cls.hyper:
            assert mine[key] == ref[key], key
    for record in (opt.state[p] for p in params):
        assert type(record["step"]) is int and record["step"] == 12
    assert_state_matches(opt, topt, params, torch_params)
    for step, grads in enumerate(all_grads[12:], start=12):
        set_grads(xp, params, torch_params, grads)
        opt.step()
        topt.step()
        assert_params_match(params, torch_params, step)
    assert_state_matches(opt, topt, params, torch_params)


# -------------------------------------------------------------- Adagrad's state


def test_adagrad_state_exists_right_after_construction(xp, torch):
    """step 0 and sum = initial_accumulator_value for every parameter, with a grad or not."""
    params = ours(xp, initial())
    opt = Adagrad(params, initial_accumulator_value=0.25)
    torch_params = theirs(torch, initial())
    topt = torch.optim.Adagrad(torch_params, initial_accumulator_value=0.25, foreach=False)
    assert len(opt.state) == len(params)
    for p in params:
        record = opt.state.get(p)
        assert list(record) == ["step", "sum"]
        assert type(record["step"]) is int and record["step"] == 0
        assert record["sum"].dtype == p.data.dtype
        assert tuple(record["sum"].shape) == tuple(p.data.shape)
        np.testing.assert_array_equal(to_np(record["sum"]), np.full(p.data.shape, 0.25))
    assert_state_matches(opt, topt, params, torch_params)
    assert sorted(opt.state_dict()["state"]) == sorted(topt.state_dict()["state"])


def test_adagrad_state_for_groups_added_later_and_left_out_of_a_state_dict(xp):
    params = ours(xp, initial())
    opt = Adagrad(params[:2], initial_accumulator_value=0.5)
    opt.add_param_group({"params": params[2:4]})  # the defaults' value
    opt.add_param_group({"params": params[4:], "initial_accumulator_value": 2.0})
    for p, value in zip(params, (0.5, 0.5, 0.5, 0.5, 2.0), strict=True):
        assert opt.state.get(p)["step"] == 0
        np.testing.assert_array_equal(to_np(opt.state.get(p)["sum"]), np.full(p.data.shape, value))
    # a refused group leaves no state behind
    extra = ours(xp, initial(((3,),)))
    with pytest.raises(ValueError, match="Invalid initial_accumulator_value"):
        opt.add_param_group({"params": extra, "initial_accumulator_value": -1.0})
    assert extra[0] not in opt.state
    # a state dict without some parameters: those get a fresh state at once
    for p, g in zip(params, grad_sequence(steps=1)[0], strict=True):
        p.grad = to_backend(g, xp, dtype=p.data.dtype, copy=True)
    opt.step()
    sd = opt.state_dict()
    del sd["state"][4]
    opt.load_state_dict(sd)
    assert opt.state.get(params[0])["step"] == 1
    assert opt.state.get(params[4])["step"] == 0
    np.testing.assert_array_equal(to_np(opt.state.get(params[4])["sum"]), np.full((4, 1, 2), 2.0))


def test_adagrad_group_initial_accumulator_value_is_used_where_torch_ignores_it(torch):
    """The one deliberate difference from torch 2.13, pinned on both sides.

    torch fills every ``sum`` with the constructor's value, even for a group
    that gives its own; here the group's own value is used.
    """
    xp = resolve_backend("numpy")
    params, torch_params = ours(xp, initial()), theirs(torch, initial())
    opt = Adagrad(
        [{"params": params[:2], "initial_accumulator_value": 0.5}, {"params": params[2:]}]
    )
    topt = torch.optim.Adagrad(
        [
            {"params": torch_params[:2], "initial_accumulator_value": 0.5},
            {"params": torch_params[2:]},
        ],
        foreach=False,
    )
    assert topt.param_groups[0]["initial_accumulator_value"] == 0.5
    for i, (p, tp) in enumerate(zip(params, torch_params, strict=True)):
        np.testing.assert_array_equal(to_np(opt.state[p]["sum"]), 0.5 if i < 2 else 0.0)
        np.testing.assert_array_equal(topt.state[tp]["sum"].numpy(), 0.0)


def test_adagrad_param_without_grad_keeps_its_initial_state_as_torch(xp, torch):
    params = ours(xp, initial())
    torch_params = theirs(torch, initial())
    opt = Adagrad(params, lr=0.1, initial_accumulator_value=0.1)
    topt = torch.optim.Adagrad(torch_params, lr=0.1, initial_accumulator_value=0.1, foreach=False)
    for step, grads in enumerate(grad_sequence(steps=6)):
        set_grads(xp, params, torch_params, grads)
        if step < 3:
            params[1].grad = torch_params[1].grad = None
        opt.step()
        topt.step()
        assert_params_match(params, torch_params, step)
    assert opt.state[params[1]]["step"] == 3 and opt.state[params[0]]["step"] == 6
    assert_state_matches(opt, topt, params, torch_params)


# ---------------------------------------------------------- closed-form steps

G = [0.5, -2.0, 4.0, -0.25]  # powers of two: lr * g / |g| is exactly lr * sign(g)
P0 = [1.0, -1.0, 0.5, 2.0]


def _first_step(xp, cls, **kwargs):
    p = _param(xp, P0)
    opt = cls([p], **kwargs)
    _grad(xp, p, G)
    opt.step()
    return p, opt.state[p]


def test_rmsprop_first_steps_in_closed_form(xp):
    g, p0 = np.array(G), np.array(P0)
    lr, alpha, eps = 0.01, 0.9, 1e-3
    p, state = _first_step(xp, RMSprop, lr=lr, alpha=alpha, eps=eps)
    assert_close(state["square_avg"], (1 - alpha) * g**2)
    assert_close(p.data, p0 - lr * g / (math.sqrt(1 - alpha) * np.abs(g) + eps))
    # centered: v - m**2 = alpha * (1 - alpha) * g**2
    p, state = _first_step(xp, RMSprop, lr=lr, alpha=alpha, eps=eps, centered=True)
    assert_close(state["grad_avg"], (1 - alpha) * g)
    assert_close(p.data, p0 - lr * g / (math.sqrt(alpha * (1 - alpha)) * np.abs(g) + eps))
    # momentum: the first buffer is g / d (it starts at zero)
    p, state = _first_step(xp, RMSprop, lr=lr, alpha=alpha, eps=eps, momentum=0.5)
    buf = g / (math.sqrt(1 - alpha) * np.abs(g) + eps)
    assert_close(state["momentum_buffer"], buf)
    assert_close(p.data, p0 - lr * buf)


def test_adagrad_first_steps_in_closed_form(xp):
    g, p0 = np.array(G), np.array(P0)
    # sum starts at 0 and eps is 0: the first step is lr * sign(g), exactly
    p, state = _first_step(xp, Adagrad, lr=0.1, eps=0.0)
    assert to_np(p.data).tolist() == (p0 - 0.1 * np.sign(g)).tolist()
    assert to_np(state["sum"]).tolist() == (g**2).tolist()
    # lr_decay: the second step's rate is lr / (1 + lr_decay)
    p = _param(xp, P0)
    opt = Adagrad([p], lr=0.1, lr_decay=0.5, initial_accumulator_value=1.0, eps=1e-10)
    for _ in range(2):
        _grad(xp, p, G)
        opt.step()
    first = p0 - 0.1 * g / (np.sqrt(1 + g**2) + 1e-10)
    expected = first - 0.1 / 1.5 * g / (np.sqrt(1 + 2 * g**2) + 1e-10)
    assert_close(p.data, expected)
    assert opt.state[p]["step"] == 2


def test_adadelta_first_step_in_closed_form(xp):
    g, p0 = np.array(G), np.array(P0)
    lr, rho, eps = 0.5, 0.9, 1e-4
    p, state = _first_step(xp, Adadelta, lr=lr, rho=rho, eps=eps)
    delta = math.sqrt(eps) / np.sqrt((1 - rho) * g**2 + eps) * g
    assert_close(state["square_avg"], (1 - rho) * g**2)
    assert_close(state["acc_delta"], (1 - rho) * delta**2)
    assert_close(p.data, p0 - lr * delta)


def test_adamax_first_steps_in_closed_form(xp):
    g, p0 = np.array(G), np.array(P0)
    lr, beta1, beta2, eps = 0.01, 0.9, 0.5, 1e-3
    p = _param(xp, P0)
    opt = Adamax([p], lr=lr, betas=(beta1, beta2), eps=eps)
    _grad(xp, p, G)
    opt.step()
    # the bias correction undoes (1 - beta1): the first step is lr * g / (|g| + eps)
    assert_close(opt.state[p]["exp_avg"], (1 - beta1) * g)
    assert_close(opt.state[p]["exp_inf"], np.abs(g) + eps)
    p1 = p0 - lr * g / (np.abs(g) + eps)
    assert_close(p.data, p1)
    # a small gradient next: the maximum keeps beta2 * u where that is larger
    g2 = np.array([1.0, -0.1, 0.0, 0.2])
    _grad(xp, p, g2)
    opt.step()
    u = np.maximum(beta2 * (np.abs(g) + eps), np.abs(g2) + eps)
    # each operand wins somewhere
    assert (beta2 * (np.abs(g) + eps) > np.abs(g2) + eps).tolist() == [False, True, True, False]
    m = beta1 * (1 - beta1) * g + (1 - beta1) * g2
    assert_close(opt.state[p]["exp_inf"], u)
    assert_close(p.data, p1 - lr / (1 - beta1**2) * m / u)


@pytest.mark.parametrize("where", ["gradient", "state"])
def test_adamax_maximum_propagates_nan_as_torch(xp, torch, where):
    """NaN in either operand of torch.maximum gives NaN (nonfinite='ignore' lets it through)."""
    values = [[0.5, -1.0, 2.0], [0.25, 3.0, -0.5]]
    p = _param(xp, [1.0, 2.0, 3.0])
    tp = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    opt = Adamax([p], lr=0.1, nonfinite="ignore")
    topt = torch.optim.Adamax([tp], lr=0.1, foreach=False)
    for step, g in enumerate(values):
        g = list(g)
        if step == (0 if where == "state" else 1):
            g[1] = float("nan")
        _grad(xp, p, g)
        tp.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        topt.step()
    ours_u, torch_u = to_np(opt.state[p]["exp_inf"]), topt.state[tp]["exp_inf"].numpy()
    np.testing.assert_array_equal(np.isnan(ours_u), np.isnan(torch_u))
    assert np.isnan(ours_u).tolist() == [False, True, False]
    np.testing.assert_allclose(to_np(p.data), tp.detach().numpy(), rtol=1e-13)


def test_float32_matches_torch(torch):
    """float32 stays float32 and follows torch's float32 run (scalars rounded alike)."""
    xp = resolve_backend("numpy")
    for cls in FAMILY:
        p = _param(xp, P0, dtype="float32")
        tp = torch.tensor(P0, dtype=torch.float32, requires_grad=True)
        opt = cls([p], **BY_NAME[cls.__name__].base)
        topt = getattr(torch.optim, cls.__name__)(
            [tp], foreach=False, **BY_NAME[cls.__name__].base
        )
        for _ in range(3):
            _grad(xp, p, G)
            tp.grad = torch.tensor(G, dtype=torch.float32)
            opt.step()
            topt.step()
        assert p.data.dtype == np.float32
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-6, err_msg=cls.__name__)
