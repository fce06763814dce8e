"""SGD, Adam and AdamW against ``torch.optim``, step by step, in float64, on every backend.

The reference runs on torch tensors with the same gradients, drawn once in
NumPy float64 from a seeded Generator.  Our update rules follow PyTorch's
order of floating-point operations, so the two runs agree to a few ulp over
30 steps (and usually to the last bit).  The machinery is in
tests/optimizers.py; the comparison over every option of every optimizer of
its table is in test_optimizer_table.py.  The tests here cover what the grid
does not: defaults, parameter groups, lr changes, missing gradients, and
loading a torch state dict.
"""

from __future__ import annotations

import pytest
from optimizers import (
    BY_NAME,
    assert_params_match,
    assert_state_matches,
    covering_params,
    grad_sequence,
    initial,
    ours,
    run_side_by_side,
    set_grads,
    theirs,
)

from neural_arch.optim import SGD, Adam, AdamW


def test_defaults_match_torch(xp, torch):
    for ours_cls, torch_cls in ((Adam, torch.optim.Adam), (AdamW, torch.optim.AdamW)):
        run_side_by_side(
            xp, torch, ours_cls, lambda ps, c=torch_cls: c(ps, foreach=False), steps=5
        )
    run_side_by_side(
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
    ours_cls = BY_NAME[name].cls
    torch_cls = getattr(torch.optim, BY_NAME[name].torch_name)
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

    opt, _ = run_side_by_side(
        xp,
        torch,
        lambda ps: ours_cls(_groups(ps, options), **defaults),
        lambda ps: torch_cls(_groups(ps, options), foreach=False, **defaults),
        on_step=change_lr,
    )
    assert [g["lr"] for g in opt.param_groups] == [0.001, 0.001]


def test_adam_group_beta1_beta2_match_torch_betas(xp, torch):
    """The seed's ``beta1``/``beta2`` spelling, per group, is PyTorch's ``betas``."""
    run_side_by_side(
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
    params = ours(xp, initial())
    torch_params = theirs(torch, initial())
    opt = Adam(params, lr=0.01)
    topt = torch.optim.Adam(torch_params, lr=0.01, foreach=False)
    for step, grads in enumerate(grad_sequence(steps=10)):
        set_grads(xp, params, torch_params, grads)
        if step < 5:
            params[1].grad = None
            torch_params[1].grad = None
        opt.step()
        topt.step()
        assert_params_match(params, torch_params, step)
    assert opt.state[params[1]]["step"] == 5
    assert opt.state[params[0]]["step"] == 10
    assert_state_matches(opt, topt, params, torch_params)


@pytest.mark.parametrize(("entry", "kwargs"), covering_params())
def test_load_torch_state_dict_and_continue(xp, torch, entry, kwargs):
    """A ``torch.optim`` state dict, loaded mid-run, continues as torch does."""
    torch_params = theirs(torch, initial())
    topt = entry.make_torch(torch, torch_params, **kwargs)
    all_grads = grad_sequence()
    for grads in all_grads[:15]:
        for tp, g in zip(torch_params, grads, strict=True):
            tp.grad = torch.tensor(g)
        topt.step()
    params = ours(xp, [tp.detach().numpy() for tp in torch_params])
    opt = entry.cls(params, lr=0.5)  # hyperparameters come from the state dict
    opt.load_state_dict(topt.state_dict())
    assert opt.param_groups[0]["lr"] == entry.base["lr"]
    for key, value in kwargs.items():
        assert opt.param_groups[0][key] == value, key
    for step, grads in enumerate(all_grads[15:], start=15):
        set_grads(xp, params, torch_params, grads)
        opt.step()
        topt.step()
        assert_params_match(params, torch_params, step)
    assert_state_matches(opt, topt, params, torch_params)
