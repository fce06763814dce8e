"""GradScaler against ``torch.amp.GradScaler`` (CPU): scales, skips, parameters, state dicts."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
from _helpers import P, assert_close, to_np

import neural_arch as na
from neural_arch.backend import backend_name, to_backend

STEPS = 50
SHAPES = [(3,), (2, 4), ()]
# (step, parameter, value): scaled gradients that overflowed, whatever the scale
POISON = {2: (0, math.inf), 3: (1, math.nan), 4: (2, -math.inf), 11: (1, math.inf)}
POISON |= {20: (0, math.nan), 21: (0, math.inf), 31: (2, math.nan), 44: (1, -math.inf)}
SCALERS = {
    # (init_scale, growth_factor, backoff_factor): powers of two, and factors that round
    "pow2": (2.0**16, 2.0, 0.5),
    "rounding": (1000.3, 1.7, 0.3),
}


def _true_grads(step: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1000 + step)
    return [np.asarray(rng.standard_normal(s), dtype=np.float32) for s in SHAPES]


def _scaled(step: int, scale: float) -> list[np.ndarray]:
    """The float32 gradients of ``scale * loss`` at ``step``, with POISON's overflow."""
    grads = [np.asarray(g * np.float32(scale), dtype=np.float32) for g in _true_grads(step)]
    if step in POISON:
        i, value = POISON[step]
        grads[i].reshape(-1)[0] = value
    return grads


def _init(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s), dtype=np.float32) for s in SHAPES]


def _ours(xp, arrays):
    return [P(to_backend(a, xp, copy=True)) for a in arrays]


def _theirs(torch, arrays):
    return [torch.tensor(a, requires_grad=True) for a in arrays]


def _torch_scaler(torch, *args, **kwargs):
    return torch.amp.GradScaler("cpu", *args, **kwargs)


def _optimizers(kind, torch, ours, theirs):
    if kind == "sgd":
        opts = {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}
        return na.SGD(ours, **opts), torch.optim.SGD(theirs, **opts)
    opts = {"lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.01}
    return na.Adam(ours, **opts), torch.optim.Adam(theirs, **opts)


@pytest.mark.parametrize("factors", list(SCALERS.values()), ids=list(SCALERS))
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_matches_torch_grad_scaler(xp, torch, kind, factors):
    """Same overflow pattern: the same scale after every update and the same skipped steps
    as torch.amp.GradScaler, bit for bit; the parameters are those of our optimizer fed
    torch's unscaled gradients on torch's unskipped steps (bit for bit), and those of
    torch.optim (to float32 rounding accumulated over the run)."""
    init_scale, growth, backoff = factors
    params, torch_params = _ours(xp, _init()), _theirs(torch, _init())
    shadow = _ours(xp, _init())
    opt, topt = _optimizers(kind, torch, params, torch_params)
    shadow_opt, _ = _optimizers(kind, torch, shadow, _theirs(torch, _init()))
    scaler = na.GradScaler(
        "cpu", init_scale, growth_factor=growth, backoff_factor=backoff, growth_interval=3
    )
    tscaler = _torch_scaler(
        torch, init_scale, growth_factor=growth, backoff_factor=backoff, growth_interval=3
    )
    tscaler.scale(torch.ones(()))  # torch makes its scale tensor on the first scale()
    assert scaler.get_scale() == tscaler.get_scale()
    skipped, torch_skipped, scales = [], [], []
    for step in range(STEPS):
        grads = _scaled(step, scaler.get_scale())
        for p, g in zip(params, grads, strict=True):
            p.grad = to_backend(g, xp, copy=True)
        for t, g in zip(torch_params, grads, strict=True):
            t.grad = torch.tensor(g)
        before = [t.detach().clone() for t in torch_params]
        skipped.append(not scaler.step(opt))
        tscaler.step(topt)  # unscales t.grad in place
        torch_skipped.append(
            all(torch.equal(b, t) for b, t in zip(before, torch_params, strict=True))
        )
        if not torch_skipped[-1]:
            for p, t in zip(shadow, torch_params, strict=True):
                p.grad = to_backend(t.grad.numpy(), xp, copy=True)
            shadow_opt.step()
        scaler.update()
        tscaler.update()
        scales.append(scaler.get_scale())
        assert scaler.get_scale() == tscaler.get_scale(), f"step {step}"
        assert type(scaler.get_scale()) is float
    assert skipped == torch_skipped
    assert sum(skipped) == opt.skipped_steps >= len(POISON)
    assert opt.step_count == STEPS - sum(skipped)
    assert len(set(scales)) > 4  # the scale moved both ways
    for p, q, t in zip(params, shadow, torch_params, strict=True):
        np.testing.assert_array_equal(to_np(p.data), to_np(q.data))
        assert_close(p.data, t.detach().numpy(), rtol=2e-5, atol=1e-6)
    assert scaler.state_dict() == tscaler.state_dict()


def test_torch_update_rule_by_hand():
    """The rule written out: backoff on overflow, growth on every 3rd good update."""
    scaler = na.GradScaler(init_scale=8.0, growth_interval=3)
    p = P(np.zeros(2, dtype=np.float32))
    opt = na.SGD([p], lr=0.1)
    expected = []
    scale = 8.0
    good = 0
    for overflow in [0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]:
        p.grad = np.array([math.inf if overflow else 1.0, 0.0], dtype=np.float32)
        assert scaler.step(opt) is (not overflow)
        scaler.update()
        if overflow:
            scale, good = scale / 2, 0
        else:
            good += 1
            if good == 3:
                scale, good = scale * 2, 0
        expected.append(scale)
        assert scaler.get_scale() == scale
        assert scaler.state_dict()["_growth_tracker"] == good
    assert expected == [8, 8, 16, 16, 8, 8, 8, 4, 2, 2, 2, 4, 4, 4, 8]


def test_grows_no_further_than_float32(xp):
    scaler = na.GradScaler(init_scale=2.0**127, growth_interval=1)
    p = P(xp.zeros(2, dtype=xp.float32))
    opt = na.SGD([p])
    for _ in range(3):
        p.grad = xp.zeros(2, dtype=xp.float32)
        assert scaler.step(opt)
        scaler.update()
        assert scaler.get_scale() == 2.0**127  # 2**128 is inf in float32: kept
        assert scaler.state_dict()["_growth_tracker"] == 0


def test_autograd_run_matches_torch(xp, torch):
    """scale(loss).backward() through na's autograd, a scale that overflows float32
    gradients: the same skips, scales and weights as torch's autograd and scaler."""
    na.set_grad_clip(None)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((16, 4)) * 1e3).astype(np.float32)  # gradients ~1e4
    y = rng.standard_normal((16, 2)).astype(np.float32)
    model = na.Linear(4, 2).to(xp)
    ref = torch.nn.Linear(4, 2)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(to_np(model.weight.data)))
        ref.bias.copy_(torch.tensor(to_np(model.bias.data)))
    opt = na.SGD(model.parameters(), lr=1e-8)
    topt = torch.optim.SGD(ref.parameters(), lr=1e-8)
    kw = {"init_scale": 2.0**125, "growth_interval": 3}
    scaler, tscaler = na.GradScaler(**kw), _torch_scaler(torch, **kw)
    xs, ys = to_backend(x, xp), to_backend(y, xp)
    steps = []
    for _ in range(30):
        opt.zero_grad()
        topt.zero_grad()
        with np.errstate(over="ignore", invalid="ignore"):  # NumPy warns of the overflow
            scaler.scale(na.mse_loss(model(xs), ys)).backward()
        tscaler.scale(
            torch.nn.functional.mse_loss(ref(torch.tensor(x)), torch.tensor(y))
        ).backward()
        steps.append(scaler.step(opt))
        tscaler.step(topt)
        scaler.update()
        tscaler.update()
        assert scaler.get_scale() == tscaler.get_scale()
    assert 0 < steps.count(False) < 30 - 5  # overflowed at first, and again after growing
    assert opt.skipped_steps == steps.count(False)
    assert_close(model.weight.data, ref.weight.detach().numpy(), rtol=1e-5)
    assert_close(model.bias.data, ref.bias.detach().numpy(), rtol=1e-5)


def test_grad_clamp_bounds_the_true_gradient_under_scaling():
    """backward() of a scaled loss clamps at clip * scale: the true gradient at clip."""
    assert na.get_grad_clip() == 1e6
    scaler = na.GradScaler()
    w = na.Parameter(np.array([1.0, 1.0], np.float32))
    coef = na.Tensor(np.array([1e5, 1e7], np.float32))  # true gradients 1e5 and 1e7
    opt = na.SGD([w], lr=0.0)
    scaler.scale((w * coef).sum()).backward()
    np.testing.assert_array_equal(w.grad, np.array([1e5, 1e6], np.float32) * 65536)
    scaler.unscale_(opt)
    np.testing.assert_array_equal(w.grad, [1e5, 1e6])  # as without the scaler
    w.grad = None
    (w * coef).sum().backward()
    np.testing.assert_array_equal(w.grad, [1e5, 1e6])
    scaled = scaler.scale(na.Tensor(np.float32(2.0), requires_grad=True))
    assert scaled.item() == 2.0 * 65536


def test_scale_structures(xp):
    na.set_grad_clip(None)
    scaler = na.GradScaler(init_scale=4.0)
    a = xp.asarray([1.0, 2.0], dtype=xp.float32)
    t = na.Tensor(xp.asarray(3.0, dtype=xp.float32))
    out = scaler.scale([a, (t, [a]), ()])
    assert type(out) is list and type(out[1]) is tuple and type(out[1][1]) is list
    assert out[2] == ()
    np.testing.assert_array_equal(to_np(out[0]), [4.0, 8.0])
    assert out[0].dtype == xp.float32  # the scale is a Python number: the output's dtype
    assert isinstance(out[1][0], na.Tensor) and out[1][0].item() == 12.0
    np.testing.assert_array_equal(to_np(out[1][1][0]), [4.0, 8.0])
    assert backend_name(out[0]) == backend_name(xp)


@pytest.mark.parametrize(
    "outputs", [1.0, 3, "loss", {"a": 1.0}, None, [np.ones(2), "x"], iter([np.ones(2)])]
)
def test_scale_refuses(outputs):
    with pytest.raises(TypeError, match="outputs must be"):
        na.GradScaler().scale(outputs)


def test_scale_refuses_deep_and_cyclic_nesting():
    deep: list = [np.ones(1)]
    for _ in range(1000):
        deep = [deep]
    cyclic: list = []
    cyclic.append(cyclic)
    for outputs in (deep, cyclic):
        with pytest.raises(ValueError, match="levels deep"):
            na.GradScaler().scale(outputs)


def test_unscale_then_clip_grad_norm_matches_torch(xp, torch):
    """unscale_ gives the true gradients (torch's, bit for bit); clip_grad_norm_ on them,
    then step: torch's norm, clipped gradients and parameters."""
    params, torch_params = _ours(xp, _init()), _theirs(torch, _init())
    opt = na.SGD(params, lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(torch_params, lr=0.1, momentum=0.9)
    scaler = na.GradScaler(init_scale=3000.7, growth_interval=2)
    tscaler = _torch_scaler(torch, init_scale=3000.7, growth_interval=2)
    tscaler.scale(torch.ones(()))
    for step in range(8):
        grads = _scaled(step, scaler.get_scale())
        for p, t, g in zip(params, torch_params, grads, strict=True):
            p.grad = to_backend(g, xp, copy=True)
            t.grad = torch.tensor(g)
        held = [p.grad for p in params]
        scaler.unscale_(opt)
        tscaler.unscale_(topt)
        for p, t, g0 in zip(params, torch_params, held, strict=True):
            np.testing.assert_array_equal(to_np(p.grad), t.grad.numpy())
            if backend_name(xp) != "jax":
                assert p.grad is g0  # in place: a view the user holds stays valid
        with np.errstate(invalid="ignore"):  # clipping inf gradients: NumPy warns
            total = na.clip_grad_norm_(params, 1.0)
        ttotal = torch.nn.utils.clip_grad_norm_(torch_params, 1.0)
        if step in POISON:
            assert not math.isfinite(float(total)) and not math.isfinite(float(ttotal))
        else:
            assert_close(total, ttotal.numpy(), rtol=1e-6)
        assert scaler.step(opt) is (step not in POISON)
        tscaler.step(topt)
        scaler.update()
        tscaler.update()
        assert scaler.get_scale() == tscaler.get_scale()
    for p, t in zip(params, torch_params, strict=True):
        assert_close(p.data, t.detach().numpy(), rtol=2e-6, atol=1e-7)


def test_unscale_rebinds_immutable_and_read_only_grads():
    jnp = pytest.importorskip("jax.numpy", reason="the immutable case needs JAX")
    scaler = na.GradScaler(init_scale=4.0)
    ro = np.full(2, 8.0, dtype=np.float32)
    ro.flags.writeable = False
    params = [P(np.zeros(2, dtype=np.float32), ro), P(jnp.zeros(2), jnp.full(2, 8.0))]
    # two short-lived optimizers (the second may get the first one's id)
    scaler.unscale_(na.SGD(params[:1]))
    scaler.unscale_(na.SGD(params[1:]))
    for p in params:
        np.testing.assert_array_equal(to_np(p.grad), [2.0, 2.0])
    np.testing.assert_array_equal(ro, [8.0, 8.0])  # left alone: it cannot be written
    assert backend_name(params[1].grad) == "jax"


def test_calls_out_of_order_raise(xp):
    p = P(xp.zeros(2), xp.ones(2))
    opt = na.SGD([p])
    scaler = na.GradScaler()
    with pytest.raises(RuntimeError, match="No inf checks"):
        scaler.update()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_(opt)
    np.testing.assert_array_equal(to_np(p.grad), [2.0**-16] * 2)  # divided once
    assert scaler.step(opt)
    with pytest.raises(RuntimeError, match="after step"):
        scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="already been called since the last update"):
        scaler.step(opt)
    with pytest.raises(RuntimeError, match="only between iterations"):
        copy.deepcopy(scaler)
    scaler.update()
    p.grad = xp.ones(2)
    scaler.unscale_(opt)  # a new iteration
    assert scaler.step(opt)
    scaler.update()
    restored = pickle.loads(pickle.dumps(scaler))
    assert restored.state_dict() == scaler.state_dict()


def test_closure_refused(xp):
    p = P(xp.zeros(2), xp.ones(2))
    opt = na.SGD([p])
    scaler = na.GradScaler()
    with pytest.raises(RuntimeError, match="Closure"):
        scaler.step(opt, closure=lambda: 0.0)
    with pytest.raises(RuntimeError, match="Closure"):
        scaler.step(opt, lambda: 0.0)
    np.testing.assert_array_equal(to_np(p.grad), [1.0, 1.0])  # nothing done


def test_skipped_step_changes_nothing(xp):
    params = _ours(xp, _init())
    opt = na.Adam(params, lr=0.1)
    scaler = na.GradScaler(init_scale=2.0)
    for p, g in zip(params, _scaled(2, 2.0), strict=True):  # step 2 poisons parameter 0
        p.grad = to_backend(g, xp)
    assert scaler.step(opt) is False
    assert (opt.skipped_steps, opt.step_count, len(opt.state)) == (1, 0, 0)
    for p, a in zip(params, _init(), strict=True):
        np.testing.assert_array_equal(to_np(p.data), a)
    scaler.update()
    assert scaler.get_scale() == 1.0


def test_each_optimizer_skips_alone_and_update_backs_off(xp):
    a, b = P(xp.zeros(2), xp.ones(2)), P(xp.zeros(2), xp.asarray([1.0, math.inf]))
    opt_a, opt_b = na.SGD([a], lr=1.0), na.SGD([b], lr=1.0)
    scaler = na.GradScaler(init_scale=2.0)
    assert scaler.step(opt_a) is True
    assert scaler.step(opt_b) is False
    np.testing.assert_array_equal(to_np(a.data), [-0.5, -0.5])
    np.testing.assert_array_equal(to_np(b.data), [0.0, 0.0])
    scaler.update()
    assert scaler.get_scale() == 1.0
    assert (opt_a.skipped_steps, opt_b.skipped_steps) == (0, 1)


def test_optimizer_without_gradients_steps():
    p = P(np.zeros(2))
    opt = na.SGD([p])
    scaler = na.GradScaler(growth_interval=1)
    assert scaler.step(opt) is True
    scaler.update()
    assert scaler.get_scale() == 2.0**17


def test_nonfinite_after_unscale_is_the_optimizer_s_business(xp):
    """The scaler decides from what unscale_ saw; a gradient the user made non-finite
    afterwards meets the optimizer's own check (raise by default, skip on request)."""
    for mode in ("raise", "skip"):
        p = P(xp.zeros(2), xp.ones(2))
        opt = na.SGD([p], nonfinite=mode)
        scaler = na.GradScaler()
        scaler.unscale_(opt)
        p.grad = xp.asarray([math.nan, 0.0])
        if mode == "raise":
            with pytest.raises(FloatingPointError):
                scaler.step(opt)
        else:
            assert scaler.step(opt) is False
            assert opt.skipped_steps == 1
            scaler.update()
            assert scaler.get_scale() == 2.0**16  # unscale_ saw finite gradients


def test_lowered_growth_interval_grows_at_once():
    p = P(np.zeros(1))
    opt = na.SGD([p])
    scaler = na.GradScaler(init_scale=1.0, growth_interval=10)
    for _ in range(5):
        p.grad = np.ones(1)
        scaler.step(opt)
        scaler.update()
    scaler.set_growth_interval(3)  # the count (5) is past it
    p.grad = np.ones(1)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0
    assert scaler.state_dict()["_growth_tracker"] == 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_unscale_matches_torch_kernel(xp, torch, dtype):
    """float16/bfloat16 gradients are unscaled in float32 and rounded once, as torch's
    kernel does (torch.amp.GradScaler itself refuses float16 gradients); an overflow of
    the low-precision scaled gradient is found."""
    name = backend_name(xp)
    if name == "array_api_strict":
        pytest.skip(f"array_api_strict has no {dtype}")
    rng = np.random.default_rng(5)
    true = rng.standard_normal(1000).astype(np.float32) * np.float32(2.0) ** rng.integers(
        -30, 4, 1000
    )
    tdtype = getattr(torch, dtype)
    outcomes = []
    for init_scale in (1000.3, 2.0**16, 2.0**24):
        scaler = na.GradScaler(init_scale=init_scale)
        first = scaler.get_scale()
        scaled = torch.tensor(true * np.float32(scaler.get_scale())).to(tdtype)
        ours = P(to_backend(np.zeros(1000), xp, dtype=dtype), to_backend(scaled, xp, copy=True))
        assert ours.grad.dtype == na.backend.resolve_dtype(xp, dtype)
        scaler.unscale_(na.SGD([ours]))
        expected = scaled.clone()
        found = torch.zeros(())
        inv = torch.full((), scaler.get_scale(), dtype=torch.float64).reciprocal().float()
        torch._amp_foreach_non_finite_check_and_unscale_([expected], found, inv)
        assert ours.grad.dtype == na.backend.resolve_dtype(xp, dtype)
        got = to_np(ours.grad).astype(np.float32)  # exact: float32 holds every value
        np.testing.assert_array_equal(got, expected.float().numpy())  # NaN where NaN
        outcomes.append(bool(found))
        scaler.update()
        assert (scaler.get_scale() < first) is outcomes[-1]  # we found what torch found
    # float16 holds the scaled gradients at 1000.3 (|g| < 19), not at 2**16: they overflow
    assert outcomes == [False, dtype == "float16", dtype == "float16"]


def test_refuses_bad_gradients_before_changing_any(torch):
    good = P(np.zeros(2), np.full(2, 4.0))
    opt = na.SGD([good, P(np.zeros(2))])
    scaler = na.GradScaler(init_scale=2.0)
    opt.param_groups[0]["params"][1].grad = np.ones(2, dtype=np.int64)
    with pytest.raises(TypeError, match=r"params'\]\[1\] has dtype int64"):
        scaler.unscale_(opt)
    opt.param_groups[0]["params"][1].grad = [1.0, 2.0]
    with pytest.raises(TypeError, match="is a list, not an array"):
        scaler.unscale_(opt)
    opt.param_groups[0]["params"][1].grad = to_backend(np.ones(2), "torch")
    with pytest.raises(TypeError, match="another array library"):
        scaler.unscale_(opt)
    np.testing.assert_array_equal(good.grad, [4.0, 4.0])
    opt.param_groups[0]["params"][1].grad = None
    scaler.unscale_(opt)  # nothing was recorded by the refused calls
    np.testing.assert_array_equal(good.grad, [2.0, 2.0])


@pytest.mark.parametrize("optimizer", [object(), [1, 2], None])
def test_refuses_non_optimizers(optimizer):
    with pytest.raises(TypeError, match="optimizer must be an optimizer"):
        na.GradScaler().unscale_(optimizer)


def test_refuses_distributed_optimizers():
    import neural_arch.distributed as dist

    p = P(np.zeros(2), np.ones(2))
    opt = dist.DistributedOptimizer(na.SGD([p]))
    with pytest.raises(TypeError, match="all_reduce_gradients"):
        na.GradScaler().step(opt)
    np.testing.assert_array_equal(p.grad, [1.0, 1.0])


def test_disabled_is_a_pass_through(xp):
    p = P(xp.zeros(2), xp.asarray([4.0, math.inf]))
    opt = na.SGD([p], lr=1.0, nonfinite="skip")
    scaler = na.GradScaler(enabled=False, init_scale=8.0)
    assert not scaler.is_enabled()
    loss = na.Tensor(xp.asarray(3.0), requires_grad=True)
    assert scaler.scale(loss) is loss  # no clamp complaint either: nothing is scaled
    scaler.unscale_(opt)
    scaler.unscale_(opt)
    np.testing.assert_array_equal(to_np(p.grad), [4.0, math.inf])
    assert scaler.step(opt) is False  # the optimizer skipped it itself
    p.grad = xp.asarray([4.0, 2.0])
    assert scaler.step(opt) is True
    assert scaler.step(opt) is True  # no stages when disabled
    np.testing.assert_array_equal(to_np(p.data), [-8.0, -4.0])
    scaler.update()
    scaler.update(new_scale=3.0)
    assert scaler.get_scale() == 1.0
    assert scaler.state_dict() == {}
    scaler.load_state_dict({})
    assert scaler.get_scale() == 1.0
    with pytest.raises(FloatingPointError):  # the optimizer's own check still acts
        p.grad = xp.asarray([math.nan, 0.0])
        scaler.step(na.SGD([p]))


def test_update_with_new_scale(xp, torch):
    scaler = na.GradScaler(growth_interval=5)
    p = P(xp.zeros(1), xp.ones(1))
    opt = na.SGD([p])
    scaler.step(opt)
    scaler.update()
    scaler.update(new_scale=0.1)
    assert scaler.get_scale() == float(np.float32(0.1))  # float32, as torch
    scaler.update(new_scale=xp.asarray([256.0]))
    assert scaler.get_scale() == 256.0
    scaler.update(new_scale=np.float64(512))
    assert scaler.get_scale() == 512.0
    assert scaler.state_dict()["_growth_tracker"] == 1  # kept, as torch
    tscaler = _torch_scaler(torch, growth_interval=5)
    tscaler.scale(torch.ones(()))
    tscaler.update(new_scale=0.1)
    assert tscaler.get_scale() == float(np.float32(0.1))


BAD_NEW_SCALES = [0.0, -1.0, math.inf, math.nan, "2", True, 1e-50, 1e39, [2.0], np.ones(2)]


@pytest.mark.parametrize("value", BAD_NEW_SCALES, ids=repr)
def test_update_refuses_bad_new_scale(value):
    scaler = na.GradScaler(init_scale=4.0)
    with pytest.raises(ValueError, match="new_scale"):
        scaler.update(new_scale=value)
    assert scaler.get_scale() == 4.0


# ---------------------------------------------------------------- arguments

BAD_ARGS = [
    ("init_scale", 0.0),
    ("init_scale", -1.0),
    ("init_scale", math.inf),
    ("init_scale", math.nan),
    ("init_scale", "65536"),
    ("init_scale", True),
    ("init_scale", None),
    ("init_scale", 1e-50),  # 0 in float32
    ("init_scale", 1e39),  # inf in float32
    ("growth_factor", 1.0),
    ("growth_factor", 0.5),
    ("growth_factor", math.inf),
    ("growth_factor", math.nan),
    ("growth_factor", True),
    ("backoff_factor", 0.0),
    ("backoff_factor", 1.0),
    ("backoff_factor", 1.5),
    ("backoff_factor", -0.5),
    ("backoff_factor", math.nan),
    ("growth_interval", 0),
    ("growth_interval", -3),
    ("growth_interval", 2.5),
    ("growth_interval", 3.0),
    ("growth_interval", True),
    ("growth_interval", "3"),
    ("enabled", "yes"),
    ("enabled", 1),
    ("enabled", None),
]


@pytest.mark.parametrize(("name", "value"), BAD_ARGS, ids=[f"{n}={v!r}" for n, v in BAD_ARGS])
def test_constructor_refuses(name, value):
    with pytest.raises(ValueError, match=name):
        na.GradScaler(**{name: value})


@pytest.mark.parametrize("device", [0, b"cuda", object()])
def test_constructor_refuses_device(device):
    with pytest.raises(TypeError, match="device"):
        na.GradScaler(device)


def test_constructor_accepts_numpy_scalars_and_devices():
    scaler = na.GradScaler(
        "cuda",
        init_scale=np.float32(1024),
        growth_factor=np.float64(3),
        backoff_factor=np.float16(0.25),
        growth_interval=np.int64(7),
        enabled=np.bool_(True),
    )
    assert scaler.state_dict() == {
        "scale": 1024.0,
        "growth_factor": 3.0,
        "backoff_factor": 0.25,
        "growth_interval": 7,
        "_growth_tracker": 0,
    }
    assert all(type(v) in (int, float) for v in scaler.state_dict().values())
    assert scaler.is_enabled() is True
    assert na.GradScaler("cpu").get_scale() == na.GradScaler().get_scale() == 65536.0
    assert "scale=65536.0" in repr(na.GradScaler())


SETTERS = [
    ("set_growth_factor", 1.0),
    ("set_growth_factor", math.nan),
    ("set_backoff_factor", 1.0),
    ("set_backoff_factor", 0.0),
    ("set_growth_interval", 0),
    ("set_growth_interval", 1.5),
]


def test_getters_and_setters():
    scaler = na.GradScaler()
    assert (scaler.get_growth_factor(), scaler.get_backoff_factor()) == (2.0, 0.5)
    assert scaler.get_growth_interval() == 2000
    scaler.set_growth_factor(4)
    scaler.set_backoff_factor(np.float32(0.125))
    scaler.set_growth_interval(np.int32(9))
    assert (scaler.get_growth_factor(), scaler.get_backoff_factor()) == (4.0, 0.125)
    assert scaler.get_growth_interval() == 9
    for method, value in SETTERS:
        with pytest.raises(ValueError, match="new_"):
            getattr(scaler, method)(value)
    assert (scaler.get_growth_factor(), scaler.get_backoff_factor()) == (4.0, 0.125)
    assert scaler.get_growth_interval() == 9


# --------------------------------------------------------------- state dicts


def _run(scaler, steps, start=0):
    p = P(np.zeros(3, dtype=np.float32))
    opt = na.SGD([p])
    for step in range(start, start + steps):
        p.grad = _scaled(step, scaler.get_scale())[0]
        scaler.step(opt)
        scaler.update()
    return scaler


def test_state_dict_round_trip(tmp_path, xp):
    kw = {"init_scale": 1000.3, "growth_factor": 1.7, "backoff_factor": 0.3, "growth_interval": 3}
    straight = _run(na.GradScaler(**kw), 24)
    first = _run(na.GradScaler(**kw), 13)
    sd = first.state_dict()
    assert list(sd) == list(_torch_state_keys())
    path = tmp_path / "scaler.safetensors"
    na.save({"scaler": sd}, path)
    resumed = na.GradScaler()
    resumed.load_state_dict(na.load(path)["scaler"])
    assert resumed.state_dict() == sd
    _run(resumed, 11, start=13)
    assert resumed.state_dict() == straight.state_dict()
    zero_d = {k: to_backend(np.asarray(v), xp) for k, v in sd.items()}  # 0-d arrays
    again = na.GradScaler()
    again.load_state_dict(zero_d)
    assert again.state_dict() == sd


def test_scale_backed_off_to_zero_round_trips(torch):
    """A model whose gradients are NaN at every step backs the scale off to 0 (float32
    underflow), as torch's does; the state dict of that scaler still loads."""
    p = P(np.zeros(1, dtype=np.float32))
    opt = na.SGD([p])
    scaler, tscaler = na.GradScaler(), _torch_scaler(torch)
    tp = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([tp])
    tscaler.scale(torch.ones(()))
    for _ in range(170):
        p.grad = np.full(1, math.nan, dtype=np.float32)
        tp.grad = torch.full((1,), math.nan)
        assert scaler.step(opt) is False
        tscaler.step(topt)
        scaler.update()
        tscaler.update()
        assert scaler.get_scale() == tscaler.get_scale()
    assert scaler.get_scale() == 0.0
    again = na.GradScaler()
    again.load_state_dict(scaler.state_dict())
    assert again.state_dict() == scaler.state_dict() == tscaler.state_dict()
    with pytest.raises(ValueError, match="init_scale"):
        na.GradScaler(init_scale=0.0)  # but no scaler starts there


def _torch_state_keys():
    torch = pytest.importorskip("torch")
    return _torch_scaler(torch).state_dict().keys()


def test_torch_state_dict_loads_and_ours_loads_into_torch(torch):
    tscaler = _torch_scaler(torch, init_scale=1000.3, growth_factor=1.7, growth_interval=3)
    p = torch.zeros(3, requires_grad=True)
    topt = torch.optim.SGD([p])
    for step in range(10):
        tscaler.scale(torch.ones(()))
        p.grad = torch.tensor(_scaled(step, tscaler.get_scale())[0])
        tscaler.step(topt)
        tscaler.update()
    ours = na.GradScaler()
    ours.load_state_dict(tscaler.state_dict())
    assert ours.state_dict() == tscaler.state_dict()
    assert ours.state_dict()["_growth_tracker"] > 0
    back = _torch_scaler(torch)
    back.load_state_dict(ours.state_dict())
    back.scale(torch.ones(()))
    assert back.state_dict() == ours.state_dict()


GOOD = {
    "scale": 1024.0,
    "growth_factor": 2.0,
    "backoff_factor": 0.5,
    "growth_interval": 10,
    "_growth_tracker": 2,
}
BAD_STATES = [
    ({}, ValueError, "empty"),
    ([("scale", 1.0)], TypeError, "state_dict must be a dict"),
    ({k: v for k, v in GOOD.items() if k != "scale"}, ValueError, r"lacks \['scale'\]"),
    ({**GOOD, "extra": 1}, ValueError, r"unknown keys \['extra'\]"),
    ({**GOOD, "scale": -1.0}, ValueError, "scale"),
    ({**GOOD, "scale": math.nan}, ValueError, "scale"),
    ({**GOOD, "scale": "1024"}, ValueError, "scale"),
    ({**GOOD, "growth_factor": 0.9}, ValueError, "growth_factor"),
    ({**GOOD, "backoff_factor": 1.0}, ValueError, "backoff_factor"),
    ({**GOOD, "growth_interval": 0}, ValueError, "growth_interval"),
    ({**GOOD, "growth_interval": 2.0}, ValueError, "growth_interval"),
    ({**GOOD, "_growth_tracker": -1}, ValueError, "_growth_tracker"),
    ({**GOOD, "_growth_tracker": 1.5}, ValueError, "_growth_tracker"),
    ({**GOOD, "_growth_tracker": np.ones(2)}, ValueError, "_growth_tracker"),
]


@pytest.mark.parametrize(("state", "error", "match"), BAD_STATES, ids=[m for *_, m in BAD_STATES])
def test_load_state_dict_refuses_all_or_nothing(state, error, match):
    scaler = na.GradScaler(init_scale=8.0, growth_interval=4)
    _run(scaler, 2, start=5)
    before = scaler.state_dict()
    with pytest.raises(error, match=match):
        scaler.load_state_dict(state)
    assert scaler.state_dict() == before
    scaler.load_state_dict(GOOD)
    assert scaler.state_dict() == GOOD
