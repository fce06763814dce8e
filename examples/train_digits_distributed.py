"""Train the digits MLP of train_digits.py data-parallel over MPI ranks.

Needs the ``examples`` and ``mpi`` extras and an MPI (the ``mpich`` wheel brings one)::

    pip install -e ".[examples,mpi]" mpich
    mpiexec -n 2 python -m mpi4py examples/train_digits_distributed.py         # averaged gradients
    mpiexec -n 2 python -m mpi4py examples/train_digits_distributed.py --zero  # state sharded
    mpiexec -n 2 python -m mpi4py examples/train_digits_distributed.py --resume
    python examples/train_digits_distributed.py      # without mpiexec: one rank

The data, model, optimizers and their default learning rates are
train_digits.py's (imported from beside this file).  Every rank loads the
same data; in each epoch :func:`neural_arch.distributed.shard_indices` gives
each rank its share of the epoch's shuffle, and each step of a global batch
of ``--batch-size`` samples is made of ``batch-size / world`` samples per
rank, whose gradients are averaged before the step.  Because rank ``r``
takes positions ``r, r + world, ...`` of the epoch's order, the global
batches are those one process takes (the same order as train_digits.py's),
so the run reaches the single-process accuracy.

Rank 0 prints and writes the checkpoint (``--out``/<optimizer>.safetensors,
after every epoch); with ``--zero`` the optimizer's ``state_dict()`` is
collective (every rank gathers the full state), so any world size can
``--resume`` it.  Launch with ``-m mpi4py``: an error on one rank then ends
the job instead of leaving the others waiting.  (Open MPI run as root needs
``--allow-run-as-root``, and ``--oversubscribe`` for more ranks than cores.)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_digits  # sets one BLAS thread per process before NumPy loads

import neural_arch as na
import neural_arch.distributed as dist
from neural_arch.optim import lr_scheduler

SHARDABLE = [n for n in train_digits.OPTIMIZERS if n != "lbfgs"]  # L-BFGS needs every parameter


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizer", choices=train_digits.OPTIMIZERS, default="adam")
    p.add_argument("--zero", action="store_true", help="ZeroRedundancyOptimizer (sharded state)")
    p.add_argument("--epochs", type=int, default=train_digits.DEFAULTS["epochs"])
    p.add_argument("--lr", type=float, default=None, help="default: train_digits.py's")
    p.add_argument(
        "--batch-size",
        type=int,
        default=train_digits.DEFAULTS["batch_size"],
        help="the global batch, split evenly over the ranks (default: %(default)s)",
    )
    p.add_argument("--hidden", type=int, nargs="+", default=train_digits.DEFAULTS["hidden"])
    p.add_argument("--seed", type=int, default=train_digits.DEFAULTS["seed"])
    p.add_argument("--out", type=Path, default=Path("runs/digits_distributed"))
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT/<optimizer>.safetensors"
    )
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    return p.parse_args(argv)


def build(args: argparse.Namespace, comm: Any) -> tuple[na.Module, Any]:
    """The model (the same on every rank) and the distributed optimizer."""
    lr = args.lr if args.lr is not None else train_digits.DEFAULT_LR[args.optimizer]
    na.manual_seed(args.seed)
    model = train_digits.build_model(args.hidden)
    cls, why = train_digits.find_optimizer(args.optimizer)
    if cls is None:
        raise SystemExit(f"train_digits_distributed.py: error: {why}")
    kwargs = train_digits.OPTIMIZER_KWARGS.get(args.optimizer, {})
    if args.zero:
        if args.optimizer not in SHARDABLE:
            raise SystemExit(
                f"train_digits_distributed.py: error: --zero cannot shard {args.optimizer}"
            )
        opt = dist.ZeroRedundancyOptimizer(model.parameters(), cls, comm, lr=lr, **kwargs)
    else:
        opt = dist.DistributedOptimizer(cls(model.parameters(), lr=lr, **kwargs), comm)
    return model, opt


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    comm = dist.init()
    rank, world = comm.rank, comm.world_size
    say = print if rank == 0 else (lambda *a, **k: None)
    if args.batch_size < world or args.batch_size % world:
        raise SystemExit(
            f"train_digits_distributed.py: error: --batch-size {args.batch_size} must be a "
            f"positive multiple of the number of ranks ({world})"
        )
    data = train_digits.load_data(na.backend.resolve_backend("numpy"), None)
    model, opt = build(args, comm)
    local_batch = args.batch_size // world
    n_train = data["n_train"]
    steps_per_epoch = math.ceil(math.ceil(n_train / world) / local_batch)
    total_steps = args.epochs * steps_per_epoch
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    path = args.out / f"{args.optimizer}.safetensors"
    step = 0
    if args.resume:
        state = na.load(path)  # every rank reads it
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        say(f"resumed from {path} at step {step} of {total_steps}")
    kind = "ZeroRedundancyOptimizer" if args.zero else "DistributedOptimizer"
    say(
        f"{args.optimizer} ({kind}) on {world} rank(s): global batch {args.batch_size} = "
        f"{world} x {local_batch}, {args.epochs} epochs, {n_train} training images"
    )
    limit = total_steps if args.max_steps is None else min(total_steps, args.max_steps)
    start = time.perf_counter()
    while step < limit:
        epoch, first = divmod(step, steps_per_epoch)
        mine = dist.shard_indices(n_train, comm, seed=args.seed, epoch=epoch)
        for batch in range(first, steps_per_epoch):
            if step >= limit:
                break
            take = mine[batch * local_batch : (batch + 1) * local_batch]
            xb, yb = data["x_train"][take], data["y_train"][take]
            opt.zero_grad()
            na.cross_entropy_loss(model(xb), yb).backward()
            opt.step()
            sched.step()
            step += 1
        state = {"optimizer": opt.state_dict()}  # collective with --zero: every rank calls it
        if rank == 0:
            args.out.mkdir(parents=True, exist_ok=True)
            state.update(model=model.state_dict(), scheduler=sched.state_dict(), step=step)
            na.save(state, path)
            if step % steps_per_epoch == 0 or step == limit:
                loss, acc = train_digits.evaluate(model, data["x_test"], data["y_test"])
                print(f"epoch {epoch + 1:3d}/{args.epochs}: test loss {loss:.4f}, acc {acc:.2%}")
    seconds = time.perf_counter() - start
    loss, acc = train_digits.evaluate(model, data["x_test"], data["y_test"])
    say(f"test accuracy {acc:.2%} (test loss {loss:.4f}) after {step} steps, {seconds:.1f} s")
    say(f"checkpoint: {path}  (continue with --resume, on any number of ranks)")
    return {"test_acc": acc, "test_loss": loss, "steps": step, "rank": rank, "world": world}


if __name__ == "__main__":
    main()
