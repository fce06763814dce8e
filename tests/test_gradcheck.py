"""Finite-difference gradient checks of every differentiable operation, on every backend.

:func:`gradcheck` is the reusable helper: it builds float64 inputs on the backend,
runs ``backward`` with a random output gradient ``w`` and compares each input's
``.grad`` with central differences of ``sum(w * f(inputs))`` (eps 1e-6).  NumPy
is used only to make data and to do the finite-difference bookkeeping on the host.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from _helpers import to_np

import neural_arch as na
from neural_arch import backend


def gradcheck(
    xp,
    fn: Callable[..., na.Tensor],
    *values,
    eps: float = 1e-6,
    rtol: float = 1e-6,
    atol: float = 1e-8,
) -> None:
    """Check autograd's gradient of ``fn(*tensors)`` against central differences.

    ``values`` are NumPy arrays (or nested lists) made float64; each becomes a Tensor
    of backend ``xp`` that requires grad.  Non-differentiable arguments (labels,
    masks) belong in a closure inside ``fn``.
    """
    values = [np.asarray(v, dtype=np.float64) for v in values]

    def run(arrays, requires_grad):
        ts = [na.Tensor(backend.to_backend(a, xp), requires_grad=requires_grad) for a in arrays]
        return ts, fn(*ts)

    tensors, out = run(values, True)
    assert backend.namespace(out.data) is xp
    w = np.random.default_rng(1234).standard_normal(out.shape)
    out.backward(backend.to_backend(w, xp))

    def objective(arrays):
        with na.no_grad():
            _, o = run(arrays, False)
        return float(np.sum(to_np(o.data) * w))

    for i, v in enumerate(values):
        grad = tensors[i].grad
        assert grad is not None, f"input {i} got no gradient"
        assert backend.namespace(grad) is xp
        assert tuple(grad.shape) == v.shape
        numeric = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            shifted = [a.copy() for a in values]
            shifted[i][idx] = v[idx] + eps
            up = objective(shifted)
            shifted[i][idx] = v[idx] - eps
            down = objective(shifted)
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(
            to_np(grad), numeric, rtol=rtol, atol=atol, err_msg=f"gradient of input {i}"
        )


_rng = np.random.default_rng(0)


def _r(*shape, low=-2.0, high=2.0):
    return _rng.uniform(low, high, size=shape)


def _pos(*shape):
    return _r(*shape, low=0.5, high=2.0)


def _distinct(*shape):
    """Values with no ties and no zeros (max and relu are smooth there)."""
    n = int(np.prod(shape))
    v = _rng.permutation(n).astype(np.float64) - n / 2 + 0.37
    return (v / n * 4).reshape(shape)


# name -> (function of Tensors, input arrays)
CASES = {
    "add_broadcast": (lambda a, b: a + b, [_r(3, 1), _r(4)]),
    "add_scalar_left": (lambda a: 2.5 + a, [_r(2, 3)]),
    "sub_broadcast": (lambda a, b: a - b, [_r(2, 3), _r(3)]),
    "rsub_scalar": (lambda a: 1.0 - a, [_r(3)]),
    "mul_broadcast": (lambda a, b: a * b, [_r(3, 1), _r(1, 4)]),
    "mul_same_tensor": (lambda a: a * a, [_r(2, 2)]),
    "rmul_scalar": (lambda a: 3.0 * a, [_r(2, 2)]),
    "div_broadcast": (lambda a, b: a / b, [_r(2, 3), _pos(3)]),
    "rdiv_scalar": (lambda a: 2.0 / a, [_pos(4)]),
    "pow_int": (lambda a: a**3, [_r(2, 3)]),
    "pow_half": (lambda a: a**0.5, [_pos(4)]),
    "pow_negative": (lambda a: a**-1.5, [_pos(4)]),
    "pow_tensor": (lambda a, b: a**b, [_pos(3, 1), _r(3)]),
    "rpow_scalar": (lambda a: 2.0**a, [_r(4)]),
    "neg": (lambda a: -a, [_r(3)]),
    "matmul_2d": (lambda a, b: a @ b, [_r(3, 4), _r(4, 2)]),
    "matmul_vec_mat": (lambda a, b: a @ b, [_r(4), _r(4, 2)]),
    "matmul_mat_vec": (lambda a, b: a @ b, [_r(3, 4), _r(4)]),
    "matmul_vec_vec": (lambda a, b: a @ b, [_r(4), _r(4)]),
    "matmul_batched": (lambda a, b: a @ b, [_r(2, 3, 4), _r(4, 2)]),
    "matmul_batch_broadcast": (lambda a, b: na.matmul(a, b), [_r(2, 1, 3, 4), _r(3, 4, 2)]),
    "matmul_vec_batch": (lambda a, b: a @ b, [_r(4), _r(2, 4, 3)]),
    "sum_all": (lambda a: a.sum(), [_r(2, 3)]),
    "sum_axis0": (lambda a: a.sum(axis=0), [_r(2, 3)]),
    "sum_axis_neg_keepdims": (lambda a: a.sum(axis=-1, keepdims=True), [_r(2, 3)]),
    "sum_axes_tuple": (lambda a: a.sum(axis=(0, 2)), [_r(2, 3, 2)]),
    "mean_all": (lambda a: a.mean(), [_r(2, 3)]),
    "mean_axis1": (lambda a: a.mean(axis=1), [_r(2, 3)]),
    "mean_axes_keepdims": (lambda a: a.mean(axis=(1, 2), keepdims=True), [_r(2, 3, 2)]),
    "max_all": (lambda a: a.max(), [_distinct(3, 4)]),
    "max_axis0": (lambda a: a.max(axis=0), [_distinct(3, 4)]),
    "max_axis1_keepdims": (lambda a: a.max(axis=1, keepdims=True), [_distinct(3, 4)]),
    "max_axes_tuple": (lambda a: a.max(axis=(0, 2)), [_distinct(2, 3, 2)]),
    "reshape": (lambda a: a.reshape(3, 2) * a.reshape((3, 2)), [_r(2, 3)]),
    "reshape_minus_one": (lambda a: a.reshape(-1), [_r(2, 3)]),
    "transpose_T": (lambda a: a.T, [_r(2, 3)]),
    "transpose_axes": (lambda a: a.transpose(2, 0, 1), [_r(2, 3, 4)]),
    "permute": (lambda a: a.permute((1, 0, 2)), [_r(2, 3, 2)]),
    "index_slice": (lambda a: a[1:3], [_r(4, 2)]),
    "index_int": (lambda a: a[1], [_r(3, 2)]),
    "index_step": (lambda a: a[:, ::2], [_r(3, 5)]),
    "index_ellipsis_negative": (lambda a: a[..., -1], [_r(2, 3)]),
    "index_newaxis": (lambda a: a[None, 1:, 0] * 2.0, [_r(3, 2)]),
    "concat_axis0": (lambda a, b: na.concat([a, b]), [_r(2, 3), _r(1, 3)]),
    "concat_axis1": (lambda a, b: na.concat((a, b, a), axis=1), [_r(2, 3), _r(2, 1)]),
    "concat_axis_neg": (lambda a, b: na.concat([a, b], axis=-1), [_r(2, 2, 1), _r(2, 2, 3)]),
    "stack_axis0": (lambda a, b: na.stack([a, b]), [_r(2, 3), _r(2, 3)]),
    "stack_axis1": (lambda a, b: na.stack([a, b, a], axis=1), [_r(2, 3), _r(2, 3)]),
    "stack_axis_neg": (lambda a, b: na.stack([a, b], axis=-1), [_r(2, 3), _r(2, 3)]),
    "exp": (na.exp, [_r(2, 3)]),
    "log": (na.log, [_pos(2, 3)]),
    "sqrt": (na.sqrt, [_pos(2, 3)]),
    "tanh": (na.tanh, [_r(2, 3)]),
    "sigmoid": (na.sigmoid, [_r(2, 3)]),
    "sigmoid_large": (na.sigmoid, [np.array([-30.0, -5.0, 0.0, 5.0, 30.0])]),
    "relu": (na.relu, [_distinct(2, 3)]),
    "softmax_last": (na.softmax, [_r(3, 4)]),
    "softmax_axis0": (lambda a: na.softmax(a, axis=0), [_r(3, 4)]),
    "log_softmax_last": (na.log_softmax, [_r(3, 4)]),
    "log_softmax_axis0": (lambda a: a.log_softmax(axis=0), [_r(3, 4)]),
    "log_softmax_large": (na.log_softmax, [np.array([[1000.0, 1001.0, 999.0]])]),
    "methods": (
        lambda a: a.exp() + a.tanh() + a.sigmoid() + a.relu() + a.softmax(),
        [_distinct(2, 3)],
    ),
    "method_log_sqrt": (lambda a: a.log() * a.sqrt(), [_pos(2, 3)]),
    "mlp": (
        lambda x, w1, b1, w2: ((x @ w1.T + b1).tanh() @ w2).sum(axis=1),
        [_r(4, 3), _r(5, 3), _r(5), _r(5, 2)],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradcheck_op(xp, name):
    fn, values = CASES[name]
    gradcheck(xp, fn, *values)


def test_gradcheck_index_integer_array_1d(xp):
    idx = backend.to_backend(np.array([3, 0, 3, 1]), xp)  # repeated index 3: gradients add
    gradcheck(xp, lambda a: a[idx], _r(5))


def test_gradcheck_index_integer_array_unique(xp):
    idx = backend.to_backend(np.array([2, 0]), xp)
    gradcheck(xp, lambda a: a[idx] * 3.0, _r(4))


def test_gradcheck_index_rows_cols(xp):
    # t[arange(n), labels]: what cross-entropy on picked log-probabilities needs.
    rows = xp.arange(4)
    cols = backend.to_backend(np.array([2, 0, 2, 1]), xp)
    gradcheck(xp, lambda a: a[rows, cols], _r(4, 3))


def test_gradcheck_index_rows_cols_repeated(xp):
    rows = backend.to_backend(np.array([1, 1, 0, 1]), xp)
    cols = backend.to_backend(np.array([2, 2, 0, 0]), xp)
    gradcheck(xp, lambda a: a[rows, cols], _r(2, 3))


def test_gradcheck_index_tensor_key(xp):
    idx = na.Tensor(backend.to_backend(np.array([1, 1]), xp))
    gradcheck(xp, lambda a: a[idx], _r(3))


def test_gradcheck_index_boolean_mask(xp):
    mask = backend.to_backend(np.array([True, False, True, True]), xp)
    gradcheck(xp, lambda a: a[mask], _r(4))


def test_gradcheck_where(xp):
    cond = backend.to_backend(np.array([[True, False, True]]), xp)
    gradcheck(xp, lambda a, b: na.where(cond, a, b), _r(2, 3), _r(2, 1))


def test_gradcheck_where_scalar_branch(xp):
    cond = backend.to_backend(np.array([True, False, False]), xp)
    gradcheck(xp, lambda a: na.where(cond, a, 0.5) * na.where(cond, 2.0, a), _r(3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_mse_loss(xp, reduction):
    gradcheck(xp, lambda p, t: na.mse_loss(p, t, reduction=reduction), _r(4, 3), _r(4, 3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_cross_entropy_class_indices(xp, reduction):
    labels = backend.to_backend(np.array([2, 0, 1, 2]), xp)
    gradcheck(xp, lambda z: na.cross_entropy_loss(z, labels, reduction=reduction), _r(4, 3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_cross_entropy_probabilities(xp, reduction):
    probs = _rng.dirichlet(np.ones(3), size=4)
    gradcheck(xp, lambda z, p: na.cross_entropy_loss(z, p, reduction=reduction), _r(4, 3), probs)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_binary_cross_entropy_with_logits(xp, reduction):
    logits = np.array([[-30.0, -1.5, 0.0], [0.7, 2.0, 30.0]])
    target = _rng.uniform(0, 1, size=(2, 3))
    gradcheck(
        xp,
        lambda z, y: na.binary_cross_entropy_with_logits(z, y, reduction=reduction),
        logits,
        target,
    )


def test_gradcheck_reused_subexpressions(xp):
    def fn(a, b):
        h = a * b
        return (h + h.exp()) * (h - b) / (1.0 + h * h)

    gradcheck(xp, fn, _r(3, 2), _r(2))


@pytest.mark.parametrize("x_shape", [(4,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(xp, x_shape, bias):
    rng = np.random.default_rng(7)
    values = [rng.standard_normal(x_shape), rng.standard_normal((5, 4))]
    if bias:
        values.append(rng.standard_normal(5))
    gradcheck(xp, lambda *t: na.functional.linear(*t), *values)


def test_linear_weight_gradient_has_the_weight_layout():
    """``g.T @ x``: C-ordered, as the weight (the optimizers' kernels read it without a copy)."""
    layer = na.Linear(4, 3)
    layer(na.Tensor(np.ones((5, 4), np.float32))).sum().backward()
    assert layer.weight.grad.flags.c_contiguous
    assert layer.weight.grad.shape == (3, 4)


def test_linear_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"linear needs weight of shape \(out, in\)"):
        na.functional.linear(na.Tensor(np.ones((2, 3))), na.Tensor(np.ones((4, 5))))
