"""Parameter broadcast and gradient all-reduce over flat buckets."""

from __future__ import annotations

import numbers
from typing import Any

import array_api_compat
import numpy as np

from ..backend import device, namespace
from . import _buckets
from ._arrays import host_dtype, param_list, store, wire_dtype
from ._comm import Communicator, resolve

__all__ = ["GradReducer", "all_reduce_gradients", "broadcast_parameters", "global_loss"]


def _check_root(root: Any, comm: Communicator) -> int:
    if isinstance(root, bool) or not isinstance(root, numbers.Integral):
        raise TypeError(f"root must be an int rank, got {root!r}")
    if not 0 <= int(root) < comm.world_size:
        raise ValueError(f"root must be a rank in [0, {comm.world_size}), got {root}")
    return int(root)


def broadcast_parameters(
    params: Any, root: int = 0, comm: Any = None, *, bucket_cap_mb: float = 25.0
) -> None:
    """Give every rank root's parameter values, bit for bit.

    ``params``: a list of parameters, a dict name -> parameter, a Module or
    an optimizer (all its groups), the same on every rank.  The values travel
    as bytes in flat buckets (one ``Bcast`` per bucket) and are written into
    the parameters' arrays in place where the backend allows (a JAX
    parameter gets a new array).  Collective: every rank must call it.
    """
    comm = resolve(comm)
    root = _check_root(root, comm)
    cap = _buckets.cap_mb(bucket_cap_mb) * 2**20
    plist = param_list(params)
    if comm.world_size == 1:
        return
    error, layout = None, 0
    try:
        layout = _buckets.fingerprint(plist)
        buckets = _buckets.plan(plist, list(range(len(plist))), cap, wire=False)
    except (TypeError, ValueError) as exc:
        error = exc
    _buckets.agree(comm, layout, np.ones(len(plist), dtype=bool), error, "broadcast_parameters")
    for bucket in buckets:
        buf = _buckets.allocate(bucket.device, bucket.dtype, bucket.size)
        if comm.rank == root:
            for slot in bucket.slots:
                _buckets.put(buf, slot, plist[slot.index].data)
        _buckets.wire_of(comm, bucket.device).bcast_(buf, root)
        if comm.rank != root:
            for slot in bucket.slots:
                p = plist[slot.index]
                store(p, "data", _buckets.take(buf, slot), p.data)


class GradReducer:
    """Sums (or averages) the gradients of a parameter list over the ranks.

    Keeps its bucket layout and buffers from call to call while the
    parameters and the set that has gradients stay the same (the steady
    state of training).
    """

    def __init__(self, comm: Communicator, bucket_cap_mb: float = 25.0) -> None:
        self.comm = comm
        self.cap = _buckets.cap_mb(bucket_cap_mb) * 2**20
        self._cached: tuple | None = None  # (key, buckets, buffers)

    def __call__(self, params: list[Any], average: bool = True, what: str = "") -> None:
        what = what or "all_reduce_gradients"
        comm = self.comm
        if comm.world_size == 1:
            return
        error, layout = None, 0
        mask = np.array([p.grad is not None for p in params], dtype=bool)
        try:
            layout = _buckets.fingerprint(params)
            _check_grads(params)
        except (TypeError, ValueError) as exc:
            error = exc
        counts = _buckets.agree(comm, layout, mask, error, what)
        key = (layout, counts.tobytes(), tuple(map(id, params)))
        if self._cached is None or self._cached[0] != key:
            used = [i for i in range(len(params)) if counts[i]]
            buckets = _buckets.plan(params, used, self.cap, wire=True)
            buffers = [_buckets.allocate(b.device, wire_dtype(b.dtype), b.size) for b in buckets]
            self._cached = (key, buckets, buffers)
        _, buckets, buffers = self._cached
        for bucket, buf in zip(buckets, buffers, strict=True):
            for slot in bucket.slots:
                _buckets.put(buf, slot, params[slot.index].grad)
            _buckets.wire_of(comm, bucket.device).allreduce_(buf)
            if average:
                buf /= comm.world_size
            for slot in bucket.slots:
                p = params[slot.index]
                store(p, "grad", _buckets.take(buf, slot), p.data)


def _check_grads(params: list[Any]) -> None:
    """Refuse (before any collective) a gradient that cannot be reduced with its parameter."""
    for i, p in enumerate(params):
        g = p.grad
        if g is None:
            continue
        if tuple(g.shape) != tuple(p.data.shape):
            raise ValueError(
                f"gradient of parameter {i} has shape {tuple(g.shape)}, but the parameter has "
                f"shape {tuple(p.data.shape)}"
            )
        kind = host_dtype(p.data, f"parameter {i}").kind
        if kind not in "fc" or host_dtype(g, f"the gradient of parameter {i}").kind not in "fc":
            raise TypeError(
                f"parameter {i} and its gradient must be floating (or complex) to be averaged, "
                f"got {p.data.dtype} and {g.dtype}"
            )


def all_reduce_gradients(
    params: Any, comm: Any = None, average: bool = True, *, bucket_cap_mb: float = 25.0
) -> None:
    """Sum the gradients over the ranks (their mean when ``average``), in place.

    One flat buffer per dtype (and CUDA device), cut into buckets of at most
    ``bucket_cap_mb`` megabytes, is ``Allreduce``-d in the same order on
    every rank.  A parameter whose gradient is None on every rank is
    skipped everywhere; one that has a gradient on some ranks only counts
    as zero on the others and gets the reduced gradient on every rank (as
    DDP's unused parameters).  float16 gradients are summed in float32.
    The communicator keeps the bucket buffers for the next call with the same
    parameters and cap (as DDP keeps its buckets).  Collective: every rank
    must call it with the same parameters.
    """
    if not isinstance(average, bool):
        raise TypeError(f"average must be a bool, got {average!r}")
    comm = resolve(comm)
    cap = _buckets.cap_mb(bucket_cap_mb)
    reducer = comm._reducers.get(cap)
    if reducer is None:
        reducer = comm._reducers[cap] = GradReducer(comm, cap)
    reducer(param_list(params), average)


def global_loss(comm: Communicator, loss: Any) -> Any:
    """The mean of ``loss`` (a number, 0-d array or Tensor) over the ranks, of its kind.

    None when every rank's loss is None.  Collective.
    """
    if comm.world_size == 1:
        return loss
    value = 0.0
    if loss is not None:
        item = getattr(loss, "item", None)
        is_number = isinstance(loss, numbers.Real) or array_api_compat.is_array_api_obj(loss)
        value = float(loss) if is_number or not callable(item) else float(item())
    buf = comm.allreduce_(np.array([value, loss is not None], dtype=np.float64), "sum")
    if buf[1] == 0:
        return None
    if buf[1] != comm.world_size:
        raise ValueError("the closure returned a loss on some ranks and None on others")
    mean = float(buf[0] / comm.world_size)
    if isinstance(loss, numbers.Real):
        return mean
    data = getattr(loss, "data", loss)
    if not array_api_compat.is_array_api_obj(data):
        return mean
    xp = namespace(data)
    value = xp.asarray(mean, dtype=data.dtype, device=device(data))
    if data is loss:
        return value
    from ..tensor import Tensor

    return Tensor(value)
