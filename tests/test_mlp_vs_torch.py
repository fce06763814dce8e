"""An MLP in float64 against the same network in ``torch.nn``: losses and gradients to 1e-9.

The neural_arch model runs on each backend of the matrix; PyTorch (CPU,
float64) is the reference and shares no code with it.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import assert_close, to_np

import neural_arch as na
from neural_arch import backend

RTOL = 1e-9
ATOL = 1e-12
SIZES = (5, 16, 16, 3)


def na_mlp(first_act, second_act):
    return na.Sequential(
        na.Linear(SIZES[0], SIZES[1]),
        first_act(),
        na.Linear(SIZES[1], SIZES[2]),
        second_act(),
        na.Linear(SIZES[2], SIZES[3]),
    )


def torch_copy(torch, model):
    """The same network in torch.nn, holding copies of ``model``'s parameters."""
    acts = {na.Tanh: torch.nn.Tanh, na.ReLU: torch.nn.ReLU, na.Sigmoid: torch.nn.Sigmoid}
    layers = []
    for layer in model:
        if isinstance(layer, na.Linear):
            ref = torch.nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64)
            with torch.no_grad():
                ref.weight.copy_(torch.from_numpy(to_np(layer.weight.data).copy()))
                ref.bias.copy_(torch.from_numpy(to_np(layer.bias.data).copy()))
            layers.append(ref)
        else:
            layers.append(acts[type(layer)]())
    return torch.nn.Sequential(*layers)


def data():
    gen = np.random.default_rng(2024)
    x = gen.standard_normal((8, SIZES[0]))
    y = gen.standard_normal((8, SIZES[-1]))
    labels = gen.integers(0, SIZES[-1], size=8)
    return x, y, labels


def losses(torch, xp, loss_name):
    """(neural_arch loss fn on xp, torch loss fn), both taking (model, x, y, labels)."""
    if loss_name == "mse":

        def ours(model, x, y, labels):
            return na.mse_loss(
                model(backend.to_backend(x, xp)), na.Tensor(backend.to_backend(y, xp))
            )

        def theirs(model, x, y, labels):
            return torch.nn.functional.mse_loss(model(torch.from_numpy(x)), torch.from_numpy(y))

    else:

        def ours(model, x, y, labels):
            targets = backend.to_backend(labels, xp, dtype="int64")
            return na.cross_entropy_loss(model(backend.to_backend(x, xp)), targets)

        def theirs(model, x, y, labels):
            return torch.nn.functional.cross_entropy(
                model(torch.from_numpy(x)), torch.from_numpy(labels).long()
            )

    return ours, theirs


@pytest.mark.parametrize("loss_name", ["mse", "cross_entropy"])
@pytest.mark.parametrize(
    "acts", [(na.Tanh, na.ReLU), (na.ReLU, na.Sigmoid)], ids=["tanh-relu", "relu-sigmoid"]
)
def test_loss_and_gradients_match_torch(xp, torch, loss_name, acts):
    na.manual_seed(0)
    model = na_mlp(*acts).to(xp, dtype="float64")
    ref = torch_copy(torch, model)
    ours, theirs = losses(torch, xp, loss_name)
    x, y, labels = data()

    loss = ours(model, x, y, labels)
    loss.backward()
    ref_loss = theirs(ref, x, y, labels)
    ref_loss.backward()

    assert_close(loss.data, ref_loss.detach().numpy(), rtol=RTOL, atol=ATOL)
    ref_grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert backend.namespace(p.grad) is xp, name
        assert p.grad.dtype == p.data.dtype, name
        assert_close(p.grad, ref_grads[name].grad.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("loss_name", ["mse", "cross_entropy"])
def test_gradient_descent_trajectory_matches_torch(xp, torch, loss_name):
    """Five plain gradient steps: zero_grad, forward, backward and the update, every step."""
    na.manual_seed(1)
    model = na_mlp(na.Tanh, na.ReLU).to(xp, dtype="float64")
    ref = torch_copy(torch, model)
    ours, theirs = losses(torch, xp, loss_name)
    x, y, labels = data()
    lr = 0.1
    for _ in range(5):
        model.zero_grad()
        ref.zero_grad()
        loss = ours(model, x, y, labels)
        loss.backward()
        ref_loss = theirs(ref, x, y, labels)
        ref_loss.backward()
        assert_close(loss.data, ref_loss.detach().numpy(), rtol=RTOL, atol=ATOL)
        for p in model.parameters():
            p.data = p.data - lr * p.grad
        with torch.no_grad():
            for q in ref.parameters():
                q -= lr * q.grad
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert_close(p.data, ref_params[name].detach().numpy(), rtol=RTOL, atol=ATOL)


def test_state_dict_round_trip_through_torch(xp, torch):
    """A torch.nn state dict loads into the same architecture, and ours into torch."""
    na.manual_seed(2)
    model = na_mlp(na.Tanh, na.ReLU).to(xp, dtype="float64")
    ref = torch_copy(torch, na_mlp(na.Tanh, na.ReLU))  # the next draws: other weights
    model.load_state_dict(ref.state_dict())
    for name, q in ref.state_dict().items():
        assert_close(dict(model.named_parameters())[name].data, q.numpy(), rtol=0)
    x = data()[0]
    assert_close(
        model(backend.to_backend(x, xp)).data,
        ref(torch.from_numpy(x)).detach().numpy(),
        rtol=RTOL,
        atol=ATOL,
    )
