"""Time the collectives of neural_arch.distributed and one data-parallel training step.

    python benchmarks/distributed.py                # launches itself at 1 and 2 ranks
    python benchmarks/distributed.py --ranks 1 2 4  # other world sizes
    python benchmarks/distributed.py --quick        # fewer repetitions
    python benchmarks/distributed.py --repeat 3     # each cell: the median of 3 launches

Needs mpi4py and ``mpiexec`` (``pip install -e ".[mpi]" mpich``).  For each
world size the script runs itself under ``mpiexec -n N python -m mpi4py``
and prints two tables (medians over rounds, float32):

* all-reduce: one ``Allreduce(IN_PLACE)`` of a NumPy buffer, then
  :func:`neural_arch.distributed.all_reduce_gradients` over 8 gradients of
  the same total size (the agreement, packing into a bucket, the reduction,
  the average and the copy back), and mpi4py's pickling ``allreduce`` of the
  same array for comparison.  Bandwidth is bytes / time (algorithm bandwidth).
* a training step of an MLP (784-1024-1024-10, global batch 256 split over
  the ranks): forward, backward and ``step()`` of plain Adam (1 rank),
  DistributedOptimizer and ZeroRedundancyOptimizer, with the optimizer
  state each rank keeps.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import neural_arch as na  # noqa: E402
import neural_arch.distributed as dist  # noqa: E402

SIZES = [2**10, 2**14, 2**18, 2**22, 2**24]  # float32 elements: 4 KB .. 64 MB
PICKLED_MAX = 2**22  # the pickling allreduce is timed up to this size
MLP = (784, 1024, 1024, 10)
GLOBAL_BATCH = 256


def _median_time(fn, rounds: int, comm) -> float:
    """Median seconds of ``fn()`` over ``rounds`` (after one warm-up), the slowest rank's."""
    fn()
    times = []
    for _ in range(rounds):
        comm.barrier()
        start = time.perf_counter()
        fn()
        elapsed = np.array([time.perf_counter() - start])
        times.append(float(comm.allreduce_(elapsed, "max")[0]))
    return statistics.median(times)


def bench_allreduce(comm, quick: bool) -> list[dict]:
    rows = []
    for size in SIZES:
        rounds = max(3, min(50, 2**24 // size)) // (3 if quick else 1) + 1
        buf = np.ones(size, dtype=np.float32)
        params = [na.Parameter(np.zeros(size // 8, dtype=np.float32)) for _ in range(8)]
        for p in params:
            p.grad = np.ones(size // 8, dtype=np.float32)
        row = {"elements": size, "bytes": 4 * size}
        row["Allreduce"] = _median_time(lambda buf=buf: comm.allreduce_(buf), rounds, comm)
        row["all_reduce_gradients"] = _median_time(
            lambda params=params: dist.all_reduce_gradients(params, comm), rounds, comm
        )
        if size <= PICKLED_MAX:
            row["pickled allreduce"] = _median_time(
                lambda buf=buf: comm.mpi.allreduce(buf), max(3, rounds // 2), comm
            )
        rows.append(row)
    return rows


def _mlp() -> na.Sequential:
    na.manual_seed(0)
    layers: list[na.Module] = []
    for a, b in itertools.pairwise(MLP[:-1]):
        layers += [na.Linear(a, b), na.ReLU()]
    return na.Sequential(*layers, na.Linear(MLP[-2], MLP[-1]))


def _state_bytes(opt) -> int:
    if opt is None:
        return 0
    return sum(
        int(v.nbytes) for p in opt.state for v in opt.state[p].values() if hasattr(v, "nbytes")
    )


def bench_step(comm, quick: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    local = GLOBAL_BATCH // comm.world_size
    x = rng.standard_normal((GLOBAL_BATCH, MLP[0])).astype(np.float32)
    y = rng.integers(0, MLP[-1], GLOBAL_BATCH)
    xb = x[comm.rank * local : (comm.rank + 1) * local]
    yb = y[comm.rank * local : (comm.rank + 1) * local]
    rows = []
    kinds = ["Adam", "DistributedOptimizer(Adam)", "ZeroRedundancyOptimizer(Adam)"]
    for kind in kinds if comm.world_size == 1 else kinds[1:]:
        model = _mlp()
        if kind == "Adam":
            opt = na.Adam(model.parameters())
            local_state = opt
        elif kind.startswith("Distributed"):
            opt = dist.DistributedOptimizer(na.Adam(model.parameters()), comm)
            local_state = opt.optimizer
        else:
            opt = dist.ZeroRedundancyOptimizer(model.parameters(), na.Adam, comm)
            local_state = opt.optimizer

        def step(model=model, opt=opt) -> None:
            opt.zero_grad()
            na.cross_entropy_loss(model(xb), yb).backward()
            opt.step()

        seconds = _median_time(step, 5 if quick else 15, comm)
        state = np.array([_state_bytes(local_state)], dtype=np.float64)
        largest = float(comm.allreduce_(state.copy(), "max")[0])
        rows.append({"optimizer": kind, "seconds": seconds, "state_bytes": largest})
    return rows


def worker(out: Path, quick: bool) -> None:
    comm = dist.init()
    result = {"world_size": comm.world_size}
    if comm.world_size > 1:
        result["allreduce"] = bench_allreduce(comm, quick)
    result["step"] = bench_step(comm, quick)
    if comm.rank == 0:
        from mpi4py import MPI

        result["mpi"] = MPI.Get_library_version().splitlines()[0].strip()
        out.write_text(json.dumps(result))


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def _fmt_bw(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.2f} GB/s"


def report(results: list[dict], load: float) -> None:
    mpi = next((r["mpi"] for r in results if "mpi" in r), "?")
    today = datetime.date.today().isoformat()
    print(
        f"{today}; {platform.platform()}, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}; Python {platform.python_version()}, "
        f"NumPy {np.__version__}; {mpi}; load average {load:.1f} before the run\n"
    )
    for res in results:
        if "allreduce" not in res:
            continue
        print(f"All-reduce of float32 gradients, {res['world_size']} ranks (median per call):\n")
        print("| size | Allreduce(IN_PLACE) | all_reduce_gradients (8 arrays) | pickled |")
        print("|---|---|---|---|")
        for row in res["allreduce"]:
            cells = []
            for key in ("Allreduce", "all_reduce_gradients", "pickled allreduce"):
                t = row.get(key)
                cells.append("—" if t is None else f"{_fmt_time(t)} ({_fmt_bw(row['bytes'], t)})")
            size = row["bytes"]
            label = f"{size // 2**20} MB" if size >= 2**20 else f"{size // 2**10} KB"
            print(f"| {label} | " + " | ".join(cells) + " |")
        print()
    layers = "-".join(map(str, MLP))
    print(f"One training step, MLP {layers} float32, global batch {GLOBAL_BATCH} (median):\n")
    print("| ranks | optimizer | step | samples/s | Adam state per rank |")
    print("|---|---|---|---|---|")
    for res in results:
        for row in res["step"]:
            rate = GLOBAL_BATCH / row["seconds"]
            print(
                f"| {res['world_size']} | {row['optimizer']} | {_fmt_time(row['seconds'])} | "
                f"{rate:,.0f} | {row['state_bytes'] / 2**20:.1f} MB |"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeat", type=int, default=1, help="launches per world size (median)")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        worker(args.worker, args.quick)
        return
    mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
    if not Path(mpiexec).exists():
        raise SystemExit('distributed.py: needs mpiexec (pip install -e ".[mpi]" mpich)')
    runs: dict[int, list[dict]] = {n: [] for n in args.ranks}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for n in args.ranks:
                out = Path(tmp) / f"{n}.json"
                command = [mpiexec, "-n", str(n), sys.executable, "-m", "mpi4py", __file__]
                command += ["--worker", str(out)] + (["--quick"] if args.quick else [])
                subprocess.run(command, check=True, timeout=1800)
                runs[n].append(json.loads(out.read_text()))
    report([_median_of(runs[n]) for n in args.ranks], load)


def _median_of(results: list[dict]) -> dict:
    """One result whose every time is the median over ``results`` (launches)."""
    merged = json.loads(json.dumps(results[0]))
    for key, field in (("allreduce", None), ("step", "seconds")):
        for i, row in enumerate(merged.get(key, [])):
            for name in [field] if field else [k for k in row if k not in ("elements", "bytes")]:
                row[name] = statistics.median(r[key][i][name] for r in results)
    return merged


if __name__ == "__main__":
    main()
