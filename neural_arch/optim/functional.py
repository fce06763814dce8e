"""The update rules, as functions over arrays of any Array API library.

They run the optimizers' own rules (the ``adam`` and ``sgd`` functions
beside :class:`~neural_arch.optim.Adam` and :class:`~neural_arch.optim.SGD`)
on the generic engine, so that code holding raw arrays and gradients (from
JAX, PyTorch, or hand-written adjoints) gets the same update without
Tensors or optimizer objects::

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
last bit, and agree with the optimizer classes.  They work under
``jax.jit`` too (the step count may then be traced).

The rules are PyTorch's, including the order of the floating-point
operations, so that a float64 run matches ``torch.optim`` step by step to
within a few ulp.  Hyperparameters are Python floats: the arrays' dtype wins
(a float32 parameter stays float32).
"""

from __future__ import annotations

from typing import Any

from ..backend import namespace
from . import _engine
from . import adam as _adam
from . import sgd as _sgd
from .optimizer import _state_keys, zero_state
from .rule import trace

__all__ = [
    "adam_init",
    "adam_step",
    "sgd_init",
    "sgd_step",
]

Array = Any


def _apply(rule, flags, scalars, param, grad, state, inplace, step=None) -> tuple[Array, dict]:
    """Run ``rule`` on one parameter through the generic engine; return (param, new state)."""
    xp = namespace(param)
    if not inplace:  # private copies of what the update writes (immutable arrays need none)
        param = _engine.private(xp, param)
        state = {k: _engine.private(xp, v) for k, v in state.items()}
    present = tuple(k for k in _state_keys(rule) if state.get(k) is not None)
    program = trace(rule, present, flags)
    arrays = {k: state.get(k) for k in program.arrays}
    arrays["param"], arrays["grad"] = param, grad
    out = _engine.run_generic(program, xp, arrays, scalars)
    new_state = {**state, **{k: v for k, v in out.items() if k != "param"}}
    if step is not None:
        new_state["step"] = step
    return out["param"], new_state


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
    group = {
        "lr": lr,
        "momentum": momentum,
        "dampening": dampening,
        "weight_decay": weight_decay,
        "nesterov": nesterov,
        "maximize": maximize,
    }
    flags, scalars = _sgd.flags(group), _sgd.scalars(group)
    return _apply(_sgd.sgd, flags, scalars, param, grad, state, inplace)


# -------------------------------------------------------------------------- Adam


def adam_init(param: Array, *, amsgrad: bool = False) -> dict[str, Any]:
    """Fresh Adam state for ``param``: ``step`` 0 and zero moments of its shape, dtype, device."""
    return zero_state(_adam.adam, _adam.state_spec({"amsgrad": amsgrad}), param, {})


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

    ``eps`` is added *after* the bias-corrected square root, as in PyTorch's
    and the paper's algorithm (Keras's ``epsilon`` is this one too, in its
    "epsilon hat" form; Optax's ``eps_root`` sits inside the root).
    ``state`` is the dict made by :func:`adam_init`.
    """
    group = {
        "lr": lr,
        "betas": (beta1, beta2),
        "eps": eps,
        "weight_decay": weight_decay,
        "amsgrad": amsgrad,
        "maximize": maximize,
        "decoupled_weight_decay": decoupled_weight_decay,
    }
    step = state["step"] + 1
    flags = _adam.flags(group)
    scalars = _adam.scalars(group, step)
    return _apply(_adam.adam, flags, scalars, param, grad, state, inplace, step)
