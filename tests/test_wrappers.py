"""MultiSteps, Lookahead and MultiOptimizer against references that do not share their code.

References: closed forms (the inner optimizer stepped on the mean of the
accumulated gradients, computed in NumPy; a hand-written Lookahead loop in
NumPy), Optax's ``MultiSteps`` and ``lookahead`` in float64 (skipped where
optax is not installed), and, for MultiOptimizer, the inner optimizers
stepped separately.  Refused arguments, steps and state dicts change nothing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import P, assert_close, to_np

import neural_arch as na
from neural_arch.backend import backend_name, to_backend
from neural_arch.optim import SGD, Adam, Lookahead, MultiOptimizer, MultiSteps
from neural_arch.optim.lr_scheduler import StepLR

SHAPES = ((2, 3), (3,), ())


def _arrays(shapes, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return [np.asarray(scale * rng.standard_normal(s)) for s in shapes]


def _params(xp, shapes=SHAPES, seed=0, dtype="float64"):
    return [P(to_backend(a, xp, dtype=dtype)) for a in _arrays(shapes, seed)]


def _set_grads(xp, params, grads, dtype=None):
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else to_backend(np.asarray(g), xp, dtype=dtype or p.data.dtype)


def _grad_sequence(n, shapes=SHAPES, seed=100):
    return [_arrays(shapes, seed + i) for i in range(n)]


def _bits(x):
    return to_np(x).tobytes()


def _same(a, b, what=""):
    a, b = to_np(a), to_np(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), f"{what}: {a} != {b}"


def _host(obj):
    """A state dict (or anything nested) with every array as a NumPy copy."""
    if isinstance(obj, dict):
        return {k: _host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host(v) for v in obj)
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        return to_np(obj).copy()
    return obj


def _assert_same_tree(a, b, where="state"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), where
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert a.tobytes() == b.tobytes(), f"{where} changed"
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def _snapshot(opt, params):
    return (
        [_host(p.data) for p in params],
        [_host(p.grad) for p in params],
        _host(opt.state_dict()),
    )


def _assert_unchanged(before, after):
    _assert_same_tree(before, after, "snapshot")


INNERS = {
    "sgd": lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": lambda ps: Adam(ps, lr=0.01, weight_decay=0.1, amsgrad=True),
}


# ======================================================================= MultiSteps


@pytest.mark.parametrize("inner", list(INNERS))
@pytest.mark.parametrize("every_k", [1, 3])
def test_multisteps_is_the_inner_optimizer_on_mean_gradients(xp, inner, every_k):
    """The closed form: every k-th call is one inner step on (g_1 + ... + g_k) / k."""
    ours, ref = _params(xp), _params(xp)
    opt = MultiSteps(INNERS[inner](ours), every_k=every_k)
    ref_opt = INNERS[inner](ref)
    sequence = _grad_sequence(4 * every_k)
    for call, grads in enumerate(sequence):
        before = [_bits(p.data) for p in ours]
        _set_grads(xp, ours, grads)
        stepped = opt.step()
        real = (call + 1) % every_k == 0
        assert stepped is real
        assert opt.mini_step == (call + 1) % every_k
        assert opt.accumulating is (not real)
        if not real:
            assert [_bits(p.data) for p in ours] == before
            continue
        window = sequence[call + 1 - every_k : call + 1]
        for i, q in enumerate(ref):  # in the backend's arithmetic (JAX's division is its own)
            total = to_backend(window[0][i], xp)
            for g in window[1:]:
                total = total + to_backend(g[i], xp)
            q.grad = xp.asarray(total / every_k)  # NumPy: a 0-d array, not a scalar
        ref_opt.step()
        for p, q in zip(ours, ref, strict=True):
            _same(p.data, q.data, "parameter")
            _same(p.grad, q.grad, "the mean gradient left in .grad")
    assert opt.step_count == ref_opt.step_count == 4


def _optax():
    optax = pytest.importorskip(
        "optax", reason="the Optax reference needs optax (pip install optax)"
    )
    import jax

    jax.config.update("jax_enable_x64", True)
    return optax, jax


_OPTAX_RUNS: dict = {}


def _optax_run(key, make, params0, sequence, *, lookahead=False):
    """Optax's trajectory (``make()``'s transformation) on the gradient sequence: NumPy
    arrays after each update, computed once per ``key`` (the backends share it)."""
    if key not in _OPTAX_RUNS:
        _OPTAX_RUNS[key] = _optax_trajectory(make(), params0, sequence, lookahead)
    return _OPTAX_RUNS[key]


def _optax_trajectory(transform, params0, sequence, lookahead):
    optax, jax = _optax()
    import jax.numpy as jnp

    params = [jnp.asarray(p) for p in params0]
    if lookahead:
        params = optax.LookaheadParams.init_synced(params)
    state = transform.init(params)
    update = jax.jit(transform.update)
    out = []
    for grads in sequence:
        g = [jnp.asarray(x) for x in grads]
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        if lookahead:
            out.append(
                ([np.asarray(x) for x in params.fast], [np.asarray(x) for x in params.slow])
            )
        else:
            out.append([np.asarray(x) for x in params])
    return out


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_multisteps_matches_optax(xp, inner):
    optax, _ = _optax()
    import jax.numpy as jnp

    k, lr = 3, 0.05
    theirs = {
        "sgd": lambda: optax.sgd(lr, momentum=0.9),
        "adam": lambda: optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8),
    }[inner]

    def make():
        return optax.MultiSteps(theirs(), every_k_schedule=k, accumulator_dtype=jnp.float64)

    mine = {"sgd": lambda ps: SGD(ps, lr=lr, momentum=0.9), "adam": lambda ps: Adam(ps, lr=lr)}
    sequence = _grad_sequence(4 * k)
    expected = _optax_run(("MultiSteps", inner), make, _arrays(SHAPES, 0), sequence)
    params = _params(xp)
    opt = MultiSteps(mine[inner](params), every_k=k)
    for grads, want in zip(sequence, expected, strict=True):
        _set_grads(xp, params, grads)
        opt.step()
        for p, w in zip(params, want, strict=True):
            assert_close(p.data, w, rtol=1e-12, atol=1e-15)


def test_multisteps_low_precision_accumulates_in_float32(xp):
    if backend_name(xp) == "array_api_strict":
        pytest.skip("array-api-strict has no float16")
    ours = _params(xp, dtype="float16")
    ref = _params(xp, dtype="float16")
    opt = MultiSteps(SGD(ours, lr=0.1), every_k=4)
    ref_opt = SGD(ref, lr=0.1)
    sequence = [[1e-3 * g for g in grads] for grads in _grad_sequence(4)]
    for grads in sequence:
        _set_grads(xp, ours, grads)
        opt.step()
    entry_dtypes = {str(to_np(p.grad).dtype) for p in ours}
    assert entry_dtypes == {"float32"}, "the mean handed to the inner optimizer is float32"
    means = []
    for i in range(len(SHAPES)):
        total = sequence[0][i].astype(np.float16).astype(np.float32)
        for g in sequence[1:]:
            total = total + g[i].astype(np.float16).astype(np.float32)
        means.append(total / np.float32(4))
    _set_grads(xp, ref, means, dtype="float32")
    ref_opt.step()
    for p, q in zip(ours, ref, strict=True):
        _same(p.data, q.data, "float16 parameter")


def test_multisteps_parameters_without_gradients(xp):
    a, b, c = _params(xp)
    opt = MultiSteps(SGD([a, b, c], lr=1.0), every_k=2)
    ga, gb = np.full((2, 3), 2.0), np.full((3,), 4.0)
    start_a, start_b, start_c = (to_np(p.data).copy() for p in (a, b, c))
    a.grad, b.grad, c.grad = to_backend(ga, xp), None, None
    assert opt.step() is False
    a.grad, b.grad = None, to_backend(gb, xp)
    assert opt.step() is True
    assert_close(a.data, start_a - ga / 2, rtol=0)  # each mean divides by k
    assert_close(b.data, start_b - gb / 2, rtol=0)
    _same(c.data, start_c, "a parameter with no gradient in the window")
    assert c.grad is None


@pytest.mark.parametrize("where", [0, 2])
def test_multisteps_nonfinite_raise_changes_nothing_and_the_window_goes_on(xp, where):
    params = _params(xp)
    opt = MultiSteps(Adam(params, lr=0.01), every_k=3)
    sequence = _grad_sequence(4)
    for grads in sequence[:where]:
        _set_grads(xp, params, grads)
        opt.step()
    bad = [g.copy() for g in sequence[where]]
    bad[1][0] = np.nan
    _set_grads(xp, params, bad)
    before = _snapshot(opt, params)
    with pytest.raises(FloatingPointError, match="parameter 1"):
        opt.step()
    _assert_unchanged(before, _snapshot(opt, params))
    assert opt.mini_step == where


def test_multisteps_nonfinite_skip_discards_the_window(xp):
    params, ref = _params(xp), _params(xp)
    opt = MultiSteps(SGD(params, lr=0.1, nonfinite="skip"), every_k=3)
    ref_opt = SGD(ref, lr=0.1)
    sequence = _grad_sequence(5)
    _set_grads(xp, params, sequence[0])
    assert opt.step() is False
    bad = [g.copy() for g in sequence[1]]
    bad[0][1, 2] = -np.inf
    start = [_bits(p.data) for p in params]
    _set_grads(xp, params, bad)
    assert opt.step() is False
    assert (opt.mini_step, opt.skipped_steps, opt.step_count) == (0, 1, 0)
    assert opt.state_dict()["acc_grads"] == {}
    assert [_bits(p.data) for p in params] == start
    for grads in sequence[2:]:  # a new window: the skipped one left nothing behind
        _set_grads(xp, params, grads)
        stepped = opt.step()
    assert stepped is True
    mean = [(sequence[2][i] + sequence[3][i] + sequence[4][i]) / 3 for i in range(3)]
    _set_grads(xp, ref, mean)
    ref_opt.step()
    for p, q in zip(params, ref, strict=True):
        assert_close(p.data, q.data, rtol=1e-15)


def test_multisteps_a_real_step_that_raises_changes_nothing(xp):
    """Finite gradients whose sum overflows: the inner optimizer refuses the mean."""
    params = [P(to_backend(np.zeros(3), xp, dtype="float32"))]
    opt = MultiSteps(SGD(params, lr=1.0), every_k=2)
    big = np.full(3, 3e38)
    _set_grads(xp, params, [big])
    opt.step()
    _set_grads(xp, params, [big])
    before = _snapshot(opt, params)
    grad = params[0].grad
    with pytest.raises(FloatingPointError):
        opt.step()
    _assert_unchanged(before, _snapshot(opt, params))
    assert params[0].grad is grad
    assert opt.mini_step == 1
    opt.reset()
    assert (opt.mini_step, opt.accumulating) == (0, False)
    _set_grads(xp, params, [np.ones(3)])
    opt.step()
    _set_grads(xp, params, [np.ones(3)])
    assert opt.step() is True
    assert_close(params[0].data, -np.ones(3, dtype=np.float32), rtol=0)


def test_multisteps_refuses_a_changed_parameter(xp):
    params = _params(xp)
    opt = MultiSteps(SGD(params, lr=0.1), every_k=3)
    _set_grads(xp, params, _grad_sequence(1)[0])
    opt.step()
    params[1].grad = to_backend(np.ones(4), xp)  # the parameter is (3,)
    before = _snapshot(opt, params)
    with pytest.raises(ValueError, match="gradient of parameter 1"):
        opt.step()
    _assert_unchanged(before, _snapshot(opt, params))
    params[0].data = to_backend(np.zeros((3, 2)), xp)
    params[0].grad = to_backend(np.ones((3, 2)), xp)
    before = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"parameter 0 has changed.*reset\(\)"):
        opt.step()
    _assert_unchanged(before, _snapshot(opt, params))


def test_multisteps_with_a_grad_scaler(xp):
    """The scaler unscales each micro-batch; an overflow skips that call, counted in the
    inner optimizer's skipped_steps (MultiSteps' setter)."""
    params, ref = _params(xp, dtype="float32"), _params(xp, dtype="float32")
    opt = MultiSteps(SGD(params, lr=0.5), every_k=2)
    ref_opt = SGD(ref, lr=0.5)
    scaler = na.GradScaler(init_scale=1024.0)
    sequence = _grad_sequence(3)
    overflow = [np.full(s, np.inf) for s in SHAPES]
    for grads in (sequence[0], overflow, sequence[1]):
        _set_grads(xp, params, [scaler.get_scale() * g for g in grads], dtype="float32")
        scaler.step(opt)
        scaler.update()
    assert (opt.skipped_steps, opt.optimizer.skipped_steps, opt.step_count) == (1, 1, 1)
    for i, q in enumerate(ref):
        total = to_backend(sequence[0][i], xp, dtype="float32")
        q.grad = xp.asarray((total + to_backend(sequence[1][i], xp, dtype="float32")) / 2.0)
    ref_opt.step()
    for p, q in zip(params, ref, strict=True):
        _same(p.data, q.data, "parameter")


def test_multisteps_scheduler_counts_real_steps(xp):
    params = _params(xp)
    opt = MultiSteps(SGD(params, lr=1.0), every_k=2)
    scheduler = StepLR(opt, step_size=1, gamma=0.5)
    lrs = []
    for grads in _grad_sequence(6):
        _set_grads(xp, params, grads)
        if opt.step():
            scheduler.step()
        lrs.append(opt.optimizer.param_groups[0]["lr"])
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25, 0.125]
    assert opt.param_groups is opt.optimizer.param_groups


@pytest.mark.parametrize("inner", list(INNERS))
def test_multisteps_resumes_midway_through_save_and_load(xp, inner, tmp_path):
    sequence = _grad_sequence(11)
    first = _params(xp)
    opt = MultiSteps(INNERS[inner](first), every_k=3)
    for grads in sequence[:5]:  # one real step, then two calls into the second window
        _set_grads(xp, first, grads)
        opt.step()
    assert opt.mini_step == 2
    path = tmp_path / "multisteps.safetensors"
    na.save({"params": [p.data for p in first], "opt": opt.state_dict()}, path)

    loaded = na.load(path)
    second = [P(to_backend(a, xp)) for a in loaded["params"]]
    resumed = MultiSteps(INNERS[inner](second), every_k=3)
    resumed.load_state_dict(loaded["opt"])
    assert resumed.mini_step == 2
    for grads in sequence[5:]:
        _set_grads(xp, first, grads)
        _set_grads(xp, second, grads)
        assert opt.step() == resumed.step()
    for p, q in zip(first, second, strict=True):
        _same(p.data, q.data, "resumed parameter")
    _assert_same_tree(_host(opt.state_dict()), _host(resumed.state_dict()))


@pytest.mark.parametrize(
    ("every_k", "kind"),
    [(0, ValueError), (-2, ValueError), (1.5, ValueError), (True, TypeError), ("4", TypeError)],
)
def test_multisteps_refuses_bad_every_k(every_k, kind):
    with pytest.raises(kind, match="every_k"):
        MultiSteps(SGD([P(np.zeros(2))]), every_k=every_k)


def test_multisteps_accepts_numpy_integers_and_refuses_non_optimizers():
    assert MultiSteps(SGD([P(np.zeros(2))]), every_k=np.int64(3)).every_k == 3
    with pytest.raises(TypeError, match="optimizer must be a neural_arch optimizer"):
        MultiSteps([P(np.zeros(2))])
    with pytest.raises(TypeError, match="optimizer must not be LBFGS"):
        MultiSteps(na.optim.LBFGS([P(np.zeros(2))]))
    opt = MultiSteps(SGD([P(np.zeros(2))]))
    with pytest.raises(TypeError, match="no closure"):
        opt.step(lambda: 0.0)


def _hostile_multisteps_dicts(good):
    def edit(**changes):
        out = dict(good)
        out.update(changes)
        return out

    acc = good["acc_grads"]
    wrong_shape = {0: np.zeros((3, 2))}
    return [
        (ValueError, "exactly the keys", good["optimizer"]),
        (ValueError, "exactly the keys", {**good, "extra": 1}),
        (TypeError, "must be a dict", [good]),
        (ValueError, r"mini_step.*\[0, 3\)", edit(mini_step=3)),
        (ValueError, "mini_step", edit(mini_step=-1)),
        (ValueError, "mini_step", edit(mini_step=1.5)),
        (ValueError, "mini_step", edit(mini_step=True)),
        (ValueError, "no window is open", edit(mini_step=0)),
        (ValueError, "index 7", edit(acc_grads={**acc, 7: np.zeros(3)})),
        (ValueError, "shape", edit(acc_grads={**acc, **wrong_shape})),
        (ValueError, "NaN or infinity", edit(acc_grads={**acc, 2: np.array(np.nan)})),
        (TypeError, "not a real floating", edit(acc_grads={**acc, 2: np.array(1)})),
        (TypeError, "must be an array", edit(acc_grads={**acc, 2: 1.0})),
        (TypeError, "must be a dict", edit(acc_grads=[np.zeros(3)])),
        (ValueError, "param", edit(optimizer={**good["optimizer"], "param_groups": []})),
    ]


def test_multisteps_load_state_dict_refusals_change_nothing(xp):
    params = _params(xp)
    opt = MultiSteps(Adam(params, lr=0.01), every_k=3)
    for grads in _grad_sequence(4):
        _set_grads(xp, params, grads)
        opt.step()
    good = _host(opt.state_dict())
    before = _snapshot(opt, params)
    for kind, match, bad in _hostile_multisteps_dicts(good):
        with pytest.raises(kind, match=match):
            opt.load_state_dict(bad)
        _assert_unchanged(before, _snapshot(opt, params))
    opt.load_state_dict(good)
    _assert_unchanged(before, _snapshot(opt, params))


# ======================================================================= Lookahead


def _lerp(start, end, weight):
    """torch.lerp's two branches, in NumPy (the hand-written reference's interpolation)."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1.0 - weight)


@pytest.mark.parametrize("inner", list(INNERS))
@pytest.mark.parametrize(("k", "alpha"), [(1, 0.5), (3, 0.5), (4, 0.2), (2, 1.0)])
def test_lookahead_matches_a_hand_written_loop(xp, inner, k, alpha):
    """The paper's loop: k inner steps (the inner optimizer on a copy), then the sync."""
    ours, fast = _params(xp), _params(xp)
    opt = Lookahead(INNERS[inner](ours), k=k, alpha=alpha)
    fast_opt = INNERS[inner](fast)
    slow = [to_np(p.data).copy() for p in fast]
    for step, grads in enumerate(_grad_sequence(3 * k + 2)):
        _set_grads(xp, ours, grads)
        _set_grads(xp, fast, grads)
        opt.step()
        fast_opt.step()
        if (step + 1) % k == 0:
            for i, p in enumerate(fast):
                slow[i] = _lerp(slow[i], to_np(p.data), alpha)
                p.data = to_backend(np.asarray(slow[i]), xp, copy=True)
        assert opt.steps_since_sync == (step + 1) % k
        for p, q in zip(ours, fast, strict=True):
            assert_close(p.data, q.data, rtol=1e-14, atol=1e-300)
        for p, s in zip(ours, slow, strict=True):
            assert_close(opt.slow_weights(p), s, rtol=1e-14, atol=1e-300)


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_lookahead_matches_optax(xp, inner):
    optax, _ = _optax()
    k, alpha, lr = 3, 0.5, 0.05
    theirs = {"sgd": lambda: optax.sgd(lr, momentum=0.9), "adam": lambda: optax.adam(lr)}[inner]

    def make():
        return optax.lookahead(theirs(), sync_period=k, slow_step_size=alpha)

    sequence = _grad_sequence(4 * k + 1)
    params0 = _arrays(SHAPES, 0)
    expected = _optax_run(("lookahead", inner), make, params0, sequence, lookahead=True)
    mine = {"sgd": lambda ps: SGD(ps, lr=lr, momentum=0.9), "adam": lambda ps: Adam(ps, lr=lr)}
    params = _params(xp)
    opt = Lookahead(mine[inner](params), k=k, alpha=alpha)
    for grads, (want_fast, want_slow) in zip(sequence, expected, strict=True):
        _set_grads(xp, params, grads)
        opt.step()
        for p, f, s in zip(params, want_fast, want_slow, strict=True):
            assert_close(p.data, f, rtol=1e-12, atol=1e-15)
            assert_close(opt.slow_weights(p), s, rtol=1e-12, atol=1e-15)


def test_lookahead_with_alpha_one_is_the_inner_optimizer(xp):
    ours, ref = _params(xp), _params(xp)
    opt = Lookahead(Adam(ours, lr=0.01), k=2, alpha=1.0)
    ref_opt = Adam(ref, lr=0.01)
    for grads in _grad_sequence(6):
        _set_grads(xp, ours, grads)
        _set_grads(xp, ref, grads)
        opt.step()
        ref_opt.step()
    for p, q in zip(ours, ref, strict=True):
        _same(p.data, q.data, "parameter")


def test_lookahead_keeps_a_frozen_parameter_bit_for_bit(xp):
    moving, frozen = _params(xp, shapes=((3,), (2,)))
    start = _bits(frozen.data)
    opt = Lookahead(SGD([moving, frozen], lr=0.1), k=2, alpha=0.3)
    for grads in _grad_sequence(6, shapes=((3,),)):
        _set_grads(xp, [moving], grads)
        opt.step()
    assert _bits(frozen.data) == start
    assert _bits(opt.slow_weights(frozen)) == start


def test_lookahead_slow_weights_start_at_the_first_step(xp):
    """Weights written into the model after the wrapper was built are the starting point."""
    params = _params(xp, shapes=((3,),))
    opt = Lookahead(SGD(params, lr=1.0), k=2, alpha=0.5)
    assert opt.slow_weights(params[0]) is None
    params[0].data = to_backend(np.array([1.0, 2.0, 3.0]), xp)  # e.g. a checkpoint loaded
    for g in ([0.5, 0.5, 0.5], [1.5, 1.5, 1.5]):
        params[0].grad = to_backend(np.array(g), xp)
        opt.step()
    # fast: x0 - 0.5 - 1.5 = x0 - 2; slow: x0 + 0.5 * (fast - x0) = x0 - 1
    assert_close(params[0].data, np.array([0.0, 1.0, 2.0]), rtol=0)
    assert_close(opt.slow_weights(params[0]), np.array([0.0, 1.0, 2.0]), rtol=0)


def test_lookahead_counts_only_applied_steps(xp):
    params = _params(xp, shapes=((3,),))
    opt = Lookahead(SGD(params, lr=0.1, nonfinite="skip"), k=2)
    params[0].grad = to_backend(np.ones(3), xp)
    opt.step()
    params[0].grad = to_backend(np.array([np.nan, 0.0, 0.0]), xp)
    opt.step()
    assert (opt.steps_since_sync, opt.skipped_steps, opt.step_count) == (1, 1, 1)


def test_lookahead_writes_the_master_copy(xp):
    if backend_name(xp) == "array_api_strict":
        pytest.skip("array-api-strict has no float16")
    params = _params(xp, shapes=((4,),), dtype="float16")
    opt = Lookahead(SGD(params, lr=1e-4, master_weights=True), k=2, alpha=0.5)
    for grads in _grad_sequence(2, shapes=((4,),)):
        _set_grads(xp, params, grads)
        opt.step()
    slow = opt.slow_weights(params[0])
    master = opt.state[params[0]]["master_param"]
    assert str(to_np(slow).dtype) == "float32"
    _same(master, slow, "the master copy after a sync")
    _same(params[0].data, to_np(slow).astype(np.float16), "the float16 parameter")


def test_lookahead_a_step_that_raises_at_a_sync_changes_nothing(xp):
    params = _params(xp)
    opt = Lookahead(Adam(params, lr=0.01), k=2)
    sequence = _grad_sequence(2)
    _set_grads(xp, params, sequence[0])
    opt.step()
    bad = [g.copy() for g in sequence[1]]
    bad[2] = np.array(np.inf)
    _set_grads(xp, params, bad)
    before = _snapshot(opt, params)
    with pytest.raises(FloatingPointError, match="parameter 2"):
        opt.step()
    _assert_unchanged(before, _snapshot(opt, params))
    assert opt.steps_since_sync == 1


def test_lookahead_first_step_that_raises_keeps_no_slow_weights(xp):
    params = _params(xp)
    opt = Lookahead(SGD(params, lr=0.1), k=2)
    params[0].grad = to_backend(np.zeros((3, 2)), xp)  # the parameter is (2, 3)
    with pytest.raises(ValueError, match="shape"):
        opt.step()
    assert all(opt.slow_weights(p) is None for p in params)
    assert opt.state_dict()["slow_params"] == {}


@pytest.mark.parametrize("inner", list(INNERS))
def test_lookahead_resumes_through_save_and_load(xp, inner, tmp_path):
    sequence = _grad_sequence(10)
    first = _params(xp)
    opt = Lookahead(INNERS[inner](first), k=3, alpha=0.6)
    for grads in sequence[:4]:
        _set_grads(xp, first, grads)
        opt.step()
    path = tmp_path / "lookahead.safetensors"
    na.save({"params": [p.data for p in first], "opt": opt.state_dict()}, path)
    loaded = na.load(path)
    second = [P(to_backend(a, xp)) for a in loaded["params"]]
    resumed = Lookahead(INNERS[inner](second), k=3, alpha=0.6)
    resumed.load_state_dict(loaded["opt"])
    for grads in sequence[4:]:
        _set_grads(xp, first, grads)
        _set_grads(xp, second, grads)
        opt.step()
        resumed.step()
    for p, q in zip(first, second, strict=True):
        _same(p.data, q.data, "resumed parameter")
        _same(opt.slow_weights(p), resumed.slow_weights(q), "resumed slow weights")
    _assert_same_tree(_host(opt.state_dict()), _host(resumed.state_dict()))


@pytest.mark.parametrize(
    ("kwargs", "kind", "match"),
    [
        ({"k": 0}, ValueError, "k must be"),
        ({"k": 2.5}, ValueError, "k must be"),
        ({"k": True}, TypeError, "k must be"),
        ({"k": None}, TypeError, "k must be"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"alpha": -0.5}, ValueError, "alpha"),
        ({"alpha": 1.5}, ValueError, "alpha"),
        ({"alpha": math.nan}, ValueError, "alpha"),
        ({"alpha": "0.5"}, TypeError, "alpha"),
        ({"alpha": True}, TypeError, "alpha"),
    ],
)
def test_lookahead_refuses_bad_arguments(kwargs, kind, match):
    with pytest.raises(kind, match=match):
        Lookahead(SGD([P(np.zeros(2))]), **kwargs)


def test_lookahead_accepts_numpy_scalars_and_refuses_non_optimizers():
    opt = Lookahead(SGD([P(np.zeros(2))]), k=np.int32(4), alpha=np.float32(0.25))
    assert (opt.k, opt.alpha) == (4, 0.25)
    assert type(opt.k) is int and type(opt.alpha) is float
    with pytest.raises(TypeError, match="optimizer must be a neural_arch optimizer"):
        Lookahead(MultiSteps(SGD([P(np.zeros(2))])))


def test_lookahead_load_state_dict_refusals_change_nothing(xp):
    params = _params(xp)
    opt = Lookahead(Adam(params, lr=0.01), k=3)
    for grads in _grad_sequence(4):
        _set_grads(xp, params, grads)
        opt.step()
    good = _host(opt.state_dict())
    slow = good["slow_params"]
    before = _snapshot(opt, params)
    hostile = [
        (ValueError, "plain optimizer", good["optimizer"]),
        (ValueError, r"steps_since_sync.*\[0, 3\)", {**good, "steps_since_sync": 3}),
        (ValueError, "steps_since_sync", {**good, "steps_since_sync": -1}),
        (ValueError, "shape", {**good, "slow_params": {**slow, 1: np.zeros(4)}}),
        (ValueError, "NaN", {**good, "slow_params": {**slow, 1: np.full(3, np.nan)}}),
        (ValueError, "index", {**good, "slow_params": {**slow, "x": np.zeros(3)}}),
        (ValueError, "state", {**good, "optimizer": {**good["optimizer"], "state": {9: {}}}}),
    ]
    for kind, match, bad in hostile:
        with pytest.raises(kind, match=match):
            opt.load_state_dict(bad)
        _assert_unchanged(before, _snapshot(opt, params))


# ================================================================== MultiOptimizer


def _two_parts(xp, seed=0):
    backbone = _params(xp, shapes=((2, 3), (3,)), seed=seed)
    head = _params(xp, shapes=((3,), ()), seed=seed + 1)
    return backbone, head


def _multi(backbone, head, **head_kwargs):
    return MultiOptimizer(
        {
            "backbone": SGD(backbone, lr=0.1, momentum=0.9),
            "head": Adam(head, lr=0.01, **head_kwargs),
        }
    )


def test_multioptimizer_equals_its_optimizers_stepped_separately(xp):
    backbone, head = _two_parts(xp)
    ref_backbone, ref_head = _two_parts(xp)
    opt = _multi(backbone, head)
    ref = [SGD(ref_backbone, lr=0.1, momentum=0.9), Adam(ref_head, lr=0.01)]
    for grads in _grad_sequence(5, shapes=((2, 3), (3,), (3,), ())):
        _set_grads(xp, backbone + head, grads)
        _set_grads(xp, ref_backbone + ref_head, grads)
        assert opt.step(lambda: 1.5) == 1.5
        for r in ref:
            r.step()
    for p, q in zip(backbone + head, ref_backbone + ref_head, strict=True):
        _same(p.data, q.data, "parameter")
    assert len(opt.param_groups) == 2
    assert opt.param_groups[1] is opt.optimizers["head"].param_groups[0]
    assert opt.state[head[0]] is opt.optimizers["head"].state[head[0]]
    assert len(opt.state) == 4 and backbone[0] in opt.state
    opt.zero_grad()
    assert all(p.grad is None for p in backbone + head)


def test_multioptimizer_scheduler_drives_every_group(xp):
    backbone, head = _two_parts(xp)
    opt = MultiOptimizer([SGD(backbone, lr=0.1), Adam(head, lr=0.01)])
    scheduler = StepLR(opt, step_size=1, gamma=0.5)
    _set_grads(xp, backbone + head, _grad_sequence(1, shapes=((2, 3), (3,), (3,), ()))[0])
    opt.step()
    scheduler.step()
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.005]
    with pytest.raises(ValueError, match="different learning rates"):
        opt.lr
    opt.lr = 0.2
    assert opt.optimizers[0].lr == opt.optimizers[1].lr == 0.2
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    assert opt.optimizers[0].lr == 0.2


def _multi_snapshot(opt, params):
    return [_host(p.data) for p in params], _host(opt.state_dict())


def test_multioptimizer_a_refused_step_changes_no_optimizer(xp):
    backbone, head = _two_parts(xp)
    opt = _multi(backbone, head)
    sequence = _grad_sequence(2, shapes=((2, 3), (3,), (3,), ()))
    _set_grads(xp, backbone + head, sequence[0])
    opt.step()
    bad = [g.copy() for g in sequence[1]]
    bad[3] = np.array(np.nan)  # the head's (second optimizer's) gradient
    _set_grads(xp, backbone + head, bad)
    before = _multi_snapshot(opt, backbone + head)
    with pytest.raises(FloatingPointError, match="parameter 1"):
        opt.step()
    _assert_unchanged(before, _multi_snapshot(opt, backbone + head))
    _set_grads(xp, backbone + head, sequence[1])
    head[1].grad = to_backend(np.ones(2), xp)  # a gradient of the wrong shape
    with pytest.raises(ValueError, match="shape"):
        opt.step()
    _assert_unchanged(before, _multi_snapshot(opt, backbone + head))


class _Picky(SGD):
    """An optimizer whose own step refuses (as AdamWScheduleFree's in eval mode)."""

    refuse = False

    def step(self, closure=None):
        if self.refuse:
            raise RuntimeError("not now")
        return super().step(closure)


def test_multioptimizer_steps_an_optimizer_with_its_own_step_first(xp):
    backbone, head = _two_parts(xp)
    picky = _Picky(head, lr=0.1)
    opt = MultiOptimizer([Adam(backbone, lr=0.01), picky])
    _set_grads(xp, backbone + head, _grad_sequence(1, shapes=((2, 3), (3,), (3,), ()))[0])
    picky.refuse = True
    before = _multi_snapshot(opt, backbone + head)
    with pytest.raises(RuntimeError, match="not now"):
        opt.step()
    _assert_unchanged(before, _multi_snapshot(opt, backbone + head))
    picky.refuse = False
    opt.step()
    assert opt.optimizers[0].step_count == picky.step_count == 1


def test_multioptimizer_skip_is_each_optimizers_own(xp):
    backbone, head = _two_parts(xp)
    opt = _multi(backbone, head, nonfinite="skip")
    grads = _grad_sequence(1, shapes=((2, 3), (3,), (3,), ()))[0]
    grads[2] = np.full(3, np.inf)
    _set_grads(xp, backbone + head, grads)
    head_before = [_bits(p.data) for p in head]
    opt.step()
    backbone_opt, head_opt = opt.optimizers["backbone"], opt.optimizers["head"]
    assert (head_opt.step_count, head_opt.skipped_steps) == (0, 1)
    assert (backbone_opt.step_count, backbone_opt.skipped_steps) == (1, 0)
    assert [_bits(p.data) for p in head] == head_before


@pytest.mark.parametrize("form", ["dict", "list"])
def test_multioptimizer_resumes_through_save_and_load(xp, form, tmp_path):
    def build(backbone, head):
        parts = [SGD(backbone, lr=0.1, momentum=0.9), Adam(head, lr=0.01)]
        return MultiOptimizer(
            dict(zip(["a", "b"], parts, strict=True)) if form == "dict" else parts
        )

    sequence = _grad_sequence(6, shapes=((2, 3), (3,), (3,), ()))
    backbone, head = _two_parts(xp)
    opt = build(backbone, head)
    for grads in sequence[:3]:
        _set_grads(xp, backbone + head, grads)
        opt.step()
    path = tmp_path / "multi.safetensors"
    na.save({"params": [p.data for p in backbone + head], "opt": opt.state_dict()}, path)
    loaded = na.load(path)
    params = [P(to_backend(a, xp)) for a in loaded["params"]]
    resumed = build(params[:2], params[2:])
    resumed.load_state_dict(loaded["opt"])
    for grads in sequence[3:]:
        _set_grads(xp, backbone + head, grads)
        _set_grads(xp, params, grads)
        opt.step()
        resumed.step()
    for p, q in zip(backbone + head, params, strict=True):
        _same(p.data, q.data, "resumed parameter")


def test_multioptimizer_load_refusals_change_nothing(xp):
    backbone, head = _two_parts(xp)
    opt = _multi(backbone, head)
    _set_grads(xp, backbone + head, _grad_sequence(1, shapes=((2, 3), (3,), (3,), ()))[0])
    opt.step()
    good = _host(opt.state_dict())
    records = {id(p): opt.state[p] for p in backbone + head}
    before = _multi_snapshot(opt, backbone + head)
    bad_head = {**good["head"], "param_groups": [{**good["head"]["param_groups"][0], "lr": -1.0}]}
    hostile = [
        (ValueError, "no entry", {"backbone": good["backbone"]}),
        (ValueError, "entry 'tail'", {**good, "tail": good["head"]}),
        (TypeError, "must be a dict", [good["backbone"], good["head"]]),
        (ValueError, r"state_dict\['head'\].*lr", {**good, "head": bad_head}),  # after backbone
        (ValueError, r"state_dict\['backbone'\]", {**good, "backbone": good["head"]}),
    ]
    for kind, match, bad in hostile:
        with pytest.raises(kind, match=match):
            opt.load_state_dict(bad)
        _assert_unchanged(before, _multi_snapshot(opt, backbone + head))
        assert all(opt.state[p] is records[id(p)] for p in backbone + head), "records restored"
    opt.load_state_dict(good)
    _assert_unchanged(before, _multi_snapshot(opt, backbone + head))


def test_multioptimizer_refusals():
    a, b = P(np.zeros(2)), P(np.zeros(3))
    sgd = SGD([a])
    with pytest.raises(ValueError, match="also parameter 0 of optimizers\\['x'\\]"):
        MultiOptimizer({"x": sgd, "y": Adam([b, a])})
    with pytest.raises(ValueError, match="again"):
        MultiOptimizer([sgd, sgd])
    with pytest.raises(TypeError, match=r"optimizers\[1\] must be a neural_arch optimizer"):
        MultiOptimizer([sgd, "adam"])
    with pytest.raises(ValueError, match="must not be empty"):
        MultiOptimizer({})
    with pytest.raises(TypeError, match="str names"):
        MultiOptimizer({1: sgd})
    with pytest.raises(TypeError, match="a dict name -> optimizer or a list"):
        MultiOptimizer(sgd)
    with pytest.raises(TypeError, match="must not be LBFGS"):
        MultiOptimizer([sgd, na.optim.LBFGS([b])])
    opt = MultiOptimizer([sgd, Adam([b])])
    groups = opt.param_groups
    for mutate in (
        lambda: groups.append({}),
        lambda: groups.pop(),
        lambda: groups.__setitem__(0, {}),
        lambda: groups.clear(),
    ):
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    assert len(opt.param_groups) == 2
