"""The optimizer classes: construction, groups, state, state dicts, views and refused input.

Parameters here are a tiny duck type (``.data`` and ``.grad``), so these tests
depend on nothing but ``neural_arch.optim`` and the backend module.  What every
optimizer of the table in tests/optimizers.py must do (refused hyperparameters,
non-finite gradients, dtypes, state dict round trips) is in
test_optimizer_table.py.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from _helpers import P, assert_close, to_np
from optimizers import TABLE, assert_unchanged, case_id, covering_cases, snapshot

from neural_arch import backend
from neural_arch.backend import backend_name, to_backend
from neural_arch.optim import SGD, Adam, AdamW

# make(params, **kw): each optimizer of the table with each of its covering cases
ALL_OPTIMIZERS = [
    pytest.param(lambda ps, e=e, c=c, **kw: e.make(ps, **{**c, **kw}), id=case_id(e, c))
    for e in TABLE
    for c in covering_cases(e)
]


def _params(xp, shapes=((2, 3), (3,), ()), seed=0, dtype="float64", with_grad=True):
    rng = np.random.default_rng(seed)
    out = []
    for s in shapes:
        p = P(to_backend(rng.standard_normal(s), xp, dtype=dtype))
        if with_grad:
            p.grad = to_backend(rng.standard_normal(s), xp, dtype=dtype)
        out.append(p)
    return out


def _new_grads(xp, params, seed):
    rng = np.random.default_rng(seed)
    for p in params:
        p.grad = to_backend(rng.standard_normal(tuple(p.data.shape)), xp, dtype=p.data.dtype)


# ------------------------------------------------------------- closed forms


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.1, 0.5), (0.0, 0.0)])
def test_adam_first_step_with_eps_zero_is_lr_sign(xp, betas, maximize):
    params = _params(xp)
    start = [to_np(p.data).copy() for p in params]
    opt = Adam(params, lr=0.05, betas=betas, eps=0.0, maximize=maximize)
    opt.step()
    sign = -1.0 if maximize else 1.0
    for p, p0 in zip(params, start, strict=True):
        expected = p0 - sign * 0.05 * np.sign(to_np(p.grad))
        assert_close(p.data, expected, rtol=1e-15)


def test_adamw_first_step_with_eps_zero_decays_then_steps(xp):
    params = _params(xp)
    start = [to_np(p.data).copy() for p in params]
    AdamW(params, lr=0.05, weight_decay=0.3, eps=0.0).step()
    for p, p0 in zip(params, start, strict=True):
        expected = p0 * (1 - 0.05 * 0.3) - 0.05 * np.sign(to_np(p.grad))
        assert_close(p.data, expected, rtol=1e-15)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_without_weight_decay_equals_adam(xp, amsgrad):
    ours, ref = _params(xp), _params(xp)
    opt = AdamW(ours, lr=0.01, weight_decay=0.0, amsgrad=amsgrad)
    ref_opt = Adam(ref, lr=0.01, amsgrad=amsgrad)
    for step in range(10):
        _new_grads(xp, ours, step)
        _new_grads(xp, ref, step)
        opt.step()
        ref_opt.step()
    for p, q in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(to_np(p.data), to_np(q.data))


@pytest.mark.parametrize("maximize", [False, True])
def test_sgd_without_momentum_is_p_minus_lr_g(xp, maximize):
    params = _params(xp)
    opt = SGD(params, lr=0.3, maximize=maximize)
    for step in range(3):
        start = [to_np(p.data).copy() for p in params]
        _new_grads(xp, params, step)
        opt.step()
        sign = -1.0 if maximize else 1.0
        for p, p0 in zip(params, start, strict=True):
            np.testing.assert_array_equal(to_np(p.data), p0 - 0.3 * (sign * to_np(p.grad)))


def test_sgd_momentum_first_buffer_is_the_gradient(xp):
    params = _params(xp)
    opt = SGD(params, lr=0.1, momentum=0.9, dampening=0.5)
    opt.step()
    for p in params:
        np.testing.assert_array_equal(to_np(opt.state[p]["momentum_buffer"]), to_np(p.grad))


# ------------------------------------------------------------- ways of giving params


def test_params_as_iterable_generator_dict_and_single(xp):
    params = _params(xp)
    assert Adam(iter(params)).param_groups[0]["params"] == params
    assert Adam(p for p in params).param_groups[0]["params"] == params
    assert Adam(tuple(params)).param_groups[0]["params"] == params
    named = Adam({"w": params[0], "b": params[1]})
    assert named.param_groups[0]["params"] == params[:2]
    assert named.param_groups[0]["param_names"] == ["w", "b"]
    assert SGD(params[2]).param_groups[0]["params"] == [params[2]]


def test_params_named_params_is_a_dict_not_a_group(xp):
    """A dict whose *name* is "params" still means name -> parameter."""
    p, q = _params(xp, shapes=((2,), (3,)))
    opt = Adam({"params": p, "other": q})
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0]["params"] == [p, q]


def test_params_as_list_of_group_dicts_with_overrides(xp):
    a, b, c = _params(xp)
    opt = SGD(
        [{"params": [a, b], "lr": 0.5, "nesterov": True}, {"params": {"c": c}}],
        lr=0.1,
        momentum=0.9,
    )
    g0, g1 = opt.param_groups
    assert g0["params"] == [a, b] and g1["params"] == [c]
    assert (g0["lr"], g0["momentum"], g0["nesterov"]) == (0.5, 0.9, True)
    assert (g1["lr"], g1["momentum"], g1["nesterov"]) == (0.1, 0.9, False)
    assert g1["param_names"] == ["c"]
    assert opt.defaults["lr"] == 0.1


def test_single_group_dict(xp):
    a, b, _ = _params(xp)
    opt = Adam({"params": [a, b], "lr": 0.2})
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0]["lr"] == 0.2


def test_adam_group_beta1_beta2_and_betas_spellings(xp):
    a, b, c = _params(xp)
    opt = Adam(
        [{"params": [a], "beta1": 0.5}, {"params": [b], "beta2": 0.8}, {"params": [c]}],
        betas=(0.7, 0.9),
    )
    assert [g["betas"] for g in opt.param_groups] == [(0.5, 0.9), (0.7, 0.8), (0.7, 0.9)]
    for g in opt.param_groups:
        assert "beta1" not in g and "beta2" not in g
    assert Adam([a], beta1=0.5, beta2=0.6).param_groups[0]["betas"] == (0.5, 0.6)
    assert Adam([a], betas=(0.5, 0.6), beta1=0.5).param_groups[0]["betas"] == (0.5, 0.6)
    assert Adam([a], betas=[0.5, 0.6]).param_groups[0]["betas"] == (0.5, 0.6)
    opt = Adam([a])
    opt.add_param_group({"params": [b], "betas": (0.2, 0.3), "beta1": 0.2})
    assert opt.param_groups[1]["betas"] == (0.2, 0.3)


def test_any_duck_typed_object_with_data_and_grad_works(xp):
    rng = np.random.default_rng(3)
    ns = types.SimpleNamespace(
        data=to_backend(rng.standard_normal(4), xp), grad=to_backend(rng.standard_normal(4), xp)
    )

    class Slotted:
        __slots__ = ("data", "grad")

    s = Slotted()
    s.data = to_backend(rng.standard_normal(2), xp)
    s.grad = to_backend(np.ones(2), xp)
    start = to_np(s.data).copy()
    SGD([ns, s], lr=0.5).step()
    np.testing.assert_array_equal(to_np(s.data), start - 0.5)


class _ElementwiseEq(P):
    """A parameter whose ``==`` is elementwise and unhashable, like an array."""

    __hash__ = None

    def __eq__(self, other):
        raise AssertionError("the optimizer must not compare parameters with ==")


def test_unhashable_parameters_with_elementwise_eq(xp):
    params = [_ElementwiseEq(p.data, p.grad) for p in _params(xp)]
    opt = Adam(params, lr=0.01)
    opt.step()
    assert all(p in opt.state for p in params)
    opt.load_state_dict(opt.state_dict())


# ------------------------------------------------------------- add_param_group


def test_add_param_group(xp):
    a, b, c = _params(xp)
    opt = Adam([a], lr=0.01, weight_decay=0.1)
    opt.add_param_group({"params": [b, c], "lr": 0.5})
    assert len(opt.param_groups) == 2
    g = opt.param_groups[1]
    assert g["params"] == [b, c]
    assert (g["lr"], g["weight_decay"], g["betas"]) == (0.5, 0.1, (0.9, 0.999))
    opt.step()
    assert opt.state[c]["step"] == 1


@pytest.mark.parametrize(
    "bad_group",
    [
        pytest.param(lambda a, b: {"params": [b, a]}, id="param-already-in-a-group"),
        pytest.param(lambda a, b: {"params": [b, b]}, id="duplicate-in-new-group"),
        pytest.param(lambda a, b: {"params": []}, id="empty"),
    ],
)
def test_add_param_group_refused_leaves_optimizer_unchanged(xp, bad_group):
    a, b, _ = _params(xp)
    opt = Adam([a], lr=0.01)
    opt.step()
    before = snapshot(opt, [a, b])
    with pytest.raises(ValueError):
        opt.add_param_group(bad_group(a, b))
    assert len(opt.param_groups) == 1
    assert_unchanged(before, snapshot(opt, [a, b]))
    opt.add_param_group({"params": [b]})  # the refused call registered nothing
    assert len(opt.param_groups) == 2


def test_add_param_group_in_two_groups_message_names_param(xp):
    a, b, _ = _params(xp)
    opt = SGD({"w": a, "b": b})
    with pytest.raises(ValueError, match=r"more than once"):
        opt.add_param_group({"params": {"again": a}})


def test_add_param_group_needs_a_dict_with_params(xp):
    (a,) = _params(xp, shapes=((2,),))
    opt = SGD([a])
    with pytest.raises(TypeError, match="params"):
        opt.add_param_group([a])
    with pytest.raises(TypeError, match="params"):
        opt.add_param_group({"lr": 0.1})


# ------------------------------------------------------------- state, step, zero_grad


def test_state_keys_are_pytorchs(xp):
    a, b, _ = _params(xp)
    adam = Adam([a], lr=0.01)
    adam.step()
    assert set(adam.state[a]) == {"step", "exp_avg", "exp_avg_sq"}
    ams = Adam([b], lr=0.01, amsgrad=True)
    ams.step()
    assert set(ams.state[b]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert ams.state[b]["step"] == 1 and isinstance(ams.state[b]["step"], int)
    sgd = SGD([a], momentum=0.9)
    sgd.step()
    assert set(sgd.state[a]) == {"momentum_buffer"}
    assert len(sgd.state) == 1 and list(sgd.state) == [a]


def test_amsgrad_switched_on_mid_run_creates_its_buffer(xp):
    (a,) = _params(xp, shapes=((3,),))
    opt = Adam([a], lr=0.01)
    opt.step()
    opt.param_groups[0]["amsgrad"] = True
    opt.step()
    assert_close(opt.state[a]["max_exp_avg_sq"], opt.state[a]["exp_avg_sq"])


def test_param_with_grad_none_gets_no_state_and_no_step(xp):
    a, b, c = _params(xp)
    b.grad = None
    b_start = to_np(b.data).copy()
    opt = Adam([a, b, c], lr=0.01)
    opt.step()
    opt.step()
    assert b not in opt.state
    assert opt.state[a]["step"] == 2
    np.testing.assert_array_equal(to_np(b.data), b_start)
    assert opt.step_count == 2
    assert "1" not in opt.m and 1 not in opt.m and len(opt.m) == 2


def test_step_with_no_gradients_at_all(xp):
    params = _params(xp, with_grad=False)
    opt = SGD(params, momentum=0.9)
    opt.step()
    assert len(opt.state) == 0
    assert opt.step_count == 1


@pytest.mark.parametrize("make", ALL_OPTIMIZERS)
def test_step_closure_returns_its_loss(xp, make):
    params = _params(xp)
    opt = make(params)
    calls = []

    def closure():
        calls.append(1)
        return 1.25

    assert opt.step(closure) == 1.25
    assert calls == [1]
    assert opt.step() is None
    assert opt.step_count == 2


def test_closure_computes_the_gradient_before_the_update(xp):
    (p,) = _params(xp, shapes=((3,),), with_grad=False)
    opt = SGD([p], lr=0.5)
    start = to_np(p.data).copy()

    def closure():
        p.grad = to_backend(np.full(3, 2.0), xp)
        return 0.0

    opt.step(closure)
    np.testing.assert_array_equal(to_np(p.data), start - 1.0)


def test_zero_grad_set_to_none(xp):
    params = _params(xp)
    opt = Adam(params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    opt.zero_grad()  # no gradients at all is fine
    params[0].grad = to_backend(np.ones((2, 3)), xp)
    opt.zero_grad(set_to_none=True)
    assert params[0].grad is None


def test_zero_grad_to_zeros(xp):
    params = _params(xp)
    params[1].grad = None
    grads = [p.grad for p in params]
    SGD(params).zero_grad(set_to_none=False)
    assert params[1].grad is None
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        np.testing.assert_array_equal(to_np(p.grad), np.zeros(tuple(p.data.shape)))
        assert p.grad.dtype == g.dtype
        if backend_name(xp) != "jax":
            assert p.grad is g  # in place on mutable backends


def test_repr_lists_groups_and_options(xp):
    a, b, _ = _params(xp)
    opt = Adam([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.01, amsgrad=True)
    text = repr(opt)
    assert text.startswith("Adam (")
    assert "Parameter Group 0" in text and "Parameter Group 1" in text
    assert "lr: 0.01" in text and "lr: 0.5" in text
    assert "amsgrad: True" in text and "betas: (0.9, 0.999)" in text
    assert "params" not in text
    assert repr(SGD([a], momentum=0.9)).startswith("SGD (")
    assert "weight_decay: 0.01" in repr(AdamW([a]))


# ------------------------------------------------------------- lr, counters


def test_lr_read_and_write(xp):
    a, b, _ = _params(xp)
    opt = Adam([{"params": [a]}, {"params": [b]}], lr=0.01)
    assert opt.lr == 0.01
    opt.lr = 0.1
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]
    opt.lr *= 0.5  # the seed's schedule idiom
    assert opt.lr == 0.05
    opt.param_groups[1]["lr"] = 0.2
    with pytest.raises(ValueError, match="param_groups"):
        opt.lr
    opt.lr = 0.3
    assert opt.lr == 0.3


def test_lr_write_refuses_invalid_value(xp):
    (a,) = _params(xp, shapes=((2,),))
    opt = SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -0.1
    assert opt.lr == 0.1


def test_lr_change_takes_effect_on_next_step(xp):
    (p,) = _params(xp, shapes=((3,),))
    p.grad = to_backend(np.ones(3), xp)
    opt = SGD([p], lr=0.5)
    start = to_np(p.data).copy()
    opt.step()
    opt.lr = 0.25
    opt.step()
    opt.param_groups[0]["lr"] = 0.125
    opt.step()
    np.testing.assert_array_equal(to_np(p.data), start - 0.5 - 0.25 - 0.125)


def test_step_count_and_skipped_steps(xp):
    params = _params(xp)
    opt = Adam(params, nonfinite="skip")
    assert (opt.step_count, opt.skipped_steps) == (0, 0)
    opt.step()
    opt.step()
    params[0].grad = params[0].grad * float("nan")
    opt.step()
    assert (opt.step_count, opt.skipped_steps) == (2, 1)
    assert opt.state[params[1]]["step"] == 2


# ------------------------------------------------------------- m and v views


def test_m_v_keyed_by_dict_name_are_views_of_state(xp):
    w, b, _ = _params(xp)
    opt = Adam({"w": w, "b": b}, lr=0.01)
    assert len(opt.m) == 0 and len(opt.v) == 0  # no step yet
    opt.step()
    assert set(opt.m) == {"w", "b"} and list(opt.v) == ["w", "b"]
    assert opt.m["w"] is opt.state[w]["exp_avg"]
    assert opt.v["b"] is opt.state[b]["exp_avg_sq"]
    with pytest.raises(KeyError):
        opt.m["nope"]
    opt.step()
    assert opt.m["w"] is opt.state[w]["exp_avg"]
    assert_close(opt.v["w"], opt.state[w]["exp_avg_sq"])


def test_m_v_keyed_by_position(xp):
    params = _params(xp)
    opt = AdamW([{"params": params[:2]}, {"params": params[2:]}], lr=0.01)
    opt.step()
    assert list(opt.m) == [0, 1, 2]
    assert opt.m[2] is opt.state[params[2]]["exp_avg"]
    assert opt.v["1"] is opt.state[params[1]]["exp_avg_sq"]
    assert dict(opt.m).keys() == {0, 1, 2}


def test_m_v_are_read_only(xp):
    params = _params(xp)
    opt = Adam(params)
    opt.step()
    with pytest.raises(TypeError):
        opt.m[0] = params[0].data
    with pytest.raises(TypeError):
        del opt.v[0]
    with pytest.raises(AttributeError):
        opt.m = {}


def test_m_v_are_live_views_not_copies(xp):
    params = _params(xp)
    opt = Adam(params, lr=0.01)
    opt.step()
    view = opt.m
    first = to_np(view[0]).copy()
    _new_grads(xp, params, 7)
    opt.step()
    assert not np.array_equal(to_np(view[0]), first)  # the same view sees the new state
    assert_close(view[0], opt.state[params[0]]["exp_avg"], rtol=0)


def test_sgd_has_no_moment_views():
    assert not hasattr(SGD, "m") and not hasattr(SGD, "v")


# ------------------------------------------------------------- in place, dtypes


@pytest.mark.parametrize("make", ALL_OPTIMIZERS)
def test_updated_in_place_on_mutable_backends_rebound_on_jax(xp, make):
    params = _params(xp)
    datas = [p.data for p in params]
    user_view = params[0].data[0, ...]
    opt = make(params)
    opt.step()
    states = {id(p): dict(opt.state[p]) for p in params}
    for step in range(3):
        _new_grads(xp, params, step)
        opt.step()
    if backend_name(xp) == "jax":  # immutable: new arrays are bound to .data
        for p, d in zip(params, datas, strict=True):
            assert p.data is not d
            assert backend_name(p.data) == "jax"
        # not every value need differ: a sign step (Lion's) of +lr, -lr, +lr, -lr comes back
        assert any(
            not np.array_equal(to_np(p.data), to_np(d)) for p, d in zip(params, datas, strict=True)
        )
        return
    for p, d in zip(params, datas, strict=True):
        assert p.data is d
        for key, value in states[id(p)].items():
            if hasattr(value, "shape"):
                assert opt.state[p][key] is value, key
    np.testing.assert_array_equal(to_np(user_view), to_np(params[0].data)[0])


def test_float32_matches_float64_run_to_float32_precision(xp):
    p32 = _params(xp, dtype="float32")
    p64 = [P(to_backend(to_np(p.data), xp, dtype="float64")) for p in p32]
    o32, o64 = Adam(p32, lr=0.01), Adam(p64, lr=0.01)
    for step in range(5):
        _new_grads(xp, p32, step)
        _new_grads(xp, p64, step)
        o32.step()
        o64.step()
    for a, b in zip(p32, p64, strict=True):
        assert_close(a.data, to_np(b.data).astype(np.float32), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- state dicts


def _train(opt, xp, params, steps, seed0=0):
    for step in range(steps):
        _new_grads(xp, params, seed0 + step)
        opt.step()


def test_state_dict_layout_is_pytorchs(xp):
    a, b, c = _params(xp)
    opt = Adam([{"params": [a, b]}, {"params": [c], "lr": 0.5}], lr=0.01, amsgrad=True)
    b.grad = None
    opt.step()
    sd = opt.state_dict()
    assert set(sd) >= {"state", "param_groups"}
    assert sd["step_count"] == 1 and sd["skipped_steps"] == 0
    assert sorted(sd["state"]) == [0, 2]  # b has no state
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][0]["exp_avg"] is opt.state[a]["exp_avg"]
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert sd["param_groups"][1]["lr"] == 0.5
    assert sd["param_groups"][0]["betas"] == (0.9, 0.999)
    for group in sd["param_groups"]:
        assert {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"} <= set(group)


def test_state_dict_matches_torch_layout(xp, torch):
    a, b, _ = _params(xp)
    opt = Adam([a, b], lr=0.01)
    ta, tb = (torch.tensor(to_np(p.data), requires_grad=True) for p in (a, b))
    topt = torch.optim.Adam([ta, tb], lr=0.01)
    ta.grad, tb.grad = torch.ones_like(ta), torch.ones_like(tb)
    opt.step()
    topt.step()
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert ours["state"].keys() == theirs["state"].keys()
    assert ours["state"][0].keys() == theirs["state"][0].keys()
    assert ours["param_groups"][0]["params"] == theirs["param_groups"][0]["params"]
    assert set(ours["param_groups"][0]) - {"param_names"} <= set(theirs["param_groups"][0])


def _copy_params(params, xp):
    return [P(to_backend(to_np(p.data).copy(), xp, dtype=p.data.dtype)) for p in params]


@pytest.mark.parametrize("make", ALL_OPTIMIZERS)
def test_state_dict_resume_on_another_backend_continues_exactly(xp, make):
    """Save mid-run on NumPy, load into a fresh optimizer on ``xp``: same as never stopping."""
    np_xp = backend.resolve_backend("numpy")
    ref = _params(np_xp)
    ref_opt = make([{"params": ref[:2]}, {"params": ref[2:], "lr": 0.02}])
    _train(ref_opt, np_xp, ref, 20)

    half = _params(np_xp)
    half_opt = make([{"params": half[:2]}, {"params": half[2:], "lr": 0.02}])
    _train(half_opt, np_xp, half, 10)
    sd = half_opt.state_dict()

    resumed = _copy_params(half, xp)
    opt = make([{"params": resumed[:2]}, {"params": resumed[2:], "lr": 0.99}])
    opt.load_state_dict(sd)
    assert opt.step_count == 10
    assert opt.param_groups[1]["lr"] == 0.02
    for p in resumed:
        for key, value in opt.state[p].items():
            if hasattr(value, "shape"):
                assert backend_name(value) == backend_name(xp), key
                assert value.dtype == p.data.dtype
                assert value is not half_opt.state[half[resumed.index(p)]][key]
    _train(opt, xp, resumed, 10, seed0=10)
    assert opt.step_count == 20
    for p, q in zip(resumed, ref, strict=True):
        assert_close(p.data, q.data, rtol=1e-15)


@pytest.mark.parametrize("make", ALL_OPTIMIZERS)
def test_state_dict_from_another_backend_back_to_numpy(other_xp, make):
    np_xp = backend.resolve_backend("numpy")
    src = _params(other_xp)
    src_opt = make(src)
    _train(src_opt, other_xp, src, 5)
    dst = _copy_params(src, np_xp)
    opt = make(dst)
    opt.load_state_dict(src_opt.state_dict())
    for p in dst:
        for key, value in opt.state[p].items():
            if hasattr(value, "shape"):
                assert isinstance(value, np.ndarray), key
    _train(opt, np_xp, dst, 3, seed0=5)
    _train(src_opt, other_xp, src, 3, seed0=5)
    for p, q in zip(dst, src, strict=True):
        assert_close(p.data, q.data, rtol=1e-15)


def test_loaded_state_is_a_copy(xp):
    params = _params(xp)
    opt = Adam(params, lr=0.01)
    opt.step()
    sd = opt.state_dict()
    kept = to_np(sd["state"][0]["exp_avg"]).copy()
    twin = _copy_params(params, xp)
    opt2 = Adam(twin, lr=0.01)
    opt2.load_state_dict(sd)
    assert opt2.state[twin[0]]["exp_avg"] is not sd["state"][0]["exp_avg"]
    _new_grads(xp, twin, 5)
    opt2.step()
    np.testing.assert_array_equal(to_np(sd["state"][0]["exp_avg"]), kept)


def test_load_state_dict_with_string_keys_and_float_step(xp):
    """A state dict that went through JSON-like storage (string indices, float steps)."""
    params = _params(xp)
    opt = Adam(params, lr=0.01)
    opt.step()
    sd = opt.state_dict()
    sd = {
        **sd,
        "state": {str(k): {**v, "step": float(v["step"])} for k, v in sd["state"].items()},
        "param_groups": [{**g, "betas": list(g["betas"])} for g in sd["param_groups"]],
    }
    twin = _copy_params(params, xp)
    opt2 = Adam(twin, lr=0.01)
    opt2.load_state_dict(sd)
    assert opt2.state[twin[0]]["step"] == 1 and isinstance(opt2.state[twin[0]]["step"], int)
    assert opt2.param_groups[0]["betas"] == (0.9, 0.999)


def _bad_group_count(sd):
    sd["param_groups"] = sd["param_groups"][:1]


def _bad_group_size(sd):
    sd["param_groups"][1]["params"] = [*sd["param_groups"][1]["params"], 7]


def _bad_shape(sd):
    sd["state"][2]["exp_avg"] = sd["state"][0]["exp_avg"]


def _bad_index(sd):
    sd["state"][9] = sd["state"].pop(2)


def _bad_hyperparameter(sd):
    sd["param_groups"][1]["lr"] = -1.0


def _not_a_state_dict(sd):
    del sd["state"]


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (_bad_group_count, "groups"),
        (_bad_group_size, r"param_groups\[1\]"),
        (_bad_shape, "shape"),
        (_bad_index, "index"),
        (_bad_hyperparameter, "lr"),
        (_not_a_state_dict, "state"),
    ],
)
def test_load_state_dict_errors_leave_optimizer_unchanged(xp, corrupt, match):
    params = _params(xp)
    source = Adam([{"params": params[:2]}, {"params": params[2:]}], lr=0.5)
    _train(source, xp, params, 2)
    sd = source.state_dict()
    sd = {**sd, "param_groups": [dict(g) for g in sd["param_groups"]], "state": dict(sd["state"])}
    sd["param_groups"][0]["lr"] = 0.125  # would change group 0 if loading were not atomic
    corrupt(sd)

    target_params = _copy_params(params, xp)
    target = Adam([{"params": target_params[:2]}, {"params": target_params[2:]}], lr=0.01)
    _train(target, xp, target_params, 1, seed0=50)
    before = snapshot(target, target_params)
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(sd)
    assert_unchanged(before, snapshot(target, target_params))


# ------------------------------------------------------------- refused arguments


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW])
def test_empty_parameter_list(cls):
    with pytest.raises(ValueError, match="empty"):
        cls([])
    with pytest.raises(ValueError, match="empty"):
        cls({})
    with pytest.raises(ValueError, match="empty"):
        cls(iter([]))


def test_empty_group_in_list_of_groups(xp):
    (a,) = _params(xp, shapes=((2,),))
    with pytest.raises(ValueError, match="empty"):
        Adam([{"params": [a]}, {"params": []}])


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW])
def test_duplicate_parameters(xp, cls):
    a, b, _ = _params(xp)
    with pytest.raises(ValueError, match="more than once"):
        cls([a, b, a])
    with pytest.raises(ValueError, match=r"'second'"):
        cls({"first": a, "second": a})
    with pytest.raises(ValueError, match="more than once"):
        cls([{"params": [a]}, {"params": [b, a]}])


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (lambda a: [a, 3.0], "float"),
        (lambda a: [a, [1.0, 2.0]], "list"),
        (lambda a: {a}, "set"),
        (lambda a: 42, "int"),
        (lambda a: "weights", "str"),
        (lambda a: [P([1.0, 2.0], None)], "list"),
    ],
)
def test_non_parameters_raise_type_error(xp, params, match):
    (a,) = _params(xp, shapes=((2,),))
    with pytest.raises(TypeError, match=match):
        Adam(params(a))


def test_mixed_backends_in_one_group_raise_type_error_naming_the_param(other_xp):
    np_xp = backend.resolve_backend("numpy")
    (a,) = _params(np_xp, shapes=((2,),))
    (b,) = _params(other_xp, shapes=((2,),))
    with pytest.raises(TypeError, match=r"'bias'.*" + backend_name(other_xp)):
        Adam({"weight": a, "bias": b})
    with pytest.raises(TypeError, match=r"\b1\b"):
        SGD([a, b])
    (c,) = _params(np_xp, shapes=((2,),))
    opt = Adam([a])
    with pytest.raises(TypeError, match=r"param_groups\[1\]"):
        opt.add_param_group({"params": [c, b]})
    assert len(opt.param_groups) == 1


def test_backends_may_differ_between_groups(other_xp):
    np_xp = backend.resolve_backend("numpy")
    (a,) = _params(np_xp, shapes=((3,),))
    (b,) = _params(other_xp, shapes=((3,),), seed=0)
    opt = Adam([{"params": [a]}, {"params": [b]}], lr=0.01)
    for _ in range(3):
        opt.step()
    assert backend_name(b.data) == backend_name(other_xp)
    assert backend_name(opt.state[b]["exp_avg"]) == backend_name(other_xp)
    assert_close(b.data, a.data, rtol=1e-15)


@pytest.mark.parametrize("make", ALL_OPTIMIZERS)
def test_wrong_grad_shape_raises_and_changes_nothing(xp, make):
    params = _params(xp)
    opt = make([{"params": params[:1]}, {"params": params[1:]}])
    opt.step()
    _new_grads(xp, params, 1)
    params[2].grad = to_backend(np.ones(3), xp)  # the parameter is 0-d
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"shape \(3,\).*\(\)"):
        opt.step()
    assert_unchanged(before, snapshot(opt, params))


@pytest.mark.parametrize("make", ALL_OPTIMIZERS)
def test_nonfinite_ignore_applies_the_step(xp, make):
    params = _params(xp)
    opt = make(params, nonfinite="ignore")
    g = to_np(params[0].grad).copy()
    g[0, 0] = float("nan")
    params[0].grad = to_backend(g, xp)
    opt.step()
    assert opt.step_count == 1
    assert np.isnan(to_np(params[0].data)[0, 0])
    assert np.isfinite(to_np(params[1].data)).all()


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_opposite_infinities_are_detected(xp, mode):
    """+inf in one gradient and -inf in another (their sum is NaN, not inf)."""
    params = _params(xp)
    opt = SGD(params, nonfinite=mode)
    params[0].grad = to_backend(np.full((2, 3), np.inf), xp)
    params[1].grad = to_backend(np.array([-np.inf, 0.0, np.inf]), xp)
    before = snapshot(opt, params)
    if mode == "raise":
        with pytest.raises(FloatingPointError):
            opt.step()
    else:
        opt.step()
        before = (*before[:3], (0, 1))
    assert_unchanged(before, snapshot(opt, params))


def test_large_finite_gradients_are_not_refused(xp):
    """Gradients whose *sum* overflows are still finite: the step goes ahead."""
    params = _params(xp, shapes=((2,), (2,)))
    for p in params:
        p.grad = to_backend(np.full(2, 1e308), xp)
    opt = SGD(params, lr=1e-10)
    start = [to_np(p.data).copy() for p in params]
    opt.step()
    assert opt.step_count == 1
    for p, p0 in zip(params, start, strict=True):
        np.testing.assert_array_equal(to_np(p.data), p0 + -1e-10 * np.full(2, 1e308))


def test_sgd_without_momentum_keeps_no_state_like_torch(xp):
    params = _params(xp)
    opt = SGD(params, lr=0.1)
    for p in params:
        p.grad = xp.ones_like(p.data)
    opt.step()
    assert len(opt.state) == 0 and opt.state_dict()["state"] == {}
    assert opt.state.get(params[0]) is None
    assert opt.state[params[0]] == {}  # reading gives an empty record, as a defaultdict(dict)
