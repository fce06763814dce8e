"""Checkpoints: exact round trips on every backend, atomic writes, clean failures."""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import neural_arch as na
from neural_arch import backend, checkpoint

# --------------------------------------------------------------------------- helpers


def assert_same(actual, expected, backend_name="numpy", where="obj"):
    """Equal values *and* equal Python types; arrays equal bit for bit, in ``backend_name``."""
    if isinstance(expected, (dict, list, tuple)):
        assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
        assert len(actual) == len(expected), f"{where}: length differs"
        if isinstance(expected, dict):
            assert [(type(k), k) for k in actual] == [(type(k), k) for k in expected], where
            for key in expected:
                assert_same(actual[key], expected[key], backend_name, f"{where}[{key!r}]")
        else:
            for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
                assert_same(a, e, backend_name, f"{where}[{i}]")
    elif expected is None or isinstance(expected, (bool, int, str)):
        assert type(actual) is type(expected) and actual == expected, f"{where}: {actual!r}"
    elif isinstance(expected, float):
        assert type(actual) is float, f"{where}: {type(actual)}"
        if math.isnan(expected):
            assert math.isnan(actual), where
        else:
            assert actual == expected and math.copysign(1, actual) == math.copysign(1, expected)
    else:
        assert backend.backend_name(actual) == backend_name, f"{where}: {type(actual)}"
        assert backend.dtype_name(actual.dtype) == backend.dtype_name(expected.dtype), where
        assert tuple(actual.shape) == tuple(expected.shape), where
        a, e = backend.to_numpy(actual), backend.to_numpy(expected)
        assert a.tobytes() == e.tobytes(), f"{where}: values differ"


def array_dtypes(xp):
    names = ["bool", "int8", "int32", "int64", "uint8", "float32", "float64"]
    return names + (["float16"] if hasattr(xp, "float16") else [])


def sample_arrays(xp):
    """Arrays of every dtype the backend has, plus 0-d, empty and non-contiguous ones."""
    out = {}
    for name in array_dtypes(xp):
        host = (np.arange(12).reshape(3, 4) % 5).astype(name)
        out[name] = backend.to_backend(host, xp)
    out["scalar"] = backend.to_backend(np.array(-0.0), xp)
    out["empty"] = backend.to_backend(np.zeros((0, 3), dtype=np.float32), xp)
    out["special"] = backend.to_backend(np.array([np.nan, np.inf, -np.inf, 1e-310]), xp)
    out["transposed"] = backend.to_backend(np.arange(6.0).reshape(2, 3), xp).T
    return out


PLAIN = {
    "epoch": 7,
    "big": 2**70,
    "flags": [True, False, 0, 1, 0.0, 1.0],
    "floats": (float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 0.1),
    "text": "héllo ☃ \x00 \ud800",
    "none": None,
    "empties": ({}, [], ()),
    "optimizer": {
        "state": {0: {"step": 3}, 2: {"step": 1}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 2]}],
    },
    "mixed_keys": {1: "int", "1": "str", -5: "negative"},
}


# --------------------------------------------------------------------------- round trips


def test_round_trip_on_backend(xp, tmp_path):
    path = tmp_path / "ck.safetensors"
    obj = {**PLAIN, "arrays": sample_arrays(xp), "nested": [(sample_arrays(xp)["float32"],)]}
    na.save(obj, path)
    name = backend.backend_name(xp)
    assert_same(na.load(path, backend=xp), obj, name)
    assert_same(na.load(path, backend=name), obj, name)
    assert_same(na.load(str(path)), obj, "numpy")  # default: NumPy


def test_round_trip_across_backends(xp, other_xp, tmp_path):
    """Saved from one backend, loaded into another: same dtypes, same bits."""
    path = tmp_path / "ck.safetensors"
    arrays = {n: a for n, a in sample_arrays(xp).items() if hasattr(other_xp, n) or "int" in n}
    arrays.pop("float16", None) if not hasattr(other_xp, "float16") else None
    na.save(arrays, path)
    assert_same(na.load(path, backend=other_xp), arrays, backend.backend_name(other_xp))


def test_numpy_scalars_load_as_python_numbers(tmp_path):
    path = tmp_path / "ck.safetensors"
    na.save({"a": np.float32(0.1), "b": np.int64(3), "c": np.bool_(True)}, path)
    assert_same(na.load(path), {"a": float(np.float32(0.1)), "b": 3, "c": True})


def test_the_same_array_object_is_stored_once(tmp_path):
    path = tmp_path / "ck.safetensors"
    w = np.ones((100, 100))
    na.save({"encoder": w, "decoder": w}, path)
    assert os.path.getsize(path) < w.nbytes * 1.5
    out = na.load(path)
    assert out["encoder"] is out["decoder"]
    np.testing.assert_array_equal(out["encoder"], w)


def test_loaded_numpy_arrays_are_writable(tmp_path):
    path = tmp_path / "ck.safetensors"
    na.save({"w": np.zeros(3)}, path)
    w = na.load(path)["w"]
    w += 1.0
    np.testing.assert_array_equal(w, np.ones(3))


def test_tensor_leaves_load_as_arrays(tmp_path):
    p = na.Parameter(np.arange(3.0))
    path = tmp_path / "ck.safetensors"
    na.save({"p": p, "t": na.Tensor(np.ones(2, dtype=np.float32))}, path)
    out = na.load(path)
    assert_same(out, {"p": np.arange(3.0), "t": np.ones(2, dtype=np.float32)})


def test_bfloat16_round_trip_in_torch(tmp_path):
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip(
        "ml_dtypes", reason="bfloat16 passes through NumPy, which needs ml_dtypes"
    )
    path = tmp_path / "ck.safetensors"
    x = torch.tensor([1.5, -2.0, 3.140625], dtype=torch.bfloat16)
    na.save({"x": x}, path)
    y = na.load(path, backend="torch")["x"]
    assert y.dtype == torch.bfloat16 and torch.equal(x, y)
    host = na.load(path)["x"]
    assert host.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(host.astype(np.float32), [1.5, -2.0, 3.140625])


# hypothesis: arbitrary nesting of every kind of leaf and container

_keys = st.one_of(st.text(max_size=8), st.integers(-(2**63), 2**63))
_dtypes = st.sampled_from(["bool", "int8", "int64", "uint16", "float32", "float64"])
_arrays = _dtypes.flatmap(
    lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
)
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    _arrays,
)
_trees = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(_keys, children, max_size=4),
    ),
    max_leaves=20,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(obj=_trees)
def test_nested_structures_round_trip(xp, tmp_path, obj):
    path = tmp_path / "tree.safetensors"

    def to_xp(x):
        if isinstance(x, np.ndarray):
            return backend.to_backend(x, xp)
        if isinstance(x, dict):
            return {k: to_xp(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(to_xp(v) for v in x)
        return x

    obj = to_xp(obj)
    na.save(obj, path)
    assert_same(na.load(path, backend=xp), obj, backend.backend_name(xp))


# --------------------------------------------------------------------------- refused inputs


@pytest.mark.parametrize(
    ("obj", "where", "what"),
    [
        ({"a": [1, {2, 3}]}, 'obj["a"][1]', "set"),
        ({"a": (object(),)}, 'obj["a"][0]', "object"),
        ({"optimizer": {"state": {1.5: {}}}}, 'obj["optimizer"]["state"][1.5]', "float"),
        ({"s": {(1, 2): 0}}, 'obj["s"][(1, 2)]', "tuple"),
        ({"s": {True: 0}}, 'obj["s"][True]', "bool"),
        ({"b": b"bytes"}, 'obj["b"]', "bytes"),
        ({"c": np.zeros(2, dtype=np.complex128)}, 'obj["c"]', "complex128"),
    ],
)
def test_unsupported_values_raise_type_error_naming_the_path(tmp_path, obj, where, what):
    with pytest.raises(TypeError) as info:
        na.save(obj, tmp_path / "ck.safetensors")
    assert where in str(info.value) and what in str(info.value)
    assert os.listdir(tmp_path) == []


def test_a_structure_that_contains_itself_is_refused(tmp_path):
    cycle = [1]
    cycle.append({"again": cycle})
    with pytest.raises(ValueError, match=r"obj\[1\]\[\"again\"\].*contains itself"):
        na.save(cycle, tmp_path / "ck.safetensors")


def test_dtype_missing_from_the_target_backend(tmp_path):
    path = tmp_path / "ck.safetensors"
    na.save({"h": np.ones(2, dtype=np.float16)}, path)
    with pytest.raises(ValueError, match=r"obj\[\"h\"\].*float16.*array_api_strict"):
        na.load(path, backend="array_api_strict")


# --------------------------------------------------------------------------- atomic writes


def _old_checkpoint(tmp_path):
    path = tmp_path / "ck.safetensors"
    na.save({"w": np.arange(5.0), "epoch": 1}, path)
    return path, path.read_bytes()


def test_overwrite_replaces_the_file(tmp_path):
    path, _ = _old_checkpoint(tmp_path)
    na.save({"epoch": 2}, path)
    assert na.load(path) == {"epoch": 2}
    assert os.listdir(tmp_path) == ["ck.safetensors"]


def test_unsupported_leaf_leaves_the_old_file_untouched(tmp_path):
    path, old = _old_checkpoint(tmp_path)
    with pytest.raises(TypeError):
        na.save({"w": np.zeros(5), "bad": {1, 2}}, path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["ck.safetensors"]


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left"), KeyboardInterrupt()])
def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, where, error):
    path, old = _old_checkpoint(tmp_path)

    def fail(*args, **kwargs):
        raise error

    if where == "write":
        monkeypatch.setattr(checkpoint, "open", _failing_open(error), raising=False)
    else:
        monkeypatch.setattr(checkpoint.os, where, fail)
    with pytest.raises(type(error)):
        na.save({"w": np.zeros(5), "epoch": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["ck.safetensors"]
    assert na.load(path)["epoch"] == 1


def _failing_open(error):
    """``open`` whose files take half the data, then raise ``error`` (a full disk, Ctrl-C)."""
    return lambda fd, mode: _HalfWriter(open(fd, mode), error)


class _HalfWriter:
    def __init__(self, f, error):
        self.f, self.error = f, error

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise self.error


def test_missing_directory_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        na.save({"a": 1}, tmp_path / "nope" / "ck.safetensors")


# --------------------------------------------------------------------------- damaged files


def _small_checkpoint(tmp_path):
    path = tmp_path / "ck.safetensors"
    na.save({"w": np.arange(4.0, dtype=np.float32), "state": {0: {"step": 2}}, "b": (0.9,)}, path)
    return path, path.read_bytes()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        na.load(tmp_path / "missing.safetensors")


def test_every_truncation_fails_cleanly(tmp_path):
    path, data = _small_checkpoint(tmp_path)
    for n in range(len(data)):
        path.write_bytes(data[:n])
        with pytest.raises(ValueError, match=r"ck\.safetensors"):
            na.load(path)


@pytest.mark.parametrize("mask", [0xFF, 0x01, 0x80])
def test_every_flipped_byte_fails_cleanly(tmp_path, mask):
    path, data = _small_checkpoint(tmp_path)
    (header_len,) = struct.unpack("<Q", data[:8])
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= mask
        # Trailing spaces pad the header to 8 bytes; a change there that is still
        # white space changes nothing that is read.
        in_header = 8 + header_len - 1 >= i >= 8
        if in_header and data[i : i + 1] == b" " and chr(flipped[i]) in " \t\n\r":
            continue
        path.write_bytes(bytes(flipped))
        with pytest.raises(ValueError, match=r"ck\.safetensors"):
            na.load(path)


def test_appended_bytes_fail_cleanly(tmp_path):
    path, data = _small_checkpoint(tmp_path)
    path.write_bytes(data + b"\0")
    with pytest.raises(ValueError, match=r"ck\.safetensors"):
        na.load(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors.numpy.save_file({"w": np.ones(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a neural_arch checkpoint"):
        na.load(path)


def test_a_pickle_is_refused_without_being_run(tmp_path):
    path = tmp_path / "ck.pt"
    path.write_bytes(pickle.dumps({"w": np.ones(2)}))
    with pytest.raises(ValueError, match=r"ck\.pt"):
        na.load(path)


def test_future_format_version_is_refused(tmp_path):
    path, data = _small_checkpoint(tmp_path)
    (header_len,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8 : 8 + header_len])["__metadata__"]
    metadata["format_version"] = "2"
    arrays = safetensors.numpy.load(data)
    path.write_bytes(safetensors.numpy.save(arrays, metadata=metadata))
    with pytest.raises(ValueError, match=r"format version 2.*versions up to 1"):
        na.load(path)


def test_the_file_is_safetensors_not_pickle(tmp_path, monkeypatch):
    path, data = _small_checkpoint(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(data)
    # Any safetensors reader sees the arrays; the structure is JSON metadata.
    with safetensors.safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata()
        np.testing.assert_array_equal(f.get_tensor("0"), np.arange(4.0, dtype=np.float32))
    assert metadata["format"] == "neural_arch.checkpoint"
    assert metadata["format_version"] == str(checkpoint.FORMAT_VERSION)
    json.loads(metadata["structure"])

    # Loading never unpickles.
    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    assert na.load(path)["state"] == {0: {"step": 2}}


# --------------------------------------------------------------------------- resuming training


def _gradient(p, t, step):
    """A gradient that is bit-identical on every backend: only element-wise + and *.

    Reductions (matmul, sum) may round differently between libraries, which
    would hide what these tests check: that a checkpoint changes no bit.
    """
    host = np.random.default_rng([step, t]).normal(size=tuple(p.data.shape))
    target = backend.to_backend(host, backend.namespace(p.data), device=backend.device(p.data))
    d = p.data - target
    return d * d * d + 0.5 * d


def _model(seed):
    na.manual_seed(seed)
    return na.Sequential(na.Linear(4, 3), na.Tanh(), na.Linear(3, 2))


OPTIMIZERS = {
    "adam": lambda ps: na.Adam(ps, lr=0.05, betas=(0.8, 0.95), weight_decay=0.1, amsgrad=True),
    "adamw": lambda ps: na.AdamW(ps, lr=0.05),
    "sgd": lambda ps: na.SGD(
        [{"params": ps[:2], "lr": 0.02}, {"params": ps[2:]}],
        lr=0.01,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-3,
    ),
}


def _train(model, opt, steps, start):
    for step in range(start, start + steps):
        for i, p in enumerate(model.parameters()):
            p.grad = _gradient(p, i, step)
        opt.step()


def _snapshot(model, opt):
    """Parameters and optimizer state as host bytes, to compare to the last bit."""
    sd = opt.state_dict()
    state = {
        (i, k): backend.to_numpy(v).tobytes() if not isinstance(v, (int, float)) else v
        for i, record in sd["state"].items()
        for k, v in record.items()
    }
    params = [backend.to_numpy(p.data).tobytes() for p in model.parameters()]
    return params, state, sd["param_groups"], opt.step_count


# XLA fuses JAX's element-wise operations and may round them differently from NumPy,
# so N steps on NumPy and N steps on JAX need not agree to the last bit.
_ARITHMETIC_AS_NUMPY = ("numpy", "array_api_strict", "torch", "cupy")


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
@pytest.mark.parametrize("direction", ["numpy->xp", "xp->numpy"])
def test_resume_on_another_backend_is_bit_exact(xp, tmp_path, kind, direction):
    """N steps straight == k steps, save, load into fresh objects elsewhere, N - k steps."""
    na.set_default_dtype("float64")
    source, target = ("numpy", xp) if direction == "numpy->xp" else (xp, "numpy")
    n, k = 7, 3
    path = tmp_path / "resume.safetensors"

    def fresh(seed, where):
        model = _model(seed).to(where)
        return model, OPTIMIZERS[kind](model.parameters())

    model, opt = fresh(0, source)
    _train(model, opt, k, start=0)
    na.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": k}, path)
    # The reference moves the same state in memory, without a file.
    reference, ref_opt = fresh(2, target)
    reference.load_state_dict(model.state_dict())
    ref_opt.load_state_dict(opt.state_dict())
    _train(reference, ref_opt, n - k, start=k)
    expected = _snapshot(reference, ref_opt)
    if backend.backend_name(xp) in _ARITHMETIC_AS_NUMPY:
        straight, straight_opt = fresh(0, source)
        _train(straight, straight_opt, n, start=0)
        assert _snapshot(straight, straight_opt) == expected
    del model, opt

    ckpt = na.load(path)
    model, opt = fresh(1, target)  # other initial values: the checkpoint must overwrite them
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    target_name = backend.backend_name(backend.resolve_backend(target))
    assert {backend.backend_name(p.data) for p in model.parameters()} == {target_name}
    _train(model, opt, n - ckpt["epoch"], start=ckpt["epoch"])
    assert _snapshot(model, opt) == expected


def test_resume_real_training_with_a_scheduler(xp, tmp_path):
    """Autograd, Adam and OneCycleLR (which also cycles beta1): the checkpoint loses nothing."""
    na.set_default_dtype("float64")
    n, k = 8, 3
    path = tmp_path / "resume.safetensors"
    rng = np.random.default_rng(0)
    x = na.Tensor(backend.to_backend(rng.normal(size=(16, 4)), xp))
    y = na.Tensor(backend.to_backend(rng.normal(size=(16, 2)), xp))

    def fresh(seed):
        model = _model(seed).to(xp)
        opt = na.Adam(model.parameters(), lr=0.01)
        sched = na.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=n + 1)
        return model, opt, sched

    def train(model, opt, sched, steps):
        for _ in range(steps):
            opt.zero_grad()
            na.mse_loss(model(x), y).backward()
            opt.step()
            sched.step()

    model, opt, sched = fresh(0)
    train(model, opt, sched, n)
    expected = _snapshot(model, opt), sched.state_dict()

    model, opt, sched = fresh(0)
    train(model, opt, sched, k)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    na.save({**state, "scheduler": sched.state_dict(), "epoch": k}, path)

    model, opt, sched = fresh(1)
    ckpt = na.load(path, backend=xp)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    train(model, opt, sched, n - ckpt["epoch"])
    assert (_snapshot(model, opt), sched.state_dict()) == expected


def test_plateau_scheduler_state_with_infinities_round_trips(tmp_path):
    model = _model(0)
    opt = na.SGD(model.parameters(), lr=0.1)
    sched = na.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max")
    path = tmp_path / "ck.safetensors"
    na.save(sched.state_dict(), path)
    assert_same(na.load(path), sched.state_dict())


# --------------------------------------------------------------------------- documentation

DOC = Path(__file__).resolve().parents[1] / "docs" / "checkpoints.md"


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_doc_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for code in _blocks("python"):
        exec(compile(code, str(DOC), "exec"), {})


def test_doc_structure_example_is_what_save_writes(tmp_path):
    (documented,) = _blocks("json")
    path = tmp_path / "ck.safetensors"
    na.save({"state": {0: {"step": 3, "exp_avg": np.zeros(2)}}, "betas": (0.9, 0.999)}, path)
    with safetensors.safe_open(str(path), framework="numpy") as f:
        written = json.loads(f.metadata()["structure"])
    assert written == json.loads(documented)


def test_bfloat16_without_ml_dtypes_is_a_clear_error(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes -> ImportError
    path = tmp_path / "ck.safetensors"
    with pytest.raises(TypeError, match=r'obj\["x"\].*ml_dtypes'):
        na.save({"x": torch.zeros(2, dtype=torch.bfloat16)}, path)
    assert not path.exists()
