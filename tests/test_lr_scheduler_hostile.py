"""Schedulers attacked as a user would: bad arguments, bad metrics, bad state dicts.

Every refusal is a ValueError/TypeError naming the argument, and leaves the
optimizer's groups (and the scheduler, for a step or a load) exactly as before;
every lr a scheduler writes is a finite Python float.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import neural_arch as na
from neural_arch.optim import lr_scheduler as lrs

NAN, INF = math.nan, math.inf


# --------------------------------------------------------------------------- helpers


def make_opt(kind="SGD", lrs_=(0.1, 0.05)):
    groups = [{"params": [na.Parameter(np.zeros(2))], "lr": lr} for lr in lrs_]
    return na.SGD(groups, momentum=0.9) if kind == "SGD" else na.Adam(groups)


def groups_view(opt):
    """Everything a scheduler could change on the optimizer, as plain data."""
    groups = [
        (
            [id(p) for p in g["params"]],
            {k: copy.deepcopy(v) for k, v in g.items() if k != "params"},
        )
        for g in opt.param_groups
    ]
    return groups, "step" in vars(opt), getattr(opt, "_opt_called", None)


def history(opt, sched, n=12):
    """lrs and momenta after construction and after each of n steps."""
    out = [_snap(opt)]
    for _ in range(n):
        opt.step()
        sched.step()
        out.append(_snap(opt))
    return out


def _snap(opt):
    row = []
    for g in opt.param_groups:
        assert type(g["lr"]) is float and math.isfinite(g["lr"])
        row.append(g["lr"])
        row.append(g["betas"][0] if "betas" in g else g.get("momentum"))
    return row


def assert_refused(exc_info, name):
    assert exc_info.type in (ValueError, TypeError)
    assert name in str(exc_info.value), f"{name!r} not named in: {exc_info.value}"


class Later:
    """A bad value that needs the optimizer (schedulers for SequentialLR/ChainedScheduler)."""

    def __init__(self, build, label):
        self.build, self.label = build, label

    def __repr__(self):
        return self.label


class NoMomentum:
    def __init__(self):
        self.param_groups = [{"lr": 0.1}]
        self.defaults = {"lr": 0.1}

    def step(self):
        pass


# --------------------------------------------------------------------------- the table

# Values no real-number argument accepts.
NOT_REAL = ["0.5", None, True, np.bool_(False), 1 + 0j, np.array(0.5), object(), NAN]
NOT_FINITE = [INF, -INF, np.float64(NAN)]
BAD_REAL = NOT_REAL + NOT_FINITE
NEG = [-1.0, np.float32(-0.5), -1e-300]
# Values no integer argument accepts.
BAD_INT = [2.5, np.float64(3.0), "3", None, True, NAN, INF, 2**64, -5, [3]]
BAD_POS_INT = [*BAD_INT, 0, np.int64(0)]
BAD_CHOICE = ["bogus", None, 3, "", b"cos"]
BAD_FLAG = ["False", None, 2, [], 0, 1.0, np.int64(1)]
BAD_LAST_EPOCH = [-2, 1.5, "0", None, True, NAN, np.float64(0.0)]


def other_opt_step(o):
    return [lrs.StepLR(o, 2), lrs.StepLR(make_opt(), 3)]


SCHEDULERS = {
    # name: (factory(opt, **kwargs), valid kwargs, {argument: bad values})
    "StepLR": (
        lrs.StepLR,
        dict(step_size=3, gamma=0.5),
        {
            "step_size": BAD_POS_INT,
            "gamma": [*BAD_REAL, *NEG, 0.0],
            "last_epoch": BAD_LAST_EPOCH,
        },
    ),
    "MultiStepLR": (
        lrs.MultiStepLR,
        dict(milestones=[2, 5], gamma=0.5),
        {
            "milestones": [5, None, "25", [-1], [1.5], ["2"], [True], [2, None], {2: 1}],
            "gamma": [*BAD_REAL, *NEG, 0],
        },
    ),
    "ConstantLR": (
        lrs.ConstantLR,
        dict(factor=0.5, total_iters=4),
        {"factor": [*BAD_REAL, -0.1, 1.5], "total_iters": BAD_POS_INT},
    ),
    "LinearLR": (
        lrs.LinearLR,
        dict(start_factor=0.2, end_factor=0.9, total_iters=5),
        {
            "start_factor": [*BAD_REAL, 0.0, -0.1, 1.01],
            "end_factor": [*BAD_REAL, -0.1, 1.01],
            "total_iters": BAD_POS_INT,
        },
    ),
    "ExponentialLR": (
        lrs.ExponentialLR,
        dict(gamma=0.9),
        {"gamma": [*BAD_REAL, *NEG, 0.0]},
    ),
    "PolynomialLR": (
        lrs.PolynomialLR,
        dict(total_iters=6, power=2.0),
        {"total_iters": BAD_POS_INT, "power": [*BAD_REAL, *NEG]},
    ),
    "CosineAnnealingLR": (
        lrs.CosineAnnealingLR,
        dict(T_max=8, eta_min=0.001),
        {"T_max": [*BAD_REAL, 0, -3, 0.0], "eta_min": [*BAD_REAL, *NEG]},
    ),
    "CosineAnnealingWarmRestarts": (
        lrs.CosineAnnealingWarmRestarts,
        dict(T_0=4, T_mult=2, eta_min=0.001),
        {
            "T_0": BAD_POS_INT,
            "T_mult": BAD_POS_INT,
            "eta_min": [*BAD_REAL, *NEG],
            "last_epoch": BAD_LAST_EPOCH,
        },
    ),
    "OneCycleLR": (
        lrs.OneCycleLR,
        dict(max_lr=[1.0, 0.5], total_steps=20),
        {
            "max_lr": [*BAD_REAL, *NEG, [1.0], [1.0, NAN], [1.0, "0.5"], [1.0, -1.0], (1.0,) * 3],
            "total_steps": BAD_POS_INT,
            "pct_start": [*BAD_REAL, -0.1, 1.5],
            "anneal_strategy": BAD_CHOICE,
            "cycle_momentum": BAD_FLAG,
            "base_momentum": [*BAD_REAL, *NEG, [0.8], [0.8, NAN]],
            "max_momentum": [*BAD_REAL, *NEG, [0.9, None]],
            "div_factor": [*BAD_REAL, *NEG, 0.0, 1e-320],
            "final_div_factor": [*BAD_REAL, *NEG, 0.0],
            "three_phase": BAD_FLAG,
            "last_epoch": BAD_LAST_EPOCH,
        },
    ),
    "OneCycleLR-epochs": (
        lambda o, **kw: lrs.OneCycleLR(o, 1.0, **kw),
        dict(epochs=4, steps_per_epoch=5),
        {"epochs": [b for b in BAD_POS_INT if b is not None], "steps_per_epoch": BAD_POS_INT[1:]},
    ),
    "OneCycleLR-adam": (
        lrs.OneCycleLR,
        dict(max_lr=1.0, total_steps=20),
        {"base_momentum": [1.0, 1.5], "max_momentum": [1.0, [0.9, 1.0]]},
    ),
    "CyclicLR": (
        lrs.CyclicLR,
        dict(base_lr=0.01, max_lr=[0.1, 0.2], step_size_up=4),
        {
            "base_lr": [*BAD_REAL, *NEG, [0.01], [0.01, INF]],
            "max_lr": [*BAD_REAL, *NEG, [0.1, "0.2"], [0.1, 0.2, 0.3]],
            "step_size_up": [*BAD_REAL, 0, -2, 0.5],
            "step_size_down": [*[b for b in BAD_REAL if b is not None], 0, -2, 0.5],
            "mode": BAD_CHOICE,
            "gamma": [*BAD_REAL, *NEG, 0.0],
            "scale_fn": ["x", 3, Later(lambda o: lambda x: NAN, "scale_fn returning nan")],
            "scale_mode": BAD_CHOICE,
            "cycle_momentum": BAD_FLAG,
            "base_momentum": [*BAD_REAL, *NEG, [0.8]],
            "max_momentum": [*BAD_REAL, *NEG, [0.9, NAN]],
            "last_epoch": BAD_LAST_EPOCH,
        },
    ),
    "CyclicLR-adam": (
        lrs.CyclicLR,
        dict(base_lr=0.01, max_lr=0.1, step_size_up=3),
        {"base_momentum": [1.0], "max_momentum": [1.0, 2.0]},
    ),
    "LambdaLR": (
        lrs.LambdaLR,
        dict(lr_lambda=lambda t: 0.9**t),
        {
            "lr_lambda": [
                None,
                0.5,
                "f",
                [lambda t: 1.0],
                [lambda t: 1.0, None],
                [lambda t: 1.0] * 3,
                lambda t: NAN,
                lambda t: "1",
                lambda t: None,
                lambda t: 1 + 0j,
                lambda t: True,
                lambda t: np.array([1.0, 2.0]),
                lambda t: INF,
            ],
            "last_epoch": BAD_LAST_EPOCH,
        },
    ),
    "MultiplicativeLR": (
        lrs.MultiplicativeLR,
        dict(lr_lambda=lambda t: 0.95),
        {"lr_lambda": [None, 0.95, [lambda t: 1.0], (lambda t: 1.0, "g")]},
    ),
    "ReduceLROnPlateau": (
        lrs.ReduceLROnPlateau,
        dict(patience=2),
        {
            "mode": BAD_CHOICE,
            "factor": [*BAD_REAL, *NEG, 1.0, 2.0],
            "patience": [b for b in BAD_INT],
            "threshold": [*BAD_REAL, *NEG],
            "threshold_mode": BAD_CHOICE,
            "cooldown": BAD_INT,
            "min_lr": [*BAD_REAL, *NEG, [0.1], [0.1, NAN], [0.1, -1.0], [0.1, None]],
            "eps": [*BAD_REAL, *NEG],
        },
    ),
    "get_linear_schedule_with_warmup": (
        lrs.get_linear_schedule_with_warmup,
        dict(num_warmup_steps=3, num_training_steps=10),
        {
            "num_warmup_steps": [*BAD_INT, 11],
            "num_training_steps": [*BAD_POS_INT, 2],
            "last_epoch": BAD_LAST_EPOCH,
        },
    ),
    "get_cosine_schedule_with_warmup": (
        lrs.get_cosine_schedule_with_warmup,
        dict(num_warmup_steps=3, num_training_steps=10, num_cycles=0.5),
        {
            "num_warmup_steps": BAD_INT,
            "num_training_steps": BAD_POS_INT,
            "num_cycles": [*BAD_REAL, *NEG],
        },
    ),
    "SequentialLR": (
        lrs.SequentialLR,
        dict(
            schedulers=Later(lambda o: [lrs.ConstantLR(o, 0.5, 3), lrs.StepLR(o, 2)], "ok"),
            milestones=[3],
        ),
        {
            "schedulers": [
                5,
                None,
                "ab",
                [],
                Later(lambda o: [object()], "[object()]"),
                Later(lambda o: [lrs.StepLR(o, 2), lrs.ReduceLROnPlateau(o)], "[.., Plateau]"),
                Later(other_opt_step, "[.., other optimizer]"),
            ],
            "milestones": [5, None, "3", [-1], [1.5], ["3"], [True], [3, 4], [], [NAN]],
            "last_epoch": BAD_LAST_EPOCH,
        },
    ),
    "SequentialLR-three": (
        lrs.SequentialLR,
        dict(
            schedulers=Later(
                lambda o: [lrs.ConstantLR(o, 0.5, 3), lrs.StepLR(o, 2), lrs.ExponentialLR(o, 0.9)],
                "three",
            ),
            milestones=[3, 6],
        ),
        {"milestones": [[6, 3], [3, -6], [3]]},
    ),
    "ChainedScheduler": (
        lambda o, **kw: lrs.ChainedScheduler(optimizer=o, **kw),
        dict(schedulers=Later(lambda o: [lrs.ConstantLR(o, 0.5, 3), lrs.StepLR(o, 2)], "ok")),
        {
            "schedulers": [
                5,
                None,
                [],
                Later(lambda o: [lrs.StepLR(o, 2), 3], "[.., 3]"),
                Later(lambda o: [lrs.StepLR(o, 2), lrs.ReduceLROnPlateau(o)], "[.., Plateau]"),
                Later(other_opt_step, "[.., other optimizer]"),
            ],
        },
    ),
}

TABLE = [
    pytest.param(name, arg, bad, id=f"{name}-{arg}={bad!r}"[:90])
    for name, (_, _, args) in SCHEDULERS.items()
    for arg, bads in args.items()
    for bad in bads
]


def _fresh(name):
    """The optimizer a case attacks (Adam for the '-adam' cases)."""
    return make_opt("Adam" if name.endswith("-adam") else "SGD")


def _resolve(kwargs, opt):
    return {k: (v.build(opt) if isinstance(v, Later) else v) for k, v in kwargs.items()}


@pytest.mark.parametrize(("name", "arg", "bad"), TABLE)
def test_bad_argument_is_refused_by_name_and_the_optimizer_is_untouched(name, arg, bad):
    factory, valid, _ = SCHEDULERS[name]
    opt = _fresh(name)
    kwargs = _resolve({**valid, arg: bad}, opt)  # sub-schedulers are built before the snapshot
    before = groups_view(opt)
    with pytest.raises((ValueError, TypeError)) as exc_info:
        factory(opt, **kwargs)
    assert_refused(exc_info, arg)
    assert groups_view(opt) == before


# One refusal per scheduler, then the valid scheduler on the same optimizer must run as
# on a fresh one (no initial_lr, max_lr, momentum or lr left behind by the refusal).
POISONERS = {
    "StepLR": dict(gamma=NAN),
    "MultiStepLR": dict(milestones=5),
    "ConstantLR": dict(factor=2.0),
    "LinearLR": dict(total_iters=0),
    "ExponentialLR": dict(gamma="0.9"),
    "PolynomialLR": dict(power=-1.0),
    "CosineAnnealingLR": dict(eta_min=INF),
    "CosineAnnealingWarmRestarts": dict(T_mult=0),
    "OneCycleLR": dict(final_div_factor=0.0),
    "OneCycleLR-adam": dict(max_momentum=1.0),
    "CyclicLR": dict(max_momentum=NAN),
    "CyclicLR-adam": dict(scale_fn=Later(lambda o: lambda x: NAN, "nan")),
    "LambdaLR": dict(lr_lambda=lambda t: 0.5 if t < 0 else NAN),
    "get_cosine_schedule_with_warmup": dict(num_cycles=None),
    "SequentialLR": dict(milestones=[-3]),
}


@pytest.mark.parametrize("name", list(POISONERS))
def test_a_refused_scheduler_leaves_nothing_behind(name):
    factory, valid, _ = SCHEDULERS[name]
    attacked, fresh = _fresh(name), _fresh(name)
    with pytest.raises((ValueError, TypeError)):
        factory(attacked, **_resolve({**valid, **POISONERS[name]}, attacked))
    assert history(attacked, factory(attacked, **_resolve(valid, attacked))) == history(
        fresh, factory(fresh, **_resolve(valid, fresh))
    )


def test_cycle_momentum_without_momentum_is_refused_before_writing():
    opt = NoMomentum()
    for build in (
        lambda: lrs.CyclicLR(opt, 0.01, 0.1),
        lambda: lrs.OneCycleLR(opt, 0.1, total_steps=10),
    ):
        with pytest.raises(ValueError, match="cycle_momentum=True needs an optimizer"):
            build()
        assert opt.param_groups == [{"lr": 0.1}]


def test_cyclic_step_sizes_whose_sum_overflows_are_refused():
    opt = make_opt()
    before = groups_view(opt)
    with pytest.raises(ValueError, match=r"step_size_up \+ step_size_down must be finite"):
        lrs.CyclicLR(opt, 0.01, 0.1, step_size_up=1e308, step_size_down=1e308)
    assert groups_view(opt) == before


class TupleGroups:
    param_groups = ({"lr": 0.1},)


class GroupNotADict(NoMomentum):
    def __init__(self):
        super().__init__()
        self.param_groups.append("not a dict")


@pytest.mark.parametrize(
    "make", [object, lambda: None, TupleGroups, GroupNotADict], ids=lambda f: f.__name__
)
def test_the_optimizer_argument_is_checked(make):
    for build in (
        lambda o: lrs.StepLR(o, 2),
        lambda o: lrs.ReduceLROnPlateau(o),
        lambda o: lrs.OneCycleLR(o, 1.0, total_steps=5),
        lambda o: lrs.SequentialLR(o, [], []),
    ):
        with pytest.raises(TypeError, match="optimizer"):
            build(make())


@pytest.mark.parametrize("lr", [NAN, INF, -0.1, "0.1", None])
def test_a_bad_lr_in_a_group_is_refused_by_name(lr):
    opt = make_opt()
    opt.param_groups[1]["lr"] = lr
    before = groups_view(opt)
    with pytest.raises((ValueError, TypeError), match=r"param_groups\[1\]\['lr'\]"):
        lrs.StepLR(opt, 2)
    with pytest.raises((ValueError, TypeError), match=r"param_groups\[1\]\['lr'\]"):
        lrs.ReduceLROnPlateau(opt)
    assert groups_view(opt) == before


# --------------------------------------------------------------------------- NumPy scalars


NUMPY_CASES = [
    (lrs.StepLR, dict(step_size=np.int64(3), gamma=np.float32(0.5))),
    (lrs.MultiStepLR, dict(milestones=np.array([2, 5]), gamma=np.float64(0.5))),
    (lrs.ConstantLR, dict(factor=np.float32(0.25), total_iters=np.int32(4))),
    (
        lrs.LinearLR,
        dict(start_factor=np.float32(0.25), end_factor=np.float16(0.75), total_iters=np.uint8(5)),
    ),
    (lrs.ExponentialLR, dict(gamma=np.float32(0.75))),
    (lrs.PolynomialLR, dict(total_iters=np.int16(6), power=np.float32(2.0))),
    (lrs.CosineAnnealingLR, dict(T_max=np.int64(8), eta_min=np.float32(0.0))),
    (lrs.CosineAnnealingWarmRestarts, dict(T_0=np.int64(4), T_mult=np.int64(2))),
    (
        lrs.OneCycleLR,
        dict(
            max_lr=[np.float32(1.0), np.float64(0.5)],
            total_steps=np.int64(20),
            pct_start=np.float32(0.25),
            div_factor=np.int64(25),
            base_momentum=np.float32(0.75),
            three_phase=np.bool_(True),
            cycle_momentum=np.bool_(True),
        ),
    ),
    (
        lrs.CyclicLR,
        dict(
            base_lr=np.float32(0.125),
            max_lr=np.float64(0.5),
            step_size_up=np.int64(3),
            mode="exp_range",
            gamma=np.float32(0.75),
        ),
    ),
    (
        lrs.get_cosine_schedule_with_warmup,
        dict(
            num_warmup_steps=np.int64(2), num_training_steps=np.int64(9), num_cycles=np.float32(1)
        ),
    ),
]


def _as_python(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, list):
        return [_as_python(x) for x in v]
    return v.item() if isinstance(v, np.generic) else v


@pytest.mark.parametrize(("cls", "kwargs"), NUMPY_CASES, ids=lambda x: getattr(x, "__name__", ""))
def test_numpy_scalars_are_accepted_and_converted_once(cls, kwargs):
    ours = history(opt := make_opt(), sched := cls(opt, **kwargs))
    python = {k: _as_python(v) for k, v in kwargs.items()}
    other = make_opt()
    assert ours == history(other, cls(other, **python))
    for value in sched.state_dict().values():  # plain Python values, nothing from NumPy
        for v in value if isinstance(value, list) else [value]:
            assert not isinstance(v, np.generic)
    json.dumps(sched.state_dict())


def test_numpy_scalars_in_plateau_and_metrics():
    opt = make_opt(lrs_=(1.0,))
    sched = lrs.ReduceLROnPlateau(
        opt,
        factor=np.float32(0.5),
        patience=np.int64(0),
        cooldown=np.int8(0),
        min_lr=np.float32(0),
    )
    for metric in (np.float32(1.0), np.array(1.0), np.float64(1.0)):
        opt.step()
        sched.step(metric)
    assert sched.get_last_lr() == [0.25]  # an improvement, then two steps without
    assert type(sched.patience) is int and type(sched.factor) is float


# --------------------------------------------------------------------------- OneCycleLR edges


@pytest.mark.parametrize(
    ("pct_start", "three_phase", "T"),
    [
        (1.0, False, 10),
        (1, False, 10),
        (0.1, False, 10),
        (0.5, True, 10),
        (0.55, True, 10),
        (0.0, True, 7),
        (0.3, True, 1),
        (1.0, False, 1),
    ],
)
@pytest.mark.parametrize("anneal_strategy", ["cos", "linear"])
def test_one_cycle_runs_every_step_to_total_steps(pct_start, three_phase, T, anneal_strategy):
    """PyTorch divides by zero for pct_start * T == 1 and pct_start = 1; we never do."""
    opt = make_opt()
    sched = lrs.OneCycleLR(
        opt,
        [1.0, 0.5],
        total_steps=T,
        pct_start=pct_start,
        three_phase=three_phase,
        anneal_strategy=anneal_strategy,
    )
    rows = history(opt, sched, n=T)
    for row in rows:
        lr, momentum = row[0], row[1]
        assert 1.0 / 25 / 1e4 * (1 - 1e-9) <= lr <= 1.0 + 1e-15
        assert 0.85 - 1e-15 <= momentum <= 0.95 + 1e-15
    assert rows[-1][0] == pytest.approx(1.0 / 25 / 1e4)  # step T holds min_lr
    opt.step()
    with pytest.raises(ValueError, match="Tried to step"):
        sched.step()


def test_one_cycle_pct_start_one_tenth_of_ten_steps_peaks_at_step_zero():
    opt = make_opt()
    sched = lrs.OneCycleLR(opt, 1.0, total_steps=10, pct_start=0.1)
    assert sched.get_last_lr() == [1.0, 1.0]  # the one-step warmup ends at step 0


def test_one_cycle_three_phase_must_fit():
    with pytest.raises(ValueError, match=r"pct_start must be <= .* three_phase=True"):
        lrs.OneCycleLR(make_opt(), 1.0, total_steps=10, pct_start=0.6, three_phase=True)


# --------------------------------------------------------------------------- refused steps


def _frozen(opt, sched):
    return groups_view(opt), json.dumps(sched.state_dict(), sort_keys=True, default=repr)


class Switch:
    """A schedule function that returns ``bad`` from step ``at`` on while ``on``."""

    def __init__(self, at, bad):
        self.at, self.bad, self.on = at, bad, True

    def __call__(self, t):
        return self.bad if self.on and t >= self.at else 0.5**t


@pytest.mark.parametrize("bad", [NAN, INF, "0.5", None, 1j, [1.0]])
def test_a_step_computing_a_bad_lr_is_refused_and_changes_nothing(bad):
    opt, ref_opt = make_opt(), make_opt()
    fn = Switch(3, bad)
    sched, ref = lrs.LambdaLR(opt, fn), lrs.LambdaLR(ref_opt, lambda t: 0.5**t)
    history(opt, sched, n=2)
    history(ref_opt, ref, n=2)
    frozen = _frozen(opt, sched)
    opt.step()
    with pytest.raises((ValueError, TypeError), match=r"lr_lambda\[0\]\(3\)"):
        sched.step()
    assert _frozen(opt, sched) == frozen
    fn.on = False  # fixed: the run goes on as if the refused step never happened
    assert history(opt, sched, n=5)[1:] == history(ref_opt, ref, n=5)[1:]


@pytest.mark.parametrize(
    "build",
    [
        lambda o: lrs.ExponentialLR(o, gamma=1e300),
        lambda o: lrs.StepLR(o, 1, gamma=1e200),
        lambda o: lrs.MultiStepLR(o, [1, 1, 1], gamma=1e200),
        lambda o: lrs.CyclicLR(o, 0.0, 1.0, step_size_up=1, mode="exp_range", gamma=1e300),
        lambda o: lrs.CyclicLR(o, 0.0, 1.0, step_size_up=1, scale_fn=lambda x: x * 1e308),
        lambda o: lrs.MultiplicativeLR(o, lambda t: 1e300),
    ],
    ids=["exponential", "step", "multistep", "cyclic-exp_range", "cyclic-scale_fn", "mult"],
)
def test_an_overflowing_schedule_refuses_the_step_instead_of_writing_inf(build):
    opt = make_opt()
    sched = build(opt)
    for _ in range(6):
        opt.step()
        frozen = _frozen(opt, sched)
        try:
            sched.step()
        except ValueError as err:
            assert "finite" in str(err)
            assert _frozen(opt, sched) == frozen
            break
        _snap(opt)  # finite floats
    else:
        pytest.fail("the schedule was expected to overflow within 6 steps")
    with pytest.raises(ValueError, match="finite"):  # and again: nothing moved
        sched.step()


def test_closed_form_overflow_is_refused_cleanly():
    opt = make_opt()
    sched = lrs.StepLR(opt, 1, gamma=1.5)
    opt.step()
    frozen = _frozen(opt, sched)
    with pytest.warns(UserWarning, match="epoch parameter"), pytest.raises(ValueError):
        sched.step(10_000)  # 1.5 ** 10000 overflows: Python raises, we refuse
    assert _frozen(opt, sched) == frozen


@pytest.mark.parametrize(
    ("build", "epoch"),
    [(lrs.StepLR, e) for e in (NAN, INF, -1, "3", True, 1.5, np.float64(2.0), [1])]
    + [(lrs.CosineAnnealingWarmRestarts, e) for e in (NAN, INF, -INF, -1, -0.5, "3", True, [1])],
    ids=repr,
)
def test_bad_epoch_arguments_are_refused_and_change_nothing(build, epoch):
    opt = make_opt()
    sched = build(opt, 3)
    opt.step()
    frozen = _frozen(opt, sched)
    with pytest.raises((ValueError, TypeError), match="epoch"):
        sched.step(epoch)
    assert _frozen(opt, sched) == frozen


def test_warm_restarts_far_epoch_is_fast():
    opt = make_opt()
    sched = lrs.CosineAnnealingWarmRestarts(opt, T_0=3)
    sched.step(10**15 + 1.5)  # T_mult == 1: a modulo, not 3e14 loop iterations
    assert sched.T_cur == 2.5  # 10**15 = 1 (mod 3)


def test_a_group_lr_made_nan_by_hand_is_named_at_the_next_step():
    opt = make_opt()
    sched = lrs.ExponentialLR(opt, 0.9)
    opt.step()
    opt.param_groups[0]["lr"] = NAN
    frozen = _frozen(opt, sched)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]"):
        sched.step()
    assert _frozen(opt, sched) == frozen


def _composite_state(opt, sched):
    return _frozen(opt, sched), [_frozen(opt, s) for s in lrs._nested(sched)[1:]]


@pytest.mark.parametrize(
    ("build", "good_steps"),
    [
        (
            lambda o, fn: lrs.ChainedScheduler(
                [lrs.ExponentialLR(o, 0.9), lrs.MultiplicativeLR(o, fn)]
            ),
            1,
        ),
        (
            lambda o, fn: lrs.SequentialLR(
                o, [lrs.ConstantLR(o, 0.5, 2), lrs.MultiplicativeLR(o, fn)], milestones=[1]
            ),
            2,
        ),
    ],
    ids=["chained", "sequential"],
)
def test_a_refused_step_of_a_composite_changes_no_member(build, good_steps):
    """The first member steps fine, the second computes NaN: the first is undone too."""
    opt = make_opt()
    sched = build(opt, Switch(2, NAN))
    for _ in range(good_steps):
        opt.step()
        sched.step()
    opt.step()
    frozen = _composite_state(opt, sched)
    with pytest.raises(ValueError, match=r"lr_lambda\[0\]\(2\)"):
        sched.step()
    assert _composite_state(opt, sched) == frozen


def fails_on_second_call():
    """A function (its state is not in a state dict) that returns NaN from its 2nd call."""
    calls = []

    def fn(t):
        calls.append(t)
        return 1.0 if len(calls) == 1 else NAN

    return fn


def test_a_sequential_lr_refused_while_restarting_its_members_changes_nothing():
    opt = make_opt()
    # its step 0 is replayed by SequentialLR: NaN then
    first = lrs.LambdaLR(opt, [fails_on_second_call(), fails_on_second_call()])
    members = [first, lrs.ExponentialLR(opt, 0.9)]
    before = groups_view(opt), [_frozen(opt, s) for s in members]
    with pytest.raises(ValueError, match="lr_lambda"):
        lrs.SequentialLR(opt, members, milestones=[3])
    assert (groups_view(opt), [_frozen(opt, s) for s in members]) == before


# --------------------------------------------------------------------------- plateau metrics


BAD_METRICS = [
    NAN,
    INF,
    -INF,
    None,
    "0.5",
    True,
    np.bool_(True),
    1 + 0j,
    np.array([1.0, 2.0]),
    np.array(True),
    np.array(1 + 1j),
    np.array(NAN),
    object(),
    [0.5],
]


@pytest.mark.parametrize("metric", BAD_METRICS, ids=repr)
def test_plateau_refuses_a_bad_metric_and_changes_nothing(metric):
    opt = make_opt()
    sched = lrs.ReduceLROnPlateau(opt, patience=0)
    for m in (1.0, 1.0):
        sched.step(m)
    frozen = _frozen(opt, sched)
    with pytest.raises((ValueError, TypeError), match="metrics"):
        sched.step(metric)
    assert _frozen(opt, sched) == frozen


def test_plateau_accepts_0d_arrays_of_every_backend(xp):
    opt = make_opt(lrs_=(1.0,))
    sched = lrs.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    for value in (2.0, 2.0, 1.0):
        sched.step(xp.asarray(value, dtype=xp.float64))
    sched.step(na.Tensor(xp.asarray(0.5, dtype=xp.float64)))
    assert sched.best == 0.5 and sched.get_last_lr() == [0.5]


def test_plateau_with_a_group_added_and_per_group_min_lr_changes_nothing():
    opt = make_opt()
    sched = lrs.ReduceLROnPlateau(opt, patience=0, min_lr=[0.0, 0.0])
    opt.add_param_group({"params": [na.Parameter(np.zeros(1))], "lr": 0.3})
    sched.step(1.0)
    frozen = _frozen(opt, sched)
    with pytest.raises(RuntimeError, match="a group was added"):
        sched.step(1.0)
    assert _frozen(opt, sched) == frozen


# --------------------------------------------------------------------------- load_state_dict


LOADABLE = {
    "StepLR": lambda o: lrs.StepLR(o, 3, 0.5),
    "MultiStepLR": lambda o: lrs.MultiStepLR(o, [2, 4], 0.5),
    "ConstantLR": lambda o: lrs.ConstantLR(o, 0.5, 4),
    "LinearLR": lambda o: lrs.LinearLR(o, 0.2, 0.9, 5),
    "ExponentialLR": lambda o: lrs.ExponentialLR(o, 0.9),
    "PolynomialLR": lambda o: lrs.PolynomialLR(o, 6, 2.0),
    "CosineAnnealingLR": lambda o: lrs.CosineAnnealingLR(o, 8, 0.001),
    "CosineAnnealingWarmRestarts": lambda o: lrs.CosineAnnealingWarmRestarts(o, 3, 2, 0.001),
    "OneCycleLR": lambda o: lrs.OneCycleLR(o, [1.0, 0.5], total_steps=30, three_phase=True),
    "CyclicLR": lambda o: lrs.CyclicLR(o, 0.01, [0.1, 0.2], 3, mode="triangular2"),
    "LambdaLR-warmup": lambda o: lrs.get_cosine_schedule_with_warmup(o, 3, 20),
    "MultiplicativeLR": lambda o: lrs.MultiplicativeLR(o, lambda t: 0.9),
    "ReduceLROnPlateau": lambda o: lrs.ReduceLROnPlateau(o, patience=1, min_lr=[0.0, 0.001]),
    "SequentialLR": lambda o: lrs.SequentialLR(
        o, [lrs.LinearLR(o, 0.1, total_iters=3), lrs.ExponentialLR(o, 0.9)], [3]
    ),
    "ChainedScheduler": lambda o: lrs.ChainedScheduler(
        [lrs.ConstantLR(o, 0.5, 3), lrs.ExponentialLR(o, 0.9)]
    ),
}


def _advance(opt, sched, n=5):
    for i in range(n):
        opt.step()
        if isinstance(sched, lrs.ReduceLROnPlateau):
            sched.step(1.0 / (1 + i % 2))
        else:
            sched.step()


def _loaded_pair(name):
    """(opt, scheduler at step 5, its state dict, a fresh scheduler to load into)."""
    opt = make_opt()
    sched = LOADABLE[name](opt)
    _advance(opt, sched)
    saved = json.loads(json.dumps(sched.state_dict()))
    target_opt = make_opt()
    return target_opt, LOADABLE[name](target_opt), saved


def _corruptions(sd):
    """(label, corrupted state dict) for every entry: wrong kinds, NaN, wrong lengths."""
    for key, value in sd.items():
        for bad in ("bogus", object(), [NAN], {"x": 1}):
            yield f"{key}={bad!r}", {**sd, key: bad}
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{key}=nan", {**sd, key: NAN}
            yield f"{key}=True", {**sd, key: True}
        if isinstance(value, list) and value:
            yield f"{key}[:-1]", {**sd, key: value[:-1]}
            yield f"{key}+", {**sd, key: [*value, value[-1]]}
            if isinstance(value[0], (int, float)) and not isinstance(value[0], bool):
                yield f"{key}[0]=nan", {**sd, key: [NAN, *value[1:]]}
                yield f"{key}[0]='1'", {**sd, key: ["1", *value[1:]]}


# Corruptions that are valid states: any number of milestones; a dict of attributes for
# the scale function (a callable object's __dict__).
VALID_STATES = {
    ("MultiStepLR", "milestones[:-1]"),
    ("MultiStepLR", "milestones+"),
    ("CyclicLR", "_scale_fn_custom={'x': 1}"),
}
LOAD_TABLE = [
    pytest.param(name, label, bad, id=f"{name}-{label}"[:90])
    for name in LOADABLE
    for label, bad in _corruptions(_loaded_pair(name)[2])
    if (name, label) not in VALID_STATES
]


@pytest.mark.parametrize(("name", "label", "bad"), LOAD_TABLE)
def test_a_corrupted_state_dict_is_refused_and_changes_nothing(name, label, bad):
    opt, sched, _ = _loaded_pair(name)
    frozen = _frozen(opt, sched), [_frozen(opt, s) for s in getattr(sched, "_schedulers", [])]
    with pytest.raises((ValueError, TypeError)) as exc_info:
        sched.load_state_dict(bad)
    assert "state_dict" in str(exc_info.value)
    assert (
        _frozen(opt, sched),
        [_frozen(opt, s) for s in getattr(sched, "_schedulers", [])],
    ) == frozen


@pytest.mark.parametrize("name", list(LOADABLE))
def test_missing_and_foreign_entries_are_refused(name):
    opt, sched, saved = _loaded_pair(name)
    frozen = _frozen(opt, sched)
    for key in ("last_epoch", "base_lrs", "_schedulers", "gamma", "factor", "total_iters"):
        if key in saved:
            with pytest.raises(ValueError, match=f"lacks '{key}'"):
                sched.load_state_dict({k: v for k, v in saved.items() if k != key})
    with pytest.raises(ValueError, match="does not have: 'not_an_attribute'"):
        sched.load_state_dict({**saved, "not_an_attribute": 1})
    with pytest.raises(ValueError, match="does not have: 'optimizer'"):
        sched.load_state_dict({**saved, "optimizer": None})
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        sched.load_state_dict(list(saved.items()))
    assert _frozen(opt, sched) == frozen


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (a, b)
        for a in LOADABLE
        for b in LOADABLE
        if a != b and {a, b} != {"LambdaLR-warmup", "MultiplicativeLR"}
    ],
)
def test_the_state_dict_of_another_scheduler_is_refused(source, target):
    saved = _loaded_pair(source)[2]
    opt, sched, _ = _loaded_pair(target)
    frozen = _frozen(opt, sched)
    with pytest.raises((ValueError, TypeError), match="state_dict"):
        sched.load_state_dict(saved)
    assert _frozen(opt, sched) == frozen


def test_a_bad_child_state_leaves_every_child_as_it_was():
    opt, sched, saved = _loaded_pair("SequentialLR")
    bad = copy.deepcopy(saved)
    bad["_schedulers"][0]["last_epoch"] = 2  # fine on its own
    bad["_schedulers"][1]["gamma"] = NAN
    children = [_frozen(opt, s) for s in sched._schedulers]
    with pytest.raises(ValueError, match=r"state_dict\['_schedulers'\]\[1\]\['gamma'\]"):
        sched.load_state_dict(bad)
    assert [_frozen(opt, s) for s in sched._schedulers] == children


def test_warmup_kwargs_loaded_into_the_function_are_checked():
    _, sched, saved = _loaded_pair("LambdaLR-warmup")
    bad = copy.deepcopy(saved)
    bad["lr_lambdas"][0]["kwargs"]["num_training_steps"] = -5
    with pytest.raises(ValueError, match="num_training_steps"):
        sched.load_state_dict(bad)
    assert sched.lr_lambdas[0].kwargs["num_training_steps"] == 20
    bad["lr_lambdas"][0] = {"schedule": "exp", "kwargs": {}}
    with pytest.raises(ValueError, match="schedule"):
        sched.load_state_dict(bad)


def test_one_cycle_phases_must_fit_total_steps():
    _, sched, saved = _loaded_pair("OneCycleLR")
    with pytest.raises(ValueError, match="does not fit total_steps"):
        sched.load_state_dict({**saved, "total_steps": 10})
    sched.load_state_dict(saved)  # and the genuine one loads


@pytest.mark.parametrize("name", list(LOADABLE))
def test_numpy_values_in_a_state_dict_load_as_python_values(name):
    opt, sched, saved = _loaded_pair(name)
    ref_opt, ref, _ = _loaded_pair(name)
    ref.load_state_dict(saved)

    def numpyfy(v):
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, int):
            return np.int64(v)
        if isinstance(v, float):
            return np.float64(v)
        if isinstance(v, list):
            return [numpyfy(x) for x in v]
        if isinstance(v, dict):
            return {k: numpyfy(x) for k, x in v.items()}
        return v

    sched.load_state_dict(numpyfy(saved))
    assert sched.state_dict() == ref.state_dict()
    if not isinstance(sched, lrs.ReduceLROnPlateau):
        assert history(opt, sched, 3) == history(ref_opt, ref, 3)


# --------------------------------------------------------------------------- hypothesis

# Random values for one numeric argument at a time: either a clean, named refusal that
# leaves the optimizer as it was, or a scheduler whose every step writes finite lrs or
# refuses cleanly (ValueError, nothing changed).
NUMERIC_ARGS = [
    (name, arg)
    for name, (_, _, args) in SCHEDULERS.items()
    for arg in args
    if arg
    not in (
        "lr_lambda",
        "schedulers",
        "scale_fn",
        "mode",
        "scale_mode",
        "anneal_strategy",
        "threshold_mode",
        "cycle_momentum",
        "three_phase",
        "milestones",
    )
]
ANY_NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2, max_value=3),
    st.integers(min_value=-3, max_value=40),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 0.0, 1.0, 5e-324, 1e308, -0.0]),
    st.builds(np.float32, st.floats(width=32, allow_nan=True)),
    st.builds(np.int64, st.integers(min_value=-5, max_value=50)),
    st.sampled_from([None, "1", True, False, [], [1.0, 2.0]]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(NUMERIC_ARGS), value=ANY_NUMBER)
def test_random_argument_values_are_refused_cleanly_or_run_finite(case, value):
    name, arg = case
    factory, valid, _ = SCHEDULERS[name]
    opt = _fresh(name)
    kwargs = _resolve({**valid, arg: value}, opt)
    if (
        arg == "last_epoch"
        and value not in (-1,)
        and isinstance(value, (int, np.integer))
        and (not isinstance(value, bool) and value >= 0)
    ):
        return  # a resume needs initial_lr in the groups: a KeyError, tested elsewhere
    before = groups_view(opt)
    try:
        sched = factory(opt, **kwargs)
    except (ValueError, TypeError) as err:
        assert arg in str(err) or "param group" in str(err), str(err)
        assert groups_view(opt) == before
        return
    for i in range(8):
        opt.step()
        frozen = _frozen(opt, sched)
        try:
            sched.step(1.0 + i % 3) if isinstance(sched, lrs.ReduceLROnPlateau) else sched.step()
        except ValueError:
            assert _frozen(opt, sched) == frozen
            continue
        _snap(opt)


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(list(LOADABLE)),
    data=st.data(),
    junk=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.text(max_size=3),
        st.none(),
        st.booleans(),
        st.lists(st.floats(allow_nan=True), max_size=3),
    ),
)
def test_random_state_dict_entries_are_refused_or_run_finite(name, data, junk):
    opt, sched, saved = _loaded_pair(name)
    key = data.draw(st.sampled_from(sorted(saved)))
    frozen = _frozen(opt, sched)
    try:
        sched.load_state_dict({**saved, key: junk})
    except (ValueError, TypeError) as err:
        assert "state_dict" in str(err)
        assert _frozen(opt, sched) == frozen
        return
    for i in range(6):  # accepted: then it must behave
        opt.step()
        frozen = _frozen(opt, sched)
        try:
            sched.step(1.0 + i % 2) if isinstance(sched, lrs.ReduceLROnPlateau) else sched.step()
        except ValueError:
            assert _frozen(opt, sched) == frozen
            continue
        _snap(opt)
