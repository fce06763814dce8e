"""Data-parallel training over MPI (mpi4py), with NCCL for CuPy arrays.

``import neural_arch.distributed as dist``; launch with
``mpiexec -n N python -m mpi4py script.py`` (the ``-m mpi4py`` makes an
exception on one rank end the job instead of hanging the others).  Without
mpi4py (``pip install "neural_arch[mpi]"``) or without ``mpiexec``, every
function works with world size 1.

* :func:`init`, :func:`rank`, :func:`world_size`: the communicator.
* :func:`broadcast_parameters`: every rank gets root's values, bit for bit.
* :func:`all_reduce_gradients`: gradients averaged over the ranks, in flat
  buckets per dtype (``Allreduce(IN_PLACE, ...)``).
* :class:`DistributedOptimizer`: any optimizer; ``step()`` averages the
  gradients, then steps it (DDP, Horovod's DistributedOptimizer).
* :class:`ZeroRedundancyOptimizer`: optimizer state split over the ranks
  (ZeRO-1); the same parameters as DistributedOptimizer, bit for bit.
* :func:`clip_grad_norm_`: clipping by the norm of the whole gradient.
* :func:`shard_indices`: each rank's samples (torch's DistributedSampler).

Every collective of this package goes through mpi4py's buffer interface
(the uppercase calls) on NumPy buffers, or NCCL on CuPy buffers; the
decisions that select a collective (which parameters have gradients,
whether one is non-finite) are agreed by every rank first, so ranks cannot
end up in different collectives through this API.  See docs/distributed.md.
"""

from ._clip import clip_grad_norm_
from ._collectives import all_reduce_gradients, broadcast_parameters
from ._comm import Communicator, init, rank, world_size
from ._ddp import DistributedOptimizer
from ._sampler import shard_indices
from ._zero import ZeroRedundancyOptimizer

__all__ = [
    "Communicator",
    "DistributedOptimizer",
    "ZeroRedundancyOptimizer",
    "all_reduce_gradients",
    "broadcast_parameters",
    "clip_grad_norm_",
    "init",
    "rank",
    "shard_indices",
    "world_size",
]
