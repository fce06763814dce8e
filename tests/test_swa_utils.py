"""Weight averaging: ``na.optim.swa_utils`` against ``torch.optim.swa_utils``; ``na.optim.EMA``.

References that share no code with ours: PyTorch's AveragedModel and SWALR
on a torch model with the same weights (float64), and the closed form of an
exponential moving average.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import to_np

import neural_arch as na
from neural_arch import backend
from neural_arch.optim import EMA, swa_utils

# --------------------------------------------------------------------------- helpers

SIZES = ((3, 5), (5, 2))  # a two-layer MLP: (in, hidden), (hidden, out)


def _arr(xp, values, dtype="float64"):
    return backend.to_backend(np.asarray(values), xp, dtype=dtype, copy=True)


def _na_model(xp, dtype="float64"):
    na.manual_seed(0)
    return na.Sequential(na.Linear(3, 5), na.Tanh(), na.Linear(5, 2)).to(xp, dtype=dtype)


def _torch_twin(torch, model):
    """A torch.nn model with ``model``'s weights (float64)."""
    twin = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    twin = twin.double()
    with torch.no_grad():
        for q, p in zip(twin.parameters(), model.parameters(), strict=True):
            q.copy_(torch.from_numpy(np.array(to_np(p.data), dtype=np.float64)))
    return twin


def _train_both(torch, model, twin, opt, topt, rng):
    """One SGD step with the same random gradients on both models."""
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        g = rng.standard_normal(tuple(p.shape))
        p.grad = _arr(backend.namespace(p.data), g, p.data.dtype)
        q.grad = torch.from_numpy(g)
    opt.step()
    topt.step()


def _assert_params_close(ours, theirs, rtol=1e-12):
    for p, q in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(to_np(p.data), q.detach().numpy(), rtol=rtol, atol=1e-15)


def _bits(params):
    return [to_np(p.data).tobytes() for p in params]


# --------------------------------------------------------------------------- AveragedModel


AVERAGING = {
    # name: (our AveragedModel kwargs, torch's), each built fresh
    "swa-default": (lambda: {}, lambda T: {}),
    "ema-multi": (
        lambda: {"multi_avg_fn": swa_utils.get_ema_multi_avg_fn(0.9)},
        lambda T: {"multi_avg_fn": T.get_ema_multi_avg_fn(0.9)},
    ),
    "ema-multi-large-weight": (  # lerp's other branch: weight 1 - 0.3 >= 0.5
        lambda: {"multi_avg_fn": swa_utils.get_ema_multi_avg_fn(0.3)},
        lambda T: {"multi_avg_fn": T.get_ema_multi_avg_fn(0.3)},
    ),
    "ema-avg": (
        lambda: {"avg_fn": swa_utils.get_ema_avg_fn(0.75)},
        lambda T: {"avg_fn": T.get_ema_avg_fn(0.75)},
    ),
    "swa-avg": (
        lambda: {"avg_fn": swa_utils.get_swa_avg_fn()},
        lambda T: {"avg_fn": T.get_swa_avg_fn()},
    ),
    # PyTorch rounds get_swa_multi_avg_fn's weight 1/(n+1) to float32 on the CPU;
    # ours is exact, so it is compared with torch's exact default average.
    "swa-multi": (lambda: {"multi_avg_fn": swa_utils.get_swa_multi_avg_fn()}, lambda T: {}),
    # A user's function: the same code runs on our arrays and on torch tensors.
    "custom-avg-fn": (
        lambda: {"avg_fn": lambda a, c, n: (a * n + 2.0 * c) / (n + 2.0)},
        lambda T: {"avg_fn": lambda a, c, n: (a * n + 2.0 * c) / (n + 2.0)},
    ),
}


@pytest.mark.parametrize("name", sorted(AVERAGING))
def test_averaged_model_matches_torch(xp, torch, name):
    import torch.optim.swa_utils as T

    ours_kwargs, torch_kwargs = AVERAGING[name]
    model = _na_model(xp)
    twin = _torch_twin(torch, model)
    opt = na.SGD(model.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    averaged = swa_utils.AveragedModel(model, **ours_kwargs())
    reference = T.AveragedModel(twin, **torch_kwargs(T))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3))
    for step in range(6):
        _train_both(torch, model, twin, opt, topt, rng)
        averaged.update_parameters(model)
        reference.update_parameters(twin)
        assert averaged.n_averaged == int(reference.n_averaged) == step + 1
        _assert_params_close(averaged.parameters(), reference.parameters())
    # Calling the averaged model calls the averaged copy.
    out = averaged(_arr(xp, x))
    expected = reference(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(to_np(out.data), expected, rtol=1e-12, atol=1e-15)
    # The copy is independent of the model it averages.
    assert not np.array_equal(to_np(averaged.parameters()[0].data), to_np(model[0].weight.data))


def test_averaged_model_copies_model_and_counts(xp):
    model = _na_model(xp)
    before = _bits(model.parameters())
    averaged = swa_utils.AveragedModel(model)
    assert averaged.n_averaged == 0
    assert [n for n, _ in averaged.named_parameters()] == [
        "module." + n for n, _ in model.named_parameters()
    ]
    for p, q in zip(averaged.parameters(), model.parameters(), strict=True):
        assert p is not q and p.data is not q.data
    # Training the model leaves the copy alone until update_parameters.
    for p in model.parameters():
        p.data = p.data + 1.0
    assert _bits(averaged.parameters()) == before
    averaged.update_parameters(model)  # the first update copies
    assert _bits(averaged.parameters()) == _bits(model.parameters())
    for p in model.parameters():
        p.data = p.data + 2.0
    averaged.update_parameters(model)  # the mean of w + 1 and w + 3
    for p, w in zip(averaged.parameters(), before, strict=True):
        w = np.frombuffer(w, dtype=np.float64).reshape(tuple(p.shape))
        np.testing.assert_allclose(to_np(p.data), w + 2.0, rtol=1e-15)
    assert averaged.n_averaged == 2


def test_averaged_model_device_and_backend_move(xp):
    model = _na_model(xp)
    dev = backend.device(model.parameters()[0].data)
    averaged = swa_utils.AveragedModel(model, device=dev)
    assert backend.device(averaged.parameters()[0].data) == dev
    # A copy moved to NumPy still averages a model on xp (values are converted).
    averaged.to("numpy")
    averaged.update_parameters(model)
    for p, q in zip(averaged.parameters(), model.parameters(), strict=True):
        assert isinstance(p.data, np.ndarray)
        np.testing.assert_array_equal(p.data, to_np(q.data))


def test_multi_avg_fn_groups_and_in_place_convention(xp):
    model = _na_model(xp)
    calls = []

    def halfway(averaged, current, n):
        calls.append((len(averaged), n))
        return [(a + c) / 2 for a, c in zip(averaged, current, strict=True)]

    averaged = swa_utils.AveragedModel(model, multi_avg_fn=halfway)
    averaged.update_parameters(model)
    before = [to_np(p.data).copy() for p in averaged.parameters()]
    for p in model.parameters():
        p.data = p.data + 4.0
    averaged.update_parameters(model)
    assert calls == [(4, 1)]  # one group (one backend, device, dtype), 4 parameters
    for p, b in zip(averaged.parameters(), before, strict=True):
        np.testing.assert_allclose(to_np(p.data), b + 2.0, rtol=1e-15)


def test_multi_avg_fn_may_update_in_place(xp):
    if backend.is_immutable(xp.asarray(0.0)):
        pytest.skip("JAX arrays are immutable: a multi_avg_fn returns the new arrays there")
    model = _na_model(xp)

    def torch_style(averaged, current, n):  # PyTorch's convention: in place, returns None
        for a, c in zip(averaged, current, strict=True):
            a[...] = c * 0.0 + 7.0

    averaged = swa_utils.AveragedModel(model, multi_avg_fn=torch_style)
    averaged.update_parameters(model)
    versions = [p._version for p in averaged.parameters()]
    averaged.update_parameters(model)
    for p, v in zip(averaged.parameters(), versions, strict=True):
        assert np.all(to_np(p.data) == 7.0)
        assert p._version == v + 1


def test_averaged_model_state_dict_round_trip(xp, torch, tmp_path):
    import torch.optim.swa_utils as T

    model = _na_model(xp)
    averaged = swa_utils.AveragedModel(model)
    for k in range(3):
        for p in model.parameters():
            p.data = p.data * 0.5 + float(k)
        averaged.update_parameters(model)
    sd = averaged.state_dict()
    assert list(sd) == ["n_averaged"] + ["module." + n for n, _ in model.named_parameters()]
    assert int(sd["n_averaged"]) == 3
    path = tmp_path / "swa.safetensors"
    na.save(sd, path)
    fresh = swa_utils.AveragedModel(_na_model(xp))
    fresh.load_state_dict(na.load(path))
    assert fresh.n_averaged == 3
    assert _bits(fresh.parameters()) == _bits(averaged.parameters())
    # PyTorch's AveragedModel takes our state dict, and ours takes PyTorch's.
    twin = T.AveragedModel(_torch_twin(torch, model))
    twin.load_state_dict({k: torch.from_numpy(np.array(to_np(v))) for k, v in sd.items()})
    assert int(twin.n_averaged) == 3
    _assert_params_close(averaged.parameters(), twin.parameters(), rtol=0)
    twin.update_parameters(_torch_twin(torch, model))
    again = swa_utils.AveragedModel(_na_model(xp))
    again.load_state_dict(twin.state_dict())
    assert again.n_averaged == 4
    _assert_params_close(again.parameters(), twin.parameters(), rtol=0)


def test_averaged_model_is_all_or_nothing(xp):
    model = _na_model(xp)

    def fails_late(a, c, n, calls=[]):  # noqa: B006 - counts calls across parameters
        calls.append(1)
        if len(calls) == 3:
            raise ArithmeticError("boom")
        return a * 0.0

    averaged = swa_utils.AveragedModel(model, avg_fn=fails_late)
    averaged.update_parameters(model)
    before = _bits(averaged.parameters())
    with pytest.raises(ArithmeticError):
        averaged.update_parameters(model)
    assert _bits(averaged.parameters()) == before and averaged.n_averaged == 1

    wrong_shape = swa_utils.AveragedModel(model, avg_fn=lambda a, c, n: c[..., :1])
    wrong_shape.update_parameters(model)
    with pytest.raises(ValueError, match=r"average of parameter 'module.0.weight' has shape"):
        wrong_shape.update_parameters(model)
    not_array = swa_utils.AveragedModel(model, avg_fn=lambda a, c, n: 1.0)
    not_array.update_parameters(model)
    with pytest.raises(TypeError, match="must be an array"):
        not_array.update_parameters(model)
    bad_multi = swa_utils.AveragedModel(model, multi_avg_fn=lambda a, c, n: a[:1])
    bad_multi.update_parameters(model)
    with pytest.raises(TypeError, match="multi_avg_fn must return None or a list of 4"):
        bad_multi.update_parameters(model)

    # A model of another architecture is refused, naming the parameter.
    other = na.Sequential(na.Linear(3, 4), na.Tanh(), na.Linear(4, 2)).to(xp, dtype="float64")
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(4, 3\)"):
        averaged.update_parameters(other)
    with pytest.raises(ValueError, match="model has 2 parameters, the averaged model 4"):
        averaged.update_parameters(na.Linear(3, 5).to(xp, dtype="float64"))
    with pytest.raises(TypeError, match="model must be a Module"):
        averaged.update_parameters([1, 2])
    assert _bits(averaged.parameters()) == before and averaged.n_averaged == 1


def test_averaged_model_hostile_arguments(xp):
    model = _na_model(xp)
    with pytest.raises(TypeError, match="model must be a neural_arch Module"):
        swa_utils.AveragedModel(model.parameters())
    with pytest.raises(TypeError, match="avg_fn must be None or callable"):
        swa_utils.AveragedModel(model, avg_fn=0.9)
    with pytest.raises(TypeError, match="multi_avg_fn must be None or callable"):
        swa_utils.AveragedModel(model, multi_avg_fn="ema")
    with pytest.raises(ValueError, match="at most one of avg_fn and multi_avg_fn"):
        swa_utils.AveragedModel(
            model, avg_fn=swa_utils.get_swa_avg_fn(), multi_avg_fn=swa_utils.get_swa_multi_avg_fn()
        )
    with pytest.raises(TypeError, match="use_buffers must be True or False"):
        swa_utils.AveragedModel(model, use_buffers="yes")
    for factory in (
        swa_utils.get_ema_multi_avg_fn,
        swa_utils.get_ema_avg_fn,
        lambda d: EMA(model.parameters(), decay=d),
    ):
        for bad, kind in ((1.5, ValueError), (-0.1, ValueError), (math.nan, ValueError)):
            with pytest.raises(kind, match="decay must be"):
                factory(bad)
        for bad in (True, "0.9", None, [0.9]):
            with pytest.raises(TypeError, match="decay must be a real number"):
                factory(bad)


def test_averaged_model_load_state_dict_is_checked(xp):
    model = _na_model(xp)
    averaged = swa_utils.AveragedModel(model)
    averaged.update_parameters(model)
    good = {k: to_np(v).copy() for k, v in averaged.state_dict().items()}
    before = _bits(averaged.parameters())
    bad_counts = [
        (-1, ValueError, "n_averaged'] must be a non-negative integer"),
        (1.5, ValueError, "n_averaged'] must be a non-negative integer"),
        ("3", TypeError, "n_averaged'] must be a non-negative integer"),
        (np.array([1, 2]), TypeError, "n_averaged'] must be an integer >= 0"),
        (np.array(1.0), TypeError, "n_averaged'] must be an integer >= 0"),
    ]
    for value, kind, message in bad_counts:
        with pytest.raises(kind, match=message):
            averaged.load_state_dict({**good, "n_averaged": value})
    bad_param = {**good, "module.0.weight": np.zeros((2, 2))}
    bad_param["n_averaged"] = np.array(9)
    with pytest.raises(ValueError, match=r"shape mismatch for 'module\.0\.weight'"):
        averaged.load_state_dict(bad_param)
    no_count = {k: v for k, v in good.items() if k != "n_averaged"}
    with pytest.raises(KeyError, match=r"missing keys \['n_averaged'\]"):
        averaged.load_state_dict(no_count)
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        averaged.load_state_dict([1])
    assert _bits(averaged.parameters()) == before and averaged.n_averaged == 1
    result = averaged.load_state_dict(no_count, strict=False)
    assert result.missing_keys == ["n_averaged"] and averaged.n_averaged == 1
    averaged.load_state_dict({**good, "n_averaged": 5})
    assert averaged.n_averaged == 5


# --------------------------------------------------------------------------- SWALR


def _optimizers(xp, torch, lrs=(0.1, 0.05)):
    ours = na.SGD(
        [{"params": [na.Parameter(_arr(xp, np.zeros(2)))], "lr": lr} for lr in lrs], momentum=0.9
    )
    theirs = torch.optim.SGD(
        [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs], momentum=0.9
    )
    return ours, theirs


def _lrs(opt):
    return [float(g["lr"]) for g in opt.param_groups]


@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("anneal_epochs", [0, 1, 2, 5, 10])
@pytest.mark.parametrize("swa_lr", [0.01, [0.02, 0.2]])
def test_swalr_sequence_matches_torch(xp, torch, strategy, anneal_epochs, swa_lr):
    import torch.optim.swa_utils as T

    opt, topt = _optimizers(xp, torch)
    kwargs = {"anneal_epochs": anneal_epochs, "anneal_strategy": strategy}
    ours = swa_utils.SWALR(opt, swa_lr, **kwargs)
    theirs = T.SWALR(topt, swa_lr, **kwargs)
    ours_seq, torch_seq = [_lrs(opt)], [_lrs(topt)]
    for _ in range(anneal_epochs + 4):
        opt.step()
        topt.step()
        ours.step()
        theirs.step()
        assert ours.get_last_lr() == _lrs(opt)
        ours_seq.append(_lrs(opt))
        torch_seq.append(_lrs(topt))
    assert ours_seq == torch_seq  # the same Python float arithmetic, to the bit
    expected = swa_lr if isinstance(swa_lr, list) else [swa_lr, swa_lr]
    np.testing.assert_allclose(ours_seq[-1], expected, rtol=1e-15)
    assert [g["swa_lr"] for g in opt.param_groups] == expected


PRIOR = {
    "cosine": (lambda m, o: m.CosineAnnealingLR(o, T_max=12)),
    "multiplicative": (lambda m, o: m.MultiplicativeLR(o, lambda t: 0.9)),
}


@pytest.mark.parametrize("prior", sorted(PRIOR))
@pytest.mark.parametrize("late", [False, True], ids=["built-together", "built-at-swa-start"])
def test_swalr_after_another_scheduler_matches_torch(xp, torch, prior, late):
    """PyTorch's documented loop: a schedule until swa_start, then SWALR from its lr."""
    import torch.optim.lr_scheduler as torch_lrs
    import torch.optim.swa_utils as T

    from neural_arch.optim import lr_scheduler as na_lrs

    opt, topt = _optimizers(xp, torch)
    ours_first, theirs_first = PRIOR[prior](na_lrs, opt), PRIOR[prior](torch_lrs, topt)
    kwargs = {"swa_lr": 0.004, "anneal_epochs": 3, "anneal_strategy": "linear"}
    ours_swa = theirs_swa = None
    if not late:
        ours_swa, theirs_swa = swa_utils.SWALR(opt, **kwargs), T.SWALR(topt, **kwargs)
    swa_start = 6
    ours_seq, torch_seq = [], []
    for epoch in range(14):
        opt.step()
        topt.step()
        if epoch > swa_start:
            if ours_swa is None:
                ours_swa, theirs_swa = swa_utils.SWALR(opt, **kwargs), T.SWALR(topt, **kwargs)
            ours_swa.step()
            theirs_swa.step()
        else:
            ours_first.step()
            theirs_first.step()
        ours_seq.append(_lrs(opt))
        torch_seq.append(_lrs(topt))
    np.testing.assert_allclose(np.array(ours_seq), np.array(torch_seq), rtol=1e-13, atol=0)
    np.testing.assert_allclose(ours_seq[-1], [0.004, 0.004], rtol=1e-15)


def test_swalr_state_dict_round_trip_and_torch_layout(xp, torch, tmp_path):
    import torch.optim.swa_utils as T

    opt, topt = _optimizers(xp, torch)
    sched = swa_utils.SWALR(opt, 0.01, anneal_epochs=6)
    reference = T.SWALR(topt, 0.01, anneal_epochs=6)
    for _ in range(3):
        opt.step()
        sched.step()
        topt.step()
        reference.step()
    assert set(sched.state_dict()) == set(reference.state_dict())
    path = tmp_path / "run.safetensors"
    na.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, path)
    saved = na.load(path)
    opt2, _ = _optimizers(xp, torch, lrs=(0.5, 0.5))
    opt2.load_state_dict(saved["optimizer"])
    sched2 = swa_utils.SWALR(opt2, 0.3, anneal_epochs=1, anneal_strategy="linear")
    sched2.load_state_dict(saved["scheduler"])
    assert [g["swa_lr"] for g in opt2.param_groups] == [0.3, 0.3]  # set by the constructor
    opt2.load_state_dict(saved["optimizer"])  # the groups carry swa_lr back
    for _ in range(5):
        opt.step()
        opt2.step()
        sched.step()
        sched2.step()
        assert _lrs(opt2) == _lrs(opt)
    # PyTorch's scheduler state dict loads into ours.
    opt3, _ = _optimizers(xp, torch)
    sched3 = swa_utils.SWALR(opt3, 0.01, anneal_epochs=2, anneal_strategy="linear")
    sched3.load_state_dict(reference.state_dict())
    assert sched3.anneal_epochs == 6 and sched3._anneal_strategy == "cos"


def test_swalr_hostile_arguments_leave_the_optimizer_alone(xp, torch):
    opt, _ = _optimizers(xp, torch)
    groups = [dict(g) for g in opt.param_groups]
    cases = [
        ({"swa_lr": -0.1}, ValueError, "swa_lr must be >= 0"),
        ({"swa_lr": math.inf}, ValueError, "swa_lr must be a finite number"),
        ({"swa_lr": math.nan}, ValueError, "swa_lr must be a finite number"),
        ({"swa_lr": "0.1"}, TypeError, "swa_lr must be a real number"),
        ({"swa_lr": True}, TypeError, "swa_lr must be a real number"),
        ({"swa_lr": None}, TypeError, "swa_lr must be a real number"),
        ({"swa_lr": [0.1]}, ValueError, r"swa_lr must have one value per param group \(2\)"),
        ({"swa_lr": [0.1, -1.0]}, ValueError, r"swa_lr\[1\] must be >= 0"),
        ({"anneal_epochs": -1}, ValueError, "anneal_epochs must be a non-negative integer"),
        ({"anneal_epochs": 2.0}, ValueError, "anneal_epochs must be a non-negative integer"),
        ({"anneal_epochs": True}, TypeError, "anneal_epochs must be a non-negative integer"),
        ({"anneal_epochs": "10"}, TypeError, "anneal_epochs must be a non-negative integer"),
        ({"anneal_strategy": "cosine"}, ValueError, "anneal_strategy must be 'cos' or 'linear'"),
        ({"anneal_strategy": None}, TypeError, "anneal_strategy must be 'cos' or 'linear'"),
        ({"last_epoch": -2}, ValueError, "last_epoch must be an integer >= -1"),
        ({"last_epoch": 3}, KeyError, "initial_lr"),  # a resume without the optimizer's state
    ]
    for kwargs, kind, message in cases:
        kwargs = {"swa_lr": 0.01, **kwargs}
        with pytest.raises(kind, match=message):
            swa_utils.SWALR(opt, **kwargs)
        assert opt.param_groups == groups  # no swa_lr, no initial_lr left behind
    with pytest.raises(TypeError, match="optimizer must be an Optimizer"):
        swa_utils.SWALR(object(), 0.01)
    sched = swa_utils.SWALR(opt, 0.01)
    good = sched.state_dict()
    for key, value, kind in (
        ("anneal_epochs", -3, ValueError),
        ("_anneal_strategy", "exp", ValueError),
    ):
        with pytest.raises(kind, match=key):
            sched.load_state_dict({**good, key: value})
    assert sched.state_dict() == good
    opt.param_groups[0]["swa_lr"] = math.nan  # a value the groups should never hold
    opt.step()
    before = _lrs(opt)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['swa_lr'\] must be a finite"):
        sched.step()
    assert _lrs(opt) == before


# --------------------------------------------------------------------------- EMA


def _params(xp, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    return [na.Parameter(_arr(xp, rng.standard_normal(shape), dtype)) for shape in SIZES]


def _move(params, rng, scale=1.0):
    """A training step: new values for every parameter (rebinding, as JAX must)."""
    for p in params:
        xp = backend.namespace(p.data)
        p.data = p.data + _arr(xp, scale * rng.standard_normal(tuple(p.shape)), p.data.dtype)


def _closed_form(history, decay):
    """``decay**t * p_0 + sum_k (1 - decay) * decay**(t - k) * p_k`` in float64."""
    t = len(history) - 1
    out = decay**t * history[0]
    for k in range(1, t + 1):
        out = out + (1 - decay) * decay ** (t - k) * history[k]
    return out


@pytest.mark.parametrize("decay", [0.9, 0.3, 0.0, 1.0])
def test_ema_matches_closed_form_and_torch_lerp(xp, torch, decay):
    params = _params(xp)
    ema = EMA(params, decay=decay)
    rng = np.random.default_rng(2)
    history = [[to_np(p.data).copy()] for p in params]
    reference = [torch.from_numpy(h[0].copy()) for h in history]
    for _ in range(8):
        _move(params, rng)
        ema.update()
        for h, p, r in zip(history, params, reference, strict=True):
            h.append(to_np(p.data).copy())
            r.lerp_(torch.from_numpy(h[-1]), 1 - decay)
    assert ema.num_updates == 8
    for h, s, r in zip(history, ema.shadow_params, reference, strict=True):
        np.testing.assert_allclose(to_np(s), _closed_form(h, decay), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(to_np(s), r.numpy(), rtol=1e-15, atol=1e-16)
    if decay == 0.0:  # lerp with weight 1: p - (p - s) * 0, exactly p
        assert _bits(params) == [to_np(s).tobytes() for s in ema.shadow_params]
    if decay == 1.0:  # weight 0: s + 0 * (p - s), exactly the first values
        assert [to_np(s).tobytes() for s in ema.shadow_params] == [h[0].tobytes() for h in history]


def _torch_lerp_scalar(s: float, p: float, w: float) -> float:
    """PyTorch's lerp formula (ATen's Lerp.h) in Python floats: the two branches."""
    return s + w * (p - s) if abs(w) < 0.5 else p - (p - s) * (1 - w)


@pytest.mark.parametrize("decay", [0.0, 0.25, 0.5, 0.7, 0.999])
def test_ema_is_torchs_lerp_to_the_bit(xp, decay):
    # The last two entries tell the branches apart: with weight 1, s + (p - s) loses p.
    start = np.concatenate([np.random.default_rng(8).standard_normal(6), [1.0, 3.0]])
    target = np.concatenate([np.random.default_rng(9).standard_normal(6), [1e-17, 2.0**-60]])
    param = na.Parameter(_arr(xp, start))
    ema = EMA([param], decay=decay)
    param.data = _arr(xp, target)
    ema.update()
    w = 1.0 - decay
    expected = [_torch_lerp_scalar(s, p, w) for s, p in zip(start, target, strict=True)]
    assert to_np(ema.shadow_params[0]).tolist() == expected


def test_ema_updates_in_place_or_rebinds(xp):
    params = _params(xp)
    ema = EMA(params, decay=0.5)
    shadows = list(ema.shadow_params)
    _move(params, np.random.default_rng(0))
    ema.update()
    same = [a is b for a, b in zip(shadows, ema.shadow_params, strict=True)]
    assert all(same) != backend.is_immutable(shadows[0])  # JAX rebinds, the others write


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_ema_narrow_params_keep_float32_shadows(xp, dtype):
    if dtype == "float16" and backend.backend_name(xp) == "array_api_strict":
        pytest.skip("the Array API standard (and array-api-strict) has no float16")
    params = _params(xp, dtype)
    ema = EMA(params, decay=0.999)
    assert all(backend.dtype_name(s.dtype) == "float32" for s in ema.shadow_params)
    rng = np.random.default_rng(3)
    history = [[to_np(p.data).astype(np.float64)] for p in params]
    for _ in range(20):
        _move(params, rng, scale=1e-2)
        ema.update()
        for h, p in zip(history, params, strict=True):
            h.append(to_np(p.data).astype(np.float64))
    for h, s in zip(history, ema.shadow_params, strict=True):
        # float32 accuracy; float16 shadows would round most 0.001 * p updates away
        np.testing.assert_allclose(to_np(s), _closed_form(h, 0.999), rtol=2e-6, atol=1e-6)
    target = _params(xp, dtype, seed=9)
    ema.copy_to(target)
    for t, s in zip(target, ema.shadow_params, strict=True):
        assert t.data.dtype == params[0].data.dtype
        np.testing.assert_array_equal(to_np(t.data), to_np(s).astype(dtype))


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_ema_swap_twice_is_identity_bit_for_bit(xp, dtype):
    if dtype == "float16" and backend.backend_name(xp) == "array_api_strict":
        pytest.skip("the Array API standard (and array-api-strict) has no float16")
    params = _params(xp, dtype)
    ema = EMA(params, decay=0.9)
    rng = np.random.default_rng(4)
    for _ in range(3):
        _move(params, rng)
        ema.update()
    live, shadow = _bits(params), [to_np(s).tobytes() for s in ema.shadow_params]
    averages = [to_np(s).copy() for s in ema.shadow_params]
    arrays = [p.data for p in params]
    ema.swap()
    assert ema.swapped
    for p, a in zip(params, averages, strict=True):  # the averages, in the params' dtype
        np.testing.assert_array_equal(to_np(p.data), a.astype(dtype))
    # While swapped the state dict still holds the averages, and update() is refused.
    for s, a in zip(ema.state_dict()["shadow_params"], averages, strict=True):
        np.testing.assert_array_equal(to_np(s), a.astype(to_np(s).dtype))
    with pytest.raises(RuntimeError, match="while swapped"):
        ema.update()
    with pytest.raises(RuntimeError, match="while swapped"):
        ema.load_state_dict(ema.state_dict())
    ema.swap()
    assert not ema.swapped
    assert _bits(params) == live
    assert [to_np(s).tobytes() for s in ema.shadow_params] == shadow
    if not backend.is_immutable(arrays[0]):  # mutable arrays kept their identity throughout
        assert all(p.data is a for p, a in zip(params, arrays, strict=True))


def test_ema_copy_to(xp):
    params = _params(xp)
    ema = EMA(params, decay=0.5)
    _move(params, np.random.default_rng(5))
    ema.update()
    on_numpy = _params(np, seed=7)  # another model, another backend
    ema.copy_to(on_numpy)
    for p, s in zip(on_numpy, ema.shadow_params, strict=True):
        assert isinstance(p.data, np.ndarray)
        np.testing.assert_array_equal(p.data, to_np(s))
    ema.copy_to()
    assert _bits(params) == [to_np(s).tobytes() for s in ema.shadow_params]
    with pytest.raises(ValueError, match="params must have 2 parameters"):
        ema.copy_to(on_numpy[:1])
    with pytest.raises(ValueError, match=r"params\[1\] has shape \(2, 5\)"):
        ema.copy_to([on_numpy[0], na.Parameter(np.zeros((2, 5)))])


def test_ema_state_dict_round_trip(xp, tmp_path):
    params = _params(xp)
    ema = EMA(params, decay=0.8)
    rng = np.random.default_rng(6)
    for _ in range(4):
        _move(params, rng)
        ema.update()
    path = tmp_path / "ema.safetensors"
    na.save(ema.state_dict(), path)
    twin_params = [na.Parameter(_arr(xp, to_np(p.data))) for p in params]
    twin = EMA(twin_params, decay=0.1)
    twin.load_state_dict(na.load(path))  # NumPy arrays, onto xp
    assert twin.decay == 0.8 and twin.num_updates == 4
    assert [to_np(s).tobytes() for s in twin.shadow_params] == [
        to_np(s).tobytes() for s in ema.shadow_params
    ]
    assert all(
        backend.namespace(s) is backend.namespace(params[0].data) for s in twin.shadow_params
    )
    for _ in range(3):  # and they go on identically
        _move(params, rng)
        for p, q in zip(params, twin_params, strict=True):
            q.data = _arr(xp, to_np(p.data))
        ema.update()
        twin.update()
    assert [to_np(s).tobytes() for s in twin.shadow_params] == [
        to_np(s).tobytes() for s in ema.shadow_params
    ]


def test_ema_load_state_dict_is_checked_and_all_or_nothing(xp):
    params = _params(xp)
    ema = EMA(params, decay=0.8)
    good = {
        "decay": 0.5,
        "num_updates": 3,
        "shadow_params": [np.ones(shape) for shape in SIZES],
    }

    def variant(**changes):
        return {**good, **changes}

    cases = [
        ([1, 2], TypeError, "state_dict must be a dict"),
        ({k: v for k, v in good.items() if k != "decay"}, ValueError, "exactly the keys"),
        (variant(extra=1), ValueError, "exactly the keys"),
        (variant(decay=1.5), ValueError, r"state_dict\['decay'\] must be in \[0.0, 1.0\]"),
        (variant(decay="0.5"), TypeError, r"state_dict\['decay'\] must be a real number"),
        (variant(num_updates=-1), ValueError, r"\['num_updates'\] must be a non-negative"),
        (variant(num_updates=1.5), ValueError, r"\['num_updates'\] must be a non-negative"),
        (variant(shadow_params=np.ones(3)), TypeError, "must be a list of 2 arrays"),
        (variant(shadow_params=[np.ones((3, 5))]), ValueError, "has 1 arrays, this EMA follows 2"),
        (
            variant(shadow_params=[np.ones((3, 5)), np.ones((2, 5))]),
            ValueError,
            r"\[1\] has shape \(2, 5\), the parameter \(5, 2\)",
        ),
        (
            variant(shadow_params=[np.ones((3, 5)), np.ones((5, 2), dtype=np.int64)]),
            TypeError,
            r"\[1\] has dtype int64",
        ),
        (
            variant(shadow_params=[np.ones((3, 5)), np.full((5, 2), np.nan)]),
            ValueError,
            r"\[1\] has non-finite values",
        ),
        (variant(shadow_params=[np.ones((3, 5)), "x"]), TypeError, r"\[1\] must be an array"),
    ]
    before = [to_np(s).tobytes() for s in ema.shadow_params]
    for state, kind, message in cases:
        with pytest.raises(kind, match=message):
            ema.load_state_dict(state)
        assert [to_np(s).tobytes() for s in ema.shadow_params] == before
        assert ema.decay == 0.8 and ema.num_updates == 0
    ema.load_state_dict(good)  # float64 NumPy arrays load onto any backend
    assert ema.decay == 0.5 and ema.num_updates == 3
    assert all(np.all(to_np(s) == 1.0) for s in ema.shadow_params)


def test_ema_hostile_params(xp):
    params = _params(xp)
    with pytest.raises(ValueError, match="params must not be empty"):
        EMA([])
    with pytest.raises(TypeError, match="not a set"):
        EMA(set(params))
    with pytest.raises(TypeError, match="params must be an iterable"):
        EMA(3)
    with pytest.raises(TypeError, match=r"params\[1\] must have a .data array"):
        EMA([params[0], "w"])
    with pytest.raises(ValueError, match=r"params\[1\] is params\[0\] again"):
        EMA([params[0], params[0]])
    integer = na.Tensor(_arr(xp, np.arange(3), "int64"))
    with pytest.raises(TypeError, match=r"params\[0\] has dtype int64"):
        EMA([integer])
    ema = EMA({"a": params[0], "b": params[1]})  # a dict of named parameters
    assert len(ema.shadow_params) == 2
    params[1].data = _arr(xp, np.zeros((2, 2)))  # a parameter replaced by another shape
    with pytest.raises(ValueError, match=r"params\[1\] has shape \(2, 2\), its shadow \(5, 2\)"):
        ema.update()
    assert ema.num_updates == 0
