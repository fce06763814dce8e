"""Train a small MLP on a two-class spiral with Adam, on the default NumPy backend.

Needs only NumPy (no optional dependencies).  Run::

    python examples/train_mlp.py [--steps 400] [--lr 0.01] [--seed 0]

Prints the cross-entropy loss every 50 steps and the final training and
held-out accuracy.  The data set and the model are fixed by ``--seed``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import neural_arch as na


def spiral(n_per_class: int, *, noise: float, rng: np.random.Generator):
    """Two interleaved spirals in the plane: points (n, 2) float and labels (n,) int64."""
    points, labels = [], []
    for label in (0, 1):
        t = np.sqrt(rng.random(n_per_class)) * 3 * np.pi  # denser near the centre
        angle = t + label * np.pi
        xy = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) / (3 * np.pi)
        points.append(xy + noise * rng.standard_normal(xy.shape))
        labels.append(np.full(n_per_class, label, dtype=np.int64))
    order = rng.permutation(2 * n_per_class)
    return np.concatenate(points)[order], np.concatenate(labels)[order]


def accuracy(model: na.Module, x: np.ndarray, y: np.ndarray) -> float:
    with na.no_grad():
        logits = na.backend.to_numpy(model(x).data)
    return float((logits.argmax(axis=1) == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data_rng = np.random.default_rng(args.seed)
    x_all, y_all = spiral(300, noise=0.03, rng=data_rng)
    x_all = x_all.astype(na.get_default_dtype())
    x_train, y_train = x_all[:480], y_all[:480]
    x_test, y_test = x_all[480:], y_all[480:]

    na.manual_seed(args.seed)
    model = na.Sequential(
        na.Linear(2, 64), na.Tanh(), na.Linear(64, 64), na.Tanh(), na.Linear(64, 2)
    )
    opt = na.Adam(model.parameters(), lr=args.lr)
    print(model)

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        opt.zero_grad()
        loss = na.cross_entropy_loss(model(x_train), y_train)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == 1:
            print(f"step {step:4d}  loss {float(loss.data):.4f}")
    elapsed = time.perf_counter() - start

    print(f"train accuracy {accuracy(model, x_train, y_train):.3f}")
    print(f"test accuracy  {accuracy(model, x_test, y_test):.3f}")
    print(f"{args.steps} steps in {elapsed:.2f} s")


if __name__ == "__main__":
    main()
