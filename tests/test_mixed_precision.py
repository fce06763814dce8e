"""float16 and bfloat16 parameters: float32 state and arithmetic, optional float32 master weights.

The reference for a low-precision run is a float32 run of the same optimizer
(itself checked against torch.optim in float64 elsewhere) whose parameter is
rounded to the low dtype after every step: that is the documented semantics
(read the parameter as float32, update in float32, round where written back).
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import P, to_np
from optimizers import TABLE, case_id, cases, covering_cases

import neural_arch as na
from neural_arch.backend import backend_name, to_backend
from neural_arch.optim import _engine, _fastpath

ENTRIES = [
    pytest.param(e, next(iter(cases(e))), id=case_id(e, next(iter(cases(e))))) for e in TABLE
]


def _low_dtype(xp, name):
    """``xp``'s float16 or bfloat16 (bfloat16 on NumPy through ml_dtypes), or skip."""
    if name == "float16":
        if not hasattr(xp, "float16"):
            pytest.skip(f"{backend_name(xp)} has no float16")
        return xp.float16
    if hasattr(xp, "bfloat16"):
        return xp.bfloat16
    if backend_name(xp) == "numpy":
        ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 on NumPy needs ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    pytest.skip(f"{backend_name(xp)} has no bfloat16")


def _f32(x):
    """Host float32 copy of an array of any backend and dtype."""
    if backend_name(x) == "torch":
        return x.float().cpu().numpy()
    return np.asarray(to_np(x)).astype(np.float32)


def _round(x32, low_np):
    """float32 values rounded to the low dtype and back (NumPy: the reference rounding)."""
    return x32.astype(low_np).astype(np.float32)


def _np_low(name):
    if name == "float16":
        return np.float16
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="the bfloat16 reference needs ml_dtypes")
    return ml_dtypes.bfloat16


def _values(shape=(3, 4), seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
@pytest.mark.parametrize(("entry", "kwargs"), ENTRIES)
def test_low_precision_follows_the_float32_rule_rounded(xp, entry, kwargs, low):
    """Small gradients stay finite; every step equals the float32 step, rounded."""
    dtype, low_np = _low_dtype(xp, low), _np_low(low)
    start = _round(_values(), low_np)
    p = P(to_backend(start, xp, dtype=dtype))
    ref = P(start.copy())
    opt, ref_opt = entry.make([p], **kwargs), entry.make([ref], **kwargs)
    for step in range(6):
        g = _round(_values(seed=step + 1, scale=1e-4), low_np)  # squares underflow float16
        p.grad = to_backend(g, xp, dtype=dtype)
        ref.grad = g.copy()
        opt.step()
        ref_opt.step()
        ref.data[...] = _round(ref.data, low_np)
        got = _f32(p.data)
        assert np.isfinite(got).all(), f"step {step}: {got}"
        np.testing.assert_array_equal(got, ref.data, err_msg=f"step {step}")
    assert str(p.data.dtype).endswith(low)
    for key, value in opt.state[p].items():
        if hasattr(value, "dtype"):
            assert str(value.dtype).endswith("float32"), f"state {key!r} is {value.dtype}"


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_adam_default_eps_stays_finite_in_float16(xp, low):
    """torch.optim's Adam on float16 turns eps=1e-8 into 0 and tiny gradients into NaN."""
    dtype = _low_dtype(xp, low)
    p = P(to_backend(np.ones(8, np.float32), xp, dtype=dtype))
    opt = na.Adam([p], lr=0.05)  # a step above half a unit in the last place of 1.0
    p.grad = to_backend(np.full(8, 1e-7, np.float32), xp, dtype=dtype)  # g*g underflows
    opt.step()
    got = _f32(p.data)
    # the first step is -lr * g / (|g| + eps) = -0.05 / (1 + 0.1) in float32, then rounded
    g = _round(np.float32(1e-7), _np_low(low))
    step = np.float32(0.05) * g / (np.abs(g) + np.float32(1e-8))
    np.testing.assert_array_equal(got, _round(np.full(8, 1 - step), _np_low(low)))


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_master_weights_accumulate_updates_below_the_resolution(xp, low):
    dtype, low_np = _low_dtype(xp, low), _np_low(low)
    plain = P(to_backend(np.ones(4, np.float32), xp, dtype=dtype))
    master = P(to_backend(np.ones(4, np.float32), xp, dtype=dtype))
    opts = [na.SGD([plain], lr=1e-4), na.SGD([master], lr=1e-4, master_weights=True)]
    expected = np.float32(1.0)
    for _ in range(100):
        for p in (plain, master):
            p.grad = to_backend(np.ones(4, np.float32), xp, dtype=dtype)
        for opt in opts:
            opt.step()
        expected = np.float32(expected - np.float32(1e-4))
    np.testing.assert_array_equal(_f32(plain.data), np.ones(4, np.float32))  # all lost
    np.testing.assert_array_equal(_f32(master.data), _round(np.full(4, expected), low_np))
    copy = opts[1].state[master]["master_param"]
    assert str(copy.dtype).endswith("float32")
    np.testing.assert_array_equal(to_np(copy), np.full(4, expected))
    assert "master_param" not in opts[0].state.get(plain, {})


def test_master_weights_round_trip_through_a_checkpoint(tmp_path):
    xp = na.backend.resolve_backend("numpy")
    start = _values()

    def run(opt_params, steps, seed):
        opt, params = opt_params
        for step in range(steps):
            params[0].grad = _values(seed=seed + step, scale=1e-3).astype(np.float16)
            opt.step()

    def make():
        params = [P(to_backend(start, xp, dtype=np.float16))]
        return na.Adam(params, lr=1e-3, master_weights=True), params

    straight = make()
    run(straight, 6, 10)
    first = make()
    run(first, 3, 10)
    na.save(first[0].state_dict(), tmp_path / "opt.safetensors")
    resumed = make()
    resumed[1][0].data[...] = first[1][0].data
    resumed[0].load_state_dict(na.load(tmp_path / "opt.safetensors"))
    assert resumed[0].state[resumed[1][0]]["master_param"].dtype == np.float32
    run(resumed, 3, 13)
    assert resumed[1][0].data.tobytes() == straight[1][0].data.tobytes()
    for key, value in straight[0].state[straight[1][0]].items():
        other = resumed[0].state[resumed[1][0]][key]
        if hasattr(value, "dtype"):
            assert value.tobytes() == other.tobytes(), key
        else:
            assert value == other, key


def test_loaded_state_of_a_float16_parameter_is_float32():
    """A state dict saved in float16 (say, torch's) loads as float32 state."""
    p = P(np.ones(3, np.float16))
    opt = na.Adam([p])
    sd = {
        "state": {
            0: {
                "step": 1,
                "exp_avg": np.full(3, 0.5, np.float16),
                "exp_avg_sq": np.full(3, 0.25, np.float16),
            }
        },
        "param_groups": [{**opt.param_groups[0], "params": [0]}],
    }
    sd["param_groups"][0].pop("param_names", None)
    opt.load_state_dict(sd)
    assert opt.state[p]["exp_avg"].dtype == np.float32
    assert opt.state[p]["exp_avg_sq"].dtype == np.float32


def test_float32_gradient_of_a_float16_parameter_is_used_in_float32():
    """A float32 gradient is not rounded to float16 first (the step computes in float32)."""
    g = np.full(3, 1.0 + 2.0**-12, np.float32)  # not a float16 value
    p, ref = P(np.ones(3, np.float16), g), P(np.ones(3, np.float32), g.copy())
    na.SGD([p], lr=0.5).step()
    na.SGD([ref], lr=0.5).step()
    np.testing.assert_array_equal(p.data, ref.data.astype(np.float16))


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_master_weights_must_be_a_bool(value):
    with pytest.raises(ValueError, match="Invalid master_weights"):
        na.Adam([P(np.ones(3, np.float16))], master_weights=value)


# ----------------------------------------------- the NumPy kernels on 16-bit floats

RULES = [e for e in TABLE if e.cls._rule is not None]
# every option of every rule in float16; bfloat16 and master copies on each rule's first case
# (the generated kernels differ there only in how the parameter is read and written)
VARIANTS = [
    pytest.param(e, kw, "float16", False, id=f"{case_id(e, kw)}-float16")
    for e in RULES
    for kw in covering_cases(e)
] + [
    pytest.param(e, next(iter(cases(e))), low, master, id=f"{e.name}-{low}-{tag}")
    for e in RULES
    for low, master, tag in (
        ("bfloat16", False, "plain"),
        ("float16", True, "master"),
        ("bfloat16", True, "master"),
    )
]


@pytest.fixture
def kernels():
    pytest.importorskip("numba", reason="the NumPy fast path needs numba (neural_arch[fast])")
    if not _fastpath.enabled():
        pytest.skip("the fast path is switched off (NEURAL_ARCH_FASTPATH=0)")


def _run16(entry, kwargs, dtype, master, steps=5, shapes=((3, 4), (7,), (2, 3))):
    """Parameters and optimizer after ``steps`` steps; one gradient F-ordered (a copy)."""
    rng = np.random.default_rng(3)
    params = [P(rng.standard_normal(s).astype(np.float32).astype(dtype)) for s in shapes]
    opt = entry.make(params, master_weights=master, **kwargs)
    for _ in range(steps):
        for i, p in enumerate(params):
            g = (rng.standard_normal(p.data.shape) * 0.1).astype(np.float32).astype(dtype)
            p.grad = np.asfortranarray(g) if i == 0 else g
        opt.step()
    return params, opt


def _same16(a, b):
    (pa, oa), (pb, ob) = a, b
    for i, (x, y) in enumerate(zip(pa, pb, strict=True)):
        assert x.data.dtype == y.data.dtype and x.data.tobytes() == y.data.tobytes(), i
        ra, rb = oa.state[x], ob.state[y]
        assert list(ra) == list(rb), i
        for k, v in ra.items():
            if hasattr(v, "dtype"):
                assert v.dtype == rb[k].dtype and v.tobytes() == rb[k].tobytes(), (i, k)
            else:
                assert v == rb[k], (i, k)


@pytest.mark.parametrize(("entry", "kwargs", "low", "master"), VARIANTS)
def test_numpy_kernels_on_16_bit_floats_equal_the_generic_path(
    kernels, monkeypatch, entry, kwargs, low, master
):
    dtype = _np_low(low)
    old = _fastpath.set_enabled(False)
    try:
        reference = _run16(entry, kwargs, dtype, master)
    finally:
        _fastpath.set_enabled(old)

    def refuse(*args, **kw):
        raise AssertionError("a 16-bit parameter went through the generic engine")

    monkeypatch.setattr(_engine, "run_generic", refuse)
    _same16(_run16(entry, kwargs, dtype, master), reference)


@pytest.mark.parametrize("master", [False, True], ids=["plain", "master"])
@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_numpy_kernels_on_16_bit_floats_split_over_threads(kernels, monkeypatch, low, master):
    """Segments of 2-byte and 4-byte columns start at the same element."""
    dtype = _np_low(low)
    entry = next(e for e in TABLE if e.name == "Adam")
    one = _run16(entry, {}, dtype, master, shapes=((301,), (5, 7)))
    monkeypatch.setattr(_fastpath, "PARALLEL_MIN_SIZE", 16)
    old = _fastpath.set_num_threads(2)
    try:
        two = _run16(entry, {}, dtype, master, shapes=((301,), (5, 7)))
    finally:
        _fastpath.set_num_threads(old)
    _same16(two, one)


def test_astype_is_differentiable_and_casts_the_gradient_back(xp):
    dtype = xp.float16 if hasattr(xp, "float16") else xp.float32
    x = na.Tensor(xp.asarray([1.0, 2.0, 3.0], dtype=dtype), requires_grad=True)
    y = x.astype("float64")
    assert y.dtype == xp.float64
    (y * y).sum().backward()
    assert x.grad.dtype == dtype
    np.testing.assert_array_equal(_f32(x.grad), [2.0, 4.0, 6.0])
    with pytest.raises(TypeError, match="real floating dtype"):
        x.astype("int32")
