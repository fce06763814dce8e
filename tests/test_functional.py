"""Operations and losses: values and gradients against PyTorch, closed forms, stability, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import assert_close

import neural_arch as na
from neural_arch import backend
from neural_arch import functional as F

_rng = np.random.default_rng(7)


def arr(xp, values, dtype="float64"):
    return backend.to_backend(np.asarray(values, dtype=dtype), xp)


def _r(*shape):
    return _rng.uniform(-2.0, 2.0, size=shape)


LABELS = np.array([2, 0, 1, 2])
PROBS = _rng.dirichlet(np.ones(3), size=4)
TARGET01 = _rng.uniform(0.0, 1.0, size=(4, 3))


def _torch_ops(torch):
    """name -> (our function, torch's function, float64 inputs), evaluated on the same data."""
    tf = torch.nn.functional
    labels = torch.asarray(LABELS)
    return {
        "broadcast_arith": (
            lambda a, b: (a * b - a / (b * b + 1.0)) ** 2 + 3.0 - b,
            lambda a, b: (a * b - a / (b * b + 1.0)) ** 2 + 3.0 - b,
            [_r(3, 1), _r(4)],
        ),
        "matmul_batched": (lambda a, b: a @ b, lambda a, b: a @ b, [_r(2, 3, 4), _r(4, 5)]),
        "matmul_vec": (lambda a, b: a @ b, lambda a, b: a @ b, [_r(4), _r(2, 4, 3)]),
        "reductions": (
            lambda a: a.sum(axis=0) * a.mean(axis=1, keepdims=True) + a.max(axis=1),
            lambda a: a.sum(dim=0) * a.mean(dim=1, keepdim=True) + a.amax(dim=1),
            [_r(3, 3)],
        ),
        "max_ties": (
            lambda a: a.max(axis=1),
            lambda a: a.amax(dim=1),
            [np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])],
        ),
        "unary": (
            lambda a: (a.exp() + a.tanh() * a.sigmoid() + a.relu()) * (a * a + 1.0).log().sqrt(),
            lambda a: (a.exp() + a.tanh() * a.sigmoid() + a.relu()) * (a * a + 1.0).log().sqrt(),
            [_r(3, 4)],
        ),
        "softmax": (
            lambda a: na.softmax(a, axis=0) * na.log_softmax(a),
            lambda a: torch.softmax(a, dim=0) * torch.log_softmax(a, dim=-1),
            [_r(3, 4)],
        ),
        "shape": (
            lambda a: a.reshape(4, 3).T.transpose(1, 0)[1:, ::2] * a.permute(1, 0)[1:, :2],
            lambda a: a.reshape(4, 3).T.permute(1, 0)[1:, ::2] * a.permute(1, 0)[1:, :2],
            [_r(3, 4)],
        ),
        "concat_stack_where": (
            lambda a, b: na.where(
                na.stack([a, b]).sum(axis=0) > 0.0, na.concat([a, b], axis=1)[:, :3], b
            ),
            lambda a, b: torch.where(
                torch.stack([a, b]).sum(dim=0) > 0.0, torch.cat([a, b], dim=1)[:, :3], b
            ),
            [_r(2, 3), _r(2, 3)],
        ),
        "mse": (na.mse_loss, tf.mse_loss, [_r(4, 3), _r(4, 3)]),
        "cross_entropy_labels": (
            lambda z: na.cross_entropy_loss(z, _labels_like(z)),
            lambda z: tf.cross_entropy(z, labels),
            [_r(4, 3)],
        ),
        "cross_entropy_probs": (na.cross_entropy_loss, tf.cross_entropy, [_r(4, 3), PROBS]),
        "bce_logits": (
            na.binary_cross_entropy_with_logits,
            tf.binary_cross_entropy_with_logits,
            [np.array([[-40.0, -1.0, 0.0], [0.5, 3.0, 40.0]]), TARGET01[:2]],
        ),
    }


def _labels_like(z):
    return backend.to_backend(LABELS, backend.namespace(z.data))


_OP_NAMES = [
    "broadcast_arith",
    "matmul_batched",
    "matmul_vec",
    "reductions",
    "max_ties",
    "unary",
    "softmax",
    "shape",
    "concat_stack_where",
    "mse",
    "cross_entropy_labels",
    "cross_entropy_probs",
    "bce_logits",
]


@pytest.mark.parametrize("name", _OP_NAMES)
def test_values_and_gradients_match_torch(xp, torch, name):
    ours_fn, torch_fn, values = _torch_ops(torch)[name]
    ours = [na.Tensor(backend.to_backend(v, xp), requires_grad=True) for v in values]
    refs = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    out, ref = ours_fn(*ours), torch_fn(*refs)
    assert_close(out.data, ref.detach().numpy(), rtol=1e-12, atol=1e-14)
    w = np.random.default_rng(3).standard_normal(tuple(ref.shape))
    out.backward(backend.to_backend(w, xp))
    ref.backward(torch.tensor(w))
    for t, r in zip(ours, refs, strict=True):
        assert_close(t.grad, r.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses_match_torch_per_reduction(xp, torch, reduction):
    tf = torch.nn.functional
    z, y = _r(4, 3), _r(4, 3)
    cases = [
        (na.mse_loss, tf.mse_loss, y),
        (na.cross_entropy_loss, tf.cross_entropy, PROBS),
        (na.binary_cross_entropy_with_logits, tf.binary_cross_entropy_with_logits, TARGET01),
    ]
    for ours, ref, target in cases:
        logits = na.Tensor(arr(xp, z), requires_grad=True)
        out = ours(logits, arr(xp, target), reduction=reduction)
        tz = torch.tensor(z, requires_grad=True)
        expected = ref(tz, torch.tensor(target), reduction=reduction)
        assert_close(out.data, expected.detach().numpy(), rtol=1e-12, atol=1e-14)
        out.sum().backward()
        expected.sum().backward()
        assert_close(logits.grad, tz.grad.numpy(), rtol=1e-12, atol=1e-14)
    logits = na.Tensor(arr(xp, z), requires_grad=True)
    out = na.cross_entropy_loss(logits, arr(xp, LABELS, "int64"), reduction=reduction)
    tz = torch.tensor(z, requires_grad=True)
    expected = tf.cross_entropy(tz, torch.asarray(LABELS), reduction=reduction)
    assert_close(out.data, expected.detach().numpy(), rtol=1e-12, atol=1e-14)


# --- closed forms ---------------------------------------------------------------------------


def test_mse_closed_form(xp):
    pred = na.Parameter(arr(xp, [1.0, 2.0, 4.0]))
    loss = na.mse_loss(pred, arr(xp, [0.0, 2.0, 1.0]))
    assert loss.item() == pytest.approx((1 + 0 + 9) / 3, rel=1e-15)
    loss.backward()
    assert_close(pred.grad, arr(xp, [2 / 3, 0.0, 2.0]))
    assert na.mse_loss(pred, na.Tensor(arr(xp, [0.0, 0.0, 0.0])), reduction="sum").item() == 21.0


def test_cross_entropy_uniform_logits_is_log_c(xp):
    logits = na.Parameter(arr(xp, np.zeros((2, 4))))
    loss = na.cross_entropy_loss(logits, arr(xp, [1, 3], "int64"))
    assert loss.item() == pytest.approx(math.log(4), rel=1e-15)
    loss.backward()
    expected = np.full((2, 4), 0.25)
    expected[0, 1] -= 1
    expected[1, 3] -= 1
    assert_close(logits.grad, expected / 2)


def test_cross_entropy_one_hot_equals_indices(xp):
    z = _r(5, 3)
    labels = np.array([0, 2, 1, 1, 0])
    one_hot = np.eye(3)[labels]
    a = na.cross_entropy_loss(arr(xp, z), arr(xp, labels, "int64"), reduction="none")
    b = na.cross_entropy_loss(arr(xp, z), na.Tensor(arr(xp, one_hot)), reduction="none")
    assert_close(a.data, b.data)


def test_losses_stable_for_huge_logits(xp):
    z = arr(xp, [[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]])
    ce = na.cross_entropy_loss(z, arr(xp, [0, 1], "int64"), reduction="none")
    assert_close(ce.data, arr(xp, [0.0, 2e4]))
    bce = na.binary_cross_entropy_with_logits(z, arr(xp, np.ones((2, 3))), reduction="none")
    assert_close(bce.data, arr(xp, [[0.0, 1e4, math.log(2)], [1e4, 1e4, 0.0]]), atol=1e-300)
    s = na.softmax(z)
    assert_close(s.sum(axis=-1).data, arr(xp, [1.0, 1.0]))
    assert_close(na.sigmoid(arr(xp, [-1e4, 1e4])).data, arr(xp, [0.0, 1.0]))


def test_bce_gradient_is_sigmoid_minus_target_at_zero(xp):
    z = na.Parameter(arr(xp, [0.0, 0.0]))
    na.binary_cross_entropy_with_logits(z, arr(xp, [1.0, 0.0]), reduction="sum").backward()
    assert_close(z.grad, arr(xp, [-0.5, 0.5]))


def test_max_gradient_split_among_ties(xp):
    t = na.Parameter(arr(xp, [[1.0, 3.0, 3.0], [5.0, 5.0, 5.0]]))
    t.max(axis=1).sum().backward()
    assert_close(t.grad, arr(xp, [[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]]))


def test_relu_gradient_at_zero_is_zero(xp):
    t = na.Parameter(arr(xp, [-1.0, 0.0, 2.0]))
    t.relu().sum().backward()
    assert_close(t.grad, arr(xp, [0.0, 0.0, 1.0]))


def test_forward_values(xp):
    a = na.Tensor(arr(xp, [[1.0, 2.0], [3.0, 4.0]]))
    assert_close(na.concat([a, a], axis=1).data, np.array([[1, 2, 1, 2], [3, 4, 3, 4.0]]))
    assert na.stack([a, a, a], axis=1).shape == (2, 3, 2)
    assert_close(a.T.data, np.array([[1.0, 3.0], [2.0, 4.0]]))
    assert_close((a @ a).data, np.array([[7.0, 10.0], [15.0, 22.0]]))
    assert_close(na.matmul(a, arr(xp, [1.0, 1.0])).data, np.array([3.0, 7.0]))
    assert_close(na.where(a.data > 2.0, a, 0.0).data, np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert_close(a.max().data, np.array(4.0))
    assert_close(a.mean(axis=0).data, np.array([2.0, 3.0]))
    assert_close(a[xp.arange(2), arr(xp, [1, 0], "int64")].data, np.array([2.0, 3.0]))
    assert a.reshape(-1).shape == (4,)


def test_functions_accept_raw_arrays(xp):
    out = na.exp(arr(xp, [0.0]))
    assert isinstance(out, na.Tensor) and not out.requires_grad
    assert_close(out.data, np.array([1.0]))


def test_unbroadcast():
    g = np.ones((2, 3, 4))
    assert F.unbroadcast(g, (2, 3, 4)) is g
    assert_close(F.unbroadcast(g, (4,)), np.full(4, 6.0))
    assert_close(F.unbroadcast(g, (3, 1)), np.full((3, 1), 8.0))
    assert_close(F.unbroadcast(g, ()), np.array(24.0))
    with pytest.raises(ValueError, match="shape"):
        F.unbroadcast(g, (5,))


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss", [na.mse_loss, na.cross_entropy_loss, na.binary_cross_entropy_with_logits]
)
def test_bad_reduction(xp, loss):
    with pytest.raises(ValueError, match="reduction"):
        loss(arr(xp, np.zeros((2, 3))), arr(xp, np.zeros((2, 3))), reduction="avg")


def test_loss_shape_mismatch_names_arguments(xp):
    with pytest.raises(ValueError, match=r"pred.*target"):
        na.mse_loss(arr(xp, np.zeros((2, 3))), arr(xp, np.zeros((3, 2))))
    with pytest.raises(ValueError, match=r"logits.*target"):
        na.binary_cross_entropy_with_logits(arr(xp, np.zeros(3)), arr(xp, np.zeros(2)))
    with pytest.raises(ValueError, match="target"):
        na.cross_entropy_loss(arr(xp, np.zeros((2, 3))), arr(xp, [0, 1, 2], "int64"))
    with pytest.raises(ValueError, match="target"):
        na.cross_entropy_loss(arr(xp, np.zeros((2, 3))), arr(xp, np.zeros((2, 2))))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        na.cross_entropy_loss(arr(xp, np.zeros((2, 3))), arr(xp, [0, 3], "int64"))


def test_op_errors(xp):
    a = na.Tensor(arr(xp, [1.0, 2.0]))
    with pytest.raises(TypeError, match="condition"):
        na.where(arr(xp, [1.0, 0.0]), a, a)
    with pytest.raises(TypeError, match="concat"):
        na.concat(a)
    with pytest.raises(TypeError, match="stack"):
        na.stack([])
    with pytest.raises(ValueError, match="matmul"):
        na.matmul(a, na.Tensor(arr(xp, 2.0)))


def test_index_array_from_other_backend(other_xp):
    t = na.Tensor(backend.to_backend(np.ones(3), other_xp))
    with pytest.raises(TypeError, match="index arrays"):
        t[np.array([0, 1])]
