"""Collectives on CuPy buffers: NCCL, CUDA-aware MPI, or staging through host memory.

Which one a communicator uses (:func:`cupy_path`):

* ``"nccl"``: ``cupy.cuda.nccl`` is importable and not turned off
  (``dist.init(nccl=False)``).  One ``NcclCommunicator`` per CUDA device,
  made on first use: rank 0 draws the unique id, MPI broadcasts it
  (:func:`nccl_communicator`).  Collectives are enqueued on CuPy's current
  stream with no host synchronisation; ``Allgatherv`` and an uneven
  reduce-scatter, which NCCL lacks, are grouped broadcasts and reduces.
* ``"mpi"``: the user declared a CUDA-aware MPI (``dist.init(cuda_aware_mpi=True)``).
  The current stream is synchronised, then mpi4py gets the device buffers.
* ``"host"``: otherwise each buffer is copied to host memory, reduced by MPI
  and copied back.

Nothing here imports CuPy until a CuPy array is seen.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from ._comm import Communicator

__all__ = ["DeviceWire", "cupy_path", "nccl_communicator"]

#: Bytes of an NCCL unique id (``NCCL_UNIQUE_ID_BYTES``).
UNIQUE_ID_BYTES = 128

_NCCL_TYPES = {
    "float16": "NCCL_FLOAT16",
    "float32": "NCCL_FLOAT32",
    "float64": "NCCL_FLOAT64",
    "int32": "NCCL_INT32",
    "int64": "NCCL_INT64",
    "uint8": "NCCL_UINT8",
}


def _nccl_module() -> Any:
    """``cupy.cuda.nccl`` when CuPy was built with NCCL, else None."""
    try:
        nccl = importlib.import_module("cupy.cuda.nccl")
    except ImportError:
        return None
    return nccl if getattr(nccl, "available", True) else None


def cupy_path(comm: Communicator, nccl_module: Any = None) -> str:
    """How ``comm`` moves CuPy buffers: ``"local"``, ``"nccl"``, ``"mpi"`` or ``"host"``.

    ``nccl_module`` stands for ``cupy.cuda.nccl`` (found by import when None).
    Raises ImportError when ``comm.nccl`` is True and NCCL is not available.
    """
    if comm.world_size == 1:
        return "local"
    if comm.nccl is not False:
        nccl = nccl_module if nccl_module is not None else _nccl_module()
        if nccl is not None:
            return "nccl"
        if comm.nccl:
            raise ImportError(
                "dist.init(nccl=True) requires cupy.cuda.nccl, which this CuPy lacks; "
                "install NCCL (e.g. pip install nvidia-nccl-cu12) or pass nccl=None"
            )
    return "mpi" if comm.cuda_aware_mpi else "host"


def nccl_communicator(comm: Communicator, nccl: Any) -> Any:
    """A ``nccl.NcclCommunicator`` over ``comm``'s ranks; collective.

    Rank 0 draws the unique id (``nccl.get_unique_id()``, 128 signed bytes)
    and broadcasts it through MPI's buffer interface; every rank then joins
    with its rank.  Each rank must have selected its CUDA device before.
    """
    uid = np.zeros(UNIQUE_ID_BYTES, dtype=np.int64)
    if comm.rank == 0:
        drawn = tuple(int(b) for b in nccl.get_unique_id())
        if len(drawn) != UNIQUE_ID_BYTES:
            raise RuntimeError(f"NCCL unique id has {len(drawn)} bytes, not {UNIQUE_ID_BYTES}")
        uid[:] = drawn
    comm.bcast_(uid, root=0)
    return nccl.NcclCommunicator(comm.world_size, tuple(int(b) for b in uid), comm.rank)


class DeviceWire:
    """The collectives of :class:`Communicator` for CuPy buffers of one device.

    Buffers are contiguous CuPy arrays; ``nccl_module`` replaces
    ``cupy.cuda.nccl`` (a test double) and ``cupy_module`` CuPy itself.
    """

    def __init__(
        self,
        comm: Communicator,
        device_id: int,
        *,
        nccl_module: Any = None,
        cupy_module: Any = None,
    ) -> None:
        self.comm = comm
        self.path = cupy_path(comm, nccl_module)
        self._cupy = cupy_module
        self._nccl = None
        self._nc = None
        if self.path == "nccl":
            self._nccl = nccl_module if nccl_module is not None else _nccl_module()
            self._nc = comm._nccl_comms.get(device_id)
            if self._nc is None:
                with self.cupy.cuda.Device(device_id):  # NCCL binds the current device
                    self._nc = nccl_communicator(comm, self._nccl)
                comm._nccl_comms[device_id] = self._nc

    @property
    def cupy(self) -> Any:
        if self._cupy is None:
            self._cupy = importlib.import_module("cupy")
        return self._cupy

    def _stream(self) -> int:
        return self.cupy.cuda.get_current_stream().ptr

    def _type(self, buf: Any) -> Any:
        name = np.dtype(buf.dtype).name
        if name not in _NCCL_TYPES:
            raise TypeError(f"NCCL cannot reduce arrays of dtype {name}")
        return getattr(self._nccl, _NCCL_TYPES[name])

    def _sync(self) -> None:
        self.cupy.cuda.get_current_stream().synchronize()

    def allreduce_(self, buf: Any) -> Any:
        """Sum ``buf`` over the ranks in place."""
        if self.path == "local" or not buf.size:
            return buf
        if self.path == "nccl":
            ptr = buf.data.ptr
            op = self._nccl.NCCL_SUM
            self._nc.allReduce(ptr, ptr, buf.size, self._type(buf), op, self._stream())
        elif self.path == "mpi":
            self._sync()
            self.comm.allreduce_(buf)
        else:
            host = self.cupy.asnumpy(buf)
            buf.set(self.comm.allreduce_(host))
        return buf

    def bcast_(self, buf: Any, root: int) -> Any:
        """Root's bytes of ``buf`` on every rank."""
        if self.path == "local" or not buf.size:
            return buf
        if self.path == "nccl":
            raw = buf.reshape(-1).view(np.uint8)
            u8 = self._nccl.NCCL_UINT8
            self._nc.bcast(raw.data.ptr, raw.size, u8, root, self._stream())
        elif self.path == "mpi":
            self._sync()
            self.comm.bcast_(buf, root)
        else:
            host = self.cupy.asnumpy(buf)
            buf.set(self.comm.bcast_(host, root))
        return buf

    def allgatherv_(self, buf: Any, counts: list[int], displs: list[int]) -> Any:
        """In place: rank r's ``counts[r]`` elements at ``displs[r]`` reach every rank."""
        if self.path == "local" or not buf.size:
            return buf
        if self.path == "nccl":  # NCCL has no Allgatherv: one broadcast per rank, grouped
            raw = buf.reshape(-1).view(np.uint8)
            k, base, u8, stream = buf.itemsize, raw.data.ptr, self._nccl.NCCL_UINT8, self._stream()
            self._nccl.groupStart()
            try:
                for r, (count, displ) in enumerate(zip(counts, displs, strict=True)):
                    if count:
                        ptr = base + displ * k
                        self._nc.broadcast(ptr, ptr, count * k, u8, r, stream)
            finally:
                self._nccl.groupEnd()
        elif self.path == "mpi":
            self._sync()
            self.comm.allgatherv_(buf, counts, displs)
        else:
            host = self.cupy.asnumpy(buf)
            buf.set(self.comm.allgatherv_(host, counts, displs))
        return buf

    def reduce_scatter_(self, send: Any, recv: Any, counts: list[int]) -> None:
        """Sum ``send`` over the ranks; rank r receives its ``counts[r]`` elements in ``recv``."""
        if self.path == "local":
            recv[...] = send
            return
        if self.path == "nccl":  # uneven shares: one reduce per rank, grouped
            dtype, op, stream = self._type(send), self._nccl.NCCL_SUM, self._stream()
            k, offset = send.itemsize, 0
            self._nccl.groupStart()
            try:
                for r, count in enumerate(counts):
                    if count:
                        src = send.data.ptr + offset * k
                        dst = recv.data.ptr if r == self.comm.rank else src
                        self._nc.reduce(src, dst, count, dtype, op, r, stream)
                    offset += count
            finally:
                self._nccl.groupEnd()
        elif self.path == "mpi":
            self._sync()
            self.comm.reduce_scatter_(send, recv, counts)
        else:
            host = np.empty(recv.shape, dtype=np.dtype(recv.dtype))
            self.comm.reduce_scatter_(self.cupy.asnumpy(send), host, counts)
            recv.set(host)
