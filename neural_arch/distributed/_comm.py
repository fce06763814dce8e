"""The communicator: MPI ranks through mpi4py, or this process alone.

Everything in :mod:`neural_arch.distributed` talks through a
:class:`Communicator`.  It wraps an mpi4py communicator (``COMM_WORLD`` by
default) and offers the few collectives the package needs, on NumPy
buffers through mpi4py's buffer interface (``Allreduce(IN_PLACE, buf)``,
``Bcast``, ``Allgatherv``, ``Reduce_scatter``: the uppercase calls, never
the pickling lowercase ones for arrays).  Without mpi4py, or with a
communicator of one rank, every collective is the identity and training
runs as in one process.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["Communicator", "init", "rank", "resolve", "world_size"]


def _import_mpi() -> Any:
    """mpi4py's MPI module (initializing MPI), or None when mpi4py is not installed."""
    if os.environ.get("NEURAL_ARCH_NO_MPI", "") not in ("", "0"):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI


class Communicator:
    """The processes that train together: MPI ranks, or this process alone.

    Made by :func:`init`; the functions of :mod:`neural_arch.distributed`
    also accept an mpi4py communicator and wrap it.

    Attributes:
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: the number of processes.
        mpi: the mpi4py communicator, or None for a single process without MPI.
        nccl: ``None`` (use NCCL for CuPy arrays when ``cupy.cuda.nccl`` is
            available), ``True`` (require it) or ``False`` (never).
        cuda_aware_mpi: whether MPI may be handed CuPy device buffers directly
            (used for CuPy arrays when NCCL is not; otherwise they are staged
            through host memory).
    """

    def __init__(
        self, mpi_comm: Any = None, *, nccl: bool | None = None, cuda_aware_mpi: bool = False
    ) -> None:
        if nccl not in (None, True, False):
            raise TypeError(f"nccl must be None, True or False, got {nccl!r}")
        if not isinstance(cuda_aware_mpi, bool):
            raise TypeError(f"cuda_aware_mpi must be a bool, got {cuda_aware_mpi!r}")
        self.mpi = mpi_comm
        self._MPI = None
        if mpi_comm is not None:
            from mpi4py import MPI

            self._MPI = MPI
        self.rank = 0 if mpi_comm is None else int(mpi_comm.Get_rank())
        self.world_size = 1 if mpi_comm is None else int(mpi_comm.Get_size())
        self.nccl = nccl
        self.cuda_aware_mpi = cuda_aware_mpi
        self._nccl_comms: dict[int, Any] = {}  # CUDA device id -> NcclCommunicator
        self._device_wires: dict[int, Any] = {}  # CUDA device id -> _device.DeviceWire
        self._reducers: dict[float, Any] = {}  # bucket cap -> all_reduce_gradients' reducer

    def __repr__(self) -> str:
        what = "no MPI" if self.mpi is None else "MPI"
        return f"<Communicator rank {self.rank} of {self.world_size} ({what})>"

    def barrier(self) -> None:
        """Wait until every rank has called ``barrier()``."""
        if self.mpi is not None:
            self.mpi.Barrier()

    # ------------------------------------------------ collectives on host buffers

    def allreduce_(self, buf: np.ndarray, op: str = "sum") -> np.ndarray:
        """Reduce ``buf`` over all ranks in place (``op``: sum, max or min); returns ``buf``."""
        if self.world_size > 1 and buf.size:
            mpi_op = {"sum": self._MPI.SUM, "max": self._MPI.MAX, "min": self._MPI.MIN}[op]
            self.mpi.Allreduce(self._MPI.IN_PLACE, buf, op=mpi_op)
        return buf

    def bcast_(self, buf: np.ndarray, root: int) -> np.ndarray:
        """Replace ``buf`` (a contiguous array) by root's, bit for bit; returns ``buf``."""
        if self.world_size > 1 and buf.size:
            self.mpi.Bcast(_bytes(buf), root=root)
        return buf

    def allgatherv_(self, buf: np.ndarray, counts: list[int], displs: list[int]) -> np.ndarray:
        """In place: rank r's ``counts[r]`` elements from ``displs[r]`` on reach every rank."""
        if self.world_size > 1 and buf.size:
            k = buf.itemsize
            spec = [_bytes(buf), [c * k for c in counts], [d * k for d in displs], self._MPI.BYTE]
            self.mpi.Allgatherv(self._MPI.IN_PLACE, spec)
        return buf

    def reduce_scatter_(self, send: np.ndarray, recv: np.ndarray, counts: list[int]) -> None:
        """Sum ``send`` over the ranks; rank r receives elements of its share ``counts[r]``.

        ``send`` holds ``sum(counts)`` elements, rank 0's share first.
        """
        if self.world_size == 1:
            recv[...] = send
        elif sum(counts):
            self.mpi.Reduce_scatter(send, recv, counts, op=self._MPI.SUM)

    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (small metadata only; arrays go through the buffer calls)."""
        if self.world_size == 1:
            return [obj]
        return self.mpi.allgather(obj)


def _bytes(buf: np.ndarray) -> np.ndarray:
    """A contiguous buffer seen as bytes (for calls that copy without arithmetic)."""
    if not buf.flags.c_contiguous:  # reshape would copy, and the result would be lost
        raise ValueError("a collective's buffer must be C-contiguous")
    return buf.reshape(-1).view(np.uint8)


_default: Communicator | None = None
_wrapped: dict[int, tuple[Any, Communicator]] = {}  # id(mpi4py comm) -> (comm, wrapper)


def init(
    comm: Any = None, *, nccl: bool | None = None, cuda_aware_mpi: bool = False
) -> Communicator:
    """The communicator to train over, which also becomes the default (``comm=None``).

    Args:
        comm: an mpi4py communicator (default: ``MPI.COMM_WORLD`` when mpi4py
            is installed) or a :class:`Communicator`.  Without mpi4py (or with
            the environment variable ``NEURAL_ARCH_NO_MPI=1``) this process
            trains alone: rank 0 of world size 1.
        nccl: for CuPy arrays, use NCCL (``cupy.cuda.nccl``) when available
            (None, the default), require it (True), or never (False).
        cuda_aware_mpi: declare that this MPI accepts GPU buffers, so CuPy
            arrays go to MPI directly (after a stream synchronisation) when
            NCCL is not used; by default they are staged through host memory.

    Launch with ``mpiexec -n N python -m mpi4py script.py``: with ``-m mpi4py``
    an uncaught exception on one rank aborts the job instead of leaving the
    other ranks waiting in a collective.
    """
    global _default
    if isinstance(comm, Communicator):
        _default = comm
        return comm
    if comm is None:
        MPI = _import_mpi()
        comm = None if MPI is None else MPI.COMM_WORLD
    _default = Communicator(comm, nccl=nccl, cuda_aware_mpi=cuda_aware_mpi)
    if comm is not None:
        _wrapped[id(comm)] = (comm, _default)
    return _default


def resolve(comm: Any = None) -> Communicator:
    """``comm`` as a :class:`Communicator`: the default one (made by :func:`init`) for None."""
    if comm is None:
        return _default if _default is not None else init()
    if isinstance(comm, Communicator):
        return comm
    if not (hasattr(comm, "Get_rank") and hasattr(comm, "Allreduce")):
        raise TypeError(
            "comm must be None, a neural_arch.distributed Communicator (from dist.init()) or "
            f"an mpi4py communicator, got {type(comm).__name__}"
        )
    entry = _wrapped.get(id(comm))
    if entry is None or entry[0] is not comm:
        entry = _wrapped[id(comm)] = (comm, Communicator(comm))
    return entry[1]


def rank(comm: Any = None) -> int:
    """This process's rank in ``comm`` (default: the default communicator)."""
    return resolve(comm).rank


def world_size(comm: Any = None) -> int:
    """The number of processes in ``comm`` (default: the default communicator)."""
    return resolve(comm).world_size
