"""Adafactor: what the optimizer table (tests/optimizers.py) does not cover.

The table runs Adafactor against ``torch.optim.Adafactor`` over its option
grid, round-trips its state dicts and checks the non-finite step.  Here:
torch's state shapes for parameters of up to four dimensions, large steps
(``lr`` above ``1/sqrt(t)``), a torch state dict of factored parameters
loaded mid-run, the group-wide ``eps1`` default, what loading refuses, and
in-place updates.

Tolerance of the large-step runs.  Adafactor's update is as large as
``rho * RMS(p)``: with ``lr=0.5`` the parameters move by about half their own
size per step and cross zero.  Three of torch's CPU kernels round otherwise
than the Array API's operations can: ``p.add_(u, alpha=...)`` and ``lerp_``
use fused multiply-adds on AVX2/AVX-512 CPUs, and ``rsqrt_`` is MKL's
``vdInvSqrt`` (not ``1 / sqrt``); ``test_bit_for_bit_with_torchs_primitives``
swaps those three in and then agrees with torch to the bit.  Each step may
therefore differ from torch's by an ulp of the update; after 40 steps that is
a few 1e-15 in absolute terms on parameters of size 1, unbounded relative to
an element that happens to be near zero.  Those runs are compared relative to
each parameter's largest element (``max|ours - torch| <= 1e-13 * max|torch|``).
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import P, to_np

from neural_arch.backend import is_immutable, resolve_backend, to_backend
from neural_arch.optim.adafactor import Adafactor

SHAPES = ((), (5,), (3, 4), (2, 3, 4), (2, 1, 3, 5))
NORMWISE = 1e-13


def _values(shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s)) for s in shapes]


def _grads(steps, shapes=SHAPES, seed=1):
    rng = np.random.default_rng(seed)
    return [[np.asarray(rng.standard_normal(s)) for s in shapes] for _ in range(steps)]


def _ours(xp, values, dtype="float64"):
    return [P(to_backend(v, xp, dtype=dtype, copy=True)) for v in values]


def _theirs(torch, values):
    return [torch.tensor(v, requires_grad=True) for v in values]


def _step(xp, opt, topt, params, tparams, grads):
    for p, tp, g in zip(params, tparams, grads, strict=True):
        p.grad = to_backend(g, xp, dtype=p.data.dtype, copy=True)
        tp.grad = tp.new_tensor(g)
    opt.step()
    topt.step()


def _assert_normwise(params, tparams, what):
    for i, (p, tp) in enumerate(zip(params, tparams, strict=True)):
        a, b = to_np(p.data), tp.detach().numpy()
        err, scale = np.max(np.abs(a - b)), np.max(np.abs(b))
        assert err <= NORMWISE * scale, f"{what}: parameter {i}: {err} > {NORMWISE} * {scale}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_state_keys_shapes_and_dtypes_are_torchs(xp, torch, dtype):
    params, tparams = _ours(xp, _values(), dtype), _theirs(torch, _values())
    opt, topt = Adafactor(params), torch.optim.Adafactor(tparams, foreach=False)
    for grads in _grads(2):
        _step(xp, opt, topt, params, tparams, grads)
    for i, (p, tp) in enumerate(zip(params, tparams, strict=True)):
        state, tstate = opt.state[p], topt.state[tp]
        assert list(state) == list(tstate), f"parameter {i}"
        assert state["step"] == 2 and type(state["step"]) is int
        for key, ref in tstate.items():
            if key == "step":
                continue
            assert tuple(state[key].shape) == tuple(ref.shape), f"parameter {i}: {key}"
            assert tuple(state[key].shape) == opt._state_shape(key, p)
            assert state[key].dtype == p.data.dtype, f"parameter {i}: {key}"
        factored = len(SHAPES[i]) > 1
        assert ("row_var" in state) is factored and ("variance" in state) is not factored


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.5},
        {"lr": 0.5, "weight_decay": 0.3, "maximize": True, "d": 1.2},
        {"lr": 2.0, "beta2_decay": -0.5, "eps": (1e-2, 1e-2)},
    ],
    ids=["plain", "decay-maximize-d", "beta2-eps"],
)
def test_large_steps_match_torch(xp, torch, kwargs):
    """rho_t = 1/sqrt(t) below lr from the first steps; 40 steps, four-dimensional parameters."""
    params, tparams = _ours(xp, _values()), _theirs(torch, _values())
    opt, topt = (
        Adafactor(params, **kwargs),
        torch.optim.Adafactor(tparams, foreach=False, **kwargs),
    )
    for step, grads in enumerate(_grads(40)):
        _step(xp, opt, topt, params, tparams, grads)
        _assert_normwise(params, tparams, f"step {step}")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.5},
        {"lr": 0.2, "beta2_decay": -0.3, "weight_decay": 0.1, "maximize": True, "d": 1.5},
        {"lr": 2.0, "eps": (1.0, 3.0)},
    ],
    ids=["plain", "beta2-decay-maximize-d", "eps"],
)
def test_bit_for_bit_with_torchs_primitives(torch, monkeypatch, kwargs):
    """With torch's lerp_, rsqrt_ and add_(alpha=) the port reproduces torch to the bit.

    Everything else is the port's own arithmetic in torch's order (norms, means,
    floors, step sizes; torch's vector norm is the torch backend's), so this
    shows that what remains in the comparisons above is those three kernels.
    """
    from neural_arch.optim import adafactor as module

    monkeypatch.setattr(module, "_lerp", lambda start, end, weight: torch.lerp(start, end, weight))
    monkeypatch.setattr(module, "_rsqrt", lambda xp, x: torch.rsqrt(x))
    monkeypatch.setattr(module, "_axpy", lambda y, alpha, x: torch.add(y, x, alpha=alpha))
    shapes = (*SHAPES, (40,), (6, 7))  # long enough for torch's vectorised loops
    xp = resolve_backend("torch")
    params, tparams = _ours(xp, _values(shapes)), _theirs(torch, _values(shapes))
    opt, topt = (
        Adafactor(params, **kwargs),
        torch.optim.Adafactor(tparams, foreach=False, **kwargs),
    )
    for step, grads in enumerate(_grads(30, shapes)):
        _step(xp, opt, topt, params, tparams, grads)
        for i, (p, tp) in enumerate(zip(params, tparams, strict=True)):
            assert torch.equal(p.data, tp.detach()), f"step {step}: parameter {i}"
    for p, tp in zip(params, tparams, strict=True):
        for key, value in topt.state[tp].items():
            if key != "step":
                assert torch.equal(opt.state[p][key], value), key


def test_load_torch_state_dict_of_factored_parameters_and_continue(xp, torch):
    kwargs = {"lr": 0.2, "weight_decay": 0.1, "eps": (None, 1e-2)}
    tparams = _theirs(torch, _values())
    topt = torch.optim.Adafactor(tparams, foreach=False, **kwargs)
    grads = _grads(20)
    for step_grads in grads[:10]:
        for tp, g in zip(tparams, step_grads, strict=True):
            tp.grad = torch.tensor(g)
        topt.step()
    params = _ours(xp, [tp.detach().numpy() for tp in tparams])
    opt = Adafactor(params)  # the options come from the state dict
    opt.load_state_dict(topt.state_dict())
    for key, value in kwargs.items():
        assert opt.param_groups[0][key] == value, key
    for p, tp in zip(params, tparams, strict=True):
        state, tstate = opt.state[p], topt.state[tp]
        assert list(state) == list(tstate) and state["step"] == 10
        for key in set(state) - {"step"}:
            np.testing.assert_array_equal(to_np(state[key]), tstate[key].numpy())
    for step, step_grads in enumerate(grads[10:], start=10):
        _step(xp, opt, topt, params, tparams, step_grads)
        _assert_normwise(params, tparams, f"step {step}")


def test_default_eps1_is_the_first_parameters_machine_epsilon_for_the_whole_group(torch):
    """torch sets eps1 from the first parameter's dtype and keeps it for the group.

    A float64 parameter after a float32 one, with gradients so small that the
    variance estimate falls below float32's eps**2: its update is floored by
    float32's epsilon, not float64's, as in torch.
    """
    first, second = np.ones((2, 3)), np.linspace(-1.0, 1.0, 6).reshape(2, 3)
    params = [P(first.astype(np.float32)), P(second.copy())]
    tparams = [torch.tensor(first, dtype=torch.float32), torch.tensor(second)]
    opt, topt = Adafactor(params), torch.optim.Adafactor(tparams, foreach=False)
    for step in range(5):
        grads = [np.full((2, 3), 1e-9), np.full((2, 3), 1e-9) * (step + 1)]
        for p, tp, g in zip(params, tparams, grads, strict=True):
            p.grad = g.astype(p.data.dtype)
            tp.grad = torch.tensor(g, dtype=tp.dtype)
        opt.step()
        topt.step()
        np.testing.assert_allclose(params[1].data, tparams[1].numpy(), rtol=1e-13, atol=0)
    # with float64's epsilon the same gradients would have moved it by about lr * RMS per step
    alone = [P(second.copy())]
    solo = Adafactor(alone)
    for step in range(5):
        alone[0].grad = np.full((2, 3), 1e-9) * (step + 1)
        solo.step()
    assert np.max(np.abs(alone[0].data - params[1].data)) > 1e-3


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda st: st[2].update(row_var=np.zeros((3, 4))),
            r"loaded state 'row_var' of parameter 2 has shape \(3, 4\), but the parameter has "
            r"shape \(3, 4\) \(expected \(3, 1\)\)",
        ),
        (
            lambda st: st[3].update(col_var=np.zeros((2, 3, 4))),
            r"'col_var' of parameter 3 has shape \(2, 3, 4\).* \(expected \(2, 1, 4\)\)",
        ),
        (
            lambda st: st[1].update(variance=np.zeros(4)),
            r"'variance' of parameter 1 has shape \(4,\)",
        ),
        (
            lambda st: st.__setitem__(2, {"step": 1, "variance": np.zeros((3, 4))}),
            r"parameter 2 \(shape \(3, 4\)\) has keys \['step', 'variance'\]; Adafactor keeps "
            r"\['col_var', 'row_var', 'step'\]",
        ),
        (lambda st: st[0].pop("variance"), r"parameter 0 \(shape \(\)\) has keys \['step'\]"),
        (lambda st: st[1].update(step=-1), r"'step' of parameter 1 is -1"),
        (
            lambda st: st[1].update(variance=None),
            r"'variance' of parameter 1 is None, not an array",
        ),
    ],
)
def test_load_state_dict_refuses_misshapen_state_and_changes_nothing(edit, match):
    xp = resolve_backend("numpy")
    params = _ours(xp, _values())
    opt = Adafactor(params)
    for grads in _grads(2):
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
    sd = opt.state_dict()
    sd["state"] = {i: dict(record) for i, record in sd["state"].items()}
    edit(sd["state"])
    before = {
        i: {k: to_np(v).copy() if hasattr(v, "shape") else v for k, v in opt.state[p].items()}
        for i, p in enumerate(params)
    }
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    for i, p in enumerate(params):
        assert list(opt.state[p]) == list(before[i])
        for key, value in before[i].items():
            mine = opt.state[p][key]
            assert np.array_equal(to_np(mine), value) if hasattr(value, "shape") else mine == value


def test_read_only_or_integer_parameters_are_refused_before_anything_changes():
    xp = resolve_backend("numpy")
    params = _ours(xp, _values(((3,), (2, 2))))
    params[1].data.flags.writeable = False
    opt = Adafactor(params)
    for p in params:
        p.grad = np.ones(p.data.shape)
    with pytest.raises(
        ValueError,
        match=r"parameter 1 \(param_groups\[0\]\['params'\]\[1\]\) is a read-only array",
    ):
        opt.step()
    assert len(opt.state) == 0 and opt.step_count == 0
    np.testing.assert_array_equal(params[0].data, _values(((3,), (2, 2)))[0])
    ints = [P(np.arange(3.0)), P(np.arange(4).reshape(2, 2))]
    opt = Adafactor(ints)
    for p in ints:
        p.grad = np.ones(p.data.shape, dtype=p.data.dtype)
    with pytest.raises(
        TypeError,
        match=r"parameter 1 \(param_groups\[0\]\['params'\]\[1\]\) has dtype int64; optimizers "
        r"update parameters of a real floating dtype",
    ):
        opt.step()
    assert len(opt.state) == 0


def test_mutable_arrays_are_updated_in_place(xp):
    params = _ours(xp, _values())
    opt = Adafactor(params, weight_decay=0.1)
    for p, g in zip(params, _grads(1)[0], strict=True):
        p.grad = to_backend(g, xp, dtype="float64")
    opt.step()
    ids = [
        (id(p.data), {k: id(v) for k, v in opt.state[p].items() if k != "step"}) for p in params
    ]
    for p, g in zip(params, _grads(1, seed=2)[0], strict=True):
        p.grad = to_backend(g, xp, dtype="float64")
    opt.step()
    for p, (data_id, state_ids) in zip(params, ids, strict=True):
        kept = not is_immutable(p.data)
        assert (id(p.data) == data_id) is kept
        for key, old in state_ids.items():
            assert (id(opt.state[p][key]) == old) is kept, key
