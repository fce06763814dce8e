"""Time one optimizer step against torch.optim and the memory-bandwidth bound.

Every cell times ``opt.step()`` through the public API, float32, after a
warm-up, over several rounds, and reports the median and the min–max range.
In the same run it times ``torch.optim`` (for-loop, foreach and fused, when
torch is installed and has them) on the same workload and a measured bandwidth
bound: the bytes a step must move, 4 * (arrays read + arrays written) per float32
element (Adam reads p, g, m, v and writes p, m, v: 28 bytes; SGD with momentum
20; each optimizer's own count is in ``OPTIMIZERS``), divided by the rate of a
large in-place array operation.  ``peak MB`` is the memory a step allocates
beyond the parameters, gradients and state (tracemalloc, which sees NumPy's
allocations).  ``x fused`` is the median over torch's fused step; for an
optimizer torch has no fused kernel for, the column is ``x torch``: over its
foreach step (Lion, not in torch.optim, has no torch rows).

    python benchmarks/optimizer_step.py                  # the full table (a few minutes)
    python benchmarks/optimizer_step.py --quick          # fewer rounds, smaller workloads
    python benchmarks/optimizer_step.py --optimizers all # every elementwise optimizer
    python benchmarks/optimizer_step.py --optimizers all --workloads "1 x 1e7" "MLP 784-512-512-10"
    python benchmarks/optimizer_step.py --optimizers RMSprop Adagrad Lion
    python benchmarks/optimizer_step.py --e2e            # also one MLP training step vs PyTorch
    python benchmarks/optimizer_step.py --backend cupy   # CuPy arrays (needs a CUDA device)

Rows: ``ours`` is the default path (the fused kernels when numba is
installed), ``ours, nonfinite=ignore`` the same without the gradient check,
``ours, generic`` the reference array-API rule with the fast path turned off.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

# One BLAS thread for NumPy, so that the end-to-end line's "1 thread" holds for both
# libraries (an optimizer step uses no BLAS); set the variables to override.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import neural_arch as na  # noqa: E402
from neural_arch.optim import _fastpath  # noqa: E402

try:
    import torch
except ImportError:  # the torch rows are left out
    torch = None

WORKLOADS: dict[str, list[tuple[int, ...]]] = {
    "1 x 1e7": [(10_000_000,)],
    "1 x 1e6": [(1_000_000,)],
    "200 x 5000": [(5000,)] * 200,
    "10000 x 100": [(100,)] * 10_000,  # embedding tables, many small layers: per-call cost
    "MLP 784-512-512-10": [(512, 784), (512,), (512, 512), (512,), (10, 512), (10,)],
}
# name: (module of neural_arch.optim, class, keyword arguments, the torch.optim class and
# whether torch has a fused kernel for it (None: not in torch.optim), float32 arrays a
# step reads, arrays it writes).  The bound's traffic is 4 * (read + written) bytes per
# element.  A class is taken from ``na`` when exported there, else from its module;
# one that this neural_arch lacks is left out with a note.
OPTIMIZERS: dict[str, tuple[str, str, dict, tuple[str, bool] | None, int, int]] = {
    "Adam": ("adam", "Adam", {}, ("Adam", True), 4, 3),  # p g m v -> p m v
    "AdamW": ("adam", "AdamW", {}, ("AdamW", True), 4, 3),  # p g m v -> p m v
    "SGD(momentum)": ("sgd", "SGD", {"momentum": 0.9}, ("SGD", True), 3, 2),  # p g b -> p b
    "RMSprop": ("rmsprop", "RMSprop", {}, ("RMSprop", False), 3, 2),  # p g v -> p v
    "Adagrad": ("adagrad", "Adagrad", {}, ("Adagrad", True), 3, 2),  # p g sum -> p sum
    "Adadelta": ("adadelta", "Adadelta", {}, ("Adadelta", False), 4, 3),  # p g v u -> p v u
    "Adamax": ("adamax", "Adamax", {}, ("Adamax", False), 4, 3),  # p g m u -> p m u
    "NAdam": ("nadam", "NAdam", {}, ("NAdam", False), 4, 3),  # p g m v -> p m v
    "RAdam": ("radam", "RAdam", {}, ("RAdam", False), 4, 3),  # p g m v -> p m v
    # before step t0 (1e6 by default) the average ax is a copy of p: written, not read
    "ASGD": ("asgd", "ASGD", {}, ("ASGD", False), 2, 2),  # p g -> p ax
    "Rprop": ("rprop", "Rprop", {}, ("Rprop", False), 4, 3),  # p g prev size -> p prev size
    "Lion": ("lion", "Lion", {}, None, 3, 2),  # p g m -> p m
}
DEFAULT_OPTIMIZERS = ["Adam", "AdamW", "SGD(momentum)"]


def find_class(name: str) -> Any:
    """The neural_arch class of OPTIMIZERS[name], or None when this neural_arch lacks it."""
    module, cls_name = OPTIMIZERS[name][:2]
    cls = getattr(na, cls_name, None)
    if cls is None:
        qualified = f"neural_arch.optim.{module}"
        try:
            cls = getattr(importlib.import_module(qualified), cls_name, None)
        except ModuleNotFoundError as exc:
            if exc.name != qualified:  # the module exists but is broken: say so
                raise
    return cls


def optimizer_names(requested: list[str]) -> list[str]:
    """OPTIMIZERS keys for --optimizers: names in any case, 'SGD' for SGD(momentum), 'all'."""
    lookup = {k.lower(): k for k in OPTIMIZERS} | {"sgd": "SGD(momentum)"}
    names: list[str] = []
    for req in requested:
        if req.lower() == "all":
            found = list(OPTIMIZERS)
        elif req.lower() in lookup:
            found = [lookup[req.lower()]]
        else:
            raise SystemExit(
                f"optimizer_step.py: error: --optimizers: unknown {req!r}; choose from all, "
                + ", ".join(OPTIMIZERS)
            )
        names += [n for n in found if n not in names]
    return names


class Param:
    """The optimizer's duck type: ``.data`` and ``.grad`` arrays."""

    def __init__(self, data: Any, grad: Any) -> None:
        self.data, self.grad = data, grad


def timeit(step: Callable[[], Any], sync: Callable[[], Any], warmup: int, rounds: int) -> list:
    """Milliseconds of ``rounds`` calls of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def peak_alloc_mb(step: Callable[[], Any]) -> float:
    """Peak memory (MB) allocated during one ``step`` beyond what existed before it."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (peak - base) / 2**20


def bandwidth_gbs(xp: Any, sync: Callable[[], Any], rounds: int) -> float:
    """Rate (GB/s) of a large in-place ``a += b`` (reads a and b, writes a: 12 bytes/element)."""
    n = 1 << 25  # 128 MiB per float32 array: far beyond the last-level cache
    a, b = xp.ones(n, dtype=xp.float32), xp.ones(n, dtype=xp.float32)

    def op():
        a.__iadd__(b)  # in place on NumPy and CuPy

    times = timeit(op, sync, 3, rounds)
    return 12 * n / (statistics.median(times) * 1e-3) / 1e9


def make_params(xp: Any, shapes: list, seed: int = 0) -> list[Param]:
    rng = np.random.default_rng(seed)
    return [
        Param(
            xp.asarray(rng.standard_normal(s, dtype=np.float32)),
            xp.asarray(rng.standard_normal(s, dtype=np.float32)),
        )
        for s in shapes
    ]


def torch_params(shapes: list, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(s, dtype=np.float32)))
        p.grad = torch.from_numpy(rng.standard_normal(s, dtype=np.float32))
        params.append(p)
    return params


def row(label: str, times: list, fused: float | None, bound: float, peak: Any = "") -> list:
    med = statistics.median(times)
    return [
        label,
        f"{med:.3f}",
        f"{min(times):.3f}–{max(times):.3f}",
        "" if fused is None else f"{med / fused:.2f}",
        f"{med / bound:.2f}",
        "" if peak == "" else f"{peak:.1f}",
    ]


def bench_workload(args, xp, sync, name, shapes, threads, gbs) -> list[list]:
    size = sum(int(np.prod(s)) for s in shapes)
    rounds = args.rounds if size < 5_000_000 else max(5, args.rounds // 3)
    rows = []
    for opt_name in args.optimizers:
        kw, torch_spec, reads, writes = OPTIMIZERS[opt_name][2:]
        cls = find_class(opt_name)
        nbytes = 4 * (reads + writes)
        bound = nbytes * size / (gbs * 1e9) * 1e3
        results: list[tuple[str, list, Any]] = []
        if torch is not None and args.backend == "numpy" and torch_spec is not None:
            torch.set_num_threads(threads)
            tcls, has_fused = getattr(torch.optim, torch_spec[0]), torch_spec[1]
            flavours = [
                ("torch for-loop", {"foreach": False}),
                ("torch foreach", {"foreach": True}),
            ]
            if has_fused:
                flavours.append(("torch fused", {"fused": True}))
            for label, flags in flavours:
                tp = torch_params(shapes)
                topt = tcls(tp, lr=1e-3, **kw, **flags)
                results.append((label, timeit(topt.step, lambda: None, args.warmup, rounds), ""))
                del tp, topt
        # the reference of the "x fused" column: torch's last flavour (fused, else foreach)
        fused = statistics.median(results[-1][1]) if results else None
        variants = [
            ("ours", True, "raise"),
            ("ours, nonfinite=ignore", True, "ignore"),
            ("ours, generic", False, "raise"),
        ]
        for label, fast, nonfinite in variants:
            _fastpath.set_enabled(fast)
            _fastpath.set_num_threads(threads)
            params = make_params(xp, shapes)
            opt = cls(params, lr=1e-3, **kw, nonfinite=nonfinite)
            times = timeit(opt.step, sync, args.warmup, rounds)
            peak = peak_alloc_mb(opt.step) if args.backend == "numpy" else ""
            results.append((label, times, peak))
            del params, opt
            gc.collect()
        _fastpath.set_enabled(True)
        _fastpath.set_num_threads(1)
        for label, times, peak in results:
            rows.append(
                [f"{opt_name}, {name}, {threads} thr", *row(label, times, fused, bound, peak)]
            )
        rows.append(
            [
                f"{opt_name}, {name}, {threads} thr",
                f"bandwidth bound ({nbytes} B/elem)",
                f"{bound:.3f}",
            ]
        )
    return rows


def print_table(header: list[str], rows: list[list]) -> None:
    """A plain-text table; the first column is printed once per block of rows."""
    rows = [r + [""] * (len(header) - len(r)) for r in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    last = None
    for r in [header, *rows]:
        if r is not header and r[0] != last:
            print()
        first = "" if r[0] == last else r[0]
        cells = [first.ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [str(c).rjust(w) for c, w in zip(r[2:], widths[2:], strict=True)]
        print("  ".join(cells).rstrip())
        last = r[0]


# ---------------------------------------------------------------- end to end


def bench_e2e(args) -> None:
    """One training step (forward, loss, backward, step) of the MLP, batch 128, vs PyTorch."""
    import cProfile
    import pstats

    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 784), dtype=np.float32)
    y = rng.integers(0, 10, 128)
    print("\nEnd to end: MLP 784-512-512-10, batch 128, float32, Adam, 1 thread")

    na.manual_seed(0)
    model = na.Sequential(
        na.Linear(784, 512), na.ReLU(), na.Linear(512, 512), na.ReLU(), na.Linear(512, 10)
    )
    opt = na.Adam(model.parameters(), lr=1e-3)
    xt, yt = na.Tensor(x), na.Tensor(y)

    def ours():
        opt.zero_grad()
        loss = na.cross_entropy_loss(model(xt), yt)
        loss.backward()
        opt.step()

    t_ours = timeit(ours, lambda: None, args.warmup, args.rounds)
    results = [("neural_arch", t_ours)]
    if torch is not None:
        torch.set_num_threads(1)
        tm = torch.nn.Sequential(
            torch.nn.Linear(784, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 10),
        )
        for fused in (False, True):
            topt = torch.optim.Adam(tm.parameters(), lr=1e-3, fused=fused)
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)

            def theirs(topt=topt, tx=tx, ty=ty):
                topt.zero_grad()
                loss = torch.nn.functional.cross_entropy(tm(tx), ty)
                loss.backward()
                topt.step()

            label = "PyTorch eager, Adam fused" if fused else "PyTorch eager, Adam foreach"
            results.append((label, timeit(theirs, lambda: None, args.warmup, args.rounds)))
    ref = statistics.median(results[1][1]) if len(results) > 1 else None
    for label, times in results:
        med = statistics.median(times)
        ratio = "" if ref is None else f"  ({med / ref:.2f}x PyTorch foreach)"
        print(f"  {label:30s} {med:8.3f} ms  [{min(times):.3f}–{max(times):.3f}]{ratio}")

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.rounds):
        ours()
    prof.disable()
    print(f"\n  where neural_arch's step goes ({args.rounds} steps, cProfile, tottime):")
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=DEFAULT_OPTIMIZERS,
        metavar="NAME",
        help=f"'all' or names among {', '.join(OPTIMIZERS)} "
        f"(default: {' '.join(DEFAULT_OPTIMIZERS)})",
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="8 rounds, no 1e7 workload")
    parser.add_argument("--e2e", action="store_true", help="also time one MLP training step")
    parser.add_argument("--e2e-only", action="store_true", help="only the end-to-end line")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 8
        args.workloads = [w for w in args.workloads if w != "1 x 1e7"]
    args.optimizers = optimizer_names(args.optimizers)
    for name in list(args.optimizers):
        if find_class(name) is None:
            module, cls_name = OPTIMIZERS[name][:2]
            print(f"# note: {name} left out: no {cls_name} in neural_arch.optim.{module}")
            args.optimizers.remove(name)

    if args.backend == "cupy":
        import cupy as xp

        def sync():
            xp.cuda.Device().synchronize()

        device = xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    else:
        xp = np

        def sync():
            pass

        device = platform.processor() or platform.machine()
    kernels = "numba " + __import__("numba").__version__ if _fastpath._numba() else "none"
    print(
        f"# {platform.platform()}, {os.cpu_count()} CPUs, {device}; Python "
        f"{platform.python_version()}, NumPy {np.__version__}, fast path: {kernels}, "
        f"torch {torch.__version__ if torch is not None else 'absent'}"
    )
    if not args.e2e_only:
        gbs = bandwidth_gbs(xp, sync, 10)
        print(f"# bandwidth of a large in-place a += b ({args.backend}, 1 thread): {gbs:.1f} GB/s")
        all_fused = all(
            OPTIMIZERS[n][3] is not None and OPTIMIZERS[n][3][1] for n in args.optimizers
        )
        if not all_fused:
            print(
                "# x torch: the median over torch's fused step where torch has one (Adam, "
                "AdamW, SGD, Adagrad), else over its foreach step; Lion: no torch rows"
            )
        header = [
            "optimizer, workload",
            "",
            "median ms",
            "min–max",
            "x fused" if all_fused else "x torch",
            "x bound",
            "peak MB",
        ]
        rows = []
        for name in args.workloads:
            for threads in args.threads:
                rows += bench_workload(args, xp, sync, name, WORKLOADS[name], threads, gbs)
        print_table(header, rows)
    if args.e2e or args.e2e_only:
        bench_e2e(args)


if __name__ == "__main__":
    main()
