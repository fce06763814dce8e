"""ZeroRedundancyOptimizer: optimizer state sharded over the ranks (ZeRO stage 1).

The parameters of one backend, device and dtype form a *space*: one flat
buffer in which every parameter is a view (NumPy, PyTorch CPU,
array-api-strict, CuPy; a JAX parameter keeps its own array and the buffer
is a host copy).  Rank ``r`` owns the contiguous share ``[bounds[r],
bounds[r+1])`` of each space and keeps optimizer state only for it: its
local optimizer steps *pieces*, small parameter objects whose ``.data`` is
the owned part of a parameter (a view into the flat buffer) and whose
``.grad`` is the owned part of the reduced gradient.

A step: the gradients are summed with a reduce-scatter (each rank receives
its share), one small all-reduce decides for every rank whether a gradient
is non-finite, the local optimizer updates the owned pieces, and an
``Allgatherv`` of each flat buffer gives every rank every parameter.

Shares are element ranges (about 1/world of each space) when the optimizer
is elementwise, which is found by stepping it once on a small probe
parameter whole and cut in two: every rule-based optimizer of neural_arch
is.  An optimizer whose update looks at a whole parameter (Adafactor's
factored moments and RMS scaling) is sharded by whole parameters instead:
each parameter belongs to the rank whose share holds its middle element,
so the state per rank is about 1/world only when there are many
parameters of similar size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from ..backend import backend_name, device, namespace, to_backend, to_numpy
from . import _buckets
from ._arrays import host_dtype, is_cupy, param_list, shares_host_memory, wire_dtype
from ._collectives import global_loss
from ._comm import resolve

__all__ = ["ZeroRedundancyOptimizer"]

_NOT_HYPER = ("params", "param_names")


class _Piece:
    """The part of one parameter a rank owns: what its local optimizer steps."""

    __slots__ = ("data", "grad")

    def __init__(self, data: Any) -> None:
        self.data = data
        self.grad = None


@dataclass
class _Owned:
    """A piece and where it lies: elements ``[start, stop)`` of parameter ``index``."""

    index: int
    start: int
    stop: int
    piece: _Piece
    space: _Space
    k: int  # the parameter's position in its space
    group: int  # its group in the full optimizer
    view: Any = None  # the piece's view of the flat buffer (None in copy mode)
    grad: Any = None  # its view of the reduced-gradient buffer, when one can be kept

    @property
    def span(self) -> tuple[int, int]:
        """The piece's elements in its space's flat buffer."""
        first = self.space.starts[self.k]
        return first + self.start, first + self.stop


@dataclass
class _Space:
    """The parameters of one backend, device and dtype, in one flat buffer."""

    xp: Any
    dev: Any
    dtype: np.dtype
    device_id: int | None  # CuPy device id, None for host memory
    members: list[int]
    starts: list[int]
    sizes: list[int]
    shapes: list[tuple[int, ...]]
    size: int
    mode: str = ""  # "shared" (views, NumPy view of the memory), "cupy", or "copy"
    flat: Any = None  # the backend's flat array (shared, cupy)
    buf: Any = None  # what MPI or NCCL moves: NumPy (shared, copy) or CuPy
    views: list[Any] = field(default_factory=list)
    bounds: list[int] = field(default_factory=list)
    ranges: list[tuple[int, int, list[int]]] = field(default_factory=list)  # buckets
    recv: Any = None  # this rank's share of the reduced gradient (wire dtype)
    recv_backend: Any = None  # the same memory as a backend array, when possible
    send: Any = None
    bound: list[Any] = field(default_factory=list)  # copy mode: the arrays last bound


def _all_finite(buf: Any) -> bool:
    if isinstance(buf, np.ndarray):
        return bool(np.isfinite(buf).all())
    return bool(namespace(buf).all(namespace(buf).isfinite(buf)))


def _counts(lo: int, hi: int, bounds: list[int]) -> tuple[list[int], list[int]]:
    """Per rank, how many elements of ``[lo, hi)`` it owns and where they start in it."""
    counts, displs = [], []
    for r in range(len(bounds) - 1):
        a, b = max(lo, bounds[r]), min(hi, bounds[r + 1])
        counts.append(max(0, b - a))
        displs.append(min(max(a - lo, 0), hi - lo))
    return counts, displs


def _probe_elementwise(cls: type, defaults: dict, groups: list[dict]) -> bool:
    """Whether ``cls`` updates a parameter cut in two exactly as the whole one.

    Two steps of a 3x4 probe parameter per group (the group's
    hyperparameters, backend and dtype) are compared bit for bit, values and
    state, with the same steps of its first five and last seven elements.
    """
    rng = np.random.default_rng(20240615)
    whole, halves, pairs = [], [], []
    for group in groups:
        like = group["params"][0].data
        xp, dev, dtype = namespace(like), device(like), like.dtype
        values = rng.standard_normal(12) + 0.5
        grads = [rng.standard_normal(12) for _ in range(2)]

        def make(a: np.ndarray, xp: Any = xp, dev: Any = dev, dtype: Any = dtype) -> Any:
            return to_backend(a, xp, device=dev, dtype=dtype, copy=True)

        w, a, b = (
            _Piece(make(values.reshape(3, 4))),
            _Piece(make(values[:5])),
            _Piece(make(values[5:])),
        )
        hyper = {k: v for k, v in group.items() if k not in _NOT_HYPER}
        whole.append({**hyper, "params": [w]})
        halves.append({**hyper, "params": [a, b]})
        pairs.append((w, a, b, [make(g.reshape(3, 4)) for g in grads], [make(g) for g in grads]))
    try:
        opt_whole, opt_halves = cls(whole, **defaults), cls(halves, **defaults)
        for step in range(2):
            for w, a, b, gw, gh in pairs:
                w.grad, a.grad, b.grad = gw[step], gh[step][:5], gh[step][5:]
            opt_whole.step()
            opt_halves.step()
    except Exception as exc:
        raise TypeError(
            f"ZeroRedundancyOptimizer cannot shard {cls.__name__}: a plain step() of it failed "
            f"({type(exc).__name__}: {exc}); an optimizer that evaluates the model itself "
            "(LBFGS) needs every parameter, use DistributedOptimizer instead"
        ) from exc

    def same(x: Any, parts: list[Any]) -> bool:
        joined = np.concatenate([to_numpy(p).reshape(-1) for p in parts])
        return to_numpy(x).reshape(-1).tobytes() == joined.tobytes()

    for w, a, b, _, _ in pairs:
        if not same(w.data, [a.data, b.data]):
            return False
        rw, ra, rb = (
            opt_whole.state.get(w, {}),
            opt_halves.state.get(a, {}),
            opt_halves.state.get(b, {}),
        )
        if list(rw) != list(ra) or list(rw) != list(rb):
            return False
        for key, value in rw.items():
            if array_api_compat.is_array_api_obj(value):
                if tuple(value.shape) != (3, 4) or not same(value, [ra[key], rb[key]]):
                    return False
            elif not (value == ra[key] == rb[key]):
                return False
    return True


class ZeroRedundancyOptimizer:
    """An optimizer whose state is split over the ranks (ZeRO-1), for data-parallel training.

    Every rank builds it with the same arguments; rank ``r`` keeps optimizer
    state only for its share of the parameters (about 1/world of each
    dtype's flat parameter vector), so the state's memory is divided by the
    number of ranks.  ``step()`` sums the gradients with a reduce-scatter
    (each rank receives the mean gradient of its share), updates its share
    with a local ``optimizer_class`` and gathers the parameters
    (``Allgatherv``): afterwards every rank holds the same parameters, equal
    bit for bit to those :class:`DistributedOptimizer` would give.

    Args:
        params: as for any optimizer: parameters, a dict name -> parameter,
            or a list of group dicts with per-group hyperparameters.
        optimizer_class: the optimizer to shard, e.g. ``na.Adam``.
        comm: the communicator (default: :func:`init`'s).
        bucket_cap_mb: the largest bucket moved in one collective, in megabytes.
        **defaults: ``optimizer_class``'s arguments (``lr``, ``betas``,
            ``nonfinite``, ...).

    At construction every parameter's array is moved into one flat buffer
    per backend, device and dtype (it becomes a view of it, with rank 0's
    values), and the optimizer is probed once on a tiny parameter to find
    out whether it is elementwise (see the module documentation).

    ``param_groups`` (and ``lr``, ``defaults``) are those of the full
    optimizer, so learning-rate schedulers work unchanged; they are copied
    to the local optimizer (``.optimizer``, None on a rank that owns
    nothing) at every step.  :meth:`state_dict` is collective and returns,
    on every rank, the state dict the unsharded optimizer would have, so
    rank 0 can ``na.save`` a checkpoint that any world size resumes;
    :meth:`load_state_dict` takes such a full dict (collective too).

    A non-finite gradient anywhere is seen by every rank (one all-reduce of
    the first bad parameter's index): every rank raises FloatingPointError
    naming it, or with ``nonfinite="skip"`` every rank skips the step.
    After a step, ``.grad`` of the parameters other ranks own holds this
    rank's local gradient, not the reduced one.  Construction, ``step``,
    ``state_dict`` and ``load_state_dict`` are collective.
    """

    def __init__(
        self,
        params: Any,
        optimizer_class: type,
        comm: Any = None,
        *,
        bucket_cap_mb: float = _buckets.DEFAULT_CAP_MB,
        **defaults: Any,
    ) -> None:
        if not isinstance(optimizer_class, type):
            raise TypeError(
                "optimizer_class must be an optimizer class such as na.Adam, "
                f"got {optimizer_class!r}"
            )
        self.comm = resolve(comm)
        self._cap = _buckets.cap_mb(bucket_cap_mb) * 2**20
        self._full = optimizer_class(params, **defaults)  # groups and validation; never stepped
        self.optimizer_class = optimizer_class
        self._params = param_list(self._full)
        self._names = [
            name
            for group in self._full.param_groups
            for name in group.get("param_names", [None] * len(group["params"]))
        ]
        self._names = [i if n is None else n for i, n in enumerate(self._names)]
        self._sliced = _probe_elementwise(optimizer_class, defaults, self._full.param_groups)
        self.step_count = 0
        self.skipped_steps = 0
        self._synchronized = False

        error, layout = None, 0
        try:
            layout = _buckets.fingerprint(self._params)
        except TypeError as exc:
            error = exc
        mask = np.ones(len(self._params), dtype=bool)
        _buckets.agree(self.comm, layout, mask, error, "ZeroRedundancyOptimizer")
        self._spaces = self._make_spaces()
        for space in self._spaces:
            self._wire(space)  # an NCCL communicator is made here, collectively
            for lo, hi, _ in space.ranges:
                self._wire(space).bcast_(space.buf[lo:hi], 0)
            if space.mode == "copy":
                self._bind_copies(space)
        self._owned: list[_Owned] = []
        self.optimizer = self._make_local(optimizer_class, defaults)

    # ------------------------------------------------------------ the layout

    def _make_spaces(self) -> list[_Space]:
        spaces: dict[tuple, _Space] = {}
        for j, p in enumerate(self._params):
            data = p.data
            xp, dev = namespace(data), device(data)
            dtype = host_dtype(data, f"parameter {self._names[j]!r}")
            key = (backend_name(xp), str(dev), dtype.name)
            space = spaces.get(key)
            if space is None:
                dev_id = int(data.device.id) if is_cupy(data) else None
                space = spaces[key] = _Space(xp, dev, dtype, dev_id, [], [], [], [], 0)
            shape = tuple(int(n) for n in data.shape)
            size = math.prod(shape)
            space.members.append(j)
            space.starts.append(space.size)
            space.sizes.append(size)
            space.shapes.append(shape)
            space.size += size
        for space in spaces.values():
            self._allocate(space)
            self._partition(space)
        return list(spaces.values())

    def _allocate(self, space: _Space) -> None:
        """The flat buffer, holding this rank's current values; parameters become its views."""
        first = self._params[space.members[0]].data
        xp = space.xp
        if space.device_id is not None:
            space.mode = "cupy"
        elif shares_host_memory(xp.zeros((1,), dtype=first.dtype, device=space.dev)):
            space.mode = "shared"
        else:
            space.mode = "copy"
        if space.mode == "copy":
            space.buf = np.empty(space.size, dtype=space.dtype)
        else:
            space.flat = xp.zeros((space.size,), dtype=first.dtype, device=space.dev)
            space.buf = space.flat if space.mode == "cupy" else to_numpy(space.flat)
        for j, start, size, shape in zip(
            space.members, space.starts, space.sizes, space.shapes, strict=True
        ):
            p = self._params[j]
            self._put(space, start, size, shape, p.data)
            if space.mode == "copy":
                space.bound.append(p.data)
            else:
                view = xp.reshape(space.flat[start : start + size], shape)
                space.views.append(view)
                p.data = view

    @staticmethod
    def _put(space: _Space, start: int, size: int, shape: tuple, value: Any) -> None:
        """Copy ``value`` (of ``shape``) into elements ``[start, start + size)`` of the buffer."""
        target = space.buf[start : start + size].reshape(shape)
        if space.mode == "cupy":
            target[...] = value
        else:
            np.copyto(target, to_numpy(value), casting="same_kind")

    def _partition(self, space: _Space) -> None:
        world, n = self.comm.world_size, space.size
        if self._sliced:
            space.bounds = [n * r // world for r in range(world + 1)]
        else:  # whole parameters: each to the rank whose share holds its middle element
            owners = [
                min(world - 1, (2 * s + z) * world // max(2 * n, 1))
                for s, z in zip(space.starts, space.sizes, strict=True)
            ]
            space.bounds = [0] * (world + 1)
            space.bounds[world] = n
            for r in range(world - 1, 0, -1):
                firsts = [s for s, o in zip(space.starts, owners, strict=True) if o >= r]
                space.bounds[r] = min(firsts) if firsts else space.bounds[r + 1]
        itemsize = wire_dtype(space.dtype).itemsize
        lo, members = 0, []
        for k, (start, size) in enumerate(zip(space.starts, space.sizes, strict=True)):
            if members and (start + size - lo) * itemsize > self._cap:
                space.ranges.append((lo, start, members))
                lo, members = start, []
            members.append(k)
        if members:
            space.ranges.append((lo, space.size, members))
        mine = space.bounds[self.comm.rank + 1] - space.bounds[self.comm.rank]
        wire = wire_dtype(space.dtype)
        longest = max((hi - lo for lo, hi, _ in space.ranges), default=0)
        space.send = _buckets.allocate(space.device_id, wire, longest)
        if space.mode == "shared" and wire == space.dtype:
            first = self._params[space.members[0]].data
            space.recv_backend = space.xp.zeros((mine,), dtype=first.dtype, device=space.dev)
            space.recv = to_numpy(space.recv_backend)
        else:
            space.recv = _buckets.allocate(space.device_id, wire, mine)
            if space.mode == "cupy" and wire == space.dtype:
                space.recv_backend = space.recv

    def _wire(self, space: _Space) -> Any:
        return _buckets.wire_of(self.comm, space.device_id)

    def _make_local(self, cls: type, defaults: dict) -> Any:
        """The local optimizer over this rank's pieces (None when it owns nothing)."""
        rank = self.comm.rank
        group_of_param = [
            i for i, group in enumerate(self._full.param_groups) for _ in group["params"]
        ]
        by_param: dict[int, _Owned] = {}
        for space in self._spaces:
            lo, hi = space.bounds[rank], space.bounds[rank + 1]
            for k, j in enumerate(space.members):
                start, size, shape = space.starts[k], space.sizes[k], space.shapes[k]
                a, b = max(lo, start), min(hi, start + size)
                if b <= a:
                    continue
                if space.mode == "copy":
                    host = space.buf[a:b] if self._sliced else space.buf[a:b].reshape(shape)
                    view = None
                    data = to_backend(host, space.xp, device=space.dev, copy=True)
                else:
                    view = space.flat[a:b]
                    if not self._sliced:
                        view = space.xp.reshape(view, shape)
                    data = view
                owned = _Owned(
                    j, a - start, b - start, _Piece(data), space, k, group_of_param[j], view
                )
                if space.recv_backend is not None:
                    grad = space.recv_backend[a - lo : b - lo]
                    owned.grad = grad if self._sliced else space.xp.reshape(grad, shape)
                by_param[j] = owned
        groups, self._group_of = [], []
        for i, group in enumerate(self._full.param_groups):
            start = sum(len(g["params"]) for g in self._full.param_groups[:i])
            mine = [
                by_param[j] for j in range(start, start + len(group["params"])) if j in by_param
            ]
            if not mine:
                continue
            hyper = {k: v for k, v in group.items() if k not in _NOT_HYPER}
            names = [self._names[o.index] for o in mine]
            groups.append({**hyper, "params": [o.piece for o in mine], "param_names": names})
            self._group_of.append(i)
            self._owned.extend(mine)
        if not groups:
            return None
        local = cls(groups, **defaults)
        local.nonfinite = "ignore"  # decided for every rank at once, before the local step
        return local

    # ------------------------------------------------------------ pass-through

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The full optimizer's groups (all parameters); a scheduler may set their ``lr``."""
        return self._full.param_groups

    @property
    def lr(self) -> float:
        return self._full.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._full.lr = value

    @property
    def defaults(self) -> dict[str, Any]:
        return self._full.defaults

    @property
    def nonfinite(self) -> str:
        return self._full.nonfinite

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's gradient (as the plain optimizer's ``zero_grad``)."""
        self._full.zero_grad(set_to_none)
        for owned in self._owned:
            owned.piece.grad = None
        self._synchronized = False

    # ------------------------------------------------------------------ step

    def synchronize(self) -> None:
        """Reduce-scatter the gradients now; the next ``step()`` will not again.

        Afterwards this rank holds the mean gradient of its share (what
        :func:`clip_grad_norm_` with this optimizer measures).  Collective.
        """
        if self._synchronized:
            return
        self._refresh()
        params, comm = self._params, self.comm
        error = None
        try:
            for j, p in enumerate(params):
                if p.grad is not None and tuple(p.grad.shape) != tuple(p.data.shape):
                    raise ValueError(
                        f"gradient of parameter {self._names[j]!r} has shape "
                        f"{tuple(p.grad.shape)}, but the parameter has shape {tuple(p.data.shape)}"
                    )
        except ValueError as exc:
            error = exc
        mask = np.array([p.grad is not None for p in params], dtype=bool)
        counts = _buckets.agree(comm, self._layout(), mask, error, "ZeroRedundancyOptimizer.step")
        self._has_grad = counts > 0
        rank = comm.rank
        for space in self._spaces:
            wire, lo = self._wire(space), space.bounds[rank]
            for start, stop, members in space.ranges:
                if not any(self._has_grad[space.members[k]] for k in members):
                    continue
                for k in members:
                    g = params[space.members[k]].grad
                    target = space.send[
                        space.starts[k] - start : space.starts[k] - start + space.sizes[k]
                    ]
                    target = target.reshape(space.shapes[k])
                    if g is None:
                        target[...] = 0
                    elif space.mode == "cupy":
                        target[...] = g
                    else:
                        np.copyto(target, to_numpy(g), casting="same_kind")
                shares, _ = _counts(start, stop, space.bounds)
                a = max(start, lo) - lo
                recv = space.recv[a : a + shares[rank]]
                wire.reduce_scatter_(space.send[: stop - start], recv, shares)
            space.recv /= comm.world_size
        for owned in self._owned:
            part = self._reduced(owned)
            if not self._has_grad[owned.index]:
                owned.piece.grad = None
                part[...] = 0  # stale values of a bucket nobody reduced: not non-finite
            elif owned.grad is not None:
                owned.piece.grad = owned.grad
            else:
                space = owned.space
                if not self._sliced:
                    part = part.reshape(space.shapes[owned.k])
                owned.piece.grad = to_backend(
                    part, space.xp, device=space.dev, dtype=owned.piece.data.dtype, copy=True
                )
        self._synchronized = True

    def _reduced(self, owned: _Owned) -> Any:
        """The piece's part of its space's reduced-gradient buffer (1-D, wire dtype)."""
        lo = owned.space.bounds[self.comm.rank]
        a, b = owned.span
        return owned.space.recv[a - lo : b - lo]

    def _layout(self) -> int:
        return _buckets.fingerprint(self._params)

    def _refresh(self) -> None:
        """Bring parameters whose array was replaced (a model's load) back into the buffer."""
        for space in self._spaces:
            for k, j in enumerate(space.members):
                p = self._params[j]
                if space.mode == "copy":
                    if p.data is not space.bound[k]:
                        self._put(space, space.starts[k], space.sizes[k], space.shapes[k], p.data)
                        space.bound[k] = p.data
                        self._repiece(space, j)
                elif p.data is not space.views[k]:
                    self._put(space, space.starts[k], space.sizes[k], space.shapes[k], p.data)
                    p.data = space.views[k]

    def _repiece(self, space: _Space, j: int) -> None:
        for owned in self._owned:
            if owned.index == j:
                a, b = owned.span
                host = (
                    space.buf[a:b]
                    if self._sliced
                    else space.buf[a:b].reshape(space.shapes[owned.k])
                )
                owned.piece.data = to_backend(host, space.xp, device=space.dev, copy=True)

    def _first_nonfinite(self) -> int:
        """The smallest index of a parameter whose reduced gradient is not finite, on any rank.

        One ``Allreduce`` (min) of this rank's answer for its share: every
        rank learns the same index, ``len(params)`` when all are finite.
        """
        bad = len(self._params)
        for space in self._spaces:
            if _all_finite(space.recv):
                continue
            for owned in self._owned:
                mine = owned.space is space and owned.index < bad
                if mine and not _all_finite(self._reduced(owned)):
                    bad = owned.index
        return int(self.comm.allreduce_(np.array([bad], dtype=np.int64), "min")[0])

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Reduce the gradients, update this rank's share, gather the parameters.

        With a ``closure``, it is called first (to compute the gradients) and
        the loss it returns, averaged over the ranks, is returned.
        """
        loss = None
        if closure is not None:
            if not callable(closure):
                raise TypeError(f"closure must be callable, got {closure!r:.80}")
            loss = global_loss(self.comm, closure())
        try:
            self.synchronize()
            if self.nonfinite != "ignore":
                bad = self._first_nonfinite()
                if bad < len(self._params):
                    if self.nonfinite == "skip":
                        self.skipped_steps += 1
                        return loss
                    raise FloatingPointError(
                        f"gradient of parameter {self._names[bad]!r} contains NaN or infinity "
                        "(on some rank); no parameter or optimizer state was changed on any "
                        "rank (pass nonfinite='skip' to skip such steps, or clip/scale the loss)"
                    )
            self._local_step()
            self._gather()
            self.step_count += 1
            return loss
        finally:
            self._synchronized = False
            for owned in self._owned:
                owned.piece.grad = None

    def _local_step(self) -> None:
        error = None
        if self.optimizer is not None:
            for k, i in enumerate(self._group_of):
                full = self._full.param_groups[i]
                self.optimizer.param_groups[k].update(
                    {key: v for key, v in full.items() if key not in _NOT_HYPER}
                )
            try:
                self.optimizer.step()
            except Exception as exc:
                error = exc
        failed = self.comm.allreduce_(np.array([error is not None], dtype=np.int64), "max")
        if error is not None:
            raise error
        if failed[0]:
            raise RuntimeError(
                "the local optimizer step failed on another rank (its error says why); this "
                "rank's share was updated, so the ranks' parameters now differ: restore them "
                "from a checkpoint"
            )

    def _gather(self) -> None:
        for owned in self._owned:  # an optimizer may have bound new arrays: copy them back
            if owned.view is None or owned.piece.data is not owned.view:
                a, b = owned.span
                data = owned.piece.data
                self._put(owned.space, a, b - a, tuple(data.shape), data)
                if owned.view is not None:
                    owned.piece.data = owned.view
        for space in self._spaces:
            wire = self._wire(space)
            for lo, hi, _ in space.ranges:
                counts, displs = _counts(lo, hi, space.bounds)
                wire.allgatherv_(space.buf[lo:hi], counts, displs)
            if space.mode == "copy":
                self._bind_copies(space)

    def _bind_copies(self, space: _Space) -> None:
        """Copy mode: every parameter gets the buffer's values (a new array for JAX)."""
        for k, j in enumerate(space.members):
            p = self._params[j]
            start, size, shape = space.starts[k], space.sizes[k], space.shapes[k]
            value = space.buf[start : start + size].reshape(shape)
            p.data = to_backend(value, space.xp, device=space.dev, dtype=p.data.dtype, copy=True)
            space.bound[k] = p.data

    # ----------------------------------------------------------- state dict

    def state_dict(self) -> dict[str, Any]:
        """The full state dict of the unsharded optimizer, on every rank; collective.

        The same layout and values as ``optimizer_class(params).state_dict()``
        after the same steps: ``{"state": {index: record}, "param_groups":
        [...], "step_count", "skipped_steps"}`` with each state array whole
        (the ranks' parts gathered with one ``Allgatherv`` per dtype), in the
        parameters' backend.
        """
        local, arrays = [], {}
        for owned in self._owned:
            record = self.optimizer.state.get(owned.piece)
            if not record:
                continue
            meta = []
            for key, value in record.items():
                if array_api_compat.is_array_api_obj(value):
                    host = np.ascontiguousarray(to_numpy(value))
                    arrays.setdefault(host.dtype.name, []).append(host.reshape(-1))
                    meta.append((key, host.dtype.name, tuple(host.shape)))
                else:
                    meta.append((key, None, value))
            local.append(
                (owned.index, owned.start, owned.stop, tuple(owned.piece.data.shape), meta)
            )
        metas = self.comm.allgather_object(local)
        gathered = {}
        for name in sorted({m[1] for entries in metas for e in entries for m in e[4] if m[1]}):
            counts = [
                sum(math.prod(m[2]) for e in entries for m in e[4] if m[1] == name)
                for entries in metas
            ]
            displs = [sum(counts[:r]) for r in range(len(counts))]
            buf = np.empty(sum(counts), dtype=name)
            mine = arrays.get(name, [])
            if mine:
                buf[displs[self.comm.rank] : displs[self.comm.rank] + counts[self.comm.rank]] = (
                    np.concatenate(mine)
                )
            self.comm.allgatherv_(buf, counts, displs)
            gathered[name] = (buf, displs)
        parts: dict[int, list[tuple[int, int, tuple, dict]]] = {}
        for r, entries in enumerate(metas):
            cursor = {name: displs[r] for name, (_, displs) in gathered.items()}
            for index, start, stop, shape, meta in entries:
                record = {}
                for key, name, info in meta:
                    if name is None:
                        record[key] = info
                    else:
                        n = math.prod(info)
                        record[key] = gathered[name][0][cursor[name] : cursor[name] + n].reshape(
                            info
                        )
                        cursor[name] += n
                parts.setdefault(index, []).append((start, stop, shape, record))
        state = {j: self._assemble(j, parts[j]) for j in sorted(parts)}
        full = self._full.state_dict()
        full["state"] = state
        full["step_count"] = self.step_count
        full["skipped_steps"] = self.skipped_steps
        return full

    def _assemble(self, j: int, parts: list[tuple[int, int, tuple, dict]]) -> dict[str, Any]:
        p = self._params[j]
        shape = tuple(int(n) for n in p.data.shape)
        parts.sort(key=lambda part: part[0])
        if sum(stop - start for start, stop, _, _ in parts) != math.prod(shape):
            raise RuntimeError(f"the state of parameter {self._names[j]!r} is incomplete")
        record = {}
        for key, value in parts[0][3].items():
            if not isinstance(value, np.ndarray):
                record[key] = value
                continue
            if len(parts) == 1 and value.shape != parts[0][2]:
                whole = value  # not shaped like the parameter (whole-parameter sharding)
            else:
                whole = np.concatenate([part[3][key].reshape(-1) for part in parts]).reshape(shape)
            record[key] = to_backend(whole, namespace(p.data), device=device(p.data), copy=True)
        return record

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a full state dict (of the plain optimizer, from any world size); collective.

        Each rank keeps its share of every state array.  The dict is checked
        whole on every rank; if any rank refuses its share, every rank
        raises and nothing changes anywhere.
        """
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' entries")
        saved_groups = list(state_dict["param_groups"])
        groups = self._full.param_groups
        if len(saved_groups) != len(groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, "
                f"this optimizer has {len(groups)}"
            )
        by_index: dict[int, int] = {}
        first = 0
        for i, (saved, group) in enumerate(zip(saved_groups, groups, strict=True)):
            ids = list(saved["params"])
            if len(ids) != len(group["params"]):
                raise ValueError(
                    f"loaded param_groups[{i}] has {len(ids)} parameters, this optimizer's "
                    f"param_groups[{i}] has {len(group['params'])}"
                )
            by_index.update((int(key), first + k) for k, key in enumerate(ids))
            first += len(ids)
        records: dict[int, Mapping] = {}
        for key, record in dict(state_dict["state"]).items():
            try:
                j = by_index[int(key)]
            except (KeyError, ValueError):
                raise ValueError(
                    f"loaded state refers to parameter index {key!r}, which is not in any "
                    "loaded param_groups entry"
                ) from None
            if not isinstance(record, Mapping):
                raise ValueError(f"loaded state of parameter {self._names[j]!r} is not a dict")
            self._check_record(j, record)
            records[j] = record
        local = self._local_state_dict(records, saved_groups)

        old_groups = [dict(g) for g in groups]
        old_local = None if self.optimizer is None else self.optimizer.state_dict()
        error, loaded = None, False
        try:
            self._full.load_state_dict({"state": {}, "param_groups": saved_groups})
            if self.optimizer is not None:
                self.optimizer.load_state_dict(local)
                loaded = True
        except (ValueError, TypeError, KeyError) as exc:
            error = exc
        failed = self.comm.allreduce_(np.array([error is not None], dtype=np.int64), "max")
        if failed[0]:
            for group, old in zip(groups, old_groups, strict=True):
                group.clear()
                group.update(old)
            if loaded:
                self.optimizer.load_state_dict(old_local)
            if error is not None:
                raise error
            raise ValueError(
                "another rank refused its share of the loaded state (its error says why); "
                "nothing was changed on any rank"
            )
        self.step_count = int(state_dict.get("step_count", 0))
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))

    def _check_record(self, j: int, record: Mapping) -> None:
        shape = tuple(int(n) for n in self._params[j].data.shape)
        for key, value in record.items():
            if not array_api_compat.is_array_api_obj(value) or not self._sliced:
                continue
            if tuple(value.shape) not in (shape, ()):
                raise ValueError(
                    f"loaded state {key!r} of parameter {self._names[j]!r} has shape "
                    f"{tuple(value.shape)}, but the parameter has shape {shape}"
                )

    def _local_state_dict(self, records: dict[int, Mapping], saved_groups: list) -> dict:
        """The local optimizer's share of a full state dict."""
        shapes = {j: tuple(int(n) for n in p.data.shape) for j, p in enumerate(self._params)}
        state, groups, index = {}, [], 0
        owned_by_group: dict[int, list[_Owned]] = {}
        for owned in self._owned:
            owned_by_group.setdefault(owned.group, []).append(owned)
        for i in self._group_of:
            saved = saved_groups[i]
            members = owned_by_group[i]
            hyper = {k: v for k, v in saved.items() if k not in _NOT_HYPER}
            groups.append({**hyper, "params": list(range(index, index + len(members)))})
            for owned in members:
                record = records.get(owned.index)
                if record is not None:
                    state[index] = self._slice_record(owned, record, shapes[owned.index])
                index += 1
        return {"state": state, "param_groups": groups}

    def _slice_record(self, owned: _Owned, record: Mapping, shape: tuple) -> dict:
        out = {}
        for key, value in record.items():
            if array_api_compat.is_array_api_obj(value) and tuple(value.shape) == shape:
                flat = np.ascontiguousarray(to_numpy(value)).reshape(-1)
                part = flat[owned.start : owned.stop]
                out[key] = (part if self._sliced else part.reshape(shape)).copy()
            else:
                out[key] = value
        return out

    def __repr__(self) -> str:
        how = "slices" if self._sliced else "whole parameters"
        inner = "\n".join("    " + line for line in repr(self._full).splitlines())
        return (
            f"ZeroRedundancyOptimizer(rank {self.comm.rank} of {self.comm.world_size}, "
            f"sharded by {how},\n{inner}\n)"
        )
