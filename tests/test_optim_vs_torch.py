"""SGD, Adam and AdamW against ``torch.optim``, step by step, in float64, on every backend.

The reference runs on torch tensors with the same gradients, drawn once in
NumPy float64 from a seeded Generator.  Our update rules follow PyTorch's
order of floating-point operations, so the two runs agree to a few ulp over
30 steps (and usually to the last bit).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _helpers import to_np

from neural_arch.backend import to_backend
from neural_arch.optim import SGD, Adam, AdamW

SHAPES = [(), (3,), (2, 3), (4, 1, 2)]
STEPS = 30
RTOL = 1e-13
ATOL = 1e-15


class P:
    """The smallest parameter the optimizers accept: ``.data`` and ``.grad``."""

    def __init__(self, data, grad=None):
        self.data = data
        self.grad = grad


def _initial(shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


def _grads(shapes=SHAPES, steps=STEPS, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]


def _ours(xp, values):
    return [P(to_backend(v, xp, dtype="float64")) for v in values]


def _theirs(torch, values):
    return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]


def _set_grads(xp, params, torch_params, grads):
    for p, tp, g in zip(params, torch_params, grads, strict=True):
        p.grad = to_backend(g, xp)
        tp.grad = torch_params[0].new_tensor(g)


def _assert_params_match(params, torch_params, step):
    for i, (p, tp) in enumerate(zip(params, torch_params, strict=True)):
        np.testing.assert_allclose(
            to_np(p.data),
            tp.detach().numpy(),
            rtol=RTOL,
            atol=ATOL,
            err_msg=f"parameter {i} after step {step}",
        )


def _assert_state_matches(opt, topt, params, torch_params):
    for p, tp in zip(params, torch_params, strict=True):
        ours, theirs = opt.state[p], topt.state[tp]
        for key, value in theirs.items():
            if key == "step":
                assert ours["step"] == int(value.item())
            elif value is not None:
                np.testing.assert_allclose(
                    to_np(ours[key]), value.numpy(), rtol=RTOL, atol=ATOL, err_msg=key
                )


def _run_side_by_side(xp, torch, make_ours, make_theirs, *, steps=STEPS, on_step=None):
    params = _ours(xp, _initial())
    torch_params = _theirs(torch, _initial())
    opt, topt = make_ours(params), make_theirs(torch_params)
    for step, grads in enumerate(_grads(steps=steps)):
        if on_step is not None:
            on_step(step, opt, topt)
        _set_grads(xp, params, torch_params, grads)
        opt.step()
        topt.step()
        _assert_params_match(params, torch_params, step)
    _assert_state_matches(opt, topt, params, torch_params)
    assert opt.step_count == steps
    for p in params:
        assert str(p.data.dtype).endswith("float64")
    return opt, topt


ADAM_CASES = [
    dict(weight_decay=wd, amsgrad=ams, maximize=mx, betas=betas)
    for wd, ams, mx, betas in itertools.product(
        (0.0, 0.1), (False, True), (False, True), ((0.9, 0.999), (0.3, 0.6))
    )
]


def _case_id(case):
    return ",".join(f"{k}={v}" for k, v in case.items())


@pytest.mark.parametrize("case", ADAM_CASES, ids=_case_id)
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_matches_torch(xp, torch, name, case):
    ours_cls = {"Adam": Adam, "AdamW": AdamW}[name]
    torch_cls = getattr(torch.optim, name)
    kwargs = dict(lr=0.01, eps=1e-8, **case)
    _run_side_by_side(
        xp,
        torch,
        lambda ps: ours_cls(ps, **kwargs),
        lambda ps: torch_cls(ps, foreach=False, **kwargs),
    )


SGD_CASES = [
    dict(momentum=mom, dampening=damp, nesterov=nest, weight_decay=wd, maximize=mx)
    for mom, damp, nest, wd, mx in itertools.product(
        (0.0, 0.9), (0.0, 0.1), (False, True), (0.0, 0.1), (False, True)
    )
    if not (nest and (mom == 0 or damp != 0))
]


@pytest.mark.parametrize("case", SGD_CASES, ids=_case_id)
def test_sgd_matches_torch(xp, torch, case):
    _run_side_by_side(
        xp,
        torch,
        lambda ps: SGD(ps, lr=0.05, **case),
        lambda ps: torch.optim.SGD(ps, lr=0.05, foreach=False, **case),
    )


def test_defaults_match_torch(xp, torch):
    for ours_cls, torch_cls in ((Adam, torch.optim.Adam), (AdamW, torch.optim.AdamW)):
        _run_side_by_side(
            xp, torch, ours_cls, lambda ps, c=torch_cls: c(ps, foreach=False), steps=5
        )
    _run_side_by_side(
        xp, torch, lambda ps: SGD(ps), lambda ps: torch.optim.SGD(ps, lr=0.01), steps=5
    )


def _groups(params, options):
    return [{"params": params[:2], **options[0]}, {"params": params[2:], **options[1]}]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("Adam", ({"lr": 0.1, "betas": (0.5, 0.9)}, {"amsgrad": True, "weight_decay": 0.1})),
        ("AdamW", ({"lr": 0.03, "weight_decay": 0.2}, {"betas": (0.2, 0.3), "maximize": True})),
        ("SGD", ({"lr": 0.1, "momentum": 0.9, "nesterov": True}, {"dampening": 0.5})),
    ],
)
def test_param_groups_and_lr_changes_match_torch(xp, torch, name, options):
    """Per-group options, and lr changed mid-run through ``opt.lr`` and ``param_groups``."""
    ours_cls = {"Adam": Adam, "AdamW": AdamW, "SGD": SGD}[name]
    torch_cls = getattr(torch.optim, name)
    defaults = {"lr": 0.02, "momentum": 0.5} if name == "SGD" else {"lr": 0.02}

    def change_lr(step, opt, topt):
        if step == 10:
            opt.param_groups[0]["lr"] = 0.005
            topt.param_groups[0]["lr"] = 0.005
        if step == 20:
            opt.lr = 0.001
            for group in topt.param_groups:
                group["lr"] = 0.001
            assert opt.lr == 0.001

    opt, _ = _run_side_by_side(
        xp,
        torch,
        lambda ps: ours_cls(_groups(ps, options), **defaults),
        lambda ps: torch_cls(_groups(ps, options), foreach=False, **defaults),
        on_step=change_lr,
    )
    assert [g["lr"] for g in opt.param_groups] == [0.001, 0.001]


def test_adam_group_beta1_beta2_match_torch_betas(xp, torch):
    """The seed's ``beta1``/``beta2`` spelling, per group, is PyTorch's ``betas``."""
    _run_side_by_side(
        xp,
        torch,
        lambda ps: Adam(
            [{"params": ps[:2], "beta1": 0.5}, {"params": ps[2:], "beta1": 0.7, "beta2": 0.8}],
            lr=0.01,
            beta2=0.99,
        ),
        lambda ps: torch.optim.Adam(
            [{"params": ps[:2], "betas": (0.5, 0.99)}, {"params": ps[2:], "betas": (0.7, 0.8)}],
            lr=0.01,
            betas=(0.9, 0.99),
            foreach=False,
        ),
        steps=10,
    )


def test_param_without_grad_matches_torch(xp, torch):
    """A parameter whose grad is None is left alone (no state), as in torch."""
    params = _ours(xp, _initial())
    torch_params = _theirs(torch, _initial())
    opt = Adam(params, lr=0.01)
    topt = torch.optim.Adam(torch_params, lr=0.01, foreach=False)
    for step, grads in enumerate(_grads(steps=10)):
        _set_grads(xp, params, torch_params, grads)
        if step < 5:
            params[1].grad = None
            torch_params[1].grad = None
        opt.step()
        topt.step()
        _assert_params_match(params, torch_params, step)
    assert opt.state[params[1]]["step"] == 5
    assert opt.state[params[0]]["step"] == 10
    _assert_state_matches(opt, topt, params, torch_params)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
def test_load_torch_state_dict_and_continue(xp, torch, name):
    """A ``torch.optim`` state dict, loaded mid-run, continues as torch does."""
    ours_cls = {"Adam": Adam, "AdamW": AdamW, "SGD": SGD}[name]
    torch_cls = getattr(torch.optim, name)
    kwargs = {"lr": 0.02, "momentum": 0.9} if name == "SGD" else {"lr": 0.02, "amsgrad": True}
    torch_params = _theirs(torch, _initial())
    topt = torch_cls(torch_params, foreach=False, **kwargs)
    all_grads = _grads()
    for grads in all_grads[:15]:
        for tp, g in zip(torch_params, grads, strict=True):
            tp.grad = torch.tensor(g)
        topt.step()
    params = _ours(xp, [tp.detach().numpy() for tp in torch_params])
    opt = ours_cls(params, lr=0.5)  # hyperparameters come from the state dict
    opt.load_state_dict(topt.state_dict())
    assert opt.param_groups[0]["lr"] == 0.02
    for step, grads in enumerate(all_grads[15:], start=15):
        _set_grads(xp, params, torch_params, grads)
        opt.step()
        topt.step()
        _assert_params_match(params, torch_params, step)
    _assert_state_matches(opt, topt, params, torch_params)
