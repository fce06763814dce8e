"""Train an MLP on scikit-learn's handwritten digits with neural_arch, on any backend.

The 8x8 digits data set (1797 images, 10 classes) ships inside scikit-learn,
so nothing is downloaded.  Needs the ``examples`` extra::

    pip install -e ".[examples]"
    python examples/train_digits.py                       # Adam, cosine schedule, NumPy
    python examples/train_digits.py --optimizer sgd --backend torch
    python examples/train_digits.py --backend torch --device cuda:0  # or: cupy --device 0
    python examples/train_digits.py --resume              # continue from the checkpoint
    python examples/train_digits.py --compare             # Adam vs AdamW vs SGD, one plot
    python examples/train_digits.py --compare adam rmsprop lion
    python examples/train_digits.py --compare all         # every optimizer, one plot

Every optimizer of neural_arch can train it (``--optimizer``, lower-case
names); each has its own default learning rate, tuned roughly for this MLP
(``DEFAULT_LR`` below).  ``lbfgs`` and ``rprop`` take one full-batch step
per epoch (``--batch-size 0``, their default).  L-BFGS is stepped as
``opt.step(closure)`` with a closure over the whole training set and runs up
to ``max_iter=20`` iterations with a strong-Wolfe line search in one step, so
its "epoch" is up to 20 quasi-Newton iterations and ``--max-steps`` counts
those steps; ``--batch-size N`` gives it mini-batch closures instead, which
are noisy.  Every optimizer is stepped through such a closure (over its
batch); all but L-BFGS call it once per step.

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
import importlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

# One BLAS thread: this MLP's matrix products are too small to gain from more, and on a
# busy machine idle BLAS threads made every run about ten times slower.  Set the
# variables to override (they act only when this script is what first imports NumPy).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import neural_arch as na  # noqa: E402
from neural_arch.backend import backend_name, resolve_backend, to_backend  # noqa: E402
from neural_arch.optim import lr_scheduler  # noqa: E402

# Every optimizer the script knows: its module in neural_arch.optim and its class.  A
# class is taken from ``na`` when exported there, else imported from its module when
# first used; one that this neural_arch does not have is left out with a note.
OPTIMIZER_CLASSES = {
    "sgd": ("sgd", "SGD"),
    "adam": ("adam", "Adam"),
    "adamw": ("adam", "AdamW"),
    "rmsprop": ("rmsprop", "RMSprop"),
    "adagrad": ("adagrad", "Adagrad"),
    "adadelta": ("adadelta", "Adadelta"),
    "adamax": ("adamax", "Adamax"),
    "nadam": ("nadam", "NAdam"),
    "radam": ("radam", "RAdam"),
    "asgd": ("asgd", "ASGD"),
    "rprop": ("rprop", "Rprop"),
    "lion": ("lion", "Lion"),
    "lbfgs": ("lbfgs", "LBFGS"),
    "adafactor": ("adafactor", "Adafactor"),
}
OPTIMIZERS = tuple(OPTIMIZER_CLASSES)
CLASSIC = ("adam", "adamw", "sgd")  # what --compare alone trains
SCHEDULERS = ("cosine", "onecycle", "step", "none")
BACKENDS = ("numpy", "cupy", "torch", "jax", "array_api_strict")

# The default learning rate of each optimizer for this MLP (64-256-10, 40 epochs, cosine
# schedule), tuned roughly on NumPy: values a factor of about 3 apart, three seeds each,
# the best mean test accuracy, one step lower where the next larger value diverged or
# was unstable early (asgd, radam).  adam, adamw and sgd keep their earlier ten-seed
# values.  lbfgs and rprop take full batches (DEFAULT_BATCH_SIZE); the others batch 32.
# The constructor's other arguments are its defaults (torch's), except OPTIMIZER_KWARGS.
DEFAULT_LR = {
    "sgd": 0.05,
    "adam": 3e-3,
    "adamw": 3e-3,
    "rmsprop": 0.01,
    "adagrad": 0.1,
    "adadelta": 3.0,
    "adamax": 0.02,
    "nadam": 2e-3,
    "radam": 0.03,
    "asgd": 0.3,
    "rprop": 0.01,
    "lion": 3e-4,
    "lbfgs": 1.0,
    "adafactor": 0.1,
}
OPTIMIZER_KWARGS: dict[str, dict[str, Any]] = {
    "sgd": {"momentum": 0.9, "nesterov": True},
    "adamw": {"weight_decay": 0.01},
    "lbfgs": {"line_search_fn": "strong_wolfe"},
}
FULL_BATCH = 0  # --batch-size 0: the whole training set in one batch
# Rprop and L-BFGS are full-batch methods: on mini-batches of 32, Rprop's step sizes
# follow the noise in the gradient's sign and the loss grows (in torch as here).
DEFAULT_BATCH_SIZE = {"rprop": FULL_BATCH, "lbfgs": FULL_BATCH}  # others: DEFAULTS

# The settings that define a run; a checkpoint stores them and --resume reuses them.
DEFAULTS = {"epochs": 40, "batch_size": 32, "hidden": [256], "scheduler": "cosine", "seed": 0}
RUN_KEYS = ("optimizer", "lr", "epochs", "batch_size", "hidden", "scheduler", "seed")

_FOUND: dict[str, tuple[type | None, str]] = {}


def find_optimizer(name: str) -> tuple[type | None, str]:
    """(class, "") for the optimizer ``name``, or (None, why) when neural_arch lacks it."""
    if name not in _FOUND:
        module, cls_name = OPTIMIZER_CLASSES[name]
        cls, why = getattr(na, cls_name, None), ""
        if cls is None:
            qualified = f"neural_arch.optim.{module}"
            try:
                cls = getattr(importlib.import_module(qualified), cls_name, None)
                why = f"{qualified} has no class {cls_name}"
            except ModuleNotFoundError as exc:
                if exc.name != qualified:  # the module exists but is broken: say so
                    raise
                why = f"this neural_arch has no {qualified}"
        _FOUND[name] = (cls, "" if cls is not None else why)
    return _FOUND[name]


def available_optimizers() -> list[str]:
    """The names of the optimizers this neural_arch has, in OPTIMIZERS order."""
    return [name for name in OPTIMIZERS if find_optimizer(name)[0] is not None]


def note(message: str) -> None:
    print(f"train_digits.py: note: {message}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    lrs = ", ".join(f"{name} {lr:g}" for name, lr in DEFAULT_LR.items())
    kwargs = "; ".join(
        f"{name}: {', '.join(f'{k}={v!r}' for k, v in kw.items())}"
        for name, kw in OPTIMIZER_KWARGS.items()
    )
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=(
            f"Default learning rates: {lrs}. Other constructor arguments are the "
            f"optimizer's defaults, except {kwargs}. The settings of a run (optimizer, "
            "lr, epochs, batch size, hidden, scheduler, seed) are stored in its "
            "checkpoint; --resume reuses them."
        ),
    )
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=None,
        metavar="NAME",
        help=f"one of {', '.join(OPTIMIZERS)} (default: adam)",
    )
    p.add_argument(
        "--backend", choices=BACKENDS, default="numpy", help="array library (default: numpy)"
    )
    p.add_argument(
        "--device",
        default=None,
        help="torch: a device such as cuda:0; cupy, jax: an index (default: the backend's)",
    )
    p.add_argument("--epochs", type=int, default=None, help=f"default: {DEFAULTS['epochs']}")
    p.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: per optimizer, below)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"0 for the whole training set (default: {DEFAULTS['batch_size']}; lbfgs, rprop: 0)",
    )
    p.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=None,
        help=f"hidden layer widths (default: {' '.join(map(str, DEFAULTS['hidden']))})",
    )
    p.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default=None,
        help=f"per-step schedule over the run (default: {DEFAULTS['scheduler']})",
    )
    p.add_argument("--seed", type=int, default=None, help=f"default: {DEFAULTS['seed']}")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/digits"),
        help="output folder (default: %(default)s)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="continue from a checkpoint (alone: OUT/<optimizer>.safetensors)",
    )
    p.add_argument(
        "--compare",
        nargs="*",
        default=None,
        metavar="NAME",
        help=f"train several optimizers, one plot: alone {' '.join(CLASSIC)}; "
        "'all' for every one; or a list of names",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many steps (default: at the end of the run)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def compare_names(requested: list[str]) -> list[str]:
    """The optimizers --compare trains: CLASSIC, every available one ('all'), or a list."""
    if not requested:
        return list(CLASSIC)
    unknown = [n for n in requested if n != "all" and n not in OPTIMIZER_CLASSES]
    if unknown:
        raise fail(
            f"--compare: unknown optimizer {unknown[0]!r}; "
            f"choose from all, {', '.join(OPTIMIZERS)}"
        )
    names: list[str] = []
    for name in requested:
        if name != "all":
            names += [name] if name not in names else []
            continue
        for found in OPTIMIZERS:
            if find_optimizer(found)[0] is None:
                note(f"--compare all: skipping {found}: {find_optimizer(found)[1]}")
            elif found not in names:
                names.append(found)
    return names


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
    cls, why = find_optimizer(name)
    if cls is None:
        raise fail(f"optimizer {name!r} is not available: {why}")
    return cls(params, lr=lr, **OPTIMIZER_KWARGS.get(name, {}))


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
    batch_size = cfg["batch_size"] or data["n_train"]  # 0: full batch
    steps_per_epoch = math.ceil(data["n_train"] / batch_size)
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
            lo = batch * batch_size
            hi = min(lo + batch_size, data["n_train"])  # the standard has no clamping
            xb, yb = x_epoch[lo:hi, ...], y_epoch[lo:hi]
            evals: list[tuple[Any, Any]] = []

            def closure(xb: Any = xb, yb: Any = yb, evals: list = evals) -> Any:
                """The batch's loss with fresh gradients; LBFGS calls it several times."""
                opt.zero_grad()
                logits = model(xb)
                loss = na.cross_entropy_loss(logits, yb)
                loss.backward()
                evals.append((loss, logits))
                return loss

            opt.step(closure)
            loss, logits = evals[0]  # the batch before the step, as the others report it
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
    cfg = {
        **DEFAULTS,
        "lr": DEFAULT_LR[optimizer],
        "batch_size": DEFAULT_BATCH_SIZE.get(optimizer, DEFAULTS["batch_size"]),
    }
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

    many = len(results) > 10  # more runs than the default colour cycle has colours
    fig, (ax_loss, ax_acc) = plt.subplots(
        1, 2, figsize=(12, 6) if many else (10, 4), layout="constrained"
    )
    lowest = 0.8
    for i, res in enumerate(results):
        h = res["history"]
        # tab20: the ten dark shades first, then the light ones
        colour = plt.get_cmap("tab20")((2 * i) % 20 + (2 * i) // 20 % 2) if many else f"C{i}"
        epochs = range(len(h["train_loss"]))
        ax_loss.plot(epochs, h["train_loss"], color=colour, label=f"{res['optimizer']} train")
        ax_loss.plot(epochs, h["test_loss"], "--", color=colour, label=f"{res['optimizer']} test")
        ax_acc.plot(range(len(h["test_acc"])), h["test_acc"], color=colour, label=res["optimizer"])
        lowest = min(lowest, h["test_acc"][-1] - 0.02)
    title = "loss (solid: train, dashed: test)" if many else "loss"
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title=title)
    ax_acc.set(
        xlabel="epoch",
        ylabel="test accuracy",
        ylim=(max(0.0, math.floor(lowest * 20) / 20), 1.0),
        title="test accuracy",
    )
    if not many:  # with many runs, the colours are named once, on the accuracy panel
        ax_loss.legend()
    ax_acc.legend(loc="lower right", ncol=2 if many else 1, fontsize="small" if many else None)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the script with ``argv`` (default: the command line); return one result per run."""
    args = parse_args(argv)
    if args.compare is not None and args.optimizer is not None:
        raise fail(
            "--compare trains several optimizers; leave out --optimizer, list them after it"
        )
    if args.batch_size is not None and args.batch_size < 0:
        raise fail(
            "--batch-size must be positive, or 0 for the whole training set, "
            f"got {args.batch_size}"
        )
    names = compare_names(args.compare) if args.compare is not None else [args.optimizer or "adam"]
    for name in names:
        if find_optimizer(name)[0] is None:
            raise fail(f"optimizer {name!r} is not available: {find_optimizer(name)[1]}")
    for name in ("tqdm", "matplotlib"):
        require(name, "train_digits.py")
    xp, args.device = check_backend(args.backend, args.device)
    configs = [run_config(args, name) for name in names]  # check settings before training
    data = load_data(xp, args.device)

    results = []
    for cfg in configs:
        hidden = "-".join(str(h) for h in [64, *cfg["hidden"], 10])
        batch = f"batch {cfg['batch_size']}" if cfg["batch_size"] else "the full batch"
        print(
            f"{cfg['optimizer']}: MLP {hidden}, lr {cfg['lr']:g} with {cfg['scheduler']} "
            f"schedule, {cfg['epochs']} epochs of {batch}, "
            f"{data['n_train']} training images, backend {backend_name(xp)}"
        )
        res = train_one(cfg, args, xp, data)
        res["lr"] = cfg["lr"]
        print(
            f"{res['optimizer']}: test accuracy {res['test_acc']:.2%} "
            f"(test loss {res['test_loss']:.4f}) after {res['steps']}/{res['total_steps']} "
            f"steps; this session trained for {res['seconds']:.1f} s"
        )
        results.append(res)

    plot_path = args.out / ("compare.png" if args.compare is not None else f"{names[0]}.png")
    plot(results, plot_path)
    if args.compare is not None:
        width = max(len(res["optimizer"]) for res in results)
        for res in results:
            print(
                f"{res['optimizer']:>{width}}: test accuracy {res['test_acc']:.2%}  "
                f"(lr {res['lr']:g}, {res['seconds']:.1f} s)"
            )
    for res in results:
        print(f"checkpoint: {res['checkpoint']}  (continue with --resume)")
    print(f"plot:       {plot_path}")
    return results


if __name__ == "__main__":
    main()
