"""One rank raises while the other waits in a collective: the job must end, not hang.

    mpiexec -n 2 python -m mpi4py tests/distributed_scripts/crash.py

With ``-m mpi4py`` the uncaught exception aborts the job (MPI_Abort);
tests/test_distributed.py checks that it ends quickly with the error shown.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mpi_common import backward, build_model, part_slice

import neural_arch as na
import neural_arch.distributed as dist

comm = dist.init()
model = build_model(0)
zero = dist.ZeroRedundancyOptimizer(model.parameters(), na.Adam)
backward(model, part_slice(0, comm.rank, comm.world_size))
if comm.rank == comm.world_size - 1:
    raise RuntimeError(f"rank {comm.rank} fails on purpose")
zero.step()  # the other ranks wait here for the failed one
print("unreachable: a collective completed without the failed rank", flush=True)
