"""The pure update rules in ``neural_arch.optim.functional``, on every backend and under JAX.

``adam_step``/``sgd_step`` with ``inplace=False`` must modify nothing they are
given; with ``inplace=True`` they must update the same objects and agree with
the pure form to the last bit.  Both are checked against ``torch.optim``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _helpers import to_np

from neural_arch.backend import backend_name, to_backend
from neural_arch.optim import functional as F

SHAPES = [(), (5,), (2, 3)]
STEPS = 30
RTOL = 1e-13
ATOL = 1e-15


def _draw(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def _grads(shape, steps=STEPS, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(steps)]


def _host_state(state):
    return {k: (to_np(v).copy() if hasattr(v, "shape") else v) for k, v in state.items()}


ADAM_CASES = [
    dict(weight_decay=wd, amsgrad=ams, maximize=mx, beta1=b1, beta2=b2, decoupled=dec)
    for wd, ams, mx, (b1, b2), dec in itertools.product(
        (0.0, 0.1), (False, True), (False, True), ((0.9, 0.999), (0.4, 0.7)), (False, True)
    )
    if not (dec and wd == 0.0)
]

SGD_CASES = [
    dict(momentum=mom, dampening=damp, nesterov=nest, weight_decay=wd, maximize=mx)
    for mom, damp, nest, wd, mx in itertools.product(
        (0.0, 0.9), (0.0, 0.2), (False, True), (0.0, 0.1), (False, True)
    )
    if not (nest and (mom == 0 or damp != 0))
]


def _case_id(case):
    return ",".join(f"{k}={v}" for k, v in case.items())


# ------------------------------------------------------------------ init


@pytest.mark.parametrize("shape", SHAPES)
def test_adam_init(xp, shape):
    p = to_backend(_draw(shape, 0), xp, dtype="float32")
    state = F.adam_init(p)
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"} and state["step"] == 0
    for key in ("exp_avg", "exp_avg_sq"):
        assert tuple(state[key].shape) == shape
        assert state[key].dtype == xp.float32
        assert backend_name(state[key]) == backend_name(xp)
        np.testing.assert_array_equal(to_np(state[key]), np.zeros(shape))
    ams = F.adam_init(p, amsgrad=True)
    assert set(ams) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert ams["exp_avg"] is not ams["exp_avg_sq"]


def test_sgd_init(xp):
    p = to_backend(_draw((3,), 0), xp)
    assert F.sgd_init(p) == {"momentum_buffer": None}


# ------------------------------------------------------------------ purity


def _adam_kwargs(case):
    kw = dict(case)
    kw["decoupled_weight_decay"] = kw.pop("decoupled")
    return kw


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_step_pure_modifies_nothing(xp, shape, amsgrad):
    p = to_backend(_draw(shape, 0), xp)
    state = F.adam_init(p, amsgrad=amsgrad)
    for g in _grads(shape, steps=2):
        p, state = F.adam_step(p, to_backend(g, xp), state, lr=0.1, amsgrad=amsgrad)
    g = to_backend(_draw(shape, 9), xp)
    p0, g0, s0 = to_np(p).copy(), to_np(g).copy(), _host_state(state)
    new_p, new_state = F.adam_step(
        p, g, state, lr=0.1, amsgrad=amsgrad, weight_decay=0.1, maximize=True
    )
    np.testing.assert_array_equal(to_np(p), p0)
    np.testing.assert_array_equal(to_np(g), g0)
    assert _host_state(state).keys() == s0.keys()
    for k, v in _host_state(state).items():
        np.testing.assert_array_equal(v, s0[k])
    assert new_p is not p
    assert new_state is not state and new_state["step"] == 3
    for k in ("exp_avg", "exp_avg_sq"):
        assert new_state[k] is not state[k]
    assert not np.array_equal(to_np(new_p), p0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_step_pure_modifies_nothing(xp, shape, nesterov):
    p = to_backend(_draw(shape, 0), xp)
    kw = dict(lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.1)
    state = F.sgd_init(p)
    for g in _grads(shape, steps=2):
        p, state = F.sgd_step(p, to_backend(g, xp), state, **kw)
    g = to_backend(_draw(shape, 9), xp)
    p0, g0, s0 = to_np(p).copy(), to_np(g).copy(), _host_state(state)
    new_p, new_state = F.sgd_step(p, g, state, **kw)
    np.testing.assert_array_equal(to_np(p), p0)
    np.testing.assert_array_equal(to_np(g), g0)
    np.testing.assert_array_equal(to_np(state["momentum_buffer"]), s0["momentum_buffer"])
    assert new_p is not p and new_state["momentum_buffer"] is not state["momentum_buffer"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("inplace", [False, True])
def test_steps_return_arrays_of_the_parameters_type(xp, shape, inplace):
    """Also for 0-d parameters: a 0-d array in, a 0-d array (not a scalar) out."""
    kinds = []
    for rule, init in ((F.adam_step, F.adam_init), (F.sgd_step, F.sgd_init)):
        p = to_backend(_draw(shape, 0), xp)
        g = to_backend(_draw(shape, 1), xp)
        state = init(p)
        for _ in range(2):
            extra = {"momentum": 0.9} if rule is F.sgd_step else {}
            p, state = rule(p, g, state, lr=0.1, inplace=inplace, **extra)
        kinds.append(type(p))
        state_arrays = [v for k, v in state.items() if k != "step"]
        kinds.extend(type(v) for v in state_arrays)
        assert tuple(p.shape) == shape
    assert set(kinds) == {type(g)}, kinds


def test_sgd_first_momentum_buffer_does_not_alias_the_gradient(xp):
    if backend_name(xp) == "jax":
        pytest.skip("JAX arrays cannot be modified afterwards")
    p, g = to_backend(_draw((4,), 0), xp), to_backend(_draw((4,), 1), xp)
    g_host = to_np(g).copy()
    _, state = F.sgd_step(p, g, F.sgd_init(p), momentum=0.9, inplace=True)
    assert state["momentum_buffer"] is not g
    g[...] = 0.0
    np.testing.assert_array_equal(to_np(state["momentum_buffer"]), g_host)


# ------------------------------------------------------------------ in place


@pytest.mark.parametrize("case", ADAM_CASES[::3], ids=_case_id)
def test_adam_inplace_agrees_with_pure_to_the_last_bit(xp, case):
    shape = (2, 3)
    pure_p = to_backend(_draw(shape, 0), xp)
    inpl_p = to_backend(_draw(shape, 0), xp)
    pure_s = F.adam_init(pure_p, amsgrad=case["amsgrad"])
    inpl_s = F.adam_init(inpl_p, amsgrad=case["amsgrad"])
    inpl_objects = (inpl_p, inpl_s["exp_avg"], inpl_s["exp_avg_sq"])
    for g in _grads(shape, steps=5):
        g = to_backend(g, xp)
        pure_p, pure_s = F.adam_step(pure_p, g, pure_s, lr=0.01, **_adam_kwargs(case))
        out_p, out_s = F.adam_step(inpl_p, g, inpl_s, lr=0.01, inplace=True, **_adam_kwargs(case))
        if backend_name(xp) != "jax":
            assert out_p is inpl_p
            assert (out_s["exp_avg"], out_s["exp_avg_sq"]) == inpl_objects[1:]
        inpl_p, inpl_s = out_p, out_s
    np.testing.assert_array_equal(to_np(inpl_p), to_np(pure_p))
    for k in pure_s:
        if k != "step":
            np.testing.assert_array_equal(to_np(inpl_s[k]), to_np(pure_s[k]))
    assert inpl_s["step"] == pure_s["step"] == 5


@pytest.mark.parametrize("case", SGD_CASES[::2], ids=_case_id)
def test_sgd_inplace_agrees_with_pure_to_the_last_bit(xp, case):
    shape = (3,)
    pure_p = to_backend(_draw(shape, 0), xp)
    inpl_p = to_backend(_draw(shape, 0), xp)
    pure_s, inpl_s = F.sgd_init(pure_p), F.sgd_init(inpl_p)
    for g in _grads(shape, steps=5):
        g = to_backend(g, xp)
        pure_p, pure_s = F.sgd_step(pure_p, g, pure_s, lr=0.1, **case)
        out_p, inpl_s = F.sgd_step(inpl_p, g, inpl_s, lr=0.1, inplace=True, **case)
        if backend_name(xp) != "jax":
            assert out_p is inpl_p
        inpl_p = out_p
    np.testing.assert_array_equal(to_np(inpl_p), to_np(pure_p))


# ------------------------------------------------------------------ against torch


def _torch_run(torch, name, shape, kwargs, steps=STEPS):
    p = torch.tensor(_draw(shape, 0), dtype=torch.float64, requires_grad=True)
    opt = getattr(torch.optim, name)([p], foreach=False, **kwargs)
    out = []
    for g in _grads(shape, steps=steps):
        p.grad = torch.tensor(g)
        opt.step()
        out.append(p.detach().numpy().copy())
    return out, opt.state[p]


@pytest.mark.parametrize("case", ADAM_CASES, ids=_case_id)
@pytest.mark.parametrize("shape", [(), (2, 3)], ids=["0d", "2d"])
def test_adam_step_matches_torch(xp, torch, case, shape):
    kw = _adam_kwargs(case)
    name = "AdamW" if kw.pop("decoupled_weight_decay") else "Adam"
    b1, b2 = kw.pop("beta1"), kw.pop("beta2")
    expected, torch_state = _torch_run(torch, name, shape, dict(lr=0.01, betas=(b1, b2), **kw))
    p = to_backend(_draw(shape, 0), xp)
    state = F.adam_init(p, amsgrad=case["amsgrad"])
    for step, g in enumerate(_grads(shape)):
        p, state = F.adam_step(p, to_backend(g, xp), state, lr=0.01, **_adam_kwargs(case))
        np.testing.assert_allclose(
            to_np(p), expected[step], rtol=RTOL, atol=ATOL, err_msg=f"step {step}"
        )
    assert state["step"] == STEPS
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        if key in torch_state:
            np.testing.assert_allclose(
                to_np(state[key]), torch_state[key].numpy(), rtol=RTOL, atol=ATOL
            )


@pytest.mark.parametrize("case", SGD_CASES, ids=_case_id)
def test_sgd_step_matches_torch(xp, torch, case):
    shape = (2, 3)
    expected, _ = _torch_run(torch, "SGD", shape, dict(lr=0.05, **case))
    p = to_backend(_draw(shape, 0), xp)
    state = F.sgd_init(p)
    for step, g in enumerate(_grads(shape)):
        p, state = F.sgd_step(p, to_backend(g, xp), state, lr=0.05, **case)
        np.testing.assert_allclose(
            to_np(p), expected[step], rtol=RTOL, atol=ATOL, err_msg=f"step {step}"
        )


# ------------------------------------------------------------------ JAX specifics


@pytest.fixture
def jnp(xp):
    if backend_name(xp) != "jax":
        pytest.skip("JAX-only test")
    return xp


def test_jax_inplace_request_falls_back_to_new_arrays(jnp):
    p = to_backend(_draw((3,), 0), jnp)
    g = to_backend(_draw((3,), 1), jnp)
    state = F.adam_init(p)
    p0 = to_np(p).copy()
    new_p, new_state = F.adam_step(p, g, state, lr=0.1, inplace=True)
    np.testing.assert_array_equal(to_np(p), p0)
    assert new_p is not p and new_state["exp_avg"] is not state["exp_avg"]
    np.testing.assert_array_equal(to_np(state["exp_avg"]), np.zeros(3))


def test_jax_adam_step_under_jit_matches_eager(jnp):
    import jax

    @jax.jit
    def step(p, g, state):
        return F.adam_step(p, g, state, lr=0.01, weight_decay=0.1, amsgrad=True)

    p_eager = p_jit = to_backend(_draw((4,), 0), jnp)
    s_eager = s_jit = F.adam_init(p_eager, amsgrad=True)
    for g in _grads((4,), steps=5):
        g = to_backend(g, jnp)
        p_eager, s_eager = F.adam_step(
            p_eager, g, s_eager, lr=0.01, weight_decay=0.1, amsgrad=True
        )
        p_jit, s_jit = step(p_jit, g, s_jit)
    np.testing.assert_allclose(to_np(p_jit), to_np(p_eager), rtol=1e-14)
    assert int(s_jit["step"]) == 5
