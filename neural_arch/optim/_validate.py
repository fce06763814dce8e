"""The checks that make a step all-or-nothing: everything that could fail, before any write.

:meth:`Optimizer.step` calls :func:`check_group` for every group before it
updates anything.  It re-checks the group's hyperparameters against the
class's spec (a value written into a group by the user or a scheduler is
checked where it is used), and every (parameter, gradient) pair: the
gradient is an array of the parameter's library and device, of its shape
and a real floating dtype; the parameter is a writable (or immutable, JAX)
array of a real floating dtype; its state arrays still match it.  A
refusal raises ValueError or TypeError naming the parameter by its name and
its place (``param_groups[0]['params'][1]``).

What the checks decide to change (a gradient of another float dtype is
rounded to the parameter's; state of an older dtype is cast to the
parameter's new one; NumPy scalars in a group become Python numbers) is
returned as staged work and applied only once every group has passed.

The steady state of training (same parameter arrays, gradients of the same
kind as last step) is recognised without a Python loop over the parameters.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import array_api_compat
import numpy as np  # only to recognise NumPy arrays, whose device needs no check

from ..backend import backend_name, device, is_immutable, namespace
from ._engine import _writable
from ._precision import is_low, state_dtype

__all__ = ["check_group", "where"]

_shape = operator.attrgetter("shape")
_dtype = operator.attrgetter("dtype")
_flags = operator.attrgetter("flags")
_writeable = operator.attrgetter("writeable")
_is = operator.is_
_real_float: dict[tuple[int, Any], bool] = {}


def is_real_float(xp: Any, dtype: Any) -> bool:
    key = (id(xp), dtype)
    ok = _real_float.get(key)
    if ok is None:
        try:
            ok = is_low(dtype) or bool(xp.isdtype(dtype, "real floating"))
        except Exception:  # not a dtype of this namespace
            ok = False
        _real_float[key] = ok
    return ok


def writable(x: Any) -> bool:
    """Whether array ``x``'s elements may be assigned.

    NumPy and CuPy say so in ``flags``; for other libraries (whose array may
    wrap a read-only buffer without saying so) an assignment of no elements
    is tried: it fails exactly when a real one would.
    """
    if hasattr(x, "flags"):
        return _writable(x)
    try:
        if x.ndim:
            x[0:0, ...] = x[0:0, ...]
        else:
            x[...] = x
    except Exception:  # the library's own error for a read-only or otherwise unwritable array
        return False
    return True


def where(opt: Any, gi: int, i: int, p: Any) -> str:
    """``parameter 'fc.weight' (param_groups[0]['params'][1])`` for messages."""
    return f"parameter {opt._names.get(id(p), i)!r} (param_groups[{gi}]['params'][{i}])"


def check_hyper(opt: Any, gi: int, group: dict, cache: dict) -> dict:
    """The group's hyperparameters checked by ``opt._check_group``: ``{name: normalized}``
    for values to write back (NumPy scalars as Python numbers); raises on a bad one.

    Values of the types and values that passed last step are not checked
    again (NaN never equals itself, so it is always seen).
    """
    values = tuple(map(group.get, opt.hyper))
    types = cache.get("hyper_types")
    if types is not None and all(map(_same_type, values, types)) and cache["hyper"] == values:
        return {}
    trial = {k: v for k, v in group.items() if k != "params"}
    try:
        opt._check_group(trial)
    except (TypeError, ValueError) as e:
        raise type(e)(f"param_groups[{gi}]: {e}") from None
    updates = {k: v for k, v in trial.items() if k not in group or v is not group[k]}
    cache["hyper"] = tuple(map(trial.get, opt.hyper))
    cache["hyper_types"] = tuple(map(type, cache["hyper"]))
    return updates


def _same_type(value: Any, kind: type) -> bool:
    return type(value) is kind


def check_group(
    opt: Any, gi: int, group: dict, cache: dict, staged: list
) -> list[tuple[Any, Any]]:
    """The group's ``(parameter, gradient)`` pairs to update, checked; raises on a bad one.

    Appends to ``staged`` the writes the step makes once every group has
    passed: ``(mapping, key, value)``.
    """
    start = len(staged)
    updates = check_hyper(opt, gi, group, cache)
    for name, value in updates.items():
        staged.append((group, name, value))
    params = group["params"]
    try:
        grads = [p.grad for p in params]
        datas = [p.data for p in params]
    except AttributeError:
        for i, p in enumerate(params):
            if not (hasattr(p, "data") and hasattr(p, "grad")):
                raise TypeError(
                    f"param_groups[{gi}]['params'][{i}] is a {type(p).__name__}, not a "
                    "parameter (an object with .data and .grad)"
                ) from None
        raise
    keep = [i for i, g in enumerate(grads) if g is not None]
    if len(keep) != len(grads):
        params = [params[i] for i in keep]
        grads = [grads[i] for i in keep]
        datas = [datas[i] for i in keep]
    if not grads:
        return []
    version = opt.state._version
    if _steady(cache, version, datas, grads):
        return list(zip(params, grads, strict=True))
    pairs = []
    records = opt.state._records
    for i, p, x, g in zip(keep, params, datas, grads, strict=True):
        pairs.append((p, _check_pair(opt, gi, i, p, x, g, records.get(id(p)), staged)))
    if all(map(_is, grads, map(_second, pairs))) and len(staged) == start + len(updates):
        # as given, nothing to fix: next step may recognise the same kind of arrays at once
        cache["checked"] = (
            version,
            datas,
            list(map(type, grads)),
            list(map(_shape, grads)),
            list(map(_dtype, grads)),
            None if type(datas[0]) is np.ndarray else [device(g) for g in grads],
        )
    else:
        cache.pop("checked", None)
    return pairs


_second = operator.itemgetter(1)


def _steady(cache: dict, version: int, datas: list, grads: list) -> bool:
    """Whether the parameters are last step's arrays, their state records are untouched, and
    the gradients are of last step's kind (type, shape, dtype, device)."""
    checked = cache.get("checked")
    if checked is None:
        return False
    old_version, old_datas, types, shapes, dtypes, devices = checked
    if (
        old_version != version
        or len(old_datas) != len(datas)
        or not all(map(_is, datas, old_datas))
        or list(map(type, grads)) != types
        or list(map(_shape, grads)) != shapes
        or list(map(_dtype, grads)) != dtypes
    ):
        return False
    if devices is None:  # NumPy: one device; writability can be toggled in place
        return all(map(_writeable, map(_flags, datas)))
    return [device(g) for g in grads] == devices


def _check_pair(
    opt: Any, gi: int, i: int, p: Any, x: Any, g: Any, entry: Any, staged: list
) -> Any:
    """The gradient to use for parameter ``p`` (``g``, or ``g`` cast to ``x``'s dtype)."""
    if not array_api_compat.is_array_api_obj(x):
        raise TypeError(
            f"{where(opt, gi, i, p)} has .data of type {type(x).__name__}, "
            "not an array of an Array API library"
        )
    xp = namespace(x)
    if not is_real_float(xp, x.dtype):
        raise TypeError(
            f"{where(opt, gi, i, p)} has dtype {x.dtype}; optimizers update parameters of a "
            "real floating dtype (float32, float64, ...)"
        )
    if not is_immutable(x) and not writable(x):
        raise ValueError(
            f"{where(opt, gi, i, p)} is a read-only array; the optimizer updates parameters "
            "in place (make it writeable, or give the optimizer a copy)"
        )
    g = check_gradient(opt, gi, i, p, x, g)
    if entry is not None:
        _check_record(opt, gi, i, p, x, xp, entry[1], staged)
    return g


def check_gradient(opt: Any, gi: int, i: int, p: Any, x: Any, g: Any) -> Any:
    """Gradient ``g`` of parameter ``p`` (array ``x``) checked: an array of ``x``'s library,
    device and shape, of a real floating dtype; returned rounded to the dtype the step
    computes in when it has another (``x``'s; float32 for float16/bfloat16)."""
    xp = namespace(x)
    if isinstance(g, np.generic):  # what NumPy gives for 0-d arithmetic: as a 0-d array
        g = np.asarray(g)
    if type(g) is not type(x) and (
        not array_api_compat.is_array_api_obj(g) or namespace(g) is not xp
    ):
        kind = (
            f"an array of {backend_name(g)}"
            if array_api_compat.is_array_api_obj(g)
            else f"a {type(g).__name__}"
        )
        raise TypeError(
            f"the gradient of {where(opt, gi, i, p)} is {kind}, but the parameter is an "
            f"array of {backend_name(xp)}; .grad must be an array of the parameter's library"
        )
    if tuple(g.shape) != tuple(x.shape):
        raise ValueError(
            f"the gradient of {where(opt, gi, i, p)} has shape {tuple(g.shape)}, but the "
            f"parameter has shape {tuple(x.shape)}"
        )
    if device(g) != device(x):
        raise ValueError(
            f"the gradient of {where(opt, gi, i, p)} is on device {device(g)}, but the "
            f"parameter is on {device(x)}"
        )
    if g.dtype != x.dtype:
        if not is_real_float(xp, g.dtype):
            raise TypeError(
                f"the gradient of {where(opt, gi, i, p)} has dtype {g.dtype}; a gradient is "
                f"real floating (the parameter's dtype, {x.dtype})"
            )
        # rounded to the dtype the step computes in: the parameter's, as p.grad.to(p.dtype),
        # or float32 for a float16/bfloat16 parameter
        compute = state_dtype(xp, x.dtype)
        if g.dtype != compute:
            g = xp.astype(g, compute)
    return g


def _check_record(
    opt: Any, gi: int, i: int, p: Any, x: Any, xp: Any, record: dict, staged: list
) -> None:
    """The state arrays of ``p`` still fit it: same library, device and shape; a state of
    another float dtype (``.data`` rebound to another dtype) is staged to be cast."""
    for key, value in record.items():
        if key == "step":
            if type(value) is not int or value < 0:
                raise ValueError(
                    f"state 'step' of {where(opt, gi, i, p)} is {value!r:.60}; expected an "
                    "integer >= 0"
                )
            continue
        if key in opt._scalar_state:
            if type(value) is not float or not math.isfinite(value):
                raise ValueError(
                    f"state {key!r} of {where(opt, gi, i, p)} is {value!r:.60}; expected a "
                    "finite float"
                )
            continue
        if value is None or key == "step":
            continue
        if not array_api_compat.is_array_api_obj(value) or namespace(value) is not xp:
            raise TypeError(
                f"state {key!r} of {where(opt, gi, i, p)} is a {type(value).__name__}, not an "
                f"array of the parameter's library ({backend_name(xp)})"
            )
        expected = opt._state_shape(key, p)
        if tuple(value.shape) != expected:
            raise ValueError(
                f"state {key!r} of {where(opt, gi, i, p)} has shape {tuple(value.shape)}, but "
                f"the parameter (shape {tuple(x.shape)}) needs {expected}: was .data rebound "
                "to another shape? Reset its state with optimizer.state[p].clear()"
            )
        if device(value) != device(x):
            raise ValueError(
                f"state {key!r} of {where(opt, gi, i, p)} is on device {device(value)}, but "
                f"the parameter is on {device(x)}"
            )
        if value.dtype != state_dtype(xp, x.dtype):
            if not is_real_float(xp, value.dtype):
                raise TypeError(
                    f"state {key!r} of {where(opt, gi, i, p)} has dtype {value.dtype}, not a "
                    "real floating dtype"
                )
            # state follows the parameter (float32 for float16/bfloat16)
            staged.append((record, key, xp.astype(value, state_dtype(xp, x.dtype))))
        elif not is_immutable(value) and not writable(value):
            staged.append((record, key, xp.asarray(value, copy=True)))
