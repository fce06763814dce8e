"""Gradient clipping against ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import P, assert_close, to_np

from neural_arch import backend
from neural_arch.backend import backend_name, to_backend
from neural_arch.optim import clip_grad_norm_, clip_grad_value_

SHAPES = [(), (4,), (2, 3)]


def _grads(scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return [np.asarray(scale * rng.standard_normal(s)) for s in SHAPES]


def _ours(xp, grads, dtype="float64"):
    return [
        P(
            to_backend(np.zeros(g.shape), xp, dtype=dtype),
            to_backend(g, xp, dtype=dtype, copy=True),
        )
        for g in grads
    ]


def _theirs(torch, grads, dtype=None):
    dtype = dtype or torch.float64
    out = []
    for g in grads:
        t = torch.zeros(g.shape, dtype=dtype, requires_grad=True)
        t.grad = torch.tensor(g, dtype=dtype)
        out.append(t)
    return out


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0], ids=["l2", "l1", "inf", "l3"])
@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clipped", "unclipped"])
def test_clip_grad_norm_matches_torch(xp, torch, norm_type, max_norm):
    grads = _grads(scale=2.0)
    params, torch_params = _ours(xp, grads), _theirs(torch, grads)
    originals = [p.grad for p in params]
    total = clip_grad_norm_(params, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(torch_params, max_norm, norm_type=norm_type)
    assert backend_name(total) == backend_name(xp)
    assert isinstance(total, type(params[1].grad))  # a 0-d array, not a NumPy scalar
    assert tuple(total.shape) == ()
    assert_close(total, expected.numpy(), rtol=1e-14)
    for p, t, g0 in zip(params, torch_params, originals, strict=True):
        assert_close(p.grad, t.grad.numpy(), rtol=1e-14)
        if backend_name(xp) != "jax":
            assert p.grad is g0  # in place
    if max_norm == 1e3:
        for p, g in zip(params, grads, strict=True):
            np.testing.assert_array_equal(to_np(p.grad), g)


def test_clip_grad_norm_default_is_l2(xp):
    grads = _grads()
    params = _ours(xp, grads)
    total = clip_grad_norm_(params, 1.0)
    expected = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
    assert_close(total, np.asarray(expected), rtol=1e-14)
    clipped = math.sqrt(sum(float(np.sum(to_np(p.grad) ** 2)) for p in params))
    assert clipped == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_float32_matches_torch(xp, torch):
    grads = _grads(scale=3.0)
    params = _ours(xp, grads, dtype="float32")
    torch_params = _theirs(torch, grads, dtype=torch.float32)
    total = clip_grad_norm_(params, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(torch_params, 1.0)
    assert total.dtype == xp.float32
    assert_close(total, expected.numpy(), rtol=1e-6)
    for p, t in zip(params, torch_params, strict=True):
        assert p.grad.dtype == xp.float32
        assert_close(p.grad, t.grad.numpy(), rtol=1e-6)


def test_clip_grad_norm_accepts_one_param_dict_and_generator(xp):
    grads = _grads()
    params = _ours(xp, grads)
    expected = clip_grad_norm_(_ours(xp, grads), 0.1)
    assert_close(clip_grad_norm_({"a": params[0], "b": params[1], "c": params[2]}, 0.1), expected)
    single = _ours(xp, grads[1:2])[0]
    total = clip_grad_norm_(single, 0.1)
    assert_close(total, np.asarray(np.linalg.norm(grads[1])), rtol=1e-14)
    params = _ours(xp, grads)
    assert_close(
        clip_grad_norm_((p for p in params), 1e3),
        np.asarray(math.sqrt(sum(float(np.sum(g * g)) for g in grads))),
        rtol=1e-14,
    )


def test_clip_grad_norm_ignores_params_without_grad(xp):
    grads = _grads()
    params = _ours(xp, grads)
    params[1].grad = None
    total = clip_grad_norm_(params, 1e3)
    expected = math.sqrt(float(np.sum(grads[0] ** 2) + np.sum(grads[2] ** 2)))
    assert_close(total, np.asarray(expected), rtol=1e-14)
    assert params[1].grad is None


def test_clip_grad_norm_without_any_grad_returns_zero(xp):
    params = _ours(xp, _grads())
    for p in params:
        p.grad = None
    assert float(clip_grad_norm_(params, 1.0)) == 0.0


def test_clip_grad_norm_nonfinite(xp, torch):
    grads = _grads()
    grads[1][0] = np.inf
    params = _ours(xp, grads)
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    for p, g in zip(params, grads, strict=True):
        np.testing.assert_array_equal(to_np(p.grad), g)


def test_clip_grad_norm_refuses_bad_arguments(xp):
    params = _ours(xp, _grads())
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm_(params, -1.0)
    with pytest.raises(ValueError, match="norm_type"):
        clip_grad_norm_(params, 1.0, norm_type=0.0)
    with pytest.raises(ValueError, match="norm_type"):
        clip_grad_norm_(params, 1.0, norm_type=-2.0)
    with pytest.raises(TypeError):
        clip_grad_norm_(3.0, 1.0)


def test_clip_grad_norm_refuses_mixed_backends(other_xp):
    np_xp = backend.resolve_backend("numpy")
    grads = _grads()
    params = _ours(np_xp, grads[:1]) + _ours(other_xp, grads[1:])
    with pytest.raises(TypeError, match="backend"):
        clip_grad_norm_(params, 1.0)
    np.testing.assert_array_equal(to_np(params[0].grad), grads[0])


@pytest.mark.parametrize("clip_value", [0.0, 0.3, 10.0])
def test_clip_grad_value_matches_torch(xp, torch, clip_value):
    grads = _grads(scale=2.0)
    params, torch_params = _ours(xp, grads), _theirs(torch, grads)
    originals = [p.grad for p in params]
    assert clip_grad_value_(params, clip_value) is None
    torch.nn.utils.clip_grad_value_(torch_params, clip_value)
    for p, t, g0 in zip(params, torch_params, originals, strict=True):
        np.testing.assert_array_equal(to_np(p.grad), t.grad.numpy())
        assert p.grad.dtype == g0.dtype
        if backend_name(xp) != "jax":
            assert p.grad is g0


def test_clip_grad_value_float32_and_missing_grads(xp):
    grads = _grads(scale=2.0)
    params = _ours(xp, grads, dtype="float32")
    params[0].grad = None
    clip_grad_value_(params, 0.5)
    assert params[0].grad is None
    for p, g in zip(params[1:], grads[1:], strict=True):
        assert p.grad.dtype == xp.float32
        np.testing.assert_array_equal(to_np(p.grad), np.clip(g.astype(np.float32), -0.5, 0.5))


def test_clip_grad_value_refuses_negative_value(xp):
    params = _ours(xp, _grads())
    with pytest.raises(ValueError, match="clip_value"):
        clip_grad_value_(params, -0.1)
