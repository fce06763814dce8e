"""Flat buckets of parameters or gradients, and the agreement that precedes them.

A list of parameters is laid out the same way on every rank: grouped by
(CUDA device or host, dtype) in order of first appearance, each group cut
into buckets of at most ``cap`` bytes at parameter boundaries (a parameter
larger than the cap is a bucket of its own).  Before any bucket moves, one
small ``Allreduce`` (:func:`agree`) checks that every rank passes the same
layout and tells every rank which parameters have a gradient on which
ranks, so that no rank can enter a collective the others skip.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import to_numpy
from ._arrays import host_dtype, is_cupy, wire_dtype
from ._comm import Communicator

__all__ = ["Bucket", "Slot", "agree", "allocate", "fingerprint", "plan", "wire_of"]

#: The default bucket size, as DDP's ``bucket_cap_mb``.
DEFAULT_CAP_MB = 25.0


@dataclass(frozen=True)
class Slot:
    """One parameter's place in a bucket."""

    index: int  # position in the parameter list
    offset: int  # first element in the bucket
    size: int
    shape: tuple[int, ...]


@dataclass
class Bucket:
    """Parameters of one device and dtype, contiguous in one flat buffer."""

    device: int | None  # CUDA device id for CuPy arrays, None for host memory
    dtype: np.dtype  # the parameters' dtype
    slots: list[Slot]
    size: int = 0


def _device_id(x: Any) -> int | None:
    return int(x.device.id) if is_cupy(x) else None


def _hash(data: bytes) -> int:
    """A 56-bit digest (fits an int64 and its negation)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=7).digest(), "little")


_FINGERPRINTS: dict[tuple, int] = {}


def fingerprint(params: list[Any]) -> int:
    """A digest of the parameters' count, shapes, dtypes and places (host or GPU).

    Ranks that pass the same parameters get the same digest.
    """
    key = tuple((type(p.data), p.data.dtype, tuple(p.data.shape)) for p in params)
    found = _FINGERPRINTS.get(key)
    if found is None:
        text = repr(
            [
                (shape, str(host_dtype(p.data, f"parameter {i}")), is_cupy(p.data))
                for i, (p, (_, _, shape)) in enumerate(zip(params, key, strict=True))
            ]
        )
        if len(_FINGERPRINTS) > 64:
            _FINGERPRINTS.clear()
        found = _FINGERPRINTS[key] = _hash(text.encode())
    return found


def cap_mb(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"bucket_cap_mb must be a positive number of megabytes, got {value!r}")
    return float(value)


def plan(params: list[Any], indices: list[int], cap_bytes: float, *, wire: bool) -> list[Bucket]:
    """Buckets over ``params[i] for i in indices`` (in that order within each group).

    ``wire``: size buckets by the dtype gradients are summed in (float32 for
    float16) rather than by the parameters' own.
    """
    groups: dict[tuple, list[int]] = {}
    for i in indices:
        data = params[i].data
        key = (_device_id(data), host_dtype(data, f"parameter {i}"))
        groups.setdefault(key, []).append(i)
    buckets: list[Bucket] = []
    for (dev, dtype), members in groups.items():
        itemsize = (wire_dtype(dtype) if wire else dtype).itemsize
        bucket = None
        for i in members:
            shape = tuple(int(n) for n in params[i].data.shape)
            size = int(np.prod(shape, dtype=np.int64))
            if bucket is None or (bucket.size and (bucket.size + size) * itemsize > cap_bytes):
                bucket = Bucket(dev, dtype, [])
                buckets.append(bucket)
            bucket.slots.append(Slot(i, bucket.size, size, shape))
            bucket.size += size
    return buckets


def wire_of(comm: Communicator, device_id: int | None) -> Any:
    """What moves a bucket: the communicator (host memory) or a device wire (CuPy)."""
    if device_id is None:
        return comm
    wire = comm._device_wires.get(device_id)
    if wire is None:
        from ._device import DeviceWire

        wire = comm._device_wires[device_id] = DeviceWire(comm, device_id)
    return wire


def allocate(device_id: int | None, dtype: np.dtype, size: int) -> Any:
    """An uninitialised flat buffer: NumPy, or CuPy on ``device_id``."""
    if device_id is None:
        return np.empty(size, dtype=dtype)
    import cupy

    with cupy.cuda.Device(device_id):
        return cupy.empty(size, dtype=dtype)


def put(buf: Any, slot: Slot, value: Any) -> None:
    """Copy ``value`` (an array of the parameter's shape, or None for zeros) into its slot."""
    view = buf[slot.offset : slot.offset + slot.size].reshape(slot.shape)
    if value is None:
        view[...] = 0
    elif isinstance(buf, np.ndarray):
        np.copyto(view, to_numpy(value), casting="same_kind")
    else:
        view[...] = value


def take(buf: Any, slot: Slot) -> Any:
    """The slot's part of ``buf``, shaped like its parameter (a view)."""
    return buf[slot.offset : slot.offset + slot.size].reshape(slot.shape)


def agree(
    comm: Communicator,
    layout: int,
    mask: np.ndarray,
    error: BaseException | None,
    what: str,
) -> np.ndarray:
    """Per parameter, on how many ranks it has a gradient (``mask`` is this rank's).

    One ``Allreduce`` of eight integers: the layout's fingerprint, a digest
    of ``mask``, the parameter count and whether this rank found an error
    (``error``, raised here after the others have heard of it).  Only when
    the masks differ does a second one count them per parameter.  Raises on
    every rank alike: the erroring rank its own error, the others
    ValueError; ValueError everywhere when the layouts differ.
    """
    n = int(mask.size)
    head = np.array([layout, _hash(mask.tobytes()), n, error is not None], dtype=np.int64)
    both = comm.allreduce_(np.concatenate([head, -head]), "max")
    high, low = both[:4], -both[4:]
    if error is not None:
        raise error
    if high[3]:
        raise ValueError(
            f"{what}: another rank refused its parameters or gradients (its error says why); "
            "nothing was changed on any rank"
        )
    if high[0] != low[0] or high[2] != low[2]:
        raise ValueError(
            f"{what}: the ranks passed different parameters (their number, shapes or dtypes "
            "differ); every rank must pass the same parameters in the same order"
        )
    counts = mask.astype(np.int64)
    if high[1] == low[1]:
        return counts * comm.world_size
    return comm.allreduce_(counts, "sum")
