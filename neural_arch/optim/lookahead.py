"""``Lookahead``: k steps forward with the inner optimizer, one step back (Zhang et al. 2019)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..backend import device, is_immutable, namespace
from ._engine import _writable
from ._precision import state_dtype
from ._wrapper import Wrapper, check_keys, load_arrays, misfit, param_list
from .lr_scheduler import _integer, _real
from .optimizer import _count

__all__ = ["Lookahead"]

_KEYS = ("optimizer", "steps_since_sync", "slow_params")


class Lookahead(Wrapper):
    """Keep slow weights ``φ`` beside the inner optimizer's fast weights ``θ`` (the
    parameters); every ``k`` inner steps, ``φ ← φ + α(θ − φ)`` and ``θ ← φ``.

    Zhang, Lucas, Hinton and Ba, *Lookahead Optimizer: k steps forward,
    1 step back* (2019).  The interpolation is computed as ``torch.lerp``
    does (``φ + α(θ − φ)`` for ``α < 0.5``, ``θ − (1 − α)(θ − φ)`` otherwise),
    so that ``alpha=1`` is the inner optimizer exactly and a parameter that
    did not move in ``k`` steps keeps its bits.

    Args:
        optimizer: the inner ("fast") optimizer, any neural_arch optimizer.
        k: inner steps between synchronisations, a positive integer
            (Optax's ``sync_period``).
        alpha: the slow step size ``α`` in ``(0, 1]`` (Optax's
            ``slow_step_size``).

    The slow weights start as the parameters' values when the first
    :meth:`step` begins (not when the wrapper is built, so that weights
    loaded into the model in between are the ones it starts from), as in the
    paper and Optax's ``LookaheadParams.init_synced``.  The common PyTorch
    implementation (``torch_optimizer.Lookahead``) instead copies them after
    the first inner step and synchronises at steps 1, k + 1, 2k + 1, ...;
    here the synchronisations come after inner steps k, 2k, ..., as in
    Optax's ``lookahead``.  A parameter added later (``add_param_group``)
    gets its slow weights at the next step.  Only steps the inner optimizer
    applies count (not those skipped with ``nonfinite="skip"``).  The slow
    weights are kept in the parameter's dtype, float32 for float16/bfloat16
    parameters; with ``master_weights=True`` a synchronisation writes the
    inner optimizer's float32 master copy too.

    :meth:`step` returns what the inner optimizer's ``step(closure)`` returns.
    A synchronisation is checked before the inner step runs: a step that
    raises changes nothing.  :meth:`slow_weights` gives a parameter's slow
    weights.  ``state_dict()`` is ``{"optimizer": inner state dict,
    "steps_since_sync": int, "slow_params": {parameter index: array}}``.
    """

    def __init__(self, optimizer: Any, k: int = 5, alpha: float = 0.5) -> None:
        super().__init__(optimizer)
        self.k = _integer("k", k, low=1)
        self.alpha = float(_real("alpha", alpha, low=0.0, high=1.0, low_open=True))
        self.steps_since_sync = 0
        self._slow: dict[int, tuple[Any, Any]] = {}  # id(param) -> (param, slow weights)

    def slow_weights(self, param: Any) -> Any:
        """The slow weights of ``param`` (the wrapper's own array); None before its first step."""
        entry = self._slow.get(id(param))
        return None if entry is None else entry[1]

    # ------------------------------------------------------------------ step

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One inner step (``optimizer.step(closure)``); after every ``k``-th, synchronise."""
        params = param_list(self.optimizer)
        new = {id(p): (p, self._copy(p)) for p in params if id(p) not in self._slow}
        syncing = self.steps_since_sync + 1 >= self.k
        if syncing:
            self._check_slow()
        before = self.optimizer.step_count
        loss = self.optimizer.step(closure)
        self._slow.update(new)
        if self.optimizer.step_count != before:
            self.steps_since_sync += 1
            if syncing:
                self._sync(params)
                self.steps_since_sync = 0
        return loss

    def _fast(self, p: Any) -> Any:
        """The fast weights: the inner's float32 master copy if it keeps one, else ``p.data``."""
        record = self.optimizer.state.get(p)
        master = None if record is None else record.get("master_param")
        return p.data if master is None else master

    def _copy(self, p: Any) -> Any:
        xp = namespace(p.data)
        return xp.astype(self._fast(p), state_dtype(xp, p.data.dtype), copy=True)

    def _check_slow(self) -> None:
        """Each slow weight still fits its parameter (library, device, shape)."""
        bad = misfit(self._slow.values())
        if bad is not None:
            (p, slow), x = bad, bad[0].data
            name = self.optimizer._names.get(id(p), "?")
            raise ValueError(
                f"parameter {name!r} (shape {tuple(x.shape)}, device {device(x)}) no "
                f"longer matches its slow weights (shape {tuple(slow.shape)}, device "
                f"{device(slow)}); was .data rebound?"
            )

    def _sync(self, params: list[Any]) -> None:
        """``φ ← φ + α(θ − φ)``, then ``θ ← φ`` (and the master copy, if any)."""
        for p in params:
            p, slow = self._slow[id(p)]
            xp = namespace(p.data)
            dtype = state_dtype(xp, p.data.dtype)
            fast = self._fast(p)
            if fast.dtype != dtype:
                fast = xp.astype(fast, dtype)
            if slow.dtype != dtype:  # .data rebound to another float dtype
                slow = xp.astype(slow, dtype)
            slow = _lerp(xp, slow, fast, self.alpha)
            self._slow[id(p)] = (p, slow)
            record = self.optimizer.state.get(p)
            master = None if record is None else record.get("master_param")
            if master is not None:
                _assign(xp, record, "master_param", slow)
            x = p.data
            value = slow if x.dtype == dtype else xp.astype(slow, x.dtype)
            if _writable(x):
                x[...] = value
            else:  # JAX (immutable: sharing the slow array is safe)
                p.data = value if is_immutable(value) else xp.asarray(value, copy=True)
            version = getattr(p, "_version", None)
            if type(version) is int:
                p._version = version + 1

    # ------------------------------------------------------------ state dict

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizer": ..., "steps_since_sync": int, "slow_params": {index: array}}``;
        the arrays are the wrapper's own (as an optimizer's state dict)."""
        index = {id(p): i for i, p in enumerate(param_list(self.optimizer))}
        slow = {index[key]: s for key, (_, s) in self._slow.items() if key in index}
        return {
            "optimizer": self.optimizer.state_dict(),
            "steps_since_sync": self.steps_since_sync,
            "slow_params": dict(sorted(slow.items())),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict` (of any backend): all or nothing.

        Checked before anything changes: exactly the three keys,
        ``steps_since_sync`` an integer in ``[0, k)`` (this wrapper's ``k``),
        each slow weight a finite real floating array of its parameter's
        shape, and the inner state dict as the inner optimizer's
        ``load_state_dict`` checks it.  Parameters without saved slow
        weights get them at the next step.
        """
        check_keys(state_dict, _KEYS, "Lookahead")
        since = _count(state_dict["steps_since_sync"], "state_dict['steps_since_sync']")
        if since >= self.k:
            raise ValueError(
                f"state_dict['steps_since_sync'] is {since}, but this Lookahead synchronises "
                f"every {self.k} steps: expected an integer in [0, {self.k})"
            )
        params = param_list(self.optimizer)
        slow = load_arrays(state_dict["slow_params"], params, "state_dict['slow_params']")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._slow = slow
        self.steps_since_sync = since

    def _options(self) -> str:
        return f"k={self.k}, alpha={self.alpha}"


def _lerp(xp: Any, start: Any, end: Any, weight: float) -> Any:
    """``start + weight·(end − start)`` as ``torch.lerp`` computes it (exact at ``weight=1``
    and where ``end == start``), written into ``start`` where it is writable."""
    diff = end - start
    if weight < 0.5:
        diff = _scaled(diff, weight)
        if _writable(start):
            start += diff
            return start
        return start + diff
    diff = _scaled(diff, 1.0 - weight)
    if _writable(start):
        start[...] = end - diff
        return start
    return end - diff


def _scaled(x: Any, factor: float) -> Any:
    """``x * factor``, in place where ``x`` (a temporary) is writable."""
    if _writable(x):
        x *= factor
        return x
    return x * factor


def _assign(xp: Any, record: dict, key: str, value: Any) -> None:
    """``record[key] = value``: written in place where possible, never aliasing ``value``."""
    target = record[key]
    if _writable(target) and target.dtype == value.dtype:
        target[...] = value
    else:
        record[key] = value if is_immutable(value) else xp.asarray(value, copy=True)
