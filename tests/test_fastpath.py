"""The fast paths (numba on NumPy, CuPy kernels) against the generic array-API rule.

The generic rule is the reference: the same optimizer runs twice, once with
the fast path and once with it switched off, and the two must agree to the
last bit (the kernels do the generic rule's operations in its order, with no
fused multiply-add), over many steps and every option.  That comparison, over
the whole option grid of tests/optimizers.py, and the all-or-nothing refusal
of non-finite gradients are in test_optimizer_table.py; the checks here are
the fast path's own: switching paths, threads, strides, fallbacks, memory.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from _helpers import P
from optimizers import case_params

import neural_arch as na
import neural_arch.optim
from neural_arch.optim import _engine, _fastpath


@pytest.fixture
def kernels():
    """The numba kernels (tests of the NumPy fast path skip without numba)."""
    pytest.importorskip("numba", reason="the NumPy fast path needs numba (neural_arch[fast])")
    if not _fastpath.enabled():
        pytest.skip("the fast path is switched off (NEURAL_ARCH_FASTPATH=0)")
    assert _fastpath._numba(), "numba imports but neural_arch's numba support does not"


SHAPES = ((3, 4), (), (7,), (2, 3, 5), (1,))


@pytest.fixture
def generic():
    """Run the block with the fast path switched off."""

    class Switch:
        def __enter__(self):
            self.old = _fastpath.set_enabled(False)

        def __exit__(self, *exc):
            _fastpath.set_enabled(self.old)

    return Switch()


@pytest.fixture
def no_generic_fallback(kernels, monkeypatch):
    """Fail if a parameter the kernels should take goes through the generic rule."""

    real = _engine.run_generic

    def refusing(*args, **kwargs):
        assert not _fastpath.enabled(), "the fast path left a parameter to the generic engine"
        return real(*args, **kwargs)

    monkeypatch.setattr(_engine, "run_generic", refusing)


def _train(cls, kw, dtype, steps, shapes=SHAPES, seed=0, nonfinite="raise", grads=None):
    rng = np.random.default_rng(seed)
    params = [P(rng.standard_normal(s).astype(dtype)) for s in shapes]
    opt = cls(params, nonfinite=nonfinite, **kw)
    for t in range(steps):
        for i, p in enumerate(params):
            g = rng.standard_normal(p.data.shape).astype(dtype)
            p.grad = grads(t, i, g) if grads is not None else g
        opt.step()
    return params, opt


def _assert_same_bits(a, b):
    np.testing.assert_array_equal(a, b, strict=True)  # NaNs in the same places count as equal


def _assert_same_state(opt_fast, opt_gen, params_fast, params_gen):
    for pf, pg in zip(params_fast, params_gen, strict=True):
        _assert_same_bits(pf.data, pg.data)
        sf, sg = opt_fast.state[pf], opt_gen.state[pg]
        assert list(sf) == list(sg)
        for key in sf:
            if key == "step":
                assert type(sf[key]) is int and sf[key] == sg[key]
            elif sg[key] is None:
                assert sf[key] is None
            else:
                assert type(sf[key]) is type(sg[key])
                _assert_same_bits(sf[key], sg[key])


def test_switching_paths_mid_training_changes_nothing(generic, no_generic_fallback):
    """A run that alternates fast and generic steps equals a generic run."""
    kw = {"amsgrad": True, "weight_decay": 0.1}
    with generic:
        params_gen, opt_gen = _train(na.AdamW, kw, "float32", 20)
    rng = np.random.default_rng(0)
    params = [P(rng.standard_normal(s).astype("float32")) for s in SHAPES]
    opt = na.AdamW(params, **kw)
    for t in range(20):
        for p in params:
            p.grad = rng.standard_normal(p.data.shape).astype("float32")
        if t % 3 == 1:
            with generic:
                opt.step()
        else:
            opt.step()
    _assert_same_state(opt, opt_gen, params, params_gen)


def test_threads_give_the_same_bits(monkeypatch, no_generic_fallback):
    monkeypatch.setattr(_fastpath, "PARALLEL_MIN_SIZE", 16)
    shapes = ((1000,), (3, 40), (5,))
    for cls, kw in [(na.Adam, {"amsgrad": True}), (na.SGD, {"momentum": 0.9, "nesterov": True})]:
        one, opt_one = _train(cls, kw, "float32", 5, shapes=shapes)
        old = _fastpath.set_num_threads(2)
        try:
            two, opt_two = _train(cls, kw, "float32", 5, shapes=shapes)
        finally:
            _fastpath.set_num_threads(old)
        _assert_same_state(opt_two, opt_one, two, one)


def test_set_num_threads_refuses_nonsense():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive int"):
            _fastpath.set_num_threads(bad)


# ---------------------------------------------------------------- nonfinite


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_first_nonfinite_finds_the_first_bad_gradient(dtype, bad, kernels):
    grads = [np.ones(s, dtype) for s in ((3,), (), (2, 2), (5,))]
    pairs = [(None, g) for g in grads]
    assert _fastpath.first_nonfinite(pairs) == -1
    grads[2][1, 0] = bad
    assert _fastpath.first_nonfinite(pairs) == 2
    grads[1][()] = bad
    assert _fastpath.first_nonfinite(pairs) == 1
    # the largest finite value and subnormals are finite
    big = np.array([np.finfo(dtype).max, -np.finfo(dtype).max, np.finfo(dtype).smallest_subnormal])
    assert _fastpath.first_nonfinite([(None, big.astype(dtype))]) == -1


def test_first_nonfinite_reads_transposed_gradients(kernels):
    g = np.ones((4, 3), "float32").T  # F-contiguous, as a matmul's gradient may come
    assert _fastpath.first_nonfinite([(None, np.ones(2)), (None, g)]) == -1
    g[2, 1] = np.inf
    assert _fastpath.first_nonfinite([(None, np.ones(2)), (None, g)]) == 1


def test_first_nonfinite_leaves_other_arrays_to_the_generic_check(kernels):
    g = np.ones(6)
    assert _fastpath.first_nonfinite([(None, g[::2])]) is None  # not contiguous
    assert _fastpath.first_nonfinite([(None, g.astype("int32"))]) is None
    assert _fastpath.first_nonfinite([(None, g), (None, [1.0])]) is None


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_first_nonfinite_reads_16_bit_gradients(kernels, low):
    dtype = np.float16 if low == "float16" else pytest.importorskip("ml_dtypes").bfloat16
    grads = [np.ones(5, dtype), np.ones((2, 3), dtype), np.ones(4, dtype)]
    assert _fastpath.first_nonfinite([(None, g) for g in grads]) == -1
    for bad in (np.inf, -np.inf, np.nan):
        grads[1][1, 2] = bad
        assert _fastpath.first_nonfinite([(None, g) for g in grads]) == 1
        grads[1][1, 2] = 1
    grads[2][3] = 65504 if low == "float16" else 3e38  # the largest finite values
    assert _fastpath.first_nonfinite([(None, g) for g in grads]) == -1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nonfinite_ignore_propagates_like_the_generic_path(dtype, generic, no_generic_fallback):
    def poison(t, i, g):
        if t in (2, 5) and g.size > 2:
            g.reshape(-1)[:3] = (np.nan, np.inf, -np.inf)
        return g

    for cls, kw in [
        (na.Adam, {"amsgrad": True, "weight_decay": 0.1}),
        (na.AdamW, {"maximize": True}),
        (na.SGD, {"momentum": 0.9, "weight_decay": 0.1}),
    ]:
        fast, opt_fast = _train(cls, kw, dtype, 8, nonfinite="ignore", grads=poison)
        with generic:
            gen, opt_gen = _train(cls, kw, dtype, 8, nonfinite="ignore", grads=poison)
        _assert_same_state(opt_fast, opt_gen, fast, gen)


def test_transposed_and_strided_gradients_take_the_kernels(generic, no_generic_fallback):
    """A gradient in F order or with strides is copied to a reused buffer, same bits."""

    def run():
        rng = np.random.default_rng(3)
        params = [P(rng.standard_normal((5, 3)).astype("float32")) for _ in range(3)]
        opt = na.Adam(params, amsgrad=True, weight_decay=0.1)
        for _ in range(4):
            params[0].grad = rng.standard_normal((3, 5)).astype("float32").T
            params[1].grad = rng.standard_normal((10, 3)).astype("float32")[::2]
            params[2].grad = rng.standard_normal((5, 3)).astype("float32")
            opt.step()
        return params, opt

    fast, opt_fast = run()
    with generic:
        gen, opt_gen = run()
    _assert_same_state(opt_fast, opt_gen, fast, gen)


# ----------------------------------------------------------------- fallback


def test_arrays_the_kernels_do_not_take_go_the_generic_way(generic, kernels):
    """Non-contiguous, read-only-gradient, mixed-dtype, float16 parameters: same result."""

    def build():
        rng = np.random.default_rng(1)
        base = rng.standard_normal((4, 6))
        ro = rng.standard_normal(5).astype("float32")
        params = [
            P(base[:, ::2]),  # a strided view: generic
            P(rng.standard_normal(3).astype("float32")),  # another dtype in the same group
            P(rng.standard_normal(3).astype("float16")),  # a dtype the kernels do not take
            P(np.asfortranarray(rng.standard_normal((3, 2)))),  # F order: generic
            P(ro),
        ]
        return params

    def run():
        params = build()
        opt = na.Adam(params, amsgrad=True)
        rng = np.random.default_rng(2)
        for _ in range(5):
            for p in params:
                p.grad = rng.standard_normal(p.data.shape).astype(p.data.dtype)
            params[4].grad.flags.writeable = False  # a read-only gradient is fine for a kernel
            params[1].grad = params[1].grad.astype("float64")  # gradient of another dtype
            opt.step()
        return params, opt

    fast, opt_fast = run()
    with generic:
        gen, opt_gen = run()
    _assert_same_state(opt_fast, opt_gen, fast, gen)
    assert fast[0].data.base is not None  # the view stayed a view, updated in place


def test_other_backends_are_not_taken():
    xps = pytest.importorskip("array_api_strict")
    from neural_arch.optim import sgd
    from neural_arch.optim.rule import trace

    p = P(xps.ones(3), xps.ones(3))
    opt = na.SGD([p], lr=0.5)
    program = trace(sgd.sgd, (), sgd.flags(opt.param_groups[0]))
    assert _fastpath.run(program, [(p, p.grad, {})], sgd.scalars(opt.param_groups[0]), {}) == [0]
    opt.step()
    assert float(p.data[0]) == 0.5


def test_without_numba_the_generic_path_runs_silently(monkeypatch, generic):
    """numba missing: no error, no warning, the same numbers."""
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba now raises ImportError
    monkeypatch.delitem(sys.modules, "neural_arch.optim._numba", raising=False)
    monkeypatch.delattr(neural_arch.optim, "_numba", raising=False)
    monkeypatch.setattr(_fastpath, "_loaded", {})
    assert _fastpath._numba() is False
    params, opt = _train(na.Adam, {"amsgrad": True}, "float32", 5)
    assert _fastpath.first_nonfinite([(None, params[0].grad)]) is None
    with generic:
        params_gen, opt_gen = _train(na.Adam, {"amsgrad": True}, "float32", 5)
    _assert_same_state(opt, opt_gen, params, params_gen)


def test_importing_neural_arch_imports_neither_numba_nor_cupy():
    code = (
        "import sys, neural_arch, neural_arch.optim; "
        "assert 'numba' not in sys.modules and 'cupy' not in sys.modules, "
        "[m for m in sys.modules if m.startswith(('numba', 'cupy'))]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_allocation_proportional_to_the_model(no_generic_fallback):
    """After the first step (which creates the state) a step allocates O(1) memory."""
    import tracemalloc

    params = [P(np.ones(100_000, "float32"), np.ones(100_000, "float32")) for _ in range(4)]
    for cls, kw in [(na.Adam, {"amsgrad": True}), (na.AdamW, {}), (na.SGD, {"momentum": 0.9})]:
        opt = cls(params, **kw)
        opt.step()
        opt.step()
        tracemalloc.start()
        opt.step()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 20_000, f"{cls.__name__} allocated {peak} bytes in one step"


# --------------------------------------------------------------------- CuPy


def _cupy():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("CuPy needs a CUDA device")
    except Exception:
        pytest.skip("CuPy needs a CUDA device")
    return cupy


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("entry", "kw"), case_params())
def test_cupy_fast_path_matches_generic_bit_for_bit(entry, kw, dtype, generic, monkeypatch):
    cupy = _cupy()

    def train():
        rng = np.random.default_rng(0)
        params = [P(cupy.asarray(rng.standard_normal(s).astype(dtype))) for s in SHAPES]
        opt = entry.make(params, **kw)
        for _ in range(100):
            for p in params:
                p.grad = cupy.asarray(rng.standard_normal(p.data.shape).astype(dtype))
            opt.step()
        return params, opt

    with generic:
        gen, opt_gen = train()

    def refuse(*args, **kwargs):
        raise AssertionError("the CuPy fast path fell back to the generic engine")

    monkeypatch.setattr(_engine, "run_generic", refuse)
    fast, opt_fast = train()
    for pf, pg in zip(fast, gen, strict=True):
        np.testing.assert_array_equal(cupy.asnumpy(pf.data), cupy.asnumpy(pg.data))
        for key, value in opt_fast.state[pf].items():
            other = opt_gen.state[pg][key]
            if key == "step" or value is None or isinstance(value, float):  # scalar state
                assert value == other
            else:
                assert type(value) is cupy.ndarray
                np.testing.assert_array_equal(cupy.asnumpy(value), cupy.asnumpy(other))


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_optimizer_never_writes_into_the_original(kernels, how):
    """The pointer tables hold raw addresses (and weak references): copies start without them."""
    import copy
    import pickle

    params = [P(np.ones(50, "float32"), np.ones(50, "float32")) for _ in range(3)]
    opt = na.Adam(params, lr=0.1)
    opt.step()
    opt.step()
    before = [p.data.copy() for p in params]
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    twin_params = twin.param_groups[0]["params"]
    assert all(t is not p for t, p in zip(twin_params, params, strict=True))
    for t in twin_params:
        t.grad = np.full(50, -3.0, "float32")
    twin.step()
    for p, b in zip(params, before, strict=True):
        np.testing.assert_array_equal(p.data, b)  # the original's arrays are untouched
    assert not np.array_equal(twin_params[0].data, before[0])


def test_first_nonfinite_on_threads_finds_the_first_bad_gradient(kernels, monkeypatch):
    """Segments of several gradients on numba's threads: the first bad one, wherever it is."""
    monkeypatch.setattr(_fastpath, "PARALLEL_MIN_SIZE", 16)
    old = _fastpath.set_num_threads(2)
    try:
        grads = [np.ones(n, np.float32) for n in (5, 300, 7, 1000)]
        assert _fastpath.first_nonfinite([(None, g) for g in grads], {}) == -1
        for j, g in enumerate(grads):
            for pos in (0, len(g) // 2, len(g) - 1):
                g[pos] = np.nan
                assert _fastpath.first_nonfinite([(None, g) for g in grads], {}) == j
                g[pos] = 1
        grads[3][999], grads[1][3] = np.inf, -np.inf
        assert _fastpath.first_nonfinite([(None, g) for g in grads], {}) == 1
    finally:
        _fastpath.set_num_threads(old)
