"""Schedules as functions of the step: closed forms, the scheduler classes, Optax, jax.jit."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import neural_arch as na
from neural_arch.optim import lr_scheduler as lrs
from neural_arch.optim import schedules as S

STEPS = range(130)  # the schedulers' helpers below run as many steps


def values(f, steps=STEPS):
    out = [f(t) for t in steps]
    assert all(type(v) is float for v in out)
    return out


def sgd(lr=0.1):
    return na.SGD([na.Parameter(np.zeros(1))], lr=lr, momentum=0.9)


def recursive_lrs(make, n=130):
    """lr of each step from scheduler.step() (PyTorch's chainable form)."""
    opt = sgd()
    sched = make(opt)
    out = [sched.get_last_lr()[0]]
    for _ in range(n - 1):
        opt.step()
        sched.step()
        out.append(sched.get_last_lr()[0])
    return out


def closed_form_lrs(make, n=130):
    """lr of each step from scheduler.step(t) (the class's closed form)."""
    opt = sgd()
    sched = make(opt)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # step(epoch)'s deprecation
        for t in range(n):
            opt.step()
            sched.step(t)
            out.append(sched.get_last_lr()[0])
    return out


# (schedule function, the scheduler class with base lr 0.1, the closed form)
PAIRS = {
    "step_decay": (
        S.step_decay(0.1, 7, 0.5),
        lambda o: lrs.StepLR(o, 7, 0.5),
        lambda t: 0.1 * 0.5 ** (t // 7),
    ),
    "multistep": (
        S.multistep(0.1, [30, 10, 10, 80], 0.3),
        lambda o: lrs.MultiStepLR(o, [30, 10, 10, 80], 0.3),
        lambda t: 0.1 * 0.3 ** sum(m <= t for m in [10, 10, 30, 80]),
    ),
    "linear": (
        S.linear(0.1 * 0.25, 0.1 * 1.0, 40),
        lambda o: lrs.LinearLR(o, 0.25, 1.0, 40),
        lambda t: 0.025 + (0.1 - 0.025) * min(t, 40) / 40,
    ),
    "exponential": (
        S.exponential(0.1, 0.97),
        lambda o: lrs.ExponentialLR(o, 0.97),
        lambda t: 0.1 * 0.97**t,
    ),
    "polynomial": (
        S.polynomial(0.1, 0.0, 2.0, 90),
        lambda o: lrs.PolynomialLR(o, 90, 2.0),
        lambda t: 0.1 * (1 - min(t, 90) / 90) ** 2,
    ),
    "cosine_annealing": (
        S.cosine_annealing(0.1, 0.01, 45),
        lambda o: lrs.CosineAnnealingLR(o, 45, 0.01),
        lambda t: 0.01 + (0.1 - 0.01) * (1 + math.cos(math.pi * t / 45)) / 2,
    ),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_against_closed_form_and_scheduler(name):
    f, make, closed = PAIRS[name]
    got = values(f)
    np.testing.assert_allclose(got, [closed(t) for t in STEPS], rtol=1e-14, atol=0)
    if name not in ("linear",):  # LinearLR's factor times base_lr rounds once more
        assert got == closed_form_lrs(make)  # the class's closed form, to the bit
    np.testing.assert_allclose(got, closed_form_lrs(make), rtol=1e-15, atol=0)
    np.testing.assert_allclose(got, recursive_lrs(make), rtol=1e-12, atol=1e-17)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_against_torch_closed_form(name):
    torch = pytest.importorskip("torch", reason="torch is the reference")
    _, make, _ = PAIRS[name]
    ours = closed_form_lrs(make)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    tsched = {
        "step_decay": lambda: torch.optim.lr_scheduler.StepLR(opt, 7, 0.5),
        "multistep": lambda: torch.optim.lr_scheduler.MultiStepLR(opt, [30, 10, 10, 80], 0.3),
        "linear": lambda: torch.optim.lr_scheduler.LinearLR(opt, 0.25, 1.0, 40),
        "exponential": lambda: torch.optim.lr_scheduler.ExponentialLR(opt, 0.97),
        "polynomial": lambda: torch.optim.lr_scheduler.PolynomialLR(opt, 90, 2.0),
        "cosine_annealing": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 45, 0.01),
    }[name]()
    ref = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in STEPS:
            opt.step()
            tsched.step(t)
            ref.append(tsched.get_last_lr()[0])
    assert ours == ref


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"anneal_strategy": "linear"},
        {"three_phase": True},
        {"three_phase": True, "anneal_strategy": "linear", "pct_start": 0.25},
        {"pct_start": 0.01},  # a first phase of zero length
        {"pct_start": 1.0, "div_factor": 10.0, "final_div_factor": 3.0},
    ],
)
def test_one_cycle_matches_onecyclelr_exactly(kwargs):
    T = 100
    opt = na.SGD([na.Parameter(np.zeros(1))], lr=0.1, momentum=0.9)
    sched = lrs.OneCycleLR(opt, max_lr=0.3, total_steps=T, **kwargs)
    ref = [sched.get_last_lr()[0]]
    for _ in range(T):
        opt.step()
        sched.step()
        ref.append(sched.get_last_lr()[0])
    f = S.one_cycle(0.3, T, **kwargs)
    assert values(f, range(T + 1)) == ref
    with pytest.raises(ValueError, match="step must be <= total_steps"):
        f(T + 1)


def test_one_cycle_against_torch():
    torch = pytest.importorskip("torch", reason="torch is the reference")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    tsched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=120)
    ref = [tsched.get_last_lr()[0]]
    for _ in range(119):
        opt.step()
        tsched.step()
        ref.append(tsched.get_last_lr()[0])
    np.testing.assert_allclose(values(S.one_cycle(0.3, 120), range(120)), ref, rtol=1e-12)


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_warmup_then_decay_matches_hugging_face_helpers(decay):
    W, D = 10, 110
    helper = {
        "cosine": lrs.get_cosine_schedule_with_warmup,
        "linear": lrs.get_linear_schedule_with_warmup,
    }[decay]
    ref = recursive_lrs(lambda o: helper(o, W, W + D), n=W + D + 1)
    f = S.warmup_then_decay(0.1, W, D, decay=decay)
    assert values(f, range(W + D + 1)) == ref
    assert f(W) == 0.1 and f(W + D) == 0.0 and f(W + D + 50) == 0.0
    g = S.warmup_then_decay(0.1, W, D, end_value=0.01, decay=decay)
    assert g(W + D) == pytest.approx(0.01, rel=1e-15) and g(10**6) == g(W + D)


def test_warmup_stable_decay_closed_form():
    f = S.warmup_stable_decay(2.0, 10, 50, 40, end_value=0.5)

    def closed(t):
        if t < 10:
            return 2.0 * t / 10
        if t < 60:
            return 2.0
        return 0.5 + 1.5 * max(0.0, 1 - (t - 60) / 40)

    np.testing.assert_allclose(values(f, range(150)), [closed(t) for t in range(150)], rtol=1e-14)
    assert f(0) == 0.0 and f(10) == 2.0 and f(59) == 2.0 and f(100) == 0.5
    assert S.warmup_stable_decay(1.0, 0, 0, 5)(0) == 1.0  # no warmup, no stable phase


def test_constant_cosine_decay_and_join_closed_forms():
    assert values(S.constant(3), range(5)) == [3.0] * 5
    f = S.cosine_decay(0.1, 100, alpha=0.1)
    ref = [0.1 * (0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 100) / 100)) + 0.1) for t in STEPS]
    np.testing.assert_allclose(values(f), ref, rtol=1e-14)
    assert f(100) == pytest.approx(0.01, rel=1e-14) and f(500) == f(100)
    # SequentialLR(LinearLR warmup, CosineAnnealingLR) as a join: the second restarts at 10
    j = S.join([S.linear(0.001, 0.1, 10), S.cosine_annealing(0.1, 0.0, 90)], [10])
    ref = recursive_lrs(
        lambda o: lrs.SequentialLR(
            o, [lrs.LinearLR(o, 0.01, 1.0, 10), lrs.CosineAnnealingLR(o, 90)], milestones=[10]
        )
    )
    np.testing.assert_allclose(values(j), ref, rtol=1e-12, atol=1e-17)
    assert values(S.join([S.constant(1.0)], []), range(3)) == [1.0] * 3


def test_schedules_accept_numpy_scalars():
    f = S.exponential(np.float32(0.5), np.float64(0.9))
    assert f(np.int64(3)) == f(3) == f(3.0) == f(np.float64(3.0))
    assert S.step_decay(0.1, np.int32(5), 0.5)(10) == 0.025


# --------------------------------------------------------------------------- Optax


def test_against_optax():
    optax = pytest.importorskip("optax", reason="optax is the reference")
    jax = pytest.importorskip("jax", reason="optax needs jax")
    cases = [
        (S.constant(0.3), optax.constant_schedule(0.3)),
        (S.linear(0.1, 0.01, 50, 20), optax.linear_schedule(0.1, 0.01, 50, 20)),
        (S.cosine_decay(0.1, 80, 0.05), optax.cosine_decay_schedule(0.1, 80, alpha=0.05)),
        (S.polynomial(0.1, 0.001, 3.0, 70), optax.polynomial_schedule(0.1, 0.001, 3.0, 70)),
        (
            S.warmup_then_decay(0.2, 10, 90, end_value=0.002),
            optax.warmup_cosine_decay_schedule(0.0, 0.2, 10, 100, end_value=0.002),
        ),
        (
            S.join([S.constant(0.1), S.linear(0.1, 0.0, 30)], [40]),
            optax.join_schedules(
                [optax.constant_schedule(0.1), optax.linear_schedule(0.1, 0.0, 30)], [40]
            ),
        ),
    ]
    with jax.enable_x64(True):
        for ours, ref in cases:
            expected = [float(ref(t)) for t in STEPS]
            np.testing.assert_allclose(values(ours), expected, rtol=1e-12, atol=1e-17)


# --------------------------------------------------------------------------- jax.jit


ALL = {
    "constant": S.constant(0.3),
    "linear": S.linear(0.1, 0.01, 50, 20),
    "cosine_decay": S.cosine_decay(0.1, 80, 0.05),
    "cosine_annealing": S.cosine_annealing(0.1, 0.01, 45),
    "exponential": S.exponential(0.1, 0.97),
    "step_decay": S.step_decay(0.1, 7, 0.5),
    "multistep": S.multistep(0.1, [30, 10, 10, 80], 0.3),
    "multistep_empty": S.multistep(0.1, [], 0.3),
    "polynomial": S.polynomial(0.1, 0.001, 2.0, 90),
    "one_cycle": S.one_cycle(0.3, 140),
    "one_cycle_3": S.one_cycle(0.3, 140, three_phase=True, anneal_strategy="linear"),
    "one_cycle_0": S.one_cycle(0.3, 140, pct_start=0.0),
    "warmup_then_decay": S.warmup_then_decay(0.1, 10, 90, decay="linear"),
    "warmup_cosine": S.warmup_then_decay(0.1, 10, 90),
    "wsd": S.warmup_stable_decay(0.1, 10, 40, 50, 0.001),
    "wsd_no_warmup": S.warmup_stable_decay(0.1, 0, 40, 50),
    "join": S.join([S.linear(0.001, 0.1, 10), S.cosine_annealing(0.1, 0.0, 90)], [10]),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_inside_jax_jit(name):
    jax = pytest.importorskip("jax", reason="jax.jit is what is tested")
    jnp = jax.numpy
    f = ALL[name]
    jitted = jax.jit(f)
    got = np.asarray([jitted(jnp.asarray(t)) for t in STEPS], dtype=np.float64)
    np.testing.assert_allclose(got, values(f), rtol=2e-5, atol=1e-7)
    with jax.enable_x64(True):
        got64 = np.asarray(jax.vmap(f)(jnp.arange(len(STEPS))))
        assert got64.dtype == np.float64
        np.testing.assert_allclose(got64, values(f), rtol=1e-12, atol=1e-17)


def test_jit_with_a_functional_update():
    jax = pytest.importorskip("jax", reason="jax.jit is what is tested")
    jnp = jax.numpy
    lr = S.warmup_stable_decay(0.1, 5, 10, 10)

    @jax.jit
    def update(w, g, step):
        return w - lr(step) * g

    w = jnp.ones(3)
    for t in range(30):
        w = update(w, jnp.ones(3), t)
    expected = 1.0 - sum(lr(t) for t in range(30))
    np.testing.assert_allclose(np.asarray(w), expected, rtol=1e-5)


# --------------------------------------------------------------------------- hostile


@pytest.mark.parametrize("step", [-1, -0.0 - 1.0, 2.5, math.nan, math.inf, np.float64(0.5)])
def test_bad_step_is_a_value_error(step):
    for f in ALL.values():
        with pytest.raises(ValueError, match="step must be a non-negative integer"):
            f(step)


@pytest.mark.parametrize("step", [True, "3", None, [3], np.zeros(1), 1j])
def test_bad_step_type_is_a_type_error(step):
    for f in ALL.values():
        with pytest.raises(TypeError, match="step must be"):
            f(step)


BAD = [
    (lambda: S.constant("0.1"), TypeError, "value"),
    (lambda: S.constant(math.nan), ValueError, "value"),
    (lambda: S.constant(True), TypeError, "value"),
    (lambda: S.linear(0.1, 0.0, 0), ValueError, "transition_steps"),
    (lambda: S.linear(0.1, 0.0, 2.0), ValueError, "transition_steps"),
    (lambda: S.linear(0.1, 0.0, 5, -1), ValueError, "transition_begin"),
    (lambda: S.linear(0.1, None, 5), TypeError, "end_value"),
    (lambda: S.cosine_decay(0.1, 0), ValueError, "decay_steps"),
    (lambda: S.cosine_decay(0.1, 10, math.inf), ValueError, "alpha"),
    (lambda: S.cosine_annealing(0.1, 0.0, 0), ValueError, "T_max"),
    (lambda: S.cosine_annealing(0.1, 0.0, "10"), TypeError, "T_max"),
    (lambda: S.exponential(0.1, 0.0), ValueError, "gamma"),
    (lambda: S.exponential(0.1, -0.5), ValueError, "gamma"),
    (lambda: S.step_decay(0.1, 0, 0.5), ValueError, "step_size"),
    (lambda: S.step_decay(0.1, 3, math.nan), ValueError, "gamma"),
    (lambda: S.multistep(0.1, 5, 0.5), TypeError, "milestones"),
    (lambda: S.multistep(0.1, [3, -1], 0.5), ValueError, "milestones"),
    (lambda: S.polynomial(0.1, 0.0, -1.0, 10), ValueError, "power"),
    (lambda: S.polynomial(0.1, 0.0, 1.0, 0), ValueError, "total_steps"),
    (lambda: S.one_cycle(0.1, 0), ValueError, "total_steps"),
    (lambda: S.one_cycle(0.1, 10, pct_start=1.5), ValueError, "pct_start"),
    (lambda: S.one_cycle(0.1, 10, pct_start=0.9, three_phase=True), ValueError, "pct_start"),
    (lambda: S.one_cycle(0.1, 10, anneal_strategy="cosine"), ValueError, "anneal_strategy"),
    (lambda: S.one_cycle(0.1, 10, three_phase=1), TypeError, "three_phase"),
    (lambda: S.one_cycle(-0.1, 10), ValueError, "max_lr"),
    (lambda: S.one_cycle(0.1, 10, div_factor=0), ValueError, "div_factor"),
    (lambda: S.one_cycle(1e308, 10, div_factor=1e-300), ValueError, "max_lr / div_factor"),
    (lambda: S.warmup_then_decay(0.1, -1, 10), ValueError, "warmup_steps"),
    (lambda: S.warmup_then_decay(0.1, 1, 0), ValueError, "decay_steps"),
    (lambda: S.warmup_then_decay(0.1, 1, 10, decay="exp"), ValueError, "decay"),
    (lambda: S.warmup_stable_decay(0.1, 1, -2, 10), ValueError, "stable_steps"),
    (lambda: S.join([], []), ValueError, "schedules"),
    (lambda: S.join(S.constant(1.0), []), TypeError, "schedules"),
    (lambda: S.join([S.constant(1.0), 0.5], [3]), TypeError, r"schedules\[1\]"),
    (lambda: S.join([S.constant(1.0)] * 2, []), ValueError, "boundaries"),
    (lambda: S.join([S.constant(1.0)] * 3, [5, 2]), ValueError, "boundaries"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_arguments_are_refused_at_construction(i):
    make, kind, name = BAD[i]
    with pytest.raises(kind, match=name):
        make()


def test_overflow_gives_inf_not_an_exception():
    assert S.exponential(0.1, 2)(5000) == math.inf
    assert S.exponential(0.1, 2.0)(5000) == math.inf
    assert S.exponential(0.1, 0.5)(5000) == 0.0
    with pytest.raises(ValueError, match="T_max"):
        S.cosine_annealing(0.1, 0.0, 5e-324)(10)
