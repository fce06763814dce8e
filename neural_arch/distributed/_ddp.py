"""DistributedOptimizer: any optimizer, data-parallel (gradients averaged before each step)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..optim._wrapper import Wrapper
from ._arrays import param_list
from ._buckets import DEFAULT_CAP_MB
from ._collectives import GradReducer, broadcast_parameters, global_loss
from ._comm import resolve

__all__ = ["DistributedOptimizer"]


class DistributedOptimizer(Wrapper):
    """Wrap an optimizer so that every rank takes the same step on the averaged gradient.

    Each rank computes gradients on its part of the batch; ``step()``
    all-reduces them (:func:`all_reduce_gradients`: flat buckets per dtype,
    the mean over ranks by default), then steps the wrapped optimizer, which
    therefore sees, on every rank, the gradient of the whole batch.  As the
    reduced gradients are identical on every rank, so are the decisions
    taken on them: with a non-finite gradient anywhere every rank raises
    FloatingPointError (or, with ``nonfinite="skip"``, every rank skips),
    and every rank holds the same parameters and state after each step.

    Args:
        optimizer: any neural_arch optimizer (or an object with
            ``param_groups``, ``step``, ``zero_grad``, ``state_dict``,
            ``load_state_dict``), built over the model's parameters.
        comm: the communicator (default: :func:`init`'s).
        average: average the gradients (True) or sum them.
        broadcast: give every rank rank 0's parameter values now
            (:func:`broadcast_parameters`), as DDP does when it is built.
        bucket_cap_mb: the largest bucket, in megabytes.

    ``zero_grad``, ``param_groups``, ``lr``, ``state``, ``step_count``,
    ``skipped_steps``, ``state_dict`` and ``load_state_dict`` are the wrapped
    optimizer's, so schedulers and checkpoints work as without MPI; a state
    dict is the plain optimizer's (any world size can load it).
    ``step(closure)`` reduces the gradients after every evaluation of the
    closure and hands the optimizer the loss averaged over the ranks (what
    L-BFGS's line search needs to take the same decisions everywhere); it
    returns that mean.  Construction and every ``step`` are collective.
    """

    def __init__(
        self,
        optimizer: Any,
        comm: Any = None,
        *,
        average: bool = True,
        broadcast: bool = True,
        bucket_cap_mb: float = DEFAULT_CAP_MB,
    ) -> None:
        if not isinstance(getattr(optimizer, "param_groups", None), list) or not callable(
            getattr(optimizer, "step", None)
        ):
            raise TypeError(
                "optimizer must be an optimizer (an object with a param_groups list and a "
                f"step method), got {type(optimizer).__name__}"
            )
        for name, flag in (("average", average), ("broadcast", broadcast)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        self.optimizer = optimizer
        self.comm = resolve(comm)
        self.average = average
        self._reducer = GradReducer(self.comm, bucket_cap_mb)
        self._synchronized = False
        if broadcast:
            broadcast_parameters(self._params(), 0, self.comm, bucket_cap_mb=bucket_cap_mb)

    def _params(self) -> list[Any]:
        return param_list(self.optimizer)

    # ------------------------------------------------------------ pass-through
    # (param_groups, state, defaults, nonfinite, lr, step_count, skipped_steps,
    # add_param_group: the wrapped optimizer's, as every wrapper's)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict (the same on every rank)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: Any) -> None:
        """Load a state dict of the plain optimizer (from any world size) on this rank."""
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)
        self._synchronized = False

    # ------------------------------------------------------------------ step

    def synchronize(self) -> None:
        """All-reduce the gradients now (e.g. to clip them); the next ``step()`` will not again."""
        if not self._synchronized:
            self._reducer(self._params(), self.average, "DistributedOptimizer.step")
            self._synchronized = True

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Reduce the gradients (unless :meth:`synchronize` did), then step the optimizer."""
        try:
            if closure is None:
                self.synchronize()
                return self.optimizer.step()
            if not callable(closure):
                raise TypeError(f"closure must be callable, got {closure!r:.80}")

            def reduced() -> Any:
                loss = closure()
                self._reducer(self._params(), self.average, "DistributedOptimizer.step")
                return global_loss(self.comm, loss)

            return self.optimizer.step(reduced)
        finally:
            self._synchronized = False

    def __repr__(self) -> str:
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return f"DistributedOptimizer(rank {self.comm.rank} of {self.comm.world_size},\n{inner}\n)"
