"""Fused CUDA kernels (CuPy ElementwiseKernel) for the Adam and SGD rules of :mod:`.functional`.

Imported only by :mod:`._fastpath`, and only when a group's parameters are
CuPy arrays, so importing neural_arch never imports CuPy.  The kernels have
the signatures of :mod:`._numba`'s, so that one dispatch loop drives both:
an option is ``None`` (off) or a value rounded to the arrays' dtype, and each
combination of options compiles (once, cached by CuPy) to straight-line code.

Same arithmetic, same order as the generic rule, which on CuPy runs one
elementwise kernel per operation: ``--fmad=false`` keeps NVRTC from
contracting ``a * b + c`` into a fused multiply-add, and division and square
root are the IEEE-rounded ones (CuPy does not pass ``--use_fast_math``), so
the fused kernel matches the generic path bit for bit.

Untested on this project's CI machines (no CUDA device there); the tests in
``tests/test_fastpath.py`` run wherever CuPy finds a device.
"""

from __future__ import annotations

from typing import Any

import cupy

__all__ = [
    "HAS_NONFINITE",
    "adam_kernel",
    "adam_kernel_par",
    "empty_like",
    "sgd_kernel",
    "sgd_kernel_par",
]

_OPTIONS = ("--fmad=false",)
_compiled: dict[tuple, Any] = {}

# CuPy needs no threads of ours and keeps the generic path's check of gradients.
adam_kernel_par = None
sgd_kernel_par = None
HAS_NONFINITE: dict = {}
empty_like = cupy.empty_like


def _adam(negate: bool, decay: bool, l2: bool, small_w: bool, amsgrad: bool) -> Any:
    key = ("adam", negate, decay, l2, small_w, amsgrad)
    kernel = _compiled.get(key)
    if kernel is not None:
        return kernel
    ins = ["T g"]
    body = ["T gg = g;"]
    if negate:
        body.append("gg = -gg;")
    body.append("T pp = p;")
    if decay:
        ins.append("T decay")
        body.append("pp = pp * decay;")
    if l2:
        ins.append("T l2")
        body.append("gg = gg + l2 * pp;")
    if small_w:
        ins.append("T w")
        body.append("T mm = m + (gg - m) * w;")
    else:
        ins.append("T one_w")
        body.append("T mm = gg + (m - gg) * one_w;")
    ins += ["T beta2", "T one_beta2", "T bc2_sqrt", "T eps", "T step_size"]
    body += ["m = mm;", "T vv = v * beta2 + (gg * one_beta2) * gg;", "v = vv;"]
    outs = ["T p", "T m", "T v"]
    if amsgrad:
        outs.append("T vmax")
        body += ["vv = (vv > vmax || vv != vv) ? vv : vmax;", "vmax = vv;"]  # np.maximum
    body.append("p = pp + (mm * step_size) / (sqrt(vv) / bc2_sqrt + eps);")
    name = "neural_arch_adam_" + "".join(str(int(f)) for f in key[1:])
    kernel = cupy.ElementwiseKernel(
        ", ".join(ins), ", ".join(outs), "\n".join(body), name, options=_OPTIONS
    )
    _compiled[key] = kernel
    return kernel


def adam_kernel(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, negate, decay, l2, w, one_w,
                beta2, one_beta2, bc2_sqrt, eps, step_size):  # fmt: skip
    """Adam/AdamW on one parameter, in place (arguments as :func:`._numba.adam_kernel`)."""
    amsgrad = max_exp_avg_sq is not None
    kernel = _adam(negate is not None, decay is not None, l2 is not None, w is not None, amsgrad)
    args = [grad]
    args += [s for s in (decay, l2, w, one_w) if s is not None]
    args += [beta2, one_beta2, bc2_sqrt, eps, step_size, param, exp_avg, exp_avg_sq]
    if amsgrad:
        args.append(max_exp_avg_sq)
    kernel(*args)


def _sgd(negate: bool, l2: bool, momentum: bool, first: bool, nesterov: bool) -> Any:
    key = ("sgd", negate, l2, momentum, first, nesterov)
    kernel = _compiled.get(key)
    if kernel is not None:
        return kernel
    ins = ["T g"]
    body = ["T gg = g;"]
    if negate:
        body.append("gg = -gg;")
    if l2:
        ins.append("T l2")
        body.append("gg = gg + l2 * p;")
    outs = ["T p"]
    if momentum:
        ins.append("T momentum")
        outs.append("T buf")
        if first:
            body.append("T b = gg;")
        else:
            ins.append("T one_damp")
            body.append("T b = buf * momentum + one_damp * gg;")
        body.append("buf = b;")
        body.append("gg = gg + momentum * b;" if nesterov else "gg = b;")
    ins.append("T neg_lr")
    body.append("p = p + neg_lr * gg;")
    name = "neural_arch_sgd_" + "".join(str(int(f)) for f in key[1:])
    kernel = cupy.ElementwiseKernel(
        ", ".join(ins), ", ".join(outs), "\n".join(body), name, options=_OPTIONS
    )
    _compiled[key] = kernel
    return kernel


def sgd_kernel(param, grad, buf, negate, l2, one_damp, nesterov, momentum, neg_lr):
    """SGD on one parameter, in place (arguments as :func:`._numba.sgd_kernel`)."""
    has_buf, first = buf is not None, one_damp is None
    kernel = _sgd(negate is not None, l2 is not None, has_buf, first, nesterov is not None)
    args = [grad]
    if l2 is not None:
        args.append(l2)
    if has_buf:
        args.append(momentum)
        if not first:
            args.append(one_damp)
    args += [neg_lr, param]
    if has_buf:
        args.append(buf)
    kernel(*args)
