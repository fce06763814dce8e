"""Optimizer hooks (torch.optim's six) and loading a state dict by parameter name."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import P, to_np

import neural_arch as na
from neural_arch.backend import to_backend


def _params(xp, n=2):
    return [P(to_backend(np.arange(3.0) + i, xp), to_backend(np.ones(3), xp)) for i in range(n)]


def test_step_hooks_run_in_order_and_can_change_the_arguments(xp):
    opt = na.SGD(_params(xp), lr=0.1)
    log = []
    opt.register_step_pre_hook(lambda o, args, kwargs: log.append(("pre", args, kwargs)))

    def replace_closure(o, args, kwargs):
        assert args == (o,)  # torch's convention: the optimizer first
        return (o,), {"closure": lambda: "from the hook"}

    opt.register_step_pre_hook(replace_closure)
    opt.register_step_post_hook(lambda o, args, kwargs: log.append(("post", args, kwargs)))
    assert opt.step() == "from the hook"
    assert log[0] == ("pre", (opt,), {})
    assert log[1][0] == "post" and set(log[1][2]) == {"closure"}
    assert opt.step_count == 1


def test_handles_remove_hooks_also_as_context_managers(xp):
    opt = na.Adam(_params(xp), lr=0.1)
    calls = []
    handle = opt.register_step_post_hook(lambda *a: calls.append(1))
    with opt.register_step_pre_hook(lambda *a: calls.append(0)):
        opt.step()
    opt.step()
    handle.remove()
    handle.remove()  # twice: nothing
    opt.step()
    assert calls == [0, 1, 1]


def test_a_step_that_raises_runs_no_post_hook(xp):
    params = _params(xp)
    opt = na.SGD(params, lr=0.1)
    calls = []
    opt.register_step_post_hook(lambda *a: calls.append(1))
    params[1].grad = to_backend(np.ones(4), xp)
    with pytest.raises(ValueError, match="shape"):
        opt.step()
    assert calls == []


def test_state_dict_hooks_prepend_and_replace(xp):
    opt = na.SGD(_params(xp), lr=0.1, momentum=0.9)
    opt.step()
    order = []
    opt.register_state_dict_pre_hook(lambda o: order.append("second"))
    opt.register_state_dict_pre_hook(lambda o: order.append("first"), prepend=True)
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "note": "added"})
    sd = opt.state_dict()
    assert order == ["first", "second"] and sd["note"] == "added"


def test_load_state_dict_hooks(xp):
    params = _params(xp)
    opt = na.SGD(params, lr=0.1, momentum=0.9)
    opt.step()
    sd = opt.state_dict()
    other = na.SGD(_params(xp), lr=0.5, momentum=0.9)
    seen = []

    def halve_lr(o, state_dict):
        groups = [{**g, "lr": g["lr"] / 2} for g in state_dict["param_groups"]]
        return {**state_dict, "param_groups": groups}

    other.register_load_state_dict_pre_hook(halve_lr)
    other.register_load_state_dict_post_hook(lambda o: seen.append(o.param_groups[0]["lr"]))
    other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.05 and seen == [0.05]
    assert sd["param_groups"][0]["lr"] == 0.1  # the caller's dict is not changed


def test_hooks_run_once_for_subclasses_and_lbfgs(xp):
    calls = []

    class Counting(na.SGD):
        def step(self, closure=None):
            return super().step(closure)

    opt = Counting(_params(xp), lr=0.1)
    opt.register_step_pre_hook(lambda *a: calls.append("sgd"))
    opt.step()
    params = _params(xp, 1)
    lbfgs = na.LBFGS(params, max_iter=2)
    lbfgs.register_step_pre_hook(lambda *a: calls.append("lbfgs"))
    lbfgs.register_step_post_hook(lambda *a: calls.append("lbfgs post"))

    def closure():
        lbfgs.zero_grad()
        params[0].grad = params[0].data * 2.0
        return float(to_np(params[0].data @ params[0].data))

    lbfgs.step(closure)
    assert calls == ["sgd", "lbfgs", "lbfgs post"]


@pytest.mark.parametrize("bad", [None, 3, "hook"])
def test_hooks_must_be_callable(bad):
    opt = na.SGD(_params(na.backend.resolve_backend("numpy")), lr=0.1)
    with pytest.raises(TypeError, match="hook must be callable"):
        opt.register_step_pre_hook(bad)
    with pytest.raises(TypeError, match="prepend must be True or False"):
        opt.register_state_dict_pre_hook(lambda o: None, prepend="yes")


def test_hook_calls_match_torch(torch):
    """The same arguments at the same moments as torch.optim's hooks."""
    mine, theirs = [], []
    p = P(np.ones(2), np.ones(2))
    t = torch.ones(2, dtype=torch.float64, requires_grad=True)
    t.grad = torch.ones(2, dtype=torch.float64)
    for opt, log in ((na.SGD([p], lr=0.1), mine), (torch.optim.SGD([t], lr=0.1), theirs)):
        opt.register_step_pre_hook(lambda o, a, k, log=log: log.append(("pre", a == (o,), k)))
        opt.register_step_post_hook(lambda o, a, k, log=log: log.append(("post", a == (o,), k)))
        opt.register_state_dict_pre_hook(lambda o, log=log: log.append("sd pre"))
        opt.register_state_dict_post_hook(lambda o, sd, log=log: log.append("sd post"))
        opt.register_load_state_dict_pre_hook(lambda o, sd, log=log: log.append("load pre"))
        opt.register_load_state_dict_post_hook(lambda o, log=log: log.append("load post"))
        opt.step()
        opt.load_state_dict(opt.state_dict())
    assert mine == theirs


# ------------------------------------------------------------------- by name


def _named(xp, order):
    values = {"w": np.arange(3.0), "b": np.arange(2.0) + 10}
    return {name: P(to_backend(values[name], xp), None) for name in order}


def _train(opt, params, steps=3):
    for step in range(steps):
        for name, p in params.items():
            p.grad = p.data * 0 + (step + 1) * (1.0 if name == "w" else -2.0)
        opt.step()


def test_a_reordered_model_resumes_by_name(xp):
    first = _named(xp, ["w", "b"])
    opt = na.Adam(first, lr=0.1)
    _train(opt, first)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["param_names"] == ["w", "b"]
    again = _named(xp, ["b", "w"])
    for name in again:
        again[name].data = to_backend(to_np(first[name].data), xp)
    resumed = na.Adam(again, lr=0.1)
    resumed.load_state_dict(sd)
    for name in ("w", "b"):
        np.testing.assert_array_equal(
            to_np(resumed.state[again[name]]["exp_avg"]), to_np(opt.state[first[name]]["exp_avg"])
        )
    _train(opt, first, 2)
    _train(resumed, again, 2)
    for name in ("w", "b"):
        assert to_np(again[name].data).tobytes() == to_np(first[name].data).tobytes()


def test_names_that_do_not_match_are_refused_and_change_nothing(xp):
    first = _named(xp, ["w", "b"])
    opt = na.Adam(first, lr=0.1)
    _train(opt, first)
    sd = opt.state_dict()
    renamed = {"weight": first["w"], "b": first["b"]}
    other = na.Adam(renamed, lr=0.5)
    with pytest.raises(ValueError, match=r"names parameters \['w'\].*'weight'.*by position"):
        other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.5 and len(other.state) == 0
    for group in sd["param_groups"]:
        del group["param_names"]
    other.load_state_dict(sd)  # by position
    assert other.param_groups[0]["lr"] == 0.1


def test_without_names_on_one_side_parameters_match_by_position(xp):
    first = _named(xp, ["w", "b"])
    opt = na.Adam(list(first.values()), lr=0.1)
    _train(opt, first)
    named = na.Adam(_named(xp, ["w", "b"]), lr=0.1)
    named.load_state_dict(opt.state_dict())
    assert [len(r) for r in named.state.values()] == [3, 3]


def test_torch_named_state_dict_loads_by_name(torch):
    values = {"w": np.arange(3.0), "b": np.arange(2.0) + 10}
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}
    topt = torch.optim.Adam(list(tp.items()), lr=0.1)
    for k, t in tp.items():
        t.grad = torch.full_like(t, 1.0 if k == "w" else -2.0)
    topt.step()
    sd = topt.state_dict()
    assert sd["param_groups"][0]["param_names"] == ["w", "b"]
    ours = {k: P(np.array(tp[k].detach().numpy()), None) for k in ("b", "w")}
    opt = na.Adam(ours, lr=0.1)
    opt.load_state_dict(sd)
    np.testing.assert_array_equal(opt.state[ours["w"]]["exp_avg"], topt.state[tp["w"]]["exp_avg"])
    np.testing.assert_array_equal(opt.state[ours["b"]]["exp_avg"], topt.state[tp["b"]]["exp_avg"])
