"""NAdam and RAdam: what the table (tests/optimizers.py) does not cover.

* the constructors are torch 2.13's (names, order, defaults);
* a torch state dict loaded mid-run, with groups whose parameters are at
  different steps (so different ``mu_product``), continues as torch does;
* NAdam's ``mu_product`` equals torch's float32 0-d tensor bit for bit after
  many steps, for float64 and float32 parameters alike;
* a loaded ``mu_product`` is validated, all-or-nothing;
* the configuration NAdam refuses is exactly one on which torch divides by zero;
* RAdam switches to the rectified update at torch's step, also late in a run.
"""

from __future__ import annotations

import inspect
import math
import struct

import numpy as np
import pytest
from _helpers import P
from optimizers import (
    BY_NAME,
    assert_params_match,
    assert_state_matches,
    assert_unchanged,
    grad_sequence,
    initial,
    ours,
    run_side_by_side,
    set_grads,
    snapshot,
    theirs,
)

from neural_arch.optim.nadam import NAdam
from neural_arch.optim.radam import RAdam

CLASSES = [pytest.param(NAdam, id="NAdam"), pytest.param(RAdam, id="RAdam")]
#: torch's keywords that are not ours
TORCH_ONLY = {"foreach", "capturable", "differentiable", "fused"}


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


@pytest.mark.parametrize("cls", CLASSES)
def test_signature_is_torchs(torch, cls):
    """Same names, order, kinds and defaults as torch 2.13, plus our keyword ``nonfinite``."""
    theirs_ = inspect.signature(getattr(torch.optim, cls.__name__)).parameters
    ours_ = inspect.signature(cls).parameters
    expected = [(n, p.kind, p.default) for n, p in theirs_.items() if n not in TORCH_ONLY]
    ours_only = ("nonfinite", "master_weights")
    got = [(n, p.kind, p.default) for n, p in ours_.items() if n not in ours_only]
    assert got == expected
    assert tuple(ours_)[-2:] == ours_only
    assert all(ours_[n].kind is inspect.Parameter.KEYWORD_ONLY for n in ours_only)


@pytest.mark.parametrize("cls", CLASSES)
def test_defaults_match_torch(xp, torch, cls):
    """Every default (lr 2e-3 for NAdam, 1e-3 for RAdam) as torch, over both RAdam branches."""
    run_side_by_side(xp, torch, cls, lambda ps: getattr(torch.optim, cls.__name__)(ps), steps=12)


def _groups(params, options):
    return [{"params": params[:2], **options[0]}, {"params": params[2:], **options[1]}]


GROUPS = [
    pytest.param(
        "NAdam",
        ({"momentum_decay": 0.05, "betas": (0.3, 0.8)}, {"weight_decay": 0.1, "maximize": True}),
        id="NAdam",
    ),
    pytest.param(
        "RAdam",
        ({"betas": (0.5, 0.67)}, {"weight_decay": 0.1, "decoupled_weight_decay": True}),
        id="RAdam",
    ),
]


@pytest.mark.parametrize(("name", "options"), GROUPS)
def test_load_torch_state_dict_mid_run_with_uneven_steps(xp, torch, name, options):
    """Two groups; one parameter skips steps (its own step and mu_product); load, continue.

    After loading, each parameter continues from torch's step (and, for
    NAdam, torch's mu_product, which we then keep updating bit for bit).
    """
    entry = BY_NAME[name]
    torch_cls = getattr(torch.optim, entry.torch_name)
    torch_params = theirs(torch, initial())
    topt = torch_cls(_groups(torch_params, options), lr=0.02, foreach=False)
    all_grads = grad_sequence(steps=40)
    for step, grads in enumerate(all_grads[:20]):
        for i, (tp, g) in enumerate(zip(torch_params, grads, strict=True)):
            tp.grad = None if (i == 3 and step % 3 == 0) else torch.tensor(g)
        topt.step()
    assert len({int(topt.state[tp]["step"]) for tp in torch_params}) == 2

    params = ours(xp, [tp.detach().numpy() for tp in torch_params])
    opt = entry.cls([{"params": params[:2]}, {"params": params[2:]}], lr=0.5)
    opt.load_state_dict(topt.state_dict())
    for group, tgroup in zip(opt.param_groups, topt.param_groups, strict=True):
        for key in entry.cls.hyper:
            assert group[key] == tgroup[key], key
    assert_state_matches(opt, topt, params, torch_params)
    for step, grads in enumerate(all_grads[20:], start=20):
        set_grads(xp, params, torch_params, grads)
        if step % 4 == 0:
            params[0].grad = torch_params[0].grad = None
        opt.step()
        topt.step()
        assert_params_match(params, torch_params, step)
        if name == "NAdam":
            for p, tp in zip(params, torch_params, strict=True):
                assert opt.state[p]["mu_product"] == topt.state[tp]["mu_product"].item()
    assert_state_matches(opt, topt, params, torch_params)


# ----------------------------------------------------------------- NAdam's mu_product


@pytest.mark.parametrize(
    ("betas", "momentum_decay"),
    [((0.9, 0.999), 4e-3), ((0.99, 0.999), 4e-3), ((0.3, 0.6), 0.3), ((0.7, 0.9), 0.0)],
)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_nadam_mu_product_is_torchs_bit_for_bit(torch, betas, momentum_decay, dtype):
    """1000 steps: our Python float is torch's float32 0-d tensor, every step."""
    assert torch.get_default_dtype() == torch.float32  # torch then keeps mu_product in float32
    rng = np.random.default_rng(5)
    x = rng.standard_normal(3).astype(dtype)
    p = P(x.copy())
    tp = torch.tensor(x, requires_grad=True)
    kwargs = {"lr": 1e-3, "betas": betas, "momentum_decay": momentum_decay}
    opt = NAdam([p], **kwargs)
    topt = torch.optim.NAdam([tp], foreach=False, **kwargs)
    seen = set()
    for _ in range(1000):
        g = rng.standard_normal(3).astype(dtype)
        p.grad, tp.grad = g, torch.tensor(g)
        opt.step()
        topt.step()
        ref = topt.state[tp]["mu_product"]
        assert ref.dtype == torch.float32
        mine = opt.state[p]["mu_product"]
        assert type(mine) is float
        assert mine.hex() == ref.item().hex()
        assert _f32(mine) == mine  # a float32 value
        seen.add(mine)
    assert len(seen) > 10  # it did move (down to float32's subnormals or zero)


def test_nadam_state_dict_loads_into_torch(torch):
    """Ours → torch: torch's NAdam loads our state dict (mu_product a float) as its own.

    torch's ``load_state_dict`` casts every floating state but ``step`` to the
    parameter's dtype, so the loaded mu_product is a float64 tensor holding our
    (float32) value exactly.  From there torch multiplies it in float64 and we
    in float32 (as a torch optimizer that never loaded a state dict does), so
    the runs part by float32 rounding: only the loaded state is compared.
    """
    params = ours(np, initial())
    opt = NAdam(params, lr=0.01)
    torch_params = theirs(torch, initial())
    topt = torch.optim.NAdam(torch_params, lr=0.01, foreach=False)
    grads = grad_sequence(steps=20)
    for step_grads in grads[:10]:
        set_grads(np, params, torch_params, step_grads)
        opt.step()
        topt.step()
    sd = opt.state_dict()
    state = {
        i: {k: torch.tensor(v) if k != "step" else torch.tensor(float(v)) for k, v in r.items()}
        for i, r in sd["state"].items()
    }
    twin = theirs(torch, [p.data for p in params])
    other = torch.optim.NAdam(twin, lr=0.5, foreach=False)
    other.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    assert other.param_groups[0]["lr"] == 0.01
    assert_state_matches(opt, other, params, twin)
    for p, b in zip(params, twin, strict=True):
        loaded = other.state[b]["mu_product"]
        assert loaded.dtype == torch.float64  # torch's cast to the parameter's dtype
        assert loaded.item() == opt.state[p]["mu_product"]
        b.grad = torch.ones_like(b)
    other.step()  # and it steps from there


@pytest.mark.parametrize(
    ("mu_product", "step"),
    [(1.5, 3), (-0.1, 3), (float("nan"), 3), (float("inf"), 3), (1.0, 3), ("x", 3)],
)
def test_nadam_loaded_mu_product_is_validated(mu_product, step):
    """Out of [0, 1], non-finite, or 1 after a step: refused, naming it; nothing changes."""
    params = ours(np, initial())
    opt = NAdam(params, lr=0.01)
    for grads in grad_sequence(steps=3):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.copy()
        opt.step()
    sd = opt.state_dict()
    bad = {**sd, "state": {i: dict(r) for i, r in sd["state"].items()}}
    bad["state"][2]["mu_product"] = mu_product
    bad["state"][2]["step"] = step
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"mu_product|could not convert"):
        opt.load_state_dict(bad)
    assert_unchanged(before, snapshot(opt, params))
    fresh = {
        **sd,
        "state": {i: {**r, "step": 0, "mu_product": 1.0} for i, r in sd["state"].items()},
    }
    opt.load_state_dict(fresh)  # 1.0 is the value before the first step
    assert opt.state[params[2]]["mu_product"] == 1.0


def test_nadam_refuses_exactly_what_torch_divides_by_zero_on(torch):
    """beta1 rounding to 1.0 in float32 with a huge momentum_decay: torch's first step
    raises ZeroDivisionError (1 - mu_product = 0); ours refuses it up front.  The float32
    number just below 1 is accepted by both and steps alike."""
    refused = {"betas": (1 - 2**-26, 0.9), "momentum_decay": 1e4, "lr": 0.01}
    tp = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    tp.grad = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ZeroDivisionError):
        torch.optim.NAdam([tp], foreach=False, **refused).step()
    with pytest.raises(ValueError, match=r"Invalid betas\[0\] with momentum_decay"):
        NAdam([P(np.zeros(3))], **refused)
    with pytest.raises(ValueError, match=r"mu_1 round to 1\.0 in float32"):
        NAdam([P(np.zeros(3))], lr=0.01).add_param_group({"params": [P(np.zeros(3))], **refused})
    accepted = {**refused, "betas": (1 - 2**-24, 0.9)}
    run_side_by_side(
        np,
        torch,
        lambda ps: NAdam(ps, **accepted),
        lambda ps: torch.optim.NAdam(ps, foreach=False, **accepted),
        steps=10,
    )
    # and the default momentum_decay never comes near it, even with beta1 that close to 1
    NAdam([P(np.zeros(3))], betas=(1 - 2**-26, 0.9))


# ------------------------------------------------------------------- RAdam's switch


@pytest.mark.parametrize(
    ("beta2", "first"), [(0.999, 6), (0.8, 7), (0.7, 10), (0.68, 12), (0.67, 16), (0.6, None)]
)
def test_radam_switches_at_torchs_step(xp, torch, beta2, first):
    """The rectified update starts where torch's does: late when rho_inf is barely above 5.

    Checked directly (until the switch the update ignores v: poisoning v changes nothing)
    and against torch step by step over 40 steps.
    """
    rho_inf = 2 / (1 - beta2) - 1
    steps = [t for t in range(1, 41) if rho_inf - 2 * t * beta2**t / (1 - beta2**t) > 5.0]
    assert (steps[0] if steps else None) == first
    assert steps == list(range(first, 41)) if first else not steps
    kwargs = {"lr": 0.01, "betas": (0.9, beta2)}
    run_side_by_side(
        xp,
        torch,
        lambda ps: RAdam(ps, **kwargs),
        lambda ps: torch.optim.RAdam(ps, foreach=False, **kwargs),
        steps=40,
    )
    # before the switch the update does not read v: a huge v changes nothing
    for t in range(1, 41):
        p, q = P(np.ones(4)), P(np.ones(4))
        a, b = RAdam([p], **kwargs), RAdam([q], **kwargs)
        for opt, x in ((a, p), (b, q)):
            x.grad = np.full(4, 0.5)
            opt.step()
            opt.state[x]["step"] = t - 1
        b.state[q]["exp_avg_sq"][...] = 1e6
        p.grad, q.grad = np.full(4, 0.5), np.full(4, 0.5)
        a.step()
        b.step()
        assert np.array_equal(p.data, q.data) == (t not in steps), t


def test_radam_never_rectifies_at_or_below_two_thirds(torch):
    """beta2 <= 2/3 gives rho_inf <= 5: never rectified, and rect (which would divide by
    rho_inf - 4 = 0 for beta2 = 0.6) is never computed."""
    for beta2 in (0.0, 0.5, 0.6, 2 / 3):
        kwargs = {"lr": 0.01, "betas": (0.9, beta2)}
        run_side_by_side(
            np,
            torch,
            lambda ps, kw=kwargs: RAdam(ps, **kw),
            lambda ps, kw=kwargs: torch.optim.RAdam(ps, foreach=False, **kw),
            steps=40,
        )
    assert math.isclose(2 / (1 - 2 / 3) - 1, 5.0)
