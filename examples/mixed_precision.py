"""Mixed precision on the digits MLP: float16/bfloat16 parameters vs float32, same recipe.

Each configuration trains the same model (64-256-256-10, ReLU) from the same
initial values with Adam, batches of 64, and reports the test accuracy, the
bytes that parameters, gradients and optimizer state take, and the time:

* ``float32``: the reference.
* ``float16 + scaler``: float16 parameters and activations; the logits are
  cast to float32 for the loss, and :class:`neural_arch.GradScaler` scales it
  so that small float16 gradients do not underflow.  The optimizer keeps its
  state in float32 and computes in float32 (always, for 16-bit parameters).
* ``float16 + scaler + master``: the same with ``master_weights=True``, a
  float32 copy of each parameter that the updates accumulate into.
* ``bfloat16 + master``: bfloat16 has float32's range, so no scaler.

    python examples/mixed_precision.py  # 3 seeds, 15 epochs: minutes (NumPy lacks float16 BLAS)
    python examples/mixed_precision.py --epochs 5 --seeds 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from train_digits import build_model, epoch_order, evaluate, load_data  # noqa: E402

import neural_arch as na  # noqa: E402

CONFIGS = {
    "float32": {"dtype": "float32", "scaler": False, "master": False},
    "float16 + scaler": {"dtype": "float16", "scaler": True, "master": False},
    "float16 + scaler + master": {"dtype": "float16", "scaler": True, "master": True},
    "bfloat16 + master": {"dtype": "bfloat16", "scaler": False, "master": True},
}


def nbytes(arrays: list[Any]) -> int:
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in arrays)


def run(name: str, seed: int, epochs: int, lr: float, batch: int) -> dict[str, Any]:
    cfg = CONFIGS[name]
    xp = na.backend.resolve_backend("numpy")
    data = load_data(xp, None)
    na.manual_seed(seed)
    model = build_model([256, 256]).to(dtype=cfg["dtype"])
    params = model.parameters()
    opt = na.Adam(params, lr=lr, master_weights=cfg["master"])
    scaler = na.GradScaler() if cfg["scaler"] else None
    dtype = params[0].data.dtype
    x_train, y_train = data["x_train"].astype(dtype), data["y_train"]
    n = data["n_train"]
    start = time.perf_counter()
    for epoch in range(epochs):
        order = epoch_order(seed, epoch, n)
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            opt.zero_grad()
            logits = model(na.Tensor(x_train[idx])).astype("float32")
            loss = na.cross_entropy_loss(logits, y_train[idx])
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                with np.errstate(over="ignore", invalid="ignore"):  # an overflow is skipped
                    scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
    seconds = time.perf_counter() - start
    _, accuracy = evaluate(model, data["x_test"].astype(dtype), data["y_test"])
    state = [v for r in opt.state.values() for v in r.values() if hasattr(v, "shape")]
    return {
        "accuracy": accuracy,
        "params": nbytes([p.data for p in params]),
        "grads": nbytes([p.grad for p in params]),
        "state": nbytes(state),
        "seconds": seconds,
        "skipped": opt.skipped_steps,
        "steps": opt.step_count + opt.skipped_steps,
        "scale": None if scaler is None else scaler.get_scale(),
    }


def main(argv: list[str] | None = None) -> list[tuple[str, list[dict]]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = p.parse_args(argv)
    results = []
    print(
        f"digits MLP 64-256-256-10, Adam lr={args.lr}, batch {args.batch}, "
        f"{args.epochs} epochs, seeds 0..{args.seeds - 1}, NumPy {np.__version__}"
    )
    header = (
        f"{'configuration':28s} {'test accuracy':>16s} {'params':>8s} {'grads':>8s} "
        f"{'opt. state':>10s} {'s/run':>6s} {'skipped':>8s} {'final scale':>11s}"
    )
    print(header)
    for name in args.configs:
        runs = [run(name, seed, args.epochs, args.lr, args.batch) for seed in range(args.seeds)]
        acc = np.array([r["accuracy"] for r in runs])
        r0 = runs[0]
        scale = "-" if r0["scale"] is None else f"{r0['scale']:g}"
        print(
            f"{name:28s} {acc.mean():>9.4f} ± {acc.std():.4f} {r0['params'] / 1e3:>6.0f}kB "
            f"{r0['grads'] / 1e3:>6.0f}kB {r0['state'] / 1e3:>8.0f}kB "
            f"{np.mean([r['seconds'] for r in runs]):>6.1f} "
            f"{r0['skipped']:>4d}/{r0['steps']:<4d}{scale:>11s}"
        )
        results.append((name, runs))
    return results


if __name__ == "__main__":
    main()
