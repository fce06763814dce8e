"""``EMA``: an exponential moving average of parameters, kept beside them for evaluation.

Each :meth:`EMA.update` moves every shadow weight towards its parameter::

    shadow = decay * shadow + (1 - decay) * p

computed as PyTorch's ``lerp(shadow, p, w)`` with ``w = 1 - decay`` (the form
``torch.optim.swa_utils.get_ema_multi_avg_fn`` uses, so the values agree with it)::

    shadow + w * (p - shadow)          if |w| < 0.5
    p - (p - shadow) * (1 - w)         otherwise

The arithmetic runs on the parameters' own arrays, whatever their library:
NumPy, CuPy, PyTorch and array-api-strict shadows are updated in place, JAX
shadows (immutable) are rebound. Shadows of float16/bfloat16 parameters are
kept in float32, so that ``(1 - decay) * p`` is not lost to rounding when the
decay is close to 1 (with ``decay=0.999``, float16 would round most updates
away); every other dtype keeps the parameter's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import array_api_compat

from ..backend import device, dtype_name, is_immutable, namespace, to_backend
from .lr_scheduler import _integer, _real, _show

__all__ = ["EMA"]

_FLOATS = ("float16", "bfloat16", "float32", "float64")
_NARROW = ("float16", "bfloat16")
_KEYS = ("decay", "num_updates", "shadow_params")


def lerp(start: Any, end: Any, weight: float, *, inplace: bool = False) -> Any:
    """``start + weight * (end - start)`` in PyTorch's two-branch form (see the module doc).

    ``weight`` is a Python float; the arrays share namespace, device and dtype.
    With ``inplace`` the result is written into ``start`` (a writable array)
    and ``start`` is returned; otherwise a new array.
    """
    diff = end - start
    if abs(weight) < 0.5:
        diff *= weight
        if inplace:
            start += diff
            return start
        return start + diff
    diff *= 1.0 - weight
    if inplace:
        start[...] = end - diff
        return start
    return end - diff


def writable(x: Any) -> bool:
    """Whether ``x[...] = y`` will work: not JAX, not a read-only NumPy array, not a
    PyTorch tensor that autograd or inference mode guards."""
    if not array_api_compat.is_writeable_array(x):
        return False
    if array_api_compat.is_torch_array(x):
        return not (x.requires_grad or x.is_inference())
    return True


def like(x: Any, target: Any) -> Any:
    """``x`` on ``target``'s backend, device and dtype (``x`` itself when it already is)."""
    return to_backend(x, namespace(target), device=device(target), dtype=target.dtype)


def assign(param: Any, value: Any) -> None:
    """Write ``value`` into ``param.data``: in place where possible (JAX: rebind).

    ``value`` is converted to the parameter's backend, device and dtype first;
    the version counter goes up either way (a pending ``backward()`` sees it).
    A rebound parameter never aliases a mutable ``value``.
    """
    data = param.data
    new = like(value, data)
    if new is data:
        return
    if writable(data):
        data[...] = new
        bump_version(param)
        return
    param.data = new if new is not value or is_immutable(new) else snapshot(new)


def bump_version(param: Any) -> None:
    """Tell autograd that ``param``'s values changed in place (a neural_arch Tensor's
    counter; other objects with ``.data``, such as torch Parameters, count their own)."""
    version = getattr(param, "_version", None)
    if type(version) is int:
        with contextlib.suppress(AttributeError):  # a read-only counter (torch tensors)
            param._version = version + 1


def snapshot(x: Any) -> Any:
    """A copy of ``x`` that later in-place writes to ``x`` cannot change (JAX: ``x``)."""
    return x if is_immutable(x) else namespace(x).asarray(x, copy=True)


def _param_list(params: Any) -> list[Any]:
    if isinstance(params, Mapping):
        params = list(params.values())
    elif isinstance(params, (set, frozenset)):
        raise TypeError("params must be an ordered collection of parameters, not a set")
    elif isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
        raise TypeError(
            f"params must be an iterable of parameters (objects with .data arrays), "
            f"got {_show(params)}"
        )
    out = list(params)
    if not out:
        raise ValueError("params must not be empty")
    seen: dict[int, int] = {}
    for i, p in enumerate(out):
        data = getattr(p, "data", None)
        if not array_api_compat.is_array_api_obj(data):
            raise TypeError(f"params[{i}] must have a .data array, got {_show(p)}")
        if dtype_name(data.dtype) not in _FLOATS:
            raise TypeError(
                f"params[{i}] has dtype {dtype_name(data.dtype)}: a real floating "
                f"parameter ({', '.join(_FLOATS)}) expected"
            )
        if id(p) in seen:
            raise ValueError(
                f"params[{i}] is params[{seen[id(p)]}] again: give each parameter once"
            )
        seen[id(p)] = i
    return out


def _shadow_dtype(x: Any) -> Any:
    xp = namespace(x)
    return xp.float32 if dtype_name(x.dtype) in _NARROW else x.dtype


def _decay(name: str, value: Any) -> float:
    return float(_real(name, value, low=0.0, high=1.0))


class EMA:
    """Shadow weights ``shadow = decay * shadow + (1 - decay) * p``, one per parameter.

    Args:
        params: the parameters to follow (an iterable of objects with a
            ``.data`` array, such as ``model.parameters()``, or a dict name ->
            parameter); each given once.
        decay: in ``[0, 1]`` (default 0.999); 0 copies the parameters at each
            update, 1 keeps the first values.

    The shadows start as copies of the parameters (float32 for float16 and
    bfloat16 ones) on each parameter's own backend and device. Call
    :meth:`update` after each ``optimizer.step()``; for evaluation, :meth:`swap`
    puts the averages into the parameters and a second :meth:`swap` brings the
    training weights back, bit for bit; :meth:`copy_to` writes the averages
    for good. ``state_dict()`` / ``load_state_dict()`` round-trip through
    :func:`neural_arch.save` / :func:`neural_arch.load`.

    Formula and precision: see :mod:`neural_arch.optim.ema` (PyTorch's lerp).
    A parameter moved to another backend or device after the EMA was built
    is converted to its shadow's on each update.
    """

    def __init__(self, params: Any, decay: float = 0.999) -> None:
        self.decay = _decay("decay", decay)
        self.params = _param_list(params)
        self.shadow_params = [
            to_backend(p.data, namespace(p.data), dtype=_shadow_dtype(p.data), copy=True)
            for p in self.params
        ]
        self.num_updates = 0
        # While swapped: per parameter None (exchanged with its shadow, same dtype)
        # or the training weights kept aside (a narrower parameter than its shadow).
        self._stash: list[Any] | None = None

    @property
    def swapped(self) -> bool:
        """True between a :meth:`swap` and the next: the parameters hold the averages."""
        return self._stash is not None

    def _not_swapped(self, what: str) -> None:
        if self._stash is not None:
            raise RuntimeError(
                f"EMA.{what}() while swapped: the parameters hold the averages, not the "
                "training weights; call swap() again first"
            )

    def _checked_params(self) -> None:
        for i, (p, s) in enumerate(zip(self.params, self.shadow_params, strict=True)):
            if tuple(p.data.shape) != tuple(s.shape):
                raise ValueError(
                    f"params[{i}] has shape {tuple(p.data.shape)}, its shadow "
                    f"{tuple(s.shape)}: the parameter was replaced after the EMA was built"
                )

    def update(self) -> None:
        """One step of the average: ``shadow = lerp(shadow, p, 1 - decay)`` for every parameter."""
        self._not_swapped("update")
        self._checked_params()
        w = 1.0 - self.decay
        for i, (p, s) in enumerate(zip(self.params, self.shadow_params, strict=True)):
            self.shadow_params[i] = lerp(s, like(p.data, s), w, inplace=writable(s))
        self.num_updates += 1

    def _averages(self) -> list[Any]:
        """The arrays that hold the averages now (the parameters' for exchanged ones)."""
        if self._stash is None:
            return list(self.shadow_params)
        return [
            p.data if kept is None else s
            for p, s, kept in zip(self.params, self.shadow_params, self._stash, strict=True)
        ]

    def swap(self) -> None:
        """Exchange the averages and the parameters' values (for evaluation; again to undo).

        A parameter of the shadow's dtype trades values with it; a narrower one
        (float16, bfloat16) receives the rounded average while its training
        weights are kept aside, so two swaps restore every bit of both.
        """
        self._checked_params()
        if self._stash is None:
            stash = []
            for i, (p, s) in enumerate(zip(self.params, self.shadow_params, strict=True)):
                if dtype_name(p.data.dtype) == dtype_name(s.dtype):
                    old = snapshot(p.data)
                    assign(p, s)
                    self.shadow_params[i] = _store(s, old)
                    stash.append(None)
                else:
                    stash.append(snapshot(p.data))
                    assign(p, s)
            self._stash = stash
            return
        for i, (p, s, kept) in enumerate(
            zip(self.params, self.shadow_params, self._stash, strict=True)
        ):
            if kept is None:
                old = snapshot(p.data)
                assign(p, s)
                self.shadow_params[i] = _store(s, old)
            else:
                assign(p, kept)
        self._stash = None

    def copy_to(self, params: Any = None) -> None:
        """Write the averages into ``params`` (default: the parameters followed), cast to each
        parameter's backend, device and dtype.

        ``params`` must match the followed parameters in number and shapes
        (the same model's parameters, or a copy of it). While swapped, the
        followed parameters already hold the averages.
        """
        targets = self.params if params is None else _param_list(params)
        if len(targets) != len(self.params):
            raise ValueError(
                f"params must have {len(self.params)} parameters (one per shadow), "
                f"got {len(targets)}"
            )
        averages = self._averages()
        for i, (p, a) in enumerate(zip(targets, averages, strict=True)):
            if tuple(p.data.shape) != tuple(a.shape):
                raise ValueError(
                    f"params[{i}] has shape {tuple(p.data.shape)}, its shadow {tuple(a.shape)}"
                )
        for p, a in zip(targets, averages, strict=True):
            if p.data is not a:
                assign(p, a)

    # ----------------------------------------------------------------- state dict

    def state_dict(self) -> dict[str, Any]:
        """``{"decay": float, "num_updates": int, "shadow_params": [array, ...]}``.

        The arrays are the EMA's own (not copies, as an optimizer's state
        dict); :func:`neural_arch.save` writes them to a file. While swapped,
        the averages are given all the same.
        """
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow_params": self._averages(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict` (of any backend): all or nothing.

        Checked before anything changes: exactly the keys above, ``decay`` in
        ``[0, 1]``, ``num_updates`` an integer >= 0, one finite real floating
        array (or Tensor) per parameter with its shape; each is copied onto
        its shadow's backend, device and dtype.
        """
        self._not_swapped("load_state_dict")
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {_show(state_dict)}")
        if set(state_dict) != set(_KEYS):
            raise ValueError(
                f"state_dict must have exactly the keys {list(_KEYS)}, got {list(state_dict)} "
                "(is it the state dict of an EMA?)"
            )
        decay = _decay("state_dict['decay']", state_dict["decay"])
        num_updates = _integer("state_dict['num_updates']", state_dict["num_updates"], low=0)
        saved = state_dict["shadow_params"]
        n = len(self.shadow_params)
        if not isinstance(saved, (list, tuple)):
            raise TypeError(f"state_dict['shadow_params'] must be a list of {n} arrays")
        if len(saved) != n:
            raise ValueError(
                f"state_dict['shadow_params'] has {len(saved)} arrays, this EMA follows {n} "
                "parameters"
            )
        shadows = [
            _loaded(f"state_dict['shadow_params'][{i}]", v, s)
            for i, (v, s) in enumerate(zip(saved, self.shadow_params, strict=True))
        ]
        self.decay = decay
        self.num_updates = num_updates
        for i, (s, new) in enumerate(zip(self.shadow_params, shadows, strict=True)):
            self.shadow_params[i] = _store(s, new)

    def __repr__(self) -> str:
        return (
            f"EMA(decay={self.decay}, parameters={len(self.params)}, "
            f"num_updates={self.num_updates})"
        )


def _store(target: Any, value: Any) -> Any:
    """``value`` written into our own array ``target`` in place (returned), or ``value``
    converted to it (JAX)."""
    value = like(value, target)
    if value is target:
        return target
    if writable(target):
        target[...] = value
        return target
    return value


def _loaded(name: str, value: Any, target: Any) -> Any:
    """A saved shadow checked against ``target`` and copied onto its backend/device/dtype."""
    if not array_api_compat.is_array_api_obj(value):
        value = getattr(value, "data", value)  # a Tensor
    if array_api_compat.is_torch_array(value):
        value = value.detach()
    if not array_api_compat.is_array_api_obj(value):
        raise TypeError(f"{name} must be an array, got {_show(value)}")
    if dtype_name(value.dtype) not in _FLOATS:
        raise TypeError(
            f"{name} has dtype {dtype_name(value.dtype)}: a real floating array expected"
        )
    if tuple(value.shape) != tuple(target.shape):
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}, the parameter {tuple(target.shape)}"
        )
    xp = namespace(target)
    try:
        new = to_backend(value, xp, device=device(target), dtype=target.dtype, copy=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"cannot load {name} onto its shadow: {exc}") from exc
    if not bool(xp.all(xp.isfinite(new))):
        raise ValueError(f"{name} has non-finite values (NaN or inf)")
    return new
