"""Compile every CuPy kernel the fast path can reach, as CuPy would, without a GPU.

Run by ``.ci/cupy_check``, in a virtual environment of its own holding the
CuPy pinned below and NVIDIA's NVRTC and CUDA runtime-header wheels.

What it compiles: for every optimizer whose update is a rule (``_rule``),
every combination of its flags (the keys its ``_flags`` returns) and of the
rule's optional state arrays is traced (``tests/_cupy_kernels.py``; a
combination the rule refuses to trace is one the optimizer cannot reach);
each distinct program's kernel is the ``cupy.ElementwiseKernel`` the fast
path builds (``_fastpath._cupy_kernel``: its body, parameters and compile
options).

How: CuPy cannot compile without a driver (its public path asks the device
for its architecture), so this script takes the steps of
``ElementwiseKernel.__call__`` and ``compile_with_cache`` itself, with
CuPy's own functions where CuPy exposes them: the kernel source from
``_get_elementwise_kernel_code`` (the generator ``__call__`` uses, fed the
argument descriptions a call with contiguous arrays and Python-float
scalars produces), CuPy's headers and ``assemble_cupy_compiler_options``,
the options ``_compile_with_cache_cuda`` and ``_compile_using_nvrtc_no_warning``
add (``-ftz=true``, ``-arch=sm_90``, ``--device-as-default-execution-space``;
CuPy's defaults, without its debug, PTX or PCH switches), and NVRTC through
CuPy's ``_NVRTCProgram``.  For speed, the kernels of one dtype and one
argument layout are compiled as one NVRTC program (each kernel's source is
CuPy's, byte for byte; the ``typedef`` they repeat is legal C++); the
longest kernel is also compiled alone, as CuPy compiles it, and must give
the same PTX.  Each optimizer's longest kernel is compiled a second time for
a transposed gradient and 64-bit indexing (other ``CArray`` types).

What it asserts, per kernel:

* NVRTC's log is empty: no error and no warning;
* its PTX has no fused multiply-add (``fma``/``mad`` on floats); every
  floating-point add, sub, mul, div and sqrt carries the rounding mode
  ``.rn`` (PTX's rule: ptxas never contracts an add or mul that has one, and
  ``.rn`` division and square root are IEEE's); no ``.approx`` instruction;
  and a float32 kernel computes in float32 only, a float64 one in float64.

A self-test runs first: a planted typo in a body, ``y = a * b + c`` and
Adam's kernel compiled without the fast path's ``--fmad=false``, and a
kernel that triggers a compiler warning, must each be reported.

The CuPy internals used here are CuPy 14.2.0's; the script refuses any other
version (update the pins in ``.ci/cupy_check`` and check these steps
against CuPy's ``_kernel.pyx``, ``core.pyx`` and ``cuda/compiler.py``).
"""

from __future__ import annotations

import io
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cupy
import numpy as np
from cupy._core import _carray, _kernel, _scalar, core
from cupy.cuda import compiler
from cupy_backends.cuda.libs import nvrtc

from neural_arch.optim import _fastpath

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _cupy_kernels import reachable_programs  # the tests' list of the kernels

CUPY_VERSION = "14.2.0"
ARCH = "90"  # H100/H200
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# cupy/_core/_kernel.pxd: enum _ArgKind
_ARG_NDARRAY, _ARG_INDEXER, _ARG_SCALAR = 1, 2, 3


@dataclass(frozen=True)
class Layout:
    """How the arrays of a call look once CuPy has reduced their dimensions."""

    name: str
    ndim: int
    grad_contiguous: bool
    index_32_bits: bool


#: same-shaped C-contiguous arrays of under 2**31 elements: one dimension
CONTIGUOUS = Layout("contiguous", 1, True, True)
#: a transposed (F-ordered) gradient beside C-ordered state, 2**31 elements or more
STRIDED = Layout("strided gradient, 64-bit index", 2, False, False)


@dataclass
class Kernel:
    """An ElementwiseKernel and where it comes from (for the messages)."""

    kernel: Any
    origin: str


# ------------------------------------------------------------------ kernels


def reachable_kernels() -> tuple[dict[str, Kernel], dict[str, list[str]], int]:
    """({kernel name: Kernel}, {optimizer: its kernel names}, traces the rules refuse)."""
    programs, refused = reachable_programs()
    kernels: dict[str, Kernel] = {}
    by_optimizer: dict[str, list[str]] = {}
    for name, traced in programs.items():
        names = by_optimizer[name] = []
        for origin, program in traced:
            kernel = _fastpath._cupy_kernel(program)  # what the fast path would launch
            if kernel.name not in names:
                names.append(kernel.name)
            kernels.setdefault(kernel.name, Kernel(kernel, origin))
    return kernels, by_optimizer, refused


def float16_kernels() -> dict[str, Kernel]:
    """{kernel name: Kernel} of the float16 kernels (float32 state and arithmetic), plain
    and with master weights, for every reachable program."""
    programs, _ = reachable_programs()
    kernels: dict[str, Kernel] = {}
    for traced in programs.values():
        for origin, program in traced:
            for master in (False, True):
                kernel = _fastpath._cupy_kernel(program, "float16", master)
                tag = f"{origin}, float16{' with master weights' if master else ''}"
                kernels.setdefault(kernel.name, Kernel(kernel, tag))
    return kernels


# ------------------------------------------------------------ CuPy's steps


def kernel_code(kernel: Any, dtype: np.dtype, layout: Layout) -> str:
    """The module CuPy generates for ``kernel`` called on ``dtype`` arrays and Python floats.

    The steps of ``ElementwiseKernel.__call__``: the parameters' types
    (``_decide_params_type``: a Python float is no array), the arguments'
    descriptions (``_ArgInfo``: arrays, scalars cast to their parameter's
    type, the indexer), then ``_get_elementwise_kernel_code``.
    """
    scalar = [p.name.startswith("s_") for p in kernel.in_params]
    # an array's dtype: its parameter's type where declared (the float16 kernels), else T's
    in_dtypes = tuple(
        None if s else (p.dtype or dtype) for p, s in zip(kernel.in_params, scalar, strict=True)
    )
    out_dtypes = tuple(p.dtype or dtype for p in kernel.out_params)
    in_types, _, type_map = kernel._decide_params_type(in_dtypes, out_dtypes)
    infos = []
    for p, s, t, d in zip(kernel.in_params, scalar, in_types, in_dtypes, strict=True):
        if s:
            t = np.dtype(t)  # a Python float, cast to its parameter's type
            infos.append(_kernel._ArgInfo(_ARG_SCALAR, _scalar.CScalar, t, 0, True, True))
        else:
            contiguous = layout.grad_contiguous or p.name != "a_grad"
            infos.append(_array_info(np.dtype(d), layout, contiguous))
    infos += [_array_info(np.dtype(d), layout, True) for d in out_dtypes]
    index = (layout.ndim, True, layout.index_32_bits)
    infos.append(_kernel._ArgInfo(_ARG_INDEXER, _carray.Indexer, None, *index))
    code = _kernel._get_elementwise_kernel_code(
        tuple(infos),
        type_map,
        kernel.params,
        kernel.operation,
        kernel.name,
        kernel.preamble,
        **kernel.kwargs,
    )
    ctype = {"float16": "float16", "float32": "float", "float64": "double"}[
        np.dtype(out_dtypes[0]).name
    ]
    out = kernel.out_params[0].name
    array = f"CArray<{ctype}, {layout.ndim}, 1, {int(layout.index_32_bits)}> _raw_{out}"
    if array not in code:  # CuPy's generator changed: these steps need a new look
        raise RuntimeError(f"CuPy's generated kernel lacks {array!r}:\n{code}")
    return code


def _array_info(dtype: np.dtype, layout: Layout, contiguous: bool) -> Any:
    return _kernel._ArgInfo(
        _ARG_NDARRAY, cupy.ndarray, dtype, layout.ndim, contiguous, layout.index_32_bits
    )


def compile_options(kernel: Any) -> tuple[str, ...]:
    """The NVRTC options CuPy compiles ``kernel`` with on an sm_90 device, by default."""
    options = tuple(kernel.kwargs.get("options", ()))  # the kernel's own (the fast path's)
    options = core.assemble_cupy_compiler_options(options)  # CCCL, C++17, CuPy's headers
    options += ("-ftz=true",)  # _compile_with_cache_cuda
    # _compile_using_nvrtc_no_warning: a cubin for the device's architecture
    options += (f"-arch=sm_{ARCH}", "--device-as-default-execution-space")
    return options


HEADER = "".join(f"#include <{h}>\n" for h in core._cupy_header_list)  # compile_with_cache


def nvrtc_compile(source: str, options: tuple[str, ...], filename: str) -> tuple[str, str | None]:
    """(NVRTC's log, the PTX or None when compilation failed), via CuPy's wrapper."""
    program = compiler._NVRTCProgram(source, filename, method="cubin")
    log = io.StringIO()
    try:
        program.compile(options, log)
    except compiler.CompileException as error:
        return str(error), None
    return log.getvalue(), nvrtc.getPTX(program.ptr).decode()


# --------------------------------------------------------------------- PTX

_INSTRUCTION = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][\w.]*)", re.M)
_ENTRY = re.compile(r"^\.visible \.entry (\w+)\(", re.M)
_FLOAT = {"f16", "bf16", "f32", "f64"}


def ptx_entries(ptx: str) -> dict[str, str]:
    """{kernel name: its PTX, from ``.entry`` to the closing brace}."""
    starts = list(_ENTRY.finditer(ptx))
    ends = [m.start() for m in starts[1:]] + [len(ptx)]
    return {
        m.group(1): ptx[m.start() : end].partition("\n}\n")[0]
        for m, end in zip(starts, ends, strict=True)
    }


def _same_code(a: str, b: str) -> bool:
    """Whether two kernels' PTX are the same but for their labels' numbering."""
    label = re.compile(r"\$L__BB\d+_")
    return label.sub("$L__BB_", a) == label.sub("$L__BB_", b)


def ptx_problems(ptx: str, dtype: np.dtype) -> list[str]:
    """What in one kernel's PTX breaks the engines' agreement (see the module's docstring)."""
    other = "f64" if dtype == np.float32 else "f32"
    found: dict[str, None] = {}
    for opcode in _INSTRUCTION.findall(ptx):
        base, *mods = opcode.split(".")
        floats = _FLOAT.intersection(mods)
        if not floats:
            continue
        if base in ("fma", "mad"):
            found[f"fused multiply-add ({opcode})"] = None
        elif base in ("add", "sub", "mul", "div", "sqrt") and "rn" not in mods:
            found[f"{base} without an IEEE rounding mode ({opcode}): may be contracted"] = None
        if "approx" in mods or "full" in mods:
            found[f"approximate arithmetic ({opcode})"] = None
        if other in floats and base not in ("ld", "st", "mov"):
            found[f"a {dtype.name} kernel computes in {other} ({opcode})"] = None
    return list(found)


# ------------------------------------------------------------------- check


def check_batch(
    kernels: list[Kernel], dtype: np.dtype, layout: Layout, label: str
) -> tuple[list[str], dict[str, str]]:
    """Compile ``kernels`` as one NVRTC program: (problems, {kernel name: PTX})."""
    filename = f"{label}.cu"
    parts, owner_of_line, line = [HEADER], [], HEADER.count("\n")
    for k in kernels:
        code = kernel_code(k.kernel, dtype, layout)
        parts.append(code)
        owner_of_line.append((line, k))
        line += code.count("\n")
    options = compile_options(kernels[0].kernel)
    for k in kernels[1:]:  # one program needs one set of options
        if compile_options(k.kernel) != options:
            raise RuntimeError(f"{k.origin} is built with other options: {k.kernel.kwargs}")
    log, ptx = nvrtc_compile("".join(parts), options, filename)
    problems = []
    where = f"{dtype.name}, {layout.name}"
    for message in _log_messages(log):
        number = re.match(rf"{re.escape(filename)}\((\d+)\)", message)
        owner = None
        if number:
            n = int(number.group(1))
            owner = next((k for start, k in reversed(owner_of_line) if start < n), None)
        origin = f"{owner.kernel.name} of {owner.origin}" if owner else "the program"
        problems.append(f"{origin} [{where}]: NVRTC says:\n{message}")
    if ptx is None:
        return problems or [f"{label}: NVRTC failed without a message"], {}
    entries = ptx_entries(ptx)
    for k in kernels:
        entry = entries.get(k.kernel.name)
        if entry is None:
            problems.append(f"{k.kernel.name} of {k.origin} [{where}]: not in the PTX")
            continue
        for problem in ptx_problems(entry, dtype):
            problems.append(f"{k.kernel.name} of {k.origin} [{where}]: {problem}")
    return problems, entries


def _log_messages(log: str) -> list[str]:
    """NVRTC's log cut into its messages (a message starts at an unindented line)."""
    messages: list[str] = []
    for text in log.strip("\0").splitlines():
        if text and not text[0].isspace() and not text.startswith("Remark"):
            messages.append(text)
        elif text.strip() and messages:
            messages[-1] += "\n" + text
        elif text.strip():
            messages.append(text)
    return messages


def check_alone(k: Kernel, dtype: np.dtype, batched_ptx: str) -> list[str]:
    """``k`` compiled alone, as CuPy compiles it: an empty log and the batch's PTX."""
    code = HEADER + kernel_code(k.kernel, dtype, CONTIGUOUS)
    log, ptx = nvrtc_compile(code, compile_options(k.kernel), f"{k.kernel.name}.cu")
    where = f"{k.kernel.name} of {k.origin} [{dtype.name}, alone]"
    if log.strip("\0").strip() or ptx is None:
        return [f"{where}: NVRTC says:\n{log}"]
    alone = ptx_entries(ptx).get(k.kernel.name)
    if alone is None or not _same_code(alone, batched_ptx):
        return [f"{where}: its PTX differs from the batch's"]
    return []


def self_test(adam: Kernel) -> list[str]:
    """The check must report a typo, a dropped ``--fmad=false`` and a warning."""
    ins = ", ".join(f"T {p.name}" for p in adam.kernel.in_params)
    outs = ", ".join(f"T {p.name}" for p in adam.kernel.out_params)
    fast = adam.kernel.kwargs  # the fast path's options
    body = adam.kernel.operation
    fma = "y = a * b + c"
    cases = [  # (what, body, params, options, a word the report must hold or None for none)
        ("a planted typo (sqrtt)", body.replace("sqrt(", "sqrtt(", 1), (ins, outs), fast, "sqrtt"),
        ("a * b + c with the fast path's options", fma, ("T a, T b, T c", "T y"), fast, None),
        ("a * b + c without --fmad=false", fma, ("T a, T b, T c", "T y"), {}, "multiply-add"),
        ("Adam's kernel without --fmad=false", body, (ins, outs), {}, "multiply-add"),
        ("an unused variable", "T unused = a; y = a;", ("T a", "T y"), fast, "warning"),
    ]
    failures = []
    for k, (what, code, (i, o), options, word) in enumerate(cases):
        kernel = cupy.ElementwiseKernel(i, o, code, f"probe_{k}", **options)
        found, _ = check_batch([Kernel(kernel, what)], DTYPES[0], CONTIGUOUS, f"probe_{k}")
        if word is None and found:
            failures.append(f"{what}: reported, but nothing is wrong: {found}")
        elif word is not None and not any(word in problem for problem in found):
            failures.append(f"{what}: not reported (expected {word!r}; got {found})")
    return failures


def main() -> int:
    if cupy.__version__ != CUPY_VERSION:
        print(f"this check is written against CuPy {CUPY_VERSION}, found {cupy.__version__}")
        return 2
    start = time.perf_counter()
    major, minor = nvrtc.getVersion()
    print(f"cupy compile check: CuPy {cupy.__version__}, NVRTC {major}.{minor}, sm_{ARCH}")
    kernels, by_optimizer, refused = reachable_kernels()
    adam = kernels[by_optimizer["Adam"][0]]
    failures = self_test(adam)
    for failure in failures:
        print(f"  self-test FAILED: {failure}")
    if failures:
        return 1
    print("  self-test: a typo, an FMA (a*b+c and Adam without --fmad=false), a warning: reported")
    print(
        f"  {len(by_optimizer)} optimizers, {len(kernels)} distinct kernels "
        f"({refused} combinations of flags and state the rules refuse)"
    )
    problems, compiled = [], 0

    def size(name: str) -> int:
        return len(kernels[name].kernel.operation)

    longest = [
        kernels[n] for n in dict.fromkeys(max(ns, key=size) for ns in by_optimizer.values())
    ]
    alone = max(longest, key=lambda k: size(k.kernel.name))
    for dtype in DTYPES:
        t = time.perf_counter()
        found, entries = check_batch(list(kernels.values()), dtype, CONTIGUOUS, dtype.name)
        if alone.kernel.name in entries:
            found += check_alone(alone, dtype, entries[alone.kernel.name])
        strided, _ = check_batch(longest, dtype, STRIDED, f"{dtype.name}_strided")
        found += strided
        compiled += len(kernels) + 1 + len(longest)
        status = "ok" if not found else f"{len(found)} problems"
        print(
            f"  {dtype.name}: {len(kernels)} kernels, 1 alone, {len(longest)} with a "
            f"{STRIDED.name}, {time.perf_counter() - t:.1f} s: {status}"
        )
        problems += found
    t = time.perf_counter()
    low = float16_kernels()  # declared types; the arithmetic is float32
    found, _ = check_batch(list(low.values()), np.dtype(np.float32), CONTIGUOUS, "float16")
    compiled += len(low)
    status = "ok" if not found else f"{len(found)} problems"
    print(
        f"  float16 parameters (float32 state): {len(low)} kernels, "
        f"{time.perf_counter() - t:.1f} s: {status}"
    )
    problems += found
    for problem in problems:
        print(f"\nPROBLEM: {problem}")
    elapsed = time.perf_counter() - start
    summary = f"{compiled} kernels compiled, {len(problems)} problems ({elapsed:.1f} s)"
    print(f"cupy compile check: {summary}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
