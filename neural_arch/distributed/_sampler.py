"""shard_indices: which samples each rank trains on (torch's DistributedSampler)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ._comm import resolve

__all__ = ["shard_indices"]


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def shard_indices(
    n: int,
    comm: Any = None,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
) -> np.ndarray:
    """The indices of the ``n`` samples this rank takes in epoch ``epoch``.

    The semantics of ``torch.utils.data.DistributedSampler``: the order of
    the epoch (a permutation drawn from ``seed`` and ``epoch``, the same on
    every rank; ``0..n-1`` without ``shuffle``) is padded by repeating its
    first indices to a multiple of the world size (or, with ``drop_last``,
    cut down to one), and rank ``r`` takes every world-size-th index from
    position ``r``.  Every rank gets the same number of indices, and
    together they cover every sample (some twice when padded).

    Because rank ``r`` takes positions ``r, r + W, r + 2W, ...``, local
    batches of ``B`` consecutive indices on ``W`` ranks make up exactly the
    global batches of ``W * B`` consecutive positions of the epoch's order:
    the same batches one process would take with batch size ``W * B``.
    With world size 1 the result is the epoch's order itself,
    ``np.random.default_rng([seed, epoch]).permutation(n)``.

    Returns:
        A 1-D NumPy int64 array.
    """
    n, seed, epoch = _count("n", n), _count("seed", seed), _count("epoch", epoch)
    for name, flag in (("shuffle", shuffle), ("drop_last", drop_last)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    comm = resolve(comm)
    world, rank = comm.world_size, comm.rank
    # ceil((n - world) / world) when dropping the tail, as torch; else ceil(n / world)
    per_rank = -(-(n - world) // world) if drop_last and n % world else -(-n // world)
    total = per_rank * world
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)
    else:
        order = np.arange(n, dtype=np.int64)
    if total > n:
        order = np.resize(order, total)  # repeats the order from its start
    return order[rank:total:world]
