"""Fused CPU kernels (numba) for the Adam and SGD rules of :mod:`.functional`.

Imported only by :mod:`._fastpath`, and only when numba is installed; importing
neural_arch never imports numba.  Each kernel walks one parameter's elements
once, reading ``p, g, m, v`` and writing ``p, m, v`` (Adam: 28 bytes per
float32 element, the memory-bound minimum), instead of the ~8 array passes
and temporaries of the generic rule.

The arithmetic is the generic rule's, operation for operation and in the
same order, so both paths agree bit for bit: every hyperparameter arrives
already rounded to the arrays' dtype (as NumPy rounds a Python float against
a float32 array), no literal constant appears in a loop (it would promote
float32 to float64), and ``fastmath`` stays off, so LLVM neither reassociates
nor contracts ``a * b + c`` into a fused multiply-add.

The loop bodies are written out in the kernels themselves: a per-element
helper, even one inlined by numba, costs a reference count per array per
element.  ``error_model="numpy"`` gives IEEE division (no zero check, which
would also stop the loop from vectorizing), as NumPy divides.

Kernels take 1-d C-contiguous arrays (the caller checks and flattens them:
views, no copies), so each option set compiles once per dtype, not once per
ndim.  The ``*_par`` variants split the elements into one contiguous chunk
per numba thread and run the serial kernel on each; the update is
elementwise, so the result does not depend on the thread count.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "HAS_NONFINITE",
    "adam_kernel",
    "adam_kernel_par",
    "empty_like",
    "sgd_kernel",
    "sgd_kernel_par",
]

empty_like = np.empty_like

_OPTS = {
    "error_model": "numpy",
    "nogil": True,
    "cache": True,
    "fastmath": False,
    "boundscheck": False,
}

# numba cannot cache threaded code (it refers to the thread pool): compiled per process
_PAR_OPTS = {**_OPTS, "parallel": True, "cache": False}

# Options arrive as ``None`` (off) or a value (on): numba compiles one version
# per combination it meets and prunes the branches of the options that are off,
# so every loop is straight-line code that vectorizes.  (Runtime flags would
# leave it to LLVM's loop unswitching, which gives up after a few flags.)


@numba.njit(**_OPTS)
def adam_kernel(
    param,
    grad,
    exp_avg,
    exp_avg_sq,
    max_exp_avg_sq,
    negate,
    decay,
    l2,
    w,
    one_w,
    beta2,
    one_beta2,
    bc2_sqrt,
    eps,
    step_size,
):
    """Adam/AdamW on one parameter.  ``negate``: maximize; ``decay``: AdamW's
    ``1 - lr * wd``; ``l2``: Adam's ``wd``; ``w`` or ``one_w``: the lerp weight
    ``1 - beta1`` or ``beta1`` (the branch :func:`functional._lerp_` takes);
    ``max_exp_avg_sq``: amsgrad's array."""
    pf, gf, mf, vf, xf = param, grad, exp_avg, exp_avg_sq, exp_avg_sq
    if max_exp_avg_sq is not None:
        xf = max_exp_avg_sq
    for i in range(param.size):
        g = gf[i]
        if negate is not None:
            g = -g
        p = pf[i]
        if decay is not None:
            p = p * decay
        if l2 is not None:
            g = g + l2 * p
        m = mf[i]
        if w is not None:
            m = m + (g - m) * w
        if one_w is not None:
            m = g + (m - g) * one_w
        mf[i] = m
        v = vf[i] * beta2 + (g * one_beta2) * g
        vf[i] = v
        if max_exp_avg_sq is not None:
            v = np.maximum(xf[i], v)
            xf[i] = v
        pf[i] = p + (m * step_size) / (np.sqrt(v) / bc2_sqrt + eps)


@numba.njit(**_PAR_OPTS)
def adam_kernel_par(
    param,
    grad,
    exp_avg,
    exp_avg_sq,
    max_exp_avg_sq,
    negate,
    decay,
    l2,
    w,
    one_w,
    beta2,
    one_beta2,
    bc2_sqrt,
    eps,
    step_size,
):
    n = param.size
    pf, gf, mf, vf = param, grad, exp_avg, exp_avg_sq
    chunks = numba.get_num_threads()
    if max_exp_avg_sq is None:
        for c in numba.prange(chunks):
            lo, hi = n * c // chunks, n * (c + 1) // chunks
            adam_kernel(
                pf[lo:hi],
                gf[lo:hi],
                mf[lo:hi],
                vf[lo:hi],
                None,
                negate,
                decay,
                l2,
                w,
                one_w,
                beta2,
                one_beta2,
                bc2_sqrt,
                eps,
                step_size,
            )
    else:
        xf = max_exp_avg_sq
        for c in numba.prange(chunks):
            lo, hi = n * c // chunks, n * (c + 1) // chunks
            adam_kernel(
                pf[lo:hi],
                gf[lo:hi],
                mf[lo:hi],
                vf[lo:hi],
                xf[lo:hi],
                negate,
                decay,
                l2,
                w,
                one_w,
                beta2,
                one_beta2,
                bc2_sqrt,
                eps,
                step_size,
            )


@numba.njit(**_OPTS)
def sgd_kernel(param, grad, buf, negate, l2, one_damp, nesterov, momentum, neg_lr):
    """SGD on one parameter.  ``buf``: the momentum buffer (None without
    momentum); ``one_damp``: ``1 - dampening``, None on the first step, where
    the buffer becomes the gradient itself; ``nesterov``: None or True."""
    pf, gf, bf = param, grad, param
    if buf is not None:
        bf = buf
    for i in range(param.size):
        g = gf[i]
        if negate is not None:
            g = -g
        p = pf[i]
        if l2 is not None:
            g = g + l2 * p
        if buf is not None:
            b = g
            if one_damp is not None:
                b = bf[i] * momentum + one_damp * g
            bf[i] = b
            d = b
            if nesterov is not None:
                d = g + momentum * b
            g = d
        pf[i] = p + neg_lr * g


@numba.njit(**_PAR_OPTS)
def sgd_kernel_par(param, grad, buf, negate, l2, one_damp, nesterov, momentum, neg_lr):
    n = param.size
    pf, gf = param, grad
    chunks = numba.get_num_threads()
    if buf is None:
        for c in numba.prange(chunks):
            lo, hi = n * c // chunks, n * (c + 1) // chunks
            sgd_kernel(
                pf[lo:hi], gf[lo:hi], None, negate, l2, one_damp, nesterov, momentum, neg_lr
            )
    else:
        bf = buf
        for c in numba.prange(chunks):
            lo, hi = n * c // chunks, n * (c + 1) // chunks
            sgd_kernel(
                pf[lo:hi], gf[lo:hi], bf[lo:hi], negate, l2, one_damp, nesterov, momentum, neg_lr
            )


@numba.njit(**_OPTS)
def _has_nonfinite32(grad, exponent_mask):
    bits = grad.view(np.uint32)
    worst = exponent_mask ^ exponent_mask
    for i in range(bits.size):
        worst = max(worst, bits[i] & exponent_mask)
    return worst == exponent_mask


@numba.njit(**_OPTS)
def _has_nonfinite64(grad, exponent_mask):
    bits = grad.view(np.uint64)
    worst = exponent_mask ^ exponent_mask
    for i in range(bits.size):
        worst = max(worst, bits[i] & exponent_mask)
    return worst == exponent_mask


#: dtype -> (kernel, exponent mask): an element is NaN or infinite exactly when all
#: its exponent bits are set; comparing bits as integers needs no float reduction,
#: so the loop vectorizes without fastmath.
HAS_NONFINITE = {
    np.dtype(np.float32): (_has_nonfinite32, np.uint32(0x7F800000)),
    np.dtype(np.float64): (_has_nonfinite64, np.uint64(0x7FF0000000000000)),
}
