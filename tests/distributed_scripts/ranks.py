"""The checks of tests/test_distributed.py that need several MPI ranks; one launch runs them all.

    mpiexec -n 2 python -m mpi4py tests/distributed_scripts/ranks.py OUTDIR [CHECK ...]

Each rank writes ``OUTDIR/rank<r>.npz`` (arrays) and ``OUTDIR/rank<r>.json``
(numbers, messages); the test compares them with each other and with one
process.  Only what the ranks themselves must do happens here: every
comparison is made by the test.  ``OUTDIR/single.safetensors`` (written by
the test before the launch) is the one-process checkpoint the ranks resume.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from mpi_common import (
    OPTIMIZERS,
    STEPS,
    available_backends,
    backward,
    build_model,
    flat,
    flat_state,
    local_step,
    part_slice,
)

import neural_arch as na
import neural_arch.distributed as dist
from neural_arch.backend import to_numpy
from neural_arch.optim import lr_scheduler

comm = dist.init()
RANK, WORLD = comm.rank, comm.world_size
arrays: dict[str, np.ndarray] = {}
values: dict[str, object] = {"world_size": WORLD}


def _bytes(params) -> np.ndarray:
    return np.concatenate([to_numpy(p.data).view(np.uint8).ravel() for p in params])


def check_broadcast() -> None:
    model = build_model(100 + RANK)  # every rank starts different
    extra = [na.Parameter(np.arange(7, dtype=np.float32) * (RANK + 1))]
    params = model.parameters() + extra
    arrays["bcast/before"] = _bytes(params)
    dist.broadcast_parameters(params, bucket_cap_mb=0.001)  # many small buckets
    arrays["bcast/after"] = _bytes(params)
    if RANK == WORLD - 1:
        for p in params:
            p.data[...] = -p.data
    arrays["bcast/before_last"] = _bytes(params)
    dist.broadcast_parameters(params, root=WORLD - 1)
    arrays["bcast/after_last"] = _bytes(params)


def check_training() -> None:
    """DDP, ZeRO and one process on the full batch, per backend and optimizer."""
    for backend in available_backends():
        names = list(OPTIMIZERS) if backend == "numpy" else ["Adam"]
        for name in names:
            cls, kw = OPTIMIZERS[name]
            tag = f"{backend}/{name}"
            single, ddp_model, zero_model = (build_model(0, backend) for _ in range(3))
            opt = cls(single.parameters(), **kw)
            ddp = dist.DistributedOptimizer(cls(ddp_model.parameters(), **kw))
            zero = dist.ZeroRedundancyOptimizer(zero_model.parameters(), cls, **kw)
            for step in range(STEPS):
                backward(single, part_slice(step))
                opt.step()
                local_step(ddp_model, ddp, step, RANK, WORLD)
                local_step(zero_model, zero, step, RANK, WORLD)
            arrays[f"{tag}/single"] = flat(single)
            arrays[f"{tag}/ddp"] = flat(ddp_model)
            arrays[f"{tag}/zero"] = flat(zero_model)
            for which, sd in (("ddp", ddp.state_dict()), ("zero", zero.state_dict())):
                arrays[f"{tag}/{which}_state"], values[f"{tag}/{which}_layout"] = flat_state(sd)
            local = zero.optimizer.state if zero.optimizer is not None else {}
            values[f"{tag}/zero_state_numel"] = sum(
                int(np.prod(v.shape))
                for p in local
                for v in local[p].values()
                if hasattr(v, "shape")
            )
            values[f"{tag}/full_state_numel"] = sum(
                int(np.prod(v.shape))
                for p in opt.state
                for v in opt.state[p].values()
                if hasattr(v, "shape")
            )
            values[f"{tag}/zero_sliced"] = zero._sliced


def check_groups_and_scheduler() -> None:
    """Two parameter groups and a StepLR on the wrapper: hyperparameters reach the shards."""
    models = [build_model(0) for _ in range(3)]

    def groups(model):
        ps = model.parameters()
        return [{"params": ps[:2], "lr": 0.03}, {"params": ps[2:]}]

    opts = [
        na.Adam(groups(models[0]), lr=0.01),
        dist.DistributedOptimizer(na.Adam(groups(models[1]), lr=0.01)),
        dist.ZeroRedundancyOptimizer(groups(models[2]), na.Adam, lr=0.01),
    ]
    scheds = [lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in opts]
    for step in range(STEPS + 1):
        backward(models[0], part_slice(step))
        opts[0].step()
        for model, o in zip(models[1:], opts[1:], strict=True):
            local_step(model, o, step, RANK, WORLD)
        for s in scheds:
            s.step()
    for which, model in zip(("single", "ddp", "zero"), models, strict=True):
        arrays[f"groups/{which}"] = flat(model)
    values["groups/lrs"] = [[g["lr"] for g in o.param_groups] for o in opts]


def check_checkpoint_out(outdir: Path) -> None:
    """A 2-rank ZeRO checkpoint (rank 0 saves the full state dict), then more steps."""
    model = build_model(0)
    zero = dist.ZeroRedundancyOptimizer(model.parameters(), na.Adam, lr=0.01)
    for step in range(STEPS):
        local_step(model, zero, step, RANK, WORLD)
    state = zero.state_dict()
    arrays["ckpt_out/state"], values["ckpt_out/layout"] = flat_state(state)
    if RANK == 0:
        na.save({"model": model.state_dict(), "optimizer": state}, outdir / "zero.safetensors")
    comm.barrier()
    for step in range(STEPS, 2 * STEPS):
        local_step(model, zero, step, RANK, WORLD)
    arrays["ckpt_out/final"] = flat(model)


def check_checkpoint_in(outdir: Path) -> None:
    """Resume the one-process checkpoint the test wrote, sharded over the ranks."""
    checkpoint = na.load(outdir / "single.safetensors")
    model = build_model(55)  # other values: the checkpoint must replace them
    zero = dist.ZeroRedundancyOptimizer(model.parameters(), na.Adam, lr=0.5)
    model.load_state_dict(checkpoint["model"])
    zero.load_state_dict(checkpoint["optimizer"])
    values["ckpt_in/lr"] = zero.lr
    values["ckpt_in/step_count"] = zero.step_count
    for step in range(STEPS, 2 * STEPS):
        local_step(model, zero, step, RANK, WORLD)
    arrays["ckpt_in/final"] = flat(model)
    values["ckpt_in/step_count_after"] = zero.step_count


def _poisoned_step(model, opt, step: int) -> None:
    backward(model, part_slice(step, RANK, WORLD))
    if RANK == WORLD - 1:  # the first parameter's first elements: owned by rank 0
        model.parameters()[0].grad[0, 0] = np.nan
    opt.step()


def check_nonfinite() -> None:
    """A NaN in one rank's gradient: every rank raises, or every rank skips."""
    for kind in ("ddp", "zero"):
        for mode in ("raise", "skip"):
            tag = f"nonfinite/{kind}/{mode}"
            model = build_model(0)
            if kind == "ddp":
                opt = dist.DistributedOptimizer(na.Adam(model.parameters(), nonfinite=mode))
            else:
                opt = dist.ZeroRedundancyOptimizer(model.parameters(), na.Adam, nonfinite=mode)
            local_step(model, opt, 0, RANK, WORLD)
            before, state_before = flat(model), flat_state(opt.state_dict())[0]
            try:
                _poisoned_step(model, opt, 1)
                values[f"{tag}/raised"] = None
            except FloatingPointError as exc:
                values[f"{tag}/raised"] = str(exc)
            arrays[f"{tag}/unchanged"] = np.array(
                [
                    flat(model).tobytes() == before.tobytes(),
                    flat_state(opt.state_dict())[0].tobytes() == state_before.tobytes(),
                ]
            )
            values[f"{tag}/counts"] = [opt.step_count, opt.skipped_steps]
            local_step(model, opt, 2, RANK, WORLD)  # training goes on, on every rank
            arrays[f"{tag}/after"] = flat(model)


def _error(fn) -> str | None:
    try:
        fn()
    except (ValueError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_mismatches() -> None:
    """Gradients on some ranks only; a bad gradient or layout on one rank: no hang."""
    a = na.Parameter(np.full((2, 3), 1.0 + RANK))
    b = na.Parameter(np.zeros(4))
    a.grad = np.full((2, 3), 2.0 * (RANK + 1))
    b.grad = np.arange(4.0) if RANK == 0 else None
    dist.all_reduce_gradients([a, b])
    arrays["mismatch/grads"] = np.concatenate([a.grad.ravel(), b.grad.ravel()])
    c = na.Parameter(np.zeros(3))
    c.grad = np.zeros(5 if RANK == WORLD - 1 else 3)
    values["mismatch/bad_shape"] = _error(lambda: dist.all_reduce_gradients([a, c]))
    values["mismatch/layout"] = _error(
        lambda: dist.all_reduce_gradients([a, b] if RANK == 0 else [a])
    )
    values["mismatch/bcast_layout"] = _error(
        lambda: dist.broadcast_parameters([a] if RANK == 0 else [b])
    )
    a.grad = np.ones((2, 3))
    dist.all_reduce_gradients([a], average=False)  # the ranks are still in step
    arrays["mismatch/sum"] = a.grad.ravel()


def check_clip() -> None:
    """clip_grad_norm_ by the norm of the whole gradient, with ZeRO, DDP and one process."""
    models = [build_model(0) for _ in range(3)]
    opts = [
        na.Adam(models[0].parameters(), lr=0.01),
        dist.DistributedOptimizer(na.Adam(models[1].parameters(), lr=0.01)),
        dist.ZeroRedundancyOptimizer(models[2].parameters(), na.Adam, lr=0.01),
    ]
    norms = []
    for step in range(STEPS):
        backward(models[0], part_slice(step))
        row = [float(na.clip_grad_norm_(models[0].parameters(), 0.05))]
        opts[0].step()
        for model, o in zip(models[1:], opts[1:], strict=True):
            backward(model, part_slice(step, RANK, WORLD))
            row.append(float(dist.clip_grad_norm_(o, 0.05)))
            o.step()
        norms.append(row)
    arrays["clip/norms"] = np.array(norms)
    for which, model in zip(("single", "ddp", "zero"), models, strict=True):
        arrays[f"clip/{which}"] = flat(model)


def check_lbfgs_and_closure() -> None:
    """DistributedOptimizer(LBFGS).step(closure): the loss averaged over the ranks."""
    single, model = build_model(0), build_model(0)
    opt = na.LBFGS(single.parameters(), line_search_fn="strong_wolfe", max_iter=5)
    ddp = dist.DistributedOptimizer(
        na.LBFGS(model.parameters(), line_search_fn="strong_wolfe", max_iter=5)
    )
    losses = []
    for step in range(2):
        full = opt.step(lambda step=step: backward(single, part_slice(step)))
        mine = ddp.step(lambda step=step: backward(model, part_slice(step, RANK, WORLD)))
        losses.append([float(full.item()), float(mine.item())])
    arrays["lbfgs/losses"] = np.array(losses)
    arrays["lbfgs/single"] = flat(single)
    arrays["lbfgs/ddp"] = flat(model)
    with_closure = build_model(0)
    adam = dist.DistributedOptimizer(na.Adam(with_closure.parameters()))
    loss = adam.step(lambda: backward(with_closure, part_slice(0, RANK, WORLD)))
    values["closure/loss"] = [type(loss).__name__, float(loss.item())]
    values["closure/full_loss"] = float(backward(build_model(0), part_slice(0)).item())


def check_adafactor() -> None:
    """An optimizer that is not elementwise is sharded by whole parameters, still exact."""
    ddp_model, zero_model = build_model(0), build_model(0)
    ddp = dist.DistributedOptimizer(na.Adafactor(ddp_model.parameters()))
    zero = dist.ZeroRedundancyOptimizer(zero_model.parameters(), na.Adafactor)
    for step in range(STEPS):
        local_step(ddp_model, ddp, step, RANK, WORLD)
        local_step(zero_model, zero, step, RANK, WORLD)
    arrays["adafactor/ddp"], arrays["adafactor/zero"] = flat(ddp_model), flat(zero_model)
    arrays["adafactor/ddp_state"], values["adafactor/ddp_layout"] = flat_state(ddp.state_dict())
    arrays["adafactor/zero_state"], values["adafactor/zero_layout"] = flat_state(zero.state_dict())
    values["adafactor/sliced"] = zero._sliced


def check_nccl_id() -> None:
    """The NCCL unique id drawn on rank 0 reaches every rank through MPI (a stand-in NCCL)."""
    from neural_arch.distributed._device import nccl_communicator

    seen = {}
    rng = np.random.default_rng(1000 + RANK)  # a different id on every rank: only 0's counts

    def get_unique_id():
        return tuple(int(v) for v in rng.integers(-128, 128, 128))

    def communicator(ndev, uid, rank):
        seen.update(ndev=ndev, uid=list(uid), rank=rank)
        return SimpleNamespace()

    fake = SimpleNamespace(get_unique_id=get_unique_id, NcclCommunicator=communicator)
    drawn = get_unique_id() if RANK == 0 else None
    rng = np.random.default_rng(1000 + RANK)
    nccl_communicator(comm, fake)
    values["nccl/seen"] = seen
    values["nccl/drawn"] = list(drawn) if drawn is not None else None


def check_sampler() -> None:
    for drop_last in (False, True):
        idx = dist.shard_indices(23, shuffle=True, seed=3, epoch=2, drop_last=drop_last)
        arrays[f"sampler/{drop_last}"] = idx


CHECKS = {
    "broadcast": check_broadcast,
    "training": check_training,
    "groups": check_groups_and_scheduler,
    "checkpoint_out": check_checkpoint_out,
    "checkpoint_in": check_checkpoint_in,
    "nonfinite": check_nonfinite,
    "mismatches": check_mismatches,
    "clip": check_clip,
    "lbfgs": check_lbfgs_and_closure,
    "adafactor": check_adafactor,
    "nccl_id": check_nccl_id,
    "sampler": check_sampler,
}


def main() -> None:
    outdir = Path(sys.argv[1])
    names = sys.argv[2:] or list(CHECKS)
    for name in names:
        fn = CHECKS[name]
        try:
            fn(outdir) if fn.__code__.co_argcount else fn()
        except Exception:
            print(f"rank {RANK}: check {name} failed", file=sys.stderr)
            traceback.print_exc()
            raise
    np.savez(outdir / f"rank{RANK}.npz", **arrays)
    (outdir / f"rank{RANK}.json").write_text(json.dumps(values, default=repr))


if __name__ == "__main__":
    main()
