"""clip_grad_norm_ by the norm of the whole reduced gradient, also when it is sharded."""

from __future__ import annotations

import math
import numbers
from typing import Any

import array_api_compat
import numpy as np

from ..backend import device, namespace
from ..optim import clip_grad_norm_ as _clip_local
from ._arrays import param_list
from ._collectives import all_reduce_gradients
from ._ddp import DistributedOptimizer
from ._zero import ZeroRedundancyOptimizer

__all__ = ["clip_grad_norm_"]


def clip_grad_norm_(
    parameters: Any,
    max_norm: float,
    comm: Any = None,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> Any:
    """Scale the reduced gradients so that the *global* gradient's norm is at most ``max_norm``.

    ``parameters`` is, preferably, the distributed optimizer about to step:

    * a :class:`ZeroRedundancyOptimizer`: its gradients are reduce-scattered
      now (its next ``step`` does not again) and each rank holds the mean
      gradient of its share only, so the partial sums of the shares are
      all-reduced: the norm is that of the whole gradient, never a shard's;
    * a :class:`DistributedOptimizer`: its gradients are all-reduced now and,
      being identical on every rank, clipped as in one process.

    Given parameters (a list, dict, Module or plain optimizer), their
    gradients are first averaged over ``comm`` (:func:`all_reduce_gradients`)
    and then clipped: a replacement for ``all_reduce_gradients`` before a
    plain optimizer's step (not to be followed by a DistributedOptimizer's,
    which would average them a second time).

    As ``neural_arch.clip_grad_norm_`` (torch's formula): every gradient is
    multiplied by ``min(1, max_norm / (total_norm + 1e-6))``; returns the
    total norm before clipping, the same on every rank (a 0-d array, or 0.0
    when no parameter has a gradient anywhere).  Collective.
    """
    if isinstance(parameters, DistributedOptimizer):
        parameters.synchronize()
        return _clip_local(
            param_list(parameters.optimizer), max_norm, norm_type, error_if_nonfinite
        )
    if not isinstance(parameters, ZeroRedundancyOptimizer):
        all_reduce_gradients(parameters, comm)
        return _clip_local(parameters, max_norm, norm_type, error_if_nonfinite)
    if (
        isinstance(max_norm, bool)
        or not isinstance(max_norm, numbers.Real)
        or math.isnan(max_norm)
    ):
        raise ValueError(f"max_norm must be a number, got {max_norm!r}")
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"Invalid norm_type: {norm_type!r} (expected a number > 0 or inf)")
    zero = parameters
    zero.synchronize()
    grads = [o.piece for o in zero._owned if o.piece.grad is not None]
    partial = 0.0
    for piece in grads:
        xp = namespace(piece.grad)
        magnitude = xp.abs(piece.grad)
        if math.isinf(norm_type):
            partial = max(partial, float(xp.max(magnitude)))
        else:
            partial += float(xp.sum(magnitude**norm_type))
    op = "max" if math.isinf(norm_type) else "sum"
    total_buf = np.array([partial, len(grads)], dtype=np.float64)
    zero.comm.allreduce_(total_buf[:1], op)
    zero.comm.allreduce_(total_buf[1:], "sum")
    if total_buf[1] == 0:
        return 0.0
    total = (
        float(total_buf[0]) if math.isinf(norm_type) else float(total_buf[0]) ** (1 / norm_type)
    )
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is non-finite, so it "
            "cannot be clipped; pass error_if_nonfinite=False to scale anyway"
        )
    coef = min(1.0, float(max_norm) / (total + 1e-6))
    for piece in grads:
        g = piece.grad
        scaled = g * namespace(g).asarray(coef, dtype=g.dtype)
        if array_api_compat.is_writeable_array(g):
            g[...] = scaled
        else:
            piece.grad = scaled
    like = zero._params[0].data
    return namespace(like).asarray(total, dtype=like.dtype, device=device(like))
