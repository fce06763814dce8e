"""Tensor construction, the autograd engine's contract, grad mode, the gradient clamp, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import assert_close, to_np

import neural_arch as na
from neural_arch import backend


def arr(xp, values, dtype="float64"):
    return backend.to_backend(np.asarray(values, dtype=dtype), xp)


# --- construction --------------------------------------------------------------------------


def test_wraps_array_without_copy(xp):
    x = arr(xp, [1.0, 2.0])
    t = na.Tensor(x)
    assert t.data is x
    assert na.Parameter(x).data is x


def test_keeps_float64_array_unless_dtype_given(xp):
    x = arr(xp, [1.0, 2.0])
    assert na.Tensor(x).dtype == xp.float64
    t = na.Tensor(x, dtype="float32")
    assert t.dtype == xp.float32
    assert backend.namespace(t.data) is xp


def test_tensor_of_tensor_shares_data(xp):
    x = arr(xp, [1.0])
    assert na.Tensor(na.Tensor(x)).data is x


def test_list_defaults_to_float32_on_default_backend():
    t = na.Tensor([[1.0, 2.0], [3.0, 4.5]])
    assert backend.namespace(t.data) is backend.get_default_backend()
    assert backend.dtype_name(t.dtype) == "float32"
    assert t.shape == (2, 2)
    assert backend.dtype_name(na.Tensor(2.5).dtype) == "float32"


def test_set_default_dtype_float64_from_list():
    na.set_default_dtype("float64")
    assert backend.dtype_name(na.Tensor([0.1]).dtype) == "float64"
    assert to_np(na.Tensor([0.1]).data)[0] == 0.1


def test_ints_stay_ints_and_bools_stay_bools():
    labels = na.Tensor([0, 2, 1])
    assert backend.dtype_name(labels.dtype).startswith("int")
    assert backend.dtype_name(na.Tensor([True, False]).dtype) == "bool"
    assert backend.dtype_name(na.Tensor([1, 2], dtype="float64").dtype) == "float64"


def test_set_default_backend_torch(torch):
    na.set_default_backend("torch")
    t = na.Tensor([1.0, 2.0])
    assert isinstance(t.data, torch.Tensor)
    assert t.data.dtype == torch.float32


def test_backend_from_environment_variable(monkeypatch, torch):
    monkeypatch.setenv("NEURAL_ARCH_BACKEND", "torch")
    monkeypatch.setattr(backend, "_default_backend", None)
    assert isinstance(na.Tensor([1.0]).data, torch.Tensor)


def test_attributes(xp):
    t = na.Tensor(arr(xp, np.zeros((2, 3))), requires_grad=True)
    assert t.shape == (2, 3)
    assert t.ndim == 2
    assert t.size == 6 and isinstance(t.size, int)
    assert len(t) == 2
    assert t.device == backend.device(t.data)
    assert t.requires_grad and t.is_leaf and t.grad is None
    assert "requires_grad=True" in repr(t) and "float64" in repr(t)
    assert [r.shape for r in t] == [(3,), (3,)]


def test_parameter_requires_grad(xp):
    p = na.Parameter(arr(xp, [1.0]))
    assert isinstance(p, na.Tensor) and p.requires_grad
    assert not na.Parameter(arr(xp, [1.0]), requires_grad=False).requires_grad
    assert repr(p).startswith("Parameter(")


def test_item_numpy_detach(xp):
    t = na.Tensor(arr(xp, [[2.5]]), requires_grad=True)
    assert t.item() == 2.5 and isinstance(t.item(), float)
    assert na.Tensor(arr(xp, 3, dtype="int64")).item() == 3
    np.testing.assert_array_equal(t.numpy(), [[2.5]])
    d = (t * 2).detach()
    assert not d.requires_grad and d.is_leaf
    assert_close(d.data, arr(xp, [[5.0]]))


def test_data_is_assignable(xp):
    t = na.Parameter(arr(xp, [1.0, 2.0]))
    t.data = arr(xp, [3.0, 4.0])
    (t * 1.0).sum().backward()
    assert_close(t.grad, arr(xp, [1.0, 1.0]))


def test_scalar_keeps_float32(xp):
    t = na.Tensor(arr(xp, [1.0, 2.0], "float32"), requires_grad=True)
    out = (2.0 * t + 1 - t / 3.0) ** 2
    assert out.dtype == xp.float32
    out.sum().backward()
    assert t.grad.dtype == xp.float32


def test_raw_array_operands(xp):
    t = na.Tensor(arr(xp, [1.0, 2.0]), requires_grad=True)
    x = arr(xp, [3.0, 4.0])
    out = t * x + t @ x
    if backend.backend_name(xp) != "array_api_strict":  # strict arrays refuse foreign operands
        out = out + (x * t) + (x @ t) - (x - t) + x / t
    assert isinstance(out, na.Tensor)
    out.sum().backward()
    assert t.grad is not None and backend.namespace(t.grad) is xp


# --- backward ------------------------------------------------------------------------------


def test_gradients_accumulate(xp):
    w = na.Parameter(arr(xp, [1.0, 2.0]))
    (w * 3.0).sum().backward()
    (w * w).sum().backward()
    assert_close(w.grad, arr(xp, [3.0 + 2.0, 3.0 + 4.0]))


def test_backward_with_explicit_grad(xp):
    w = na.Parameter(arr(xp, [1.0, 2.0]))
    y = w * w
    y.backward(arr(xp, [1.0, 10.0]))
    assert_close(w.grad, arr(xp, [2.0, 40.0]))
    w.grad = None
    (w * w).backward(na.Tensor(arr(xp, [1.0, 1.0])))
    assert_close(w.grad, arr(xp, [2.0, 4.0]))


def test_graph_freed_after_backward(xp):
    w = na.Parameter(arr(xp, [1.0, 2.0]))
    loss = (w * w).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()


def test_retain_graph_allows_second_backward(xp):
    w = na.Parameter(arr(xp, [1.0, 2.0]))
    h = w.exp()
    loss = h.sum()
    loss.backward(retain_graph=True)
    loss.backward()
    assert_close(w.grad, 2 * to_np(xp.exp(w.data)))
    with pytest.raises(RuntimeError, match="second time"):
        (h * 2.0).sum().backward()  # h's graph was freed by the second backward


def test_backward_errors(xp):
    w = na.Parameter(arr(xp, [1.0, 2.0]))
    with pytest.raises(RuntimeError, match="one-element"):
        (w * 2.0).backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        na.Tensor(arr(xp, [1.0])).backward()
    with pytest.raises(ValueError, match="shape"):
        (w * 2.0).backward(arr(xp, [1.0, 2.0, 3.0]))


def test_intermediate_grads_stay_none(xp):
    w = na.Parameter(arr(xp, [1.0]))
    h = w * 2.0
    (h * h).sum().backward()
    assert h.grad is None and not h.is_leaf
    assert_close(w.grad, arr(xp, [8.0]))


def test_only_inputs_that_require_grad_get_grads(xp):
    w = na.Parameter(arr(xp, [[1.0, 2.0]]))
    x = na.Tensor(arr(xp, [[3.0], [4.0]]))
    (x @ w).sum().backward()
    assert x.grad is None
    assert_close(w.grad, arr(xp, [[7.0, 7.0]]))


def test_deep_graph_does_not_recurse(xp):
    x = na.Parameter(arr(xp, [1.0]))
    y = x
    for _ in range(5000):
        y = y + x * 0.5
    y.sum().backward()
    assert_close(x.grad, arr(xp, [1.0 + 5000 * 0.5]))


def test_requires_grad_needs_float(xp):
    with pytest.raises(TypeError, match="floating"):
        na.Tensor(arr(xp, [1, 2], dtype="int64"), requires_grad=True)


# --- gradient ownership ---------------------------------------------------------------------


def _all_distinct(*arrays):
    return len({id(a) for a in arrays}) == len(arrays)


@pytest.mark.parametrize("clip", [1e6, None])
def test_leaf_grads_are_owned(xp, clip):
    na.set_grad_clip(clip)
    x = na.Parameter(arr(xp, [1.0, 2.0]))
    y = na.Parameter(arr(xp, [3.0, 4.0]))
    upstream = arr(xp, [1.0, 1.0])
    (x + y).backward(upstream)
    assert _all_distinct(x.grad, y.grad, upstream, x.data, y.data)
    x.grad, y.grad = None, None
    (x * y).backward(upstream)
    assert _all_distinct(x.grad, y.grad, upstream, x.data, y.data)
    a = na.Parameter(arr(xp, [1.0]))
    s = a + a
    s.backward(arr(xp, [1.0]))
    assert_close(a.grad, arr(xp, [2.0]))
    leaf = na.Parameter(arr(xp, [1.0, 2.0]))
    g = arr(xp, [5.0, 6.0])
    leaf.backward(g)  # a leaf's backward: the given array itself must not become .grad
    assert leaf.grad is not g
    assert_close(leaf.grad, g)


def test_grad_has_data_backend_device_shape_dtype(xp):
    p = na.Parameter(arr(xp, np.ones((2, 3)), "float32"))
    x = arr(xp, np.ones((2, 3)))  # float64 data: promotes the product
    (p * x).sum().backward()
    assert backend.namespace(p.grad) is xp
    assert backend.device(p.grad) == backend.device(p.data)
    assert tuple(p.grad.shape) == (2, 3)
    assert p.grad.dtype == p.data.dtype


# --- grad mode ------------------------------------------------------------------------------


def test_no_grad_builds_no_graph(xp):
    w = na.Parameter(arr(xp, [1.0]))
    with na.no_grad():
        assert not na.is_grad_enabled()
        y = w * 2.0 + w.exp()
        with na.enable_grad():
            assert na.is_grad_enabled()
            z = w * 2.0
    assert na.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    assert z.requires_grad


def test_no_grad_as_decorator(xp):
    w = na.Parameter(arr(xp, [1.0]))

    @na.no_grad()
    def f(t):
        return t * 3.0

    assert not f(w).requires_grad
    assert na.is_grad_enabled()


def test_no_grad_restores_after_exception():
    with pytest.raises(KeyError), na.no_grad():
        raise KeyError
    assert na.is_grad_enabled()


# --- gradient clamp -------------------------------------------------------------------------


def test_grad_clip_default_clamps_to_1e6(xp):
    assert na.get_grad_clip() == 1e6
    w = na.Parameter(arr(xp, [1.0, 1.0]))
    (w * arr(xp, [1e8, -3.0])).sum().backward()
    assert_close(w.grad, arr(xp, [1e6, -3.0]))


def test_grad_clip_disabled_and_custom(xp):
    na.set_grad_clip(None)
    assert na.get_grad_clip() is None
    w = na.Parameter(arr(xp, [1.0]))
    (w * 1e8).sum().backward()
    assert_close(w.grad, arr(xp, [1e8]))
    na.set_grad_clip(2.0)
    w.grad = None
    (w * -5.0).sum().backward()
    assert_close(w.grad, arr(xp, [-2.0]))


def test_grad_clip_keeps_nan(xp):
    w = na.Parameter(arr(xp, [1.0, 1.0, 1.0]))
    (w * arr(xp, [math.nan, 1e9, -math.inf])).sum().backward()
    g = to_np(w.grad)
    assert math.isnan(g[0])
    assert list(g[1:]) == [1e6, -1e6]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "1e6", True])
def test_grad_clip_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="grad clip"):
        na.set_grad_clip(bad)


# --- errors ---------------------------------------------------------------------------------


def test_mixing_backends_names_both(other_xp):
    a = na.Tensor(np.ones(2))
    b = na.Tensor(backend.to_backend(np.ones(2), other_xp))
    name = backend.backend_name(other_xp)
    with pytest.raises(TypeError, match=rf"numpy.*{name}"):
        a + b
    with pytest.raises(TypeError, match=rf"{name}.*numpy"):
        b * a


def test_bad_data_and_operands(xp):
    with pytest.raises(TypeError, match="data must be"):
        na.Tensor({"a": 1})
    t = na.Tensor(arr(xp, [1.0]))
    with pytest.raises(TypeError, match="operands"):
        t + "x"
    with pytest.raises(TypeError, match="stack"):
        na.Tensor([t, t])
    with pytest.raises(TypeError, match="len"):
        len(na.Tensor(arr(xp, 1.0)))
    with pytest.raises(ValueError, match="item"):
        na.Tensor(arr(xp, [1.0, 2.0])).item()


def test_shape_errors(xp):
    t = na.Tensor(arr(xp, np.ones((2, 3))))
    with pytest.raises(ValueError, match="axis"):
        t.sum(axis=2)
    with pytest.raises(ValueError, match="permutation"):
        t.transpose(0, 0)
    with pytest.raises(TypeError, match="shape"):
        t.reshape(2.0, 3)


def test_comparisons_give_boolean_masks(xp):
    t = na.Parameter(arr(xp, [-1.0, 0.0, 2.0]))
    mask = t > 0.0
    assert not mask.requires_grad
    assert backend.dtype_name(mask.dtype) == "bool"
    np.testing.assert_array_equal(to_np(mask.data), [False, False, True])
    np.testing.assert_array_equal(to_np((0.0 >= t).data), [True, True, False])  # noqa: SIM300
    np.testing.assert_array_equal(to_np((t <= t * 2.0).data), [False, True, True])
    np.testing.assert_array_equal(to_np((t < arr(xp, [0.0, 0.0, 0.0])).data), [True, False, False])
    na.where(mask, t, t * 0.1).sum().backward()
    assert_close(t.grad, arr(xp, [0.1, 0.1, 1.0]))
    assert t in {t: 1}  # == stays identity: Tensors are hashable


def test_no_grad_decorator_is_reentrant():
    @na.no_grad()
    def countdown(n):
        assert not na.is_grad_enabled()
        return n if n == 0 else countdown(n - 1)

    countdown(3)
    assert na.is_grad_enabled()
