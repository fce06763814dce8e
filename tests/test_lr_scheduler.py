"""Learning-rate schedulers: PyTorch's sequences, closed forms, state dicts, warnings."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from _helpers import assert_close

import neural_arch as na
from neural_arch.optim import lr_scheduler as lrs

N_STEPS = 45
BASE_LRS = (0.1, 0.05)  # two param groups with different base lrs, everywhere


# --------------------------------------------------------------------------- helpers


def na_optimizer(kind="SGD", lrs_=BASE_LRS):
    groups = [{"params": [na.Parameter(np.zeros(2))], "lr": lr} for lr in lrs_]
    if kind == "SGD":
        return na.SGD(groups, momentum=0.9)
    return na.Adam(groups)


def torch_optimizer(torch, kind="SGD", lrs_=BASE_LRS):
    groups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs_]
    if kind == "SGD":
        return torch.optim.SGD(groups, momentum=0.9)
    return torch.optim.Adam(groups)


def run(opt, sched, n=N_STEPS, metrics=None):
    """Step optimizer then scheduler n times; the lrs (and momenta) of every step."""
    history = [_snapshot(opt, sched)]
    for i in range(n):
        opt.step()
        sched.step() if metrics is None else sched.step(metrics[i])
        history.append(_snapshot(opt, sched))
    return history


def _snapshot(opt, sched):
    last = [float(x) for x in sched.get_last_lr()]
    groups = [float(g["lr"]) for g in opt.param_groups]
    assert last == groups
    momenta = [
        float(g["betas"][0]) if "betas" in g else float(g.get("momentum", 0.0))
        for g in opt.param_groups
    ]
    return groups + momenta


def assert_same_sequence(ours, ref):
    assert len(ours) == len(ref)
    np.testing.assert_allclose(np.array(ours), np.array(ref), rtol=1e-12, atol=0)


# A scheduler factory gets the scheduler module (ours or torch's) and an optimizer:
# the two libraries share the API, so one factory builds both.
CASES = {
    "LambdaLR": lambda m, o, **kw: m.LambdaLR(o, lambda t: 0.95**t, **kw),
    "LambdaLR-per-group": lambda m, o, **kw: m.LambdaLR(
        o, [lambda t: 1 / (t + 1), lambda t: 0.9**t], **kw
    ),
    "MultiplicativeLR": lambda m, o, **kw: m.MultiplicativeLR(
        o, lambda t: 0.97 if t % 2 else 0.99, **kw
    ),
    "StepLR": lambda m, o, **kw: m.StepLR(o, step_size=7, gamma=0.5, **kw),
    "MultiStepLR": lambda m, o, **kw: m.MultiStepLR(
        o, milestones=[30, 5, 12, 12], gamma=0.3, **kw
    ),
    "ConstantLR": lambda m, o, **kw: m.ConstantLR(o, factor=0.25, total_iters=10, **kw),
    "LinearLR": lambda m, o, **kw: m.LinearLR(
        o, start_factor=0.1, end_factor=0.9, total_iters=17, **kw
    ),
    "LinearLR-to-zero": lambda m, o, **kw: m.LinearLR(
        o, start_factor=1.0, end_factor=0.0, total_iters=20, **kw
    ),
    "ExponentialLR": lambda m, o, **kw: m.ExponentialLR(o, gamma=0.93, **kw),
    "PolynomialLR": lambda m, o, **kw: m.PolynomialLR(o, total_iters=30, power=2.0, **kw),
    "CosineAnnealingLR": lambda m, o, **kw: m.CosineAnnealingLR(o, T_max=12, eta_min=0.001, **kw),
    "CosineAnnealingLR-past-T_max": lambda m, o, **kw: m.CosineAnnealingLR(o, T_max=10, **kw),
    "CosineAnnealingWarmRestarts": lambda m, o, **kw: m.CosineAnnealingWarmRestarts(
        o, T_0=5, T_mult=2, eta_min=1e-4, **kw
    ),
    "CosineAnnealingWarmRestarts-T_mult1": lambda m, o, **kw: m.CosineAnnealingWarmRestarts(
        o, T_0=7, **kw
    ),
    "OneCycleLR": lambda m, o, **kw: m.OneCycleLR(
        o, max_lr=[1.0, 0.5], total_steps=N_STEPS + 5, **kw
    ),
    "OneCycleLR-three-phase-linear": lambda m, o, **kw: m.OneCycleLR(
        o,
        max_lr=0.8,
        epochs=5,
        steps_per_epoch=10,
        three_phase=True,
        anneal_strategy="linear",
        pct_start=0.25,
        **kw,
    ),
    "CyclicLR-triangular": lambda m, o, **kw: m.CyclicLR(
        o, base_lr=0.01, max_lr=0.1, step_size_up=5, **kw
    ),
    "CyclicLR-triangular2": lambda m, o, **kw: m.CyclicLR(
        o,
        base_lr=[0.01, 0.02],
        max_lr=[0.1, 0.2],
        step_size_up=4,
        step_size_down=6,
        mode="triangular2",
        base_momentum=[0.7, 0.8],
        **kw,
    ),
    "CyclicLR-exp_range": lambda m, o, **kw: m.CyclicLR(
        o, base_lr=0.01, max_lr=0.1, step_size_up=3, mode="exp_range", gamma=0.97, **kw
    ),
    "CyclicLR-scale_fn-iterations": lambda m, o, **kw: m.CyclicLR(
        o,
        base_lr=0.01,
        max_lr=0.1,
        step_size_up=4,
        scale_fn=lambda x: 1 / (1 + x),
        scale_mode="iterations",
        cycle_momentum=False,
        **kw,
    ),
}

COMBOS = {
    "Chained-constant-exponential": lambda m, o: m.ChainedScheduler(
        [m.ConstantLR(o, factor=0.5, total_iters=4), m.ExponentialLR(o, gamma=0.9)]
    ),
    "Chained-linear-cosine-multistep": lambda m, o: m.ChainedScheduler(
        [
            m.LinearLR(o, start_factor=0.2, total_iters=6),
            m.CosineAnnealingLR(o, T_max=20, eta_min=0.0),
            m.MultiStepLR(o, milestones=[15, 35], gamma=0.5),
        ]
    ),
    "Sequential-warmup-cosine": lambda m, o: m.SequentialLR(
        o,
        [m.LinearLR(o, start_factor=0.1, total_iters=5), m.CosineAnnealingLR(o, T_max=30)],
        milestones=[5],
    ),
    "Sequential-three": lambda m, o: m.SequentialLR(
        o,
        [
            m.ConstantLR(o, factor=0.3, total_iters=6),
            m.ExponentialLR(o, gamma=0.9),
            m.StepLR(o, step_size=5, gamma=0.5),
        ],
        milestones=[4, 20],
    ),
    "Sequential-lambda-warmrestarts": lambda m, o: m.SequentialLR(
        o,
        [m.LambdaLR(o, lambda t: (t + 1) / 8), m.CosineAnnealingWarmRestarts(o, T_0=6)],
        milestones=[8],
    ),
    "Chained-of-sequential": lambda m, o: m.ChainedScheduler(
        [
            m.SequentialLR(
                o,
                [m.ConstantLR(o, factor=0.5, total_iters=3), m.ExponentialLR(o, gamma=0.95)],
                milestones=[10],
            ),
            m.StepLR(o, step_size=15, gamma=0.5),
        ]
    ),
}
ALL = {**CASES, **COMBOS}


# --------------------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("name", list(ALL))
def test_sequence_matches_torch(torch, name):
    make = ALL[name]
    ours = run(opt := na_optimizer(), make(lrs, opt))
    ref = run(topt := torch_optimizer(torch), make(torch.optim.lr_scheduler, topt))
    assert_same_sequence(ours, ref)


@pytest.mark.parametrize("name", [n for n in CASES if "Cycl" in n])
def test_cycled_momentum_is_adams_beta1_like_torch(torch, name):
    make = CASES[name]
    ours = run(opt := na_optimizer("Adam"), make(lrs, opt))
    ref = run(topt := torch_optimizer(torch, "Adam"), make(torch.optim.lr_scheduler, topt))
    assert_same_sequence(ours, ref)
    assert opt.param_groups[0]["betas"][1] == 0.999


# PyTorch resumes CosineAnnealingWarmRestarts with T_mult > 1 in the wrong cycle (see below).
RESUMABLE = [n for n in CASES if n != "CosineAnnealingWarmRestarts"]


@pytest.mark.parametrize("name", RESUMABLE)
def test_resume_from_last_epoch_matches_torch(torch, name):
    """A scheduler built with last_epoch=k on an optimizer that ran k steps goes on as torch's."""
    make, k = CASES[name], 17
    seqs = []
    for module, opt in ((lrs, na_optimizer()), (torch.optim.lr_scheduler, torch_optimizer(torch))):
        head = run(opt, make(module, opt), n=k)
        seqs.append(head + run(opt, make(module, opt, last_epoch=k), n=N_STEPS - k)[1:])
    assert_same_sequence(*seqs)


PLATEAU = [
    dict(mode="min", threshold_mode="rel"),
    dict(mode="min", threshold_mode="abs", threshold=0.05, patience=2),
    dict(mode="max", threshold_mode="rel", threshold=0.01, patience=1, cooldown=2),
    dict(mode="max", threshold_mode="abs", factor=0.5, patience=0, min_lr=[0.02, 0.001]),
    dict(mode="min", factor=0.5, patience=1, cooldown=3, min_lr=0.01, eps=1e-3),
]


@pytest.mark.parametrize("kwargs", PLATEAU, ids=lambda kw: "-".join(map(str, kw.values())))
def test_reduce_on_plateau_matches_torch(torch, kwargs):
    rng = np.random.default_rng(0)
    metrics = list(np.repeat(rng.uniform(0, 1, 15), 3)) + [0.5] * 10
    ours = run(opt := na_optimizer(), lrs.ReduceLROnPlateau(opt, **kwargs), len(metrics), metrics)
    topt = torch_optimizer(torch)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kwargs)
    assert_same_sequence(ours, run(topt, tsched, len(metrics), metrics))


def test_deprecated_epoch_argument_uses_closed_form_like_torch(torch):
    seqs = []
    for module, opt in ((lrs, na_optimizer()), (torch.optim.lr_scheduler, torch_optimizer(torch))):
        sched = module.CosineAnnealingLR(opt, T_max=10, eta_min=0.01)
        out = []
        for epoch in (3, 7, 7, 15, 2):
            opt.step()
            with pytest.warns(UserWarning, match="epoch parameter"):
                sched.step(epoch)
            out.append(sched.get_last_lr())
        seqs.append(out)
    assert_same_sequence(*seqs)


def test_warm_restarts_fractional_epochs_like_torch(torch):
    seqs = []
    for module, opt in ((lrs, na_optimizer()), (torch.optim.lr_scheduler, torch_optimizer(torch))):
        sched = module.CosineAnnealingWarmRestarts(opt, T_0=4, T_mult=2)
        out = []
        for i in range(40):
            opt.step()
            sched.step(i / 3)  # PyTorch's documented per-batch usage: no warning
            out.append(sched.get_last_lr())
        seqs.append(out)
    assert_same_sequence(*seqs)


# --------------------------------------------------------------------------- closed forms


def _cos(base, eta_min, t, T):
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / T)) / 2


CLOSED_FORMS = {
    "StepLR": lambda b, t: b * 0.5 ** (t // 7),
    "MultiStepLR": lambda b, t: b * 0.3 ** sum(m <= t for m in (5, 12, 12, 30)),
    "ConstantLR": lambda b, t: b * (0.25 if t < 10 else 1.0),
    "LinearLR": lambda b, t: b * (0.1 + 0.8 * min(t, 17) / 17),
    "LinearLR-to-zero": lambda b, t: b * (1.0 - min(t, 20) / 20),
    "ExponentialLR": lambda b, t: b * 0.93**t,
    "PolynomialLR": lambda b, t: b * (1 - min(t, 30) / 30) ** 2,
    "CosineAnnealingLR": lambda b, t: _cos(b, 0.001, t, 12),
    "CosineAnnealingLR-past-T_max": lambda b, t: _cos(b, 0.0, t, 10),
    "LambdaLR": lambda b, t: b * 0.95**t,
    "CosineAnnealingWarmRestarts": lambda b, t: _cos(
        b,
        1e-4,
        *(
            (t, 5)
            if t < 5
            else (t - 5, 10)
            if t < 15
            else (t - 15, 20)
            if t < 35
            else (t - 35, 40)
        ),
    ),
    "CyclicLR-triangular": lambda b, t: 0.01 + 0.09 * (1 - abs((t % 10) - 5) / 5),
}


@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_sequence_matches_closed_form(name):
    opt = na_optimizer()
    history = run(opt, CASES[name](lrs, opt))
    expected = [[CLOSED_FORMS[name](b, t) for b in BASE_LRS] for t in range(N_STEPS + 1)]
    ours = [h[:2] for h in history]
    if name == "CyclicLR-triangular":  # one base_lr for both groups
        expected = [[e[0], e[0]] for e in expected]
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-17)


def test_one_cycle_phases_closed_form():
    opt = na_optimizer()
    sched = lrs.OneCycleLR(opt, max_lr=[1.0, 0.5], total_steps=40, pct_start=0.25)
    history = run(opt, sched, n=40)
    lr = [h[0] for h in history]
    momentum = [h[2] for h in history]
    assert lr[0] == pytest.approx(1.0 / 25, rel=1e-12)
    assert lr[9] == pytest.approx(1.0, rel=1e-12)  # peak at pct_start * total - 1
    assert lr[39] == pytest.approx(1.0 / 25 / 1e4, rel=1e-12)  # min_lr at total - 1
    assert momentum[0] == 0.95 and momentum[9] == pytest.approx(0.85, rel=1e-12)
    assert history[9][1] == pytest.approx(0.5, rel=1e-12)
    t = 4  # inside the warmup: cosine from initial_lr to max_lr
    expected = 1.0 + (0.04 - 1.0) / 2 * (math.cos(math.pi * t / 9) + 1)
    assert lr[t] == pytest.approx(expected, rel=1e-12)


def test_one_cycle_refuses_to_step_past_total_steps():
    opt = na_optimizer()
    sched = lrs.OneCycleLR(opt, max_lr=0.1, total_steps=5)
    run(opt, sched, n=5)
    opt.step()
    with pytest.raises(ValueError, match=r"Tried to step 6 times\. The specified number of total"):
        sched.step()


def test_chained_constant_exponential_closed_form():
    opt = na_optimizer()
    sched = lrs.ChainedScheduler(
        [lrs.ConstantLR(opt, factor=0.5, total_iters=4), lrs.ExponentialLR(opt, gamma=0.9)]
    )
    history = run(opt, sched)
    for t, h in enumerate(history):
        for lr, base in zip(h[:2], BASE_LRS, strict=True):
            assert lr == pytest.approx(base * (0.5 if t < 4 else 1.0) * 0.9**t, rel=1e-12)


def test_sequential_warmup_then_cosine_closed_form():
    opt = na_optimizer()
    warmup = lrs.LinearLR(opt, start_factor=0.1, total_iters=5)
    cosine = lrs.CosineAnnealingLR(opt, T_max=30, eta_min=0.0)
    history = run(opt, lrs.SequentialLR(opt, [warmup, cosine], milestones=[5]))
    for t, h in enumerate(history):
        for lr, b in zip(h[:2], BASE_LRS, strict=True):
            expected = b * (0.1 + 0.9 * t / 5) if t < 5 else _cos(b, 0.0, t - 5, 30)
            assert lr == pytest.approx(expected, rel=1e-12, abs=1e-17)


@pytest.mark.parametrize("num_cycles", [0.5, 1.0])
def test_hugging_face_warmup_helpers(num_cycles):
    W, N = 10, 40
    opt = na_optimizer()
    linear = [h[:2] for h in run(opt, lrs.get_linear_schedule_with_warmup(opt, W, N), n=50)]
    opt = na_optimizer()
    sched = lrs.get_cosine_schedule_with_warmup(opt, W, N, num_cycles=num_cycles)
    cosine = [h[:2] for h in run(opt, sched, n=50)]
    assert isinstance(sched, lrs.LambdaLR)
    for t in range(51):
        warm = t / W
        lin = warm if t < W else max(0.0, (N - t) / (N - W))
        progress = (t - W) / (N - W)
        cos = warm if t < W else max(0.0, (1 + math.cos(2 * math.pi * num_cycles * progress)) / 2)
        for i, b in enumerate(BASE_LRS):
            assert linear[t][i] == pytest.approx(b * lin, rel=1e-12, abs=1e-18)
            assert cosine[t][i] == pytest.approx(b * cos, rel=1e-12, abs=1e-18)
    assert linear[W] == list(BASE_LRS) and linear[N] == [0.0, 0.0]


def test_warmup_helper_settings_travel_in_state_dict():
    opt = na_optimizer()
    sd = lrs.get_cosine_schedule_with_warmup(opt, 5, 50, num_cycles=2.0).state_dict()
    assert sd["lr_lambdas"][0]["kwargs"] == {
        "num_warmup_steps": 5,
        "num_training_steps": 50,
        "num_cycles": 2.0,
    }


def test_seed_manual_schedule_equals_step_lr():
    """The seed's ``if epoch % 30 == 0 and epoch > 0: optimizer.lr *= 0.1`` is StepLR(30, 0.1)."""
    manual_opt = na.SGD([na.Parameter(np.zeros(2))], lr=0.1)
    opt = na.SGD([na.Parameter(np.zeros(2))], lr=0.1)
    scheduler = lrs.StepLR(opt, step_size=30, gamma=0.1)
    for epoch in range(100):
        if epoch % 30 == 0 and epoch > 0:
            manual_opt.lr *= 0.1
        assert opt.lr == manual_opt.lr  # the lr this epoch trains with, to the bit
        manual_opt.step()
        opt.step()
        scheduler.step()


# --------------------------------------------------------------------------- ReduceLROnPlateau


def plateau(metrics, **kwargs):
    opt = na_optimizer(lrs_=(1.0,))
    sched = lrs.ReduceLROnPlateau(opt, **kwargs)
    return [h[0] for h in run(opt, sched, len(metrics), metrics)][1:]


def test_plateau_min_rel_patience():
    # improvement needs a < best * (1 - 1e-4); the 4th step is the 3rd without one
    assert plateau([1.0, 1.0, 0.99995, 1.0, 0.5], factor=0.5, patience=2) == [1, 1, 1, 0.5, 0.5]


def test_plateau_max_mode():
    assert plateau([1, 2, 2, 2, 3, 3], mode="max", patience=1) == [1, 1, 1, 0.1, 0.1, 0.1]


def test_plateau_abs_threshold():
    # min/abs: 0.95 is not below 1.0 - 0.1, so it is not an improvement
    assert plateau([1.0, 0.95, 0.85, 0.8], threshold_mode="abs", threshold=0.1, patience=0) == [
        1,
        0.1,
        0.1,
        0.010000000000000002,
    ]
    # max/rel: an improvement needs a > best * 1.1
    out = plateau([1.0, 1.05, 1.2, 1.25], mode="max", threshold=0.1, patience=0, factor=0.5)
    assert out == [1, 0.5, 0.5, 0.25]


def test_plateau_cooldown():
    out = plateau([1.0] * 8, factor=0.5, patience=0, cooldown=2)
    # reduce, then two cooldown steps whose bad epochs are not counted
    assert out == [1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]


def test_plateau_min_lr_and_eps():
    assert plateau([1.0] * 5, factor=0.1, patience=0, min_lr=0.05) == [1, 0.1, 0.05, 0.05, 0.05]
    # a reduction smaller than eps is not applied
    assert plateau([1.0] * 3, factor=0.5, patience=0, eps=0.6) == [1, 1, 1]
    opt = na_optimizer()
    sched = lrs.ReduceLROnPlateau(opt, patience=0, min_lr=[0.05, 0.0])
    run(opt, sched, 3, [1.0] * 3)
    assert sched.get_last_lr() == [0.05, pytest.approx(0.05 * 0.01)]


def test_plateau_state_dict_resume():
    metrics = [1.0, 0.9, 0.9, 0.95, 0.8, 0.8, 0.8, 0.8, 0.7] * 3
    full = plateau(metrics, factor=0.5, patience=1, cooldown=1)
    opt = na_optimizer(lrs_=(1.0,))
    sched = lrs.ReduceLROnPlateau(opt, factor=0.5, patience=1, cooldown=1)
    run(opt, sched, 10, metrics)
    saved_opt, saved = copy.deepcopy(opt.state_dict()), json.loads(json.dumps(sched.state_dict()))
    opt = na_optimizer(lrs_=(1.0,))
    sched = lrs.ReduceLROnPlateau(opt, factor=0.9)
    opt.load_state_dict(saved_opt)
    sched.load_state_dict(saved)
    assert [h[0] for h in run(opt, sched, len(metrics) - 10, metrics[10:])][1:] == full[10:]


# --------------------------------------------------------------------------- state dicts


@pytest.mark.parametrize("name", list(ALL))
def test_resume_from_state_dict_equals_uninterrupted_run(name):
    make, k = ALL[name], 20
    full = run(opt := na_optimizer(), make(lrs, opt))

    opt = na_optimizer()
    head = run(opt, sched := make(lrs, opt), n=k)
    saved_opt = copy.deepcopy(opt.state_dict())
    saved = json.loads(json.dumps(sched.state_dict()))  # plain data: numbers, strings, lists

    opt = na_optimizer()
    sched = make(lrs, opt)  # build the scheduler first: it writes the groups' lrs
    opt.load_state_dict(saved_opt)
    sched.load_state_dict(saved)
    assert head + run(opt, sched, n=N_STEPS - k)[1:] == full


class Halving:
    """A callable object: LambdaLR saves its ``__dict__``, unlike a function."""

    def __init__(self):
        self.rate = 0.5

    def __call__(self, t):
        return self.rate ** (t // 10)


def test_lambda_state_dict_keeps_objects_not_functions():
    opt = na_optimizer()
    sched = lrs.LambdaLR(opt, [Halving(), lambda t: 1.0])
    sched.lr_lambdas[0].rate = 0.25
    sd = sched.state_dict()
    assert sd["lr_lambdas"] == [{"rate": 0.25}, None]
    other = lrs.LambdaLR(opt, [Halving(), lambda t: 2.0])
    other.load_state_dict(sd)
    assert other.lr_lambdas[0].rate == 0.25
    assert other.lr_lambdas[1](0) == 2.0  # the function is the one given, not restored
    assert sd["lr_lambdas"] == [{"rate": 0.25}, None]  # loading left the dict as it was


def test_state_dict_is_a_copy():
    opt = na_optimizer()
    sched = lrs.StepLR(opt, step_size=3)
    sd = sched.state_dict()
    sd["base_lrs"][0] = 99.0
    assert sched.base_lrs == list(BASE_LRS)
    assert "optimizer" not in sd


def test_resume_without_initial_lr_is_an_error():
    with pytest.raises(
        KeyError, match=re.escape("initial_lr' is not specified in param_groups[0]")
    ):
        lrs.StepLR(na_optimizer(), step_size=3, last_epoch=4)


# --------------------------------------------------------------------------- warnings


def test_scheduler_step_before_optimizer_step_warns():
    opt = na_optimizer()
    sched = lrs.StepLR(opt, step_size=2)
    with pytest.warns(UserWarning, match=re.escape("`lr_scheduler.step()` before `optimizer")):
        sched.step()
    sched.step()  # only the first step is checked, as in PyTorch


def test_no_warning_in_the_right_order_with_two_schedulers():
    opt = na_optimizer()
    first, second = lrs.StepLR(opt, step_size=2), lrs.ExponentialLR(opt, gamma=0.9)
    opt.step()
    first.step()
    second.step()
    assert opt.step_count == 1  # the wrapped step is still the optimizer's own


def test_overridden_optimizer_step_warns():
    opt = na_optimizer()
    sched = lrs.StepLR(opt, step_size=2)
    opt.step = lambda: None
    with pytest.warns(UserWarning, match="has been overridden after learning rate scheduler"):
        sched.step()


def test_get_lr_outside_step_warns():
    sched = lrs.ExponentialLR(na_optimizer(), gamma=0.5)
    with pytest.warns(UserWarning, match=re.escape("please use `get_last_lr()`")):
        sched.get_lr()


def test_deprecated_epoch_argument():
    opt = na_optimizer()
    sched = lrs.StepLR(opt, step_size=3, gamma=0.5)
    opt.step()
    with pytest.warns(UserWarning, match="epoch parameter in `scheduler.step\\(\\)`"):
        sched.step(7)
    assert sched.get_last_lr() == [0.1 * 0.25, 0.05 * 0.25]
    assert sched.last_epoch == 7


# --------------------------------------------------------------------------- validation


class NoMomentum:
    def __init__(self):
        self.param_groups = [{"lr": 0.1}]
        self.defaults = {"lr": 0.1}

    def step(self):
        pass


INVALID = [
    (lambda o: lrs.CosineAnnealingLR(o, T_max=0), ValueError, "T_max must be > 0, got 0"),
    (lambda o: lrs.StepLR(o, step_size=0), ValueError, "step_size must be a positive integer"),
    (lambda o: lrs.StepLR(o, step_size=2.5), ValueError, "step_size must be a positive integer"),
    (lambda o: lrs.ConstantLR(o, factor=1.5), ValueError, r"factor must be in \[0.0, 1.0\], got"),
    (lambda o: lrs.ConstantLR(o, total_iters=0), ValueError, "total_iters must be a positive"),
    (lambda o: lrs.LinearLR(o, start_factor=0), ValueError, r"start_factor must be in \(0.0"),
    (lambda o: lrs.LinearLR(o, end_factor=2), ValueError, r"end_factor must be in \[0.0, 1.0\]"),
    (lambda o: lrs.PolynomialLR(o, total_iters=-1), ValueError, "total_iters must be a positive"),
    (lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=0), ValueError, "T_0 must be a positive"),
    (
        lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=0),
        ValueError,
        "T_mult must be an integer >= 1, got 0",
    ),
    (lambda o: lrs.OneCycleLR(o, max_lr=1.0), ValueError, "either total_steps or both epochs"),
    (lambda o: lrs.OneCycleLR(o, 1.0, total_steps=0), ValueError, "total_steps must be a posit"),
    (
        lambda o: lrs.OneCycleLR(o, 1.0, total_steps=9, pct_start=1.5),
        ValueError,
        r"pct_start must be in \[0.0, 1.0\], got 1.5",
    ),
    (
        lambda o: lrs.OneCycleLR(o, 1.0, total_steps=9, anneal_strategy="exp"),
        ValueError,
        "anneal_strategy must be 'cos' or 'linear', got 'exp'",
    ),
    (
        lambda o: lrs.OneCycleLR(o, [1.0], total_steps=9),
        ValueError,
        r"max_lr must have one value per param group \(2\), got 1 values",
    ),
    (lambda o: lrs.CyclicLR(o, 0.1, 1.0, mode="sine"), ValueError, "mode must be 'triangular'"),
    (lambda o: lrs.CyclicLR(o, 0.1, 1.0, step_size_up=0), ValueError, "step_size_up must be"),
    (
        lambda o: lrs.CyclicLR(NoMomentum(), 0.1, 1.0),
        ValueError,
        "cycle_momentum=True needs an optimizer with 'momentum' or 'betas'",
    ),
    (lambda o: lrs.ReduceLROnPlateau(o, factor=1.0), ValueError, "factor must be < 1.0, got 1.0"),
    (lambda o: lrs.ReduceLROnPlateau(o, mode="avg"), ValueError, "mode must be 'min' or 'max'"),
    (
        lambda o: lrs.ReduceLROnPlateau(o, threshold_mode="pct"),
        ValueError,
        "threshold_mode must be 'rel' or 'abs', got 'pct'",
    ),
    (lambda o: lrs.ReduceLROnPlateau(o, min_lr=[0.1]), ValueError, "min_lr must have one value"),
    (lambda o: lrs.LambdaLR(o, [lambda t: 1.0]), ValueError, r"one function per param group"),
    (lambda o: lrs.MultiplicativeLR(o, 0.5), TypeError, "lr_lambda must be callable, got float"),
    (lambda o: lrs.StepLR(object(), step_size=2), TypeError, "optimizer must be an Optimizer"),
    (
        lambda o: lrs.SequentialLR(o, [lrs.StepLR(o, 2), lrs.StepLR(o, 3)], milestones=[]),
        ValueError,
        r"milestones must have len\(schedulers\) - 1 = 1 entries, got 0",
    ),
    (
        lambda o: lrs.ChainedScheduler([lrs.StepLR(o, 2), lrs.ReduceLROnPlateau(o)]),
        ValueError,
        r"does not support ReduceLROnPlateau .* schedulers\[1\]",
    ),
    (
        lambda o: lrs.ChainedScheduler([lrs.StepLR(o, 2), lrs.StepLR(na_optimizer(), 2)]),
        ValueError,
        r"same optimizer, but schedulers\[1\] \(StepLR\)",
    ),
    (lambda o: lrs.SequentialLR(o, [], milestones=[]), ValueError, "at least one scheduler"),
]


@pytest.mark.parametrize(("make", "error", "message"), INVALID, ids=lambda x: None)
def test_invalid_arguments_are_named(make, error, message):
    with pytest.raises(error, match=message):
        make(na_optimizer())


def test_constant_lr_with_factor_zero_restarts_from_base_lr():
    opt = na_optimizer()
    history = run(opt, lrs.ConstantLR(opt, factor=0.0, total_iters=3), n=5)
    assert [h[:2] for h in history] == [[0.0, 0.0]] * 3 + [list(BASE_LRS)] * 3


def test_warm_restarts_resume_from_last_epoch_lands_in_the_right_cycle():
    # Cycles of 5, 10, 20: step 26 is 11 steps into the third cycle.
    opt = na_optimizer()
    run(opt, lrs.CosineAnnealingWarmRestarts(opt, T_0=5, T_mult=2), n=25)
    sched = lrs.CosineAnnealingWarmRestarts(opt, T_0=5, T_mult=2, last_epoch=25)
    assert (sched.T_cur, sched.T_i) == (11, 20)
    assert sched.get_last_lr()[0] == pytest.approx(_cos(0.1, 0.0, 11, 20), rel=1e-12)


# --------------------------------------------------------------------------- backends


def test_scheduler_drives_sgd_on_every_backend(xp):
    """The lr is a Python float; the update p -= lr * g uses the scheduled value."""
    p = na.Parameter(xp.zeros(3, dtype=xp.float64))
    opt = na.SGD([p], lr=0.1)
    sched = lrs.OneCycleLR(opt, max_lr=0.1, total_steps=30, cycle_momentum=False)
    used = []
    for _ in range(30):
        p.grad = xp.ones(3, dtype=xp.float64)
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        assert type(opt.param_groups[0]["lr"]) is float
        assert type(sched.get_last_lr()[0]) is float
    assert_close(p.data, np.full(3, -math.fsum(used)), rtol=1e-12)


# --------------------------------------------------------------------------- docs


DOC = Path(__file__).resolve().parents[1] / "docs" / "schedulers.md"


@pytest.mark.skipif(not DOC.exists(), reason="docs/schedulers.md is not in this checkout")
def test_docs_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)


def test_lr_written_to_the_groups_is_a_python_float():
    opt = na_optimizer()
    sched = lrs.LambdaLR(opt, lambda t: np.float32(0.5) ** t)  # a NumPy scalar factor
    run(opt, sched, n=3)
    assert all(type(g["lr"]) is float for g in opt.param_groups)
    assert all(type(lr) is float for lr in sched.get_last_lr())
