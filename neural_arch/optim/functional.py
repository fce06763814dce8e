"""The update rules, as functions over arrays of any Array API library.

These are the optimizers' single source of truth: :class:`~neural_arch.optim.SGD`,
:class:`~neural_arch.optim.Adam` and :class:`~neural_arch.optim.AdamW` call them
for every parameter.  They are public so that code holding raw arrays and
gradients (from JAX, PyTorch, or hand-written adjoints) can use the same
update without Tensors::

    from neural_arch.optim import functional as F

    state = F.adam_init(p)
    for _ in range(steps):
        g = grad_fn(p)
        p, state = F.adam_step(p, g, state, lr=1e-3)

Every function returns the new parameter and the new state.  With
``inplace=True`` (what the optimizer classes use on NumPy, CuPy, PyTorch and
array-api-strict) the parameter and state arrays are updated in place and the
same objects are returned; on immutable arrays (JAX) and with
``inplace=False`` nothing passed in is modified and new arrays are returned.
Both modes run the same arithmetic in the same order, so they agree to the
last bit.

The rules are PyTorch's, including the order of the floating-point
operations, so that a float64 run matches ``torch.optim`` step by step to
within a few ulp.  Hyperparameters are Python floats: the arrays' dtype wins
(a float32 parameter stays float32).
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from ..backend import namespace

__all__ = [
    "adam_init",
    "adam_step",
    "sgd_init",
    "sgd_step",
]

Array = Any


def _writable(x: Array) -> bool:
    return array_api_compat.is_writeable_array(x)


def _copy(xp, x: Array) -> Array:
    return xp.asarray(x, copy=True)


def _assign(dst: Array, value: Array) -> Array:
    """``value`` stored into ``dst`` when ``dst`` is writable, else ``value`` itself."""
    if _writable(dst):
        dst[...] = value
        return dst
    return value


def _own(xp, param: Array, state: dict[str, Any], inplace: bool) -> tuple[Array, dict]:
    """The arrays the update may mutate: the given ones in place, else private copies.

    Immutable arrays (JAX) are never copied: in-place operators rebind them.
    """
    if inplace:
        return param, state
    copied = {
        k: _copy(xp, a) if k != "step" and a is not None and _writable(a) else a
        for k, a in state.items()
    }
    return (_copy(xp, param) if _writable(param) else param), copied


def _scratch(buf: Array | None, like: Array) -> bool:
    """Whether ``buf``, a temporary of this module's own, can hold an array like ``like``.

    The standard has no ``out=``; a temporary that is no longer needed is reused
    instead (``buf[...] = x`` then in-place operators), which saves allocating,
    and faulting in, fresh memory for every operation.  Only a writable array of
    ``like``'s shape and dtype qualifies, so the arithmetic is unchanged: the 0-d
    NumPy scalars that 0-d arithmetic returns and immutable (JAX) arrays do not.
    """
    return (
        buf is not None and _writable(buf) and buf.shape == like.shape and buf.dtype == like.dtype
    )


def _scaled(buf: Array | None, x: Array, c: float) -> Array:
    """``x * c``, computed in ``buf`` when :func:`_scratch` allows (``buf`` may be ``x``)."""
    if buf is x and _scratch(buf, x):
        buf *= c
        return buf
    if _scratch(buf, x):
        buf[...] = x
        buf *= c
        return buf
    return x * c


def _plus(t: Array, x: Array) -> Array:
    """``x + t`` (the same IEEE sum as ``t + x``), in ``t`` when ``t`` is a temporary like it."""
    if _scratch(t, x) or not _writable(t):  # not writable: ``+=`` rebinds to ``t + x``
        t += x
        return t
    return x + t


def _lerp_(xp, start: Array, end: Array, weight: float) -> Array:
    """``start + weight * (end - start)`` rounded as ``torch.lerp`` rounds it.

    Updates ``start`` in place when it is writable; returns the result.
    """
    return _lerp_scratch(start, end, weight)[0]


def _lerp_scratch(start: Array, end: Array, weight: float) -> tuple[Array, Array]:
    """:func:`_lerp_`, and the temporary it used, free for the caller to reuse."""
    if abs(weight) < 0.5:
        delta = end - start
        delta *= weight
        start += delta  # in place, or a rebinding on immutable arrays
        return start, delta
    out = start - end
    out *= 1.0 - weight
    out = _plus(out, end)  # end + out
    result = _assign(start, out)
    return result, (None if result is out else out)


# --------------------------------------------------------------------------- SGD


def sgd_init(param: Array) -> dict[str, Any]:
    """The state SGD keeps for ``param``: the momentum buffer, created on the first step."""
    return {"momentum_buffer": None}


def sgd_step(
    param: Array,
    grad: Array,
    state: dict[str, Any],
    /,
    *,
    lr: float = 0.01,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    inplace: bool = False,
) -> tuple[Array, dict[str, Any]]:
    """One step of stochastic gradient descent (PyTorch's ``torch.optim.SGD``).

    With ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p                      if weight_decay
        b = g                                         on the first step
        b = momentum * b + (1 - dampening) * g        afterwards
        g = g + momentum * b  if nesterov  else  b    if momentum
        p = p - lr * g

    Note that the first momentum buffer is the gradient itself, without
    ``(1 - dampening)``, as in PyTorch (Sutskever et al. 2013 write it
    differently).  ``state`` is ``{"momentum_buffer": array or None}``.
    """
    xp = namespace(param)
    param, new_state = _own(xp, param, state, inplace)
    g = -grad if maximize else grad
    own = maximize  # whether g is a temporary of our own, free once its value is used
    if weight_decay != 0:
        g, own = _plus(param * weight_decay, g), True  # g + weight_decay * p
    spare = None  # another temporary of our own, free for reuse
    if momentum != 0:
        buf = new_state.get("momentum_buffer")
        if buf is None:
            buf = _copy(xp, g)
        else:
            buf *= momentum  # in place, or a rebinding on immutable arrays
            if dampening == 0:
                buf += g  # (1 - 0) * g is g, exactly
            else:  # in g itself when nesterov does not need g again
                spare = _scaled(g if own and not nesterov else None, g, 1.0 - dampening)
                buf += spare
        new_state["momentum_buffer"] = buf
        if nesterov:
            g, own = _plus(_scaled(spare, buf, momentum), g), True  # g + momentum * b
        else:
            spare = g if own else spare
            g, own = buf, False
    param += _scaled(g if own else spare, g, -lr)  # in place, or a rebinding (immutable)
    return param, new_state


# -------------------------------------------------------------------------- Adam


def adam_init(param: Array, *, amsgrad: bool = False) -> dict[str, Any]:
    """Fresh Adam state for ``param``: ``step`` 0 and zero moments of its shape, dtype, device."""
    xp = namespace(param)
    state: dict[str, Any] = {
        "step": 0,
        "exp_avg": xp.zeros_like(param),
        "exp_avg_sq": xp.zeros_like(param),
    }
    if amsgrad:
        state["max_exp_avg_sq"] = xp.zeros_like(param)
    return state


def adam_step(
    param: Array,
    grad: Array,
    state: dict[str, Any],
    /,
    *,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    inplace: bool = False,
) -> tuple[Array, dict[str, Any]]:
    """One step of Adam (Kingma & Ba, 2015) or AdamW (Loshchilov & Hutter, 2019).

    With ``g`` the gradient (negated when ``maximize``) and ``t`` the step
    count after this step::

        p = p * (1 - lr * weight_decay)        if decoupled_weight_decay (AdamW)
        g = g + weight_decay * p               if weight_decay and not decoupled (L2)
        m = m + (1 - beta1) * (g - m)          (a lerp: beta1 * m + (1 - beta1) * g)
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                  if amsgrad, and v_max replaces v below
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    ``eps`` is added *after* the bias-corrected square root, as in PyTorch
    (the paper's "epsilon hat" variant, which Keras and Optax's ``eps_root``
    place differently).  ``state`` is the dict made by :func:`adam_init`.
    """
    xp = namespace(param)
    param, state = _own(xp, param, state, inplace)
    m, v = state["exp_avg"], state["exp_avg_sq"]
    step = state["step"] + 1
    g = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled_weight_decay:
            param *= 1.0 - lr * weight_decay
        else:
            g = _plus(param * weight_decay, g)  # g + weight_decay * p
    m, tmp = _lerp_scratch(m, g, 1.0 - beta1)
    v *= beta2
    sq = _scaled(tmp, g, 1.0 - beta2)
    sq *= g
    v += sq
    bias_correction1 = 1.0 - beta1**step
    bias_correction2_sqrt = (1.0 - beta2**step) ** 0.5
    new_state = {"step": step, "exp_avg": m, "exp_avg_sq": v}
    if amsgrad:
        vmax = _assign(state["max_exp_avg_sq"], xp.maximum(state["max_exp_avg_sq"], v))
        new_state["max_exp_avg_sq"] = vmax
        denom = xp.sqrt(vmax)
    else:
        denom = xp.sqrt(v)
    denom /= bias_correction2_sqrt
    denom += eps
    update = _scaled(sq, m, -lr / bias_correction1)
    update /= denom
    param += update
    return param, new_state
