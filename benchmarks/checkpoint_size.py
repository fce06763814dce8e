"""Size and time of a checkpoint of a 10M-parameter model with Adam state.

Builds ``Linear(1000, 5000) -> Linear(5000, 1000)`` (10,006,000 parameters),
takes one Adam step so that ``exp_avg`` and ``exp_avg_sq`` exist, then times
``na.save`` of ``{"model", "optimizer", "epoch"}`` and ``na.load`` followed by
``load_state_dict`` into fresh objects.  Run::

    python benchmarks/checkpoint_size.py [--backend numpy] [--dtype float32] [--dir /tmp]

Times are the best of ``--repeat`` runs; ``save`` includes the fsync, so the
disk under ``--dir`` matters.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import neural_arch as na
from neural_arch import backend


def build(backend_name: str, dtype: str):
    model = na.Sequential(na.Linear(1000, 5000), na.Linear(5000, 1000)).to(
        backend_name, dtype=dtype
    )
    opt = na.Adam(model.parameters(), lr=1e-3)
    return model, opt


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    na.manual_seed(0)
    model, opt = build(args.backend, args.dtype)
    for p in model.parameters():
        xp = backend.namespace(p.data)
        p.grad = xp.ones_like(p.data)
    opt.step()
    n_params = sum(math.prod(p.data.shape) for p in model.parameters())

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "ckpt.safetensors")

        def save():
            na.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}, path)

        fresh_model, fresh_opt = build(args.backend, args.dtype)

        def resume():
            ckpt = na.load(path)
            fresh_model.load_state_dict(ckpt["model"])
            fresh_opt.load_state_dict(ckpt["optimizer"])

        t_save = best_of(args.repeat, save)
        size = os.path.getsize(path)
        t_load = best_of(args.repeat, lambda: na.load(path))
        t_resume = best_of(args.repeat, resume)

    payload = 3 * n_params * backend.to_numpy(model.parameters()[0].data).itemsize
    print(f"model: {n_params:,} parameters, {args.dtype}, backend {args.backend}, Adam state")
    print(f"{'file size':<28}{size / 1e6:10.1f} MB  ({size / payload:.4f} x raw arrays)")
    print(f"{'na.save (incl. fsync)':<28}{t_save:10.3f} s   ({size / 1e6 / t_save:.0f} MB/s)")
    print(f"{'na.load (to NumPy)':<28}{t_load:10.3f} s   ({size / 1e6 / t_load:.0f} MB/s)")
    print(f"{'load + load_state_dict x2':<28}{t_resume:10.3f} s")


if __name__ == "__main__":
    main()
