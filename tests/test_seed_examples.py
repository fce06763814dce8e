"""Every example of the seed's optimizer chapter, run with real inputs and targets.

The snippets are kept as the chapter writes them (the default backend, NumPy);
what the chapter leaves undefined (``inputs``, ``targets``, ``train_step``,
``dataloader``, ``ComplexModel``) is defined here.  The one snippet the design
corrects, "Multiple Parameter Groups", is run as corrected: the dict merge
uses ``named_parameters()``, and real groups are a list of group dicts.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

import neural_arch as na


def _regression_data(n=64, features=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    w = rng.standard_normal((features, 1)).astype(np.float32)
    y = x @ w + np.float32(0.1) * rng.standard_normal((n, 1)).astype(np.float32)
    return na.Tensor(x), na.Tensor(y)


def _mse(model, inputs, targets):
    with na.no_grad():
        return float(na.mse_loss(model(inputs), targets).data)


def train_step(model, optimizer, data):
    """One step on ``data = (inputs, targets)``; returns the loss before the step."""
    inputs, targets = data
    loss = na.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return float(loss.data)


def test_basic_usage():
    inputs, targets = _regression_data()

    # Create a simple model
    model = na.Linear(10, 1)

    # Setup optimizer
    optimizer = na.Adam(model.parameters(), lr=0.001)

    start = _mse(model, inputs, targets)
    # Training loop
    for _epoch in range(100):
        # Forward pass
        predictions = model(inputs)
        loss = na.mse_loss(predictions, targets)

        # Backward pass
        loss.backward()

        # Update parameters
        optimizer.step()

        # Clear gradients
        optimizer.zero_grad()

    assert optimizer.step_count == 100
    assert all(p.grad is None for p in model.parameters())
    assert model.weight.data.dtype == np.float32
    # Adam moves each weight by about lr per step while the gradient keeps its sign.
    assert _mse(model, inputs, targets) < 0.9 * start


def test_adam_default_and_custom_parameters():
    model = na.Linear(10, 1)

    # Adam with default parameters
    optimizer = na.Adam(model.parameters(), lr=0.001)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        0.001,
        (0.9, 0.999),
        1e-8,
        0.0,
    )

    # Adam with custom parameters
    optimizer = na.Adam(
        model.parameters(),
        lr=0.001,
        beta1=0.9,  # Momentum parameter
        beta2=0.999,  # RMSprop parameter
        eps=1e-8,  # Numerical stability
        weight_decay=0.01,  # L2 regularization
    )
    group = optimizer.param_groups[0]
    assert (group["betas"], group["weight_decay"]) == ((0.9, 0.999), 0.01)
    inputs, targets = _regression_data()
    start = _mse(model, inputs, targets)
    for _ in range(50):
        train_step(model, optimizer, (inputs, targets))
    assert _mse(model, inputs, targets) < start


def test_sgd_basic_and_momentum():
    inputs, targets = _regression_data()
    model = na.Linear(10, 1)

    # Basic SGD
    optimizer = na.SGD(model.parameters(), lr=0.01)
    assert optimizer.param_groups[0]["momentum"] == 0.0
    start = _mse(model, inputs, targets)
    for _ in range(20):
        train_step(model, optimizer, (inputs, targets))
    after_plain = _mse(model, inputs, targets)
    assert after_plain < 0.9 * start

    # SGD with momentum
    optimizer = na.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for _ in range(20):
        train_step(model, optimizer, (inputs, targets))
    assert set(optimizer.state[model.weight]) == {"momentum_buffer"}
    assert _mse(model, inputs, targets) < after_plain


def test_adamw():
    inputs, targets = _regression_data()
    model = na.Linear(10, 1)

    # AdamW for better generalization
    optimizer = na.AdamW(
        model.parameters(),
        lr=0.001,
        weight_decay=0.01,  # Decoupled weight decay
    )
    start = _mse(model, inputs, targets)
    for _ in range(100):
        train_step(model, optimizer, (inputs, targets))
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    assert _mse(model, inputs, targets) < 0.9 * start


def test_learning_rate_scheduling(capsys):
    model = na.Linear(10, 1)
    data = _regression_data()
    seen = []

    # Manual learning rate scheduling
    optimizer = na.Adam(model.parameters(), lr=0.001)

    for epoch in range(100):
        # Decay learning rate every 30 epochs
        if epoch % 30 == 0 and epoch > 0:
            optimizer.lr *= 0.1

        # Training step
        loss = train_step(model, optimizer, data)

        print(f"Epoch {epoch}, LR: {optimizer.lr}, Loss: {loss}")
        seen.append(optimizer.param_groups[0]["lr"])

    assert seen[0] == seen[29] == 0.001
    assert seen[30] == pytest.approx(1e-4, rel=1e-12)
    assert seen[60] == pytest.approx(1e-5, rel=1e-12)
    assert seen[99] == pytest.approx(1e-6, rel=1e-12)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 100 and out[0].startswith("Epoch 0, LR: 0.001, Loss: ")


class ComplexModel(na.Module):
    """A backbone and a head, as the chapter's "ComplexModel" suggests."""

    def __init__(self):
        super().__init__()
        self.backbone = na.Sequential(na.Linear(10, 16), na.ReLU(), na.Linear(16, 8), na.ReLU())
        self.head = na.Linear(8, 1)

    def forward(self, x):
        return self.head(self.backbone(x))


def test_multiple_parameter_groups_dict_merge():
    """The chapter's snippet, with ``named_parameters()`` as the design corrects it."""
    data = _regression_data()

    # Different learning rates for different parts
    model = ComplexModel()

    # Get different parameter groups
    backbone_params = model.backbone.named_parameters()
    head_params = model.head.named_parameters()

    all_params = {}
    all_params.update(backbone_params)
    all_params.update(head_params)

    optimizer = na.Adam(all_params, lr=0.001)

    assert list(all_params) == ["0.weight", "0.bias", "2.weight", "2.bias", "weight", "bias"]
    assert optimizer.param_groups[0]["params"] == model.parameters()
    for _ in range(3):
        train_step(model, optimizer, data)
    assert optimizer.m["weight"] is optimizer.state[model.head.weight]["exp_avg"]
    assert optimizer.v["0.bias"] is optimizer.state[model.backbone[0].bias]["exp_avg_sq"]


def test_multiple_parameter_groups_as_group_dicts():
    """What the chapter calls a future enhancement: real groups with their own lr."""
    inputs, targets = _regression_data()
    model = ComplexModel()
    optimizer = na.Adam(
        [
            {"params": model.backbone.parameters(), "lr": 1e-3},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    with pytest.raises(ValueError, match="param_groups"):
        optimizer.lr
    start = _mse(model, inputs, targets)
    for _ in range(50):
        train_step(model, optimizer, (inputs, targets))
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-2]
    assert optimizer.state[model.head.bias]["step"] == 50
    assert _mse(model, inputs, targets) < start


def _classification_batches(n_batches=4, batch=16, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = 3.0 * rng.standard_normal((classes, features))
    batches = []
    for _ in range(n_batches):
        labels = rng.integers(0, classes, size=batch)
        x = centers[labels] + rng.standard_normal((batch, features))
        batches.append(
            types.SimpleNamespace(
                inputs=na.Tensor(x.astype(np.float32)), targets=na.Tensor(labels.astype(np.int64))
            )
        )
    return batches


def test_advanced_training_pattern(capsys):
    dataloader = _classification_batches()
    model = na.Sequential(na.Linear(4, 16), na.Tanh(), na.Linear(16, 3))
    averages = []

    # Gradient clipping example
    optimizer = na.Adam(model.parameters(), lr=0.001)

    for epoch in range(100):
        total_loss = 0
        for batch in dataloader:
            # Forward pass
            predictions = model(batch.inputs)
            loss = na.cross_entropy_loss(predictions, batch.targets)

            # Backward pass
            loss.backward()

            # Optional: Gradient clipping (handled automatically by tensors)
            # Gradients are clipped during backward pass for numerical stability

            # Update parameters
            optimizer.step()
            optimizer.zero_grad()

            total_loss += loss.data

        avg_loss = total_loss / len(dataloader)
        print(f"Epoch {epoch}, Average Loss: {avg_loss}")
        averages.append(float(avg_loss))

    assert optimizer.step_count == 400
    assert averages[-1] < 0.5 * averages[0]
    assert capsys.readouterr().out.count("Average Loss") == 100


def test_optimizer_state(capsys):
    model = na.Linear(10, 1)
    data = _regression_data()

    # Access optimizer internal state
    optimizer = na.Adam(model.parameters(), lr=0.001)

    # Train for some steps
    for _i in range(10):
        train_step(model, optimizer, data)

    # Check optimizer state
    print(f"Step count: {optimizer.step_count}")
    print(f"Learning rate: {optimizer.lr}")

    # Adam-specific state
    if hasattr(optimizer, "m"):
        print("Momentum estimates available")
    if hasattr(optimizer, "v"):
        print("RMSprop estimates available")

    assert capsys.readouterr().out.splitlines() == [
        "Step count: 10",
        "Learning rate: 0.001",
        "Momentum estimates available",
        "RMSprop estimates available",
    ]
    assert list(optimizer.m) == [0, 1]  # weight, bias: positions in parameters()
    assert optimizer.m[0] is optimizer.state[model.weight]["exp_avg"]
    assert optimizer.v[1].shape == model.bias.data.shape
    assert optimizer.state[model.weight]["step"] == 10
