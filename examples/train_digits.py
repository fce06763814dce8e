"""Train an MLP on scikit-learn's handwritten digits with neural_arch, on any backend.

The 8x8 digits data set (1797 images, 10 classes) ships inside scikit-learn,
so nothing is downloaded.  Needs the ``examples`` extra::

    pip install -e ".[examples]"
    python examples/train_digits.py                       # Adam, cosine schedule, NumPy
    python examples/train_digits.py --optimizer sgd --backend torch
    python examples/train_digits.py --backend torch --device cuda:0  # or: cupy --device 0
    python examples/train_digits.py --resume              # continue from the checkpoint
    python examples/train_digits.py --compare             # Adam vs AdamW vs SGD, one plot

Every epoch shows a progress bar with the running loss and accuracy; at the
end the script prints the test accuracy and where it wrote the checkpoint
(``--out``/<optimizer>.safetensors, written after every epoch) and the plot
of the loss curves.  ``--resume`` continues an interrupted run exactly where
it stopped: the batches of every epoch are a function of ``--seed`` and the
epoch, so an interrupted and resumed run takes the same steps as one that was
never interrupted (on NumPy, bit for bit).  A checkpoint may be resumed on
another backend (``--backend torch --resume``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import neural_arch as na
from neural_arch.backend import backend_name, resolve_backend, to_backend
from neural_arch.optim import lr_scheduler

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "onecycle", "step", "none")
BACKENDS = ("numpy", "cupy", "torch", "jax", "array_api_strict")

# The settings that define a run; a checkpoint stores them and --resume reuses them.
DEFAULT_LR = {"adam": 3e-3, "adamw": 3e-3, "sgd": 0.05}
DEFAULTS = {"epochs": 40, "batch_size": 32, "hidden": [256], "scheduler": "cosine", "seed": 0}
RUN_KEYS = ("optimizer", "lr", "epochs", "batch_size", "hidden", "scheduler", "seed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="default: adam")
    p.add_argument("--backend", choices=BACKENDS, default="numpy")
    p.add_argument(
        "--device", default=None, help="torch: a device such as cuda:0; cupy, jax: an index"
    )
    p.add_argument("--epochs", type=int, default=None, help=f"default: {DEFAULTS['epochs']}")
    p.add_argument("--lr", type=float, default=None, help=f"default: {DEFAULT_LR}")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32")
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="default: 256")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=None, help="default: cosine")
    p.add_argument("--seed", type=int, default=None, help="default: 0")
    p.add_argument("--out", type=Path, default=Path("runs/digits"), help="output folder")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="continue from a checkpoint (default: OUT/<optimizer>.safetensors)",
    )
    p.add_argument("--compare", action="store_true", help="train with every optimizer, plot")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def fail(message: str) -> SystemExit:
    """A one-line error for the user instead of a traceback."""
    return SystemExit(f"train_digits.py: error: {message}")


def require(module: str, purpose: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise fail(
            f"{purpose} needs {module!r}, which is not installed; "
            'install the examples extra: pip install -e ".[examples]"'
        ) from None


# ----------------------------------------------------------------- data and model


def load_data(xp: Any, device: Any) -> dict[str, Any]:
    """The digits split 80/20 (stratified, fixed), scaled to [0, 1], on the backend."""
    require("sklearn", "the digits data set")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    move = lambda a: to_backend(a, xp, device=device)  # noqa: E731
    return {
        "x_train": move(x_tr),
        "y_train": move(y_tr),
        "x_test": move(x_te),
        "y_test": move(y_te),
        "n_train": len(y_tr),
    }


def build_model(hidden: list[int]) -> na.Sequential:
    layers: list[na.Module] = []
    width = 64
    for h in hidden:
        layers += [na.Linear(width, h), na.ReLU()]
        width = h
    return na.Sequential(*layers, na.Linear(width, 10))


def build_optimizer(name: str, params: Any, lr: float) -> na.Optimizer:
    if name == "adam":
        return na.Adam(params, lr=lr)
    if name == "adamw":
        return na.AdamW(params, lr=lr, weight_decay=0.01)
    return na.SGD(params, lr=lr, momentum=0.9, nesterov=True)


def build_scheduler(name: str, opt: na.Optimizer, lr: float, total_steps: int) -> Any:
    """A per-step schedule over the whole run (None for a constant lr)."""
    if name == "cosine":
        return lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    if name == "onecycle":
        return lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps)
    if name == "step":
        return lr_scheduler.StepLR(opt, step_size=max(1, total_steps // 3), gamma=0.1)
    return None


def evaluate(model: na.Module, x: Any, y: Any) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a whole split, without building a graph."""
    with na.no_grad():
        logits = model(x)
        loss = na.cross_entropy_loss(logits, y)
    xp = na.backend.namespace(logits.data)
    correct = xp.astype(xp.argmax(logits.data, axis=1) == y, logits.data.dtype)
    return float(loss.item()), float(xp.mean(correct))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffle of epoch ``epoch``: a function of (seed, epoch) only, so resuming is exact."""
    return np.random.default_rng([seed, epoch]).permutation(n)


# ----------------------------------------------------------------------- training


def check_backend(name: str, device: str | None) -> tuple[Any, Any]:
    """(namespace, device object), or a clear error when the backend is missing or has no device.

    ``device`` is what the user typed: a torch device string (``cuda:0``), or
    for CuPy and JAX the index of a device (``0``); None is the default device.
    """
    try:
        xp = resolve_backend(name)
    except ImportError as exc:
        raise fail(str(exc)) from None
    where = f"device {device!r}" if device is not None else "its default device"
    try:
        dev = device
        if device is not None and name in ("cupy", "jax"):
            if not device.isdigit():
                raise fail(f"--device for {name} is a device index (0, 1, ...), got {device!r}")
            dev = (
                __import__("cupy").cuda.Device(int(device))
                if name == "cupy"
                else __import__("jax").devices()[int(device)]
            )
        probe = to_backend(np.zeros(1, dtype=np.float32), xp, device=dev)
        float(xp.sum(probe))
    except SystemExit:
        raise
    except Exception as exc:  # CUDA drivers raise many types; report, never traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise fail(f"backend {name!r} cannot use {where}: {first}") from None
    return xp, dev


def train_one(cfg: dict[str, Any], args: argparse.Namespace, xp: Any, data: dict) -> dict:
    """Train (or resume) one run; return its history, final accuracy and output paths."""
    tqdm = require("tqdm", "the progress bar").tqdm
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / f"{cfg['optimizer']}.safetensors"

    na.manual_seed(cfg["seed"])
    model = build_model(cfg["hidden"]).to(xp, device=args.device)
    opt = build_optimizer(cfg["optimizer"], model.parameters(), cfg["lr"])
    steps_per_epoch = math.ceil(data["n_train"] / cfg["batch_size"])
    total_steps = cfg["epochs"] * steps_per_epoch
    sched = build_scheduler(cfg["scheduler"], opt, cfg["lr"], total_steps)

    step = 0
    history: dict[str, list[float]] = {"train_loss": [], "test_loss": [], "test_acc": []}
    if cfg.get("checkpoint") is not None:
        state = cfg["checkpoint"]
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        history = {k: [float(v) for v in vals] for k, vals in state["history"].items()}
        print(f"resumed from {ckpt_path} at step {step} of {total_steps}")
    else:  # epoch 0 of the curves: the untrained model
        history["train_loss"].append(evaluate(model, data["x_train"], data["y_train"])[0])
        test_loss, test_acc = evaluate(model, data["x_test"], data["y_test"])
        history["test_loss"].append(test_loss)
        history["test_acc"].append(test_acc)

    def save() -> None:
        na.save(
            {
                "run": {k: cfg[k] for k in RUN_KEYS},
                "step": step,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": {} if sched is None else sched.state_dict(),
                "history": history,
            },
            ckpt_path,
        )

    limit = total_steps if args.max_steps is None else min(total_steps, args.max_steps)
    start = time.perf_counter()
    while step < limit:
        epoch, skip = divmod(step, steps_per_epoch)
        order = to_backend(
            epoch_order(cfg["seed"], epoch, data["n_train"]), xp, device=args.device
        )
        x_epoch = xp.take(data["x_train"], order, axis=0)
        y_epoch = xp.take(data["y_train"], order, axis=0)
        bar = tqdm(
            range(skip, steps_per_epoch),
            desc=f"{cfg['optimizer']} epoch {epoch + 1}/{cfg['epochs']}",
            leave=False,
            disable=args.no_progress,
            file=sys.stdout,
        )
        seen = correct = 0
        loss_sum = 0.0
        for batch in bar:
            if step >= limit:
                break
            lo = batch * cfg["batch_size"]
            hi = min(lo + cfg["batch_size"], data["n_train"])  # the standard has no clamping
            xb, yb = x_epoch[lo:hi, ...], y_epoch[lo:hi]
            logits = model(xb)
            loss = na.cross_entropy_loss(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            n = hi - lo
            loss_sum += loss.item() * n
            correct += int(xp.sum(xp.astype(xp.argmax(logits.data, axis=1) == yb, xp.int64)))
            seen += n
            bar.set_postfix(
                loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False
            )
        bar.close()
        if step % steps_per_epoch == 0 or step == limit:
            train_loss, _ = evaluate(model, data["x_train"], data["y_train"])
            test_loss, test_acc = evaluate(model, data["x_test"], data["y_test"])
            if step % steps_per_epoch == 0:  # the curves hold whole epochs only
                history["train_loss"].append(train_loss)
                history["test_loss"].append(test_loss)
                history["test_acc"].append(test_acc)
            save()
            if not args.no_progress:
                print(
                    f"{cfg['optimizer']} epoch {epoch + 1:3d}/{cfg['epochs']}: "
                    f"train loss {train_loss:.4f}  test loss {test_loss:.4f}  "
                    f"test acc {test_acc:.2%}  lr {opt.param_groups[0]['lr']:.2e}"
                )
    elapsed = time.perf_counter() - start
    if step == 0 or not history["test_acc"]:
        save()
    test_loss, test_acc = evaluate(model, data["x_test"], data["y_test"])
    return {
        "optimizer": cfg["optimizer"],
        "history": history,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "steps": step,
        "total_steps": total_steps,
        "seconds": elapsed,
        "checkpoint": ckpt_path,
        "model": model,
    }


def run_config(args: argparse.Namespace, optimizer: str) -> dict[str, Any]:
    """The run's settings: the command line over the defaults, or the checkpoint's on resume."""
    given = {
        "optimizer": optimizer,
        "lr": args.lr,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "hidden": args.hidden,
        "scheduler": args.scheduler,
        "seed": args.seed,
    }
    cfg = {**DEFAULTS, "lr": DEFAULT_LR[optimizer]}
    cfg.update({k: v for k, v in given.items() if v is not None})
    cfg["checkpoint"] = None
    if args.resume is None:
        return cfg
    path = args.out / f"{optimizer}.safetensors" if args.resume == "auto" else Path(args.resume)
    if not path.exists():
        raise fail(f"no checkpoint to resume from at {path} (train once without --resume)")
    state = na.load(path, backend=args.backend, device=args.device)
    saved = state["run"]
    saved["hidden"] = list(saved["hidden"])
    for key in RUN_KEYS:
        if given[key] is not None and given[key] != saved[key]:
            raise fail(
                f"the checkpoint {path} was trained with --{key.replace('_', '-')} "
                f"{saved[key]}, not {given[key]}; resume with the same settings"
            )
    return {**saved, "checkpoint": state}


# -------------------------------------------------------------------------- output


def plot(results: list[dict[str, Any]], path: Path) -> Path:
    """Train and test loss per epoch (log scale) and test accuracy, one colour per run."""
    require("matplotlib", "the loss plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for i, res in enumerate(results):
        h, colour = res["history"], f"C{i}"
        epochs = range(len(h["train_loss"]))
        ax_loss.plot(epochs, h["train_loss"], color=colour, label=f"{res['optimizer']} train")
        ax_loss.plot(epochs, h["test_loss"], "--", color=colour, label=f"{res['optimizer']} test")
        ax_acc.plot(range(len(h["test_acc"])), h["test_acc"], color=colour, label=res["optimizer"])
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", ylim=(0.8, 1.0), title="test accuracy")
    ax_loss.legend()
    ax_acc.legend(loc="lower right")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the script with ``argv`` (default: the command line); return one result per run."""
    args = parse_args(argv)
    if args.compare and args.optimizer is not None:
        raise fail("--compare trains every optimizer; leave out --optimizer")
    names = list(OPTIMIZERS) if args.compare else [args.optimizer or "adam"]
    for name in ("tqdm", "matplotlib"):
        require(name, "train_digits.py")
    xp, args.device = check_backend(args.backend, args.device)
    configs = [run_config(args, name) for name in names]  # check settings before training
    data = load_data(xp, args.device)

    results = []
    for cfg in configs:
        hidden = "-".join(str(h) for h in [64, *cfg["hidden"], 10])
        print(
            f"{cfg['optimizer']}: MLP {hidden}, lr {cfg['lr']:g} with {cfg['scheduler']} "
            f"schedule, {cfg['epochs']} epochs of batch {cfg['batch_size']}, "
            f"{data['n_train']} training images, backend {backend_name(xp)}"
        )
        res = train_one(cfg, args, xp, data)
        print(
            f"{res['optimizer']}: test accuracy {res['test_acc']:.2%} "
            f"(test loss {res['test_loss']:.4f}) after {res['steps']}/{res['total_steps']} "
            f"steps; this session trained for {res['seconds']:.1f} s"
        )
        results.append(res)

    plot_path = args.out / ("compare.png" if args.compare else f"{names[0]}.png")
    plot(results, plot_path)
    if args.compare:
        for res in results:
            print(f"{res['optimizer']:>6}: test accuracy {res['test_acc']:.2%}")
    for res in results:
        print(f"checkpoint: {res['checkpoint']}  (continue with --resume)")
    print(f"plot:       {plot_path}")
    return results


if __name__ == "__main__":
    main()
