"""The CuPy fast path's dispatch, run on the host: no CuPy, no GPU.

A GPU run of the CuPy fast path checks two things at once: that the kernels
compute what the rule says, and that ``_fastpath._run_cupy`` calls them
right (the arguments' order and number, scalars as the kernel's dtype, the
state a rule creates, the device the launch runs on).  The second needs no
GPU.  Here CuPy is replaced by a stand-in whose arrays are NumPy arrays and
whose ``ElementwiseKernel`` runs the generated body as C++ on the host
(compiled once, for every kernel of ``_cupy_kernels.reachable_programs`` and
both dtypes, with IEEE arithmetic and no contraction), after checking each
call as CuPy would bind it: by position, inputs then outputs; arrays where
the kernel reads arrays, all of one dtype and shape; Python floats for the
scalars, which are cast to that dtype.  The optimizers then run their
covering option grid and must match the generic engine on NumPy bit for bit,
with every parameter taken by the kernels at every step.

What this does not show, and only a GPU run does: that the kernels compile
and launch on a device (``.ci/cupy_check`` compiles them with NVRTC), and
``-ftz``'s flushed subnormals.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import types

import numpy as np
import pytest
from _cupy_kernels import reachable_programs
from _helpers import P
from optimizers import covering_params

from neural_arch.optim import _engine, _fastpath

STEPS = 12
SHAPES = ((3, 4), (), (7,), (2, 3, 5))
_CTYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}
_CNAMES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


class _Device:
    """``x.device`` of a stand-in array: a context manager, counting the launches inside it."""

    depth = 0

    def __enter__(self):
        _Device.depth += 1

    def __exit__(self, *exc):
        _Device.depth -= 1


class HostArray(np.ndarray):
    """A NumPy array the fast path takes for a CuPy one (it goes by the type's module)."""

    __module__ = "cupy.host_stand_in"

    @property
    def device(self):
        return _Device()


class _Split:
    """A kernel's parameters, as ``cupy_source`` declares them: ``T a_*`` arrays, ``T s_*``."""

    def __init__(self, ins: str, outs: str):
        self.ins = [d.split()[1] for d in ins.split(", ") if d]
        self.outs = [d.split()[1] for d in outs.split(", ") if d]


def _cpp(ins: str, outs: str, body: str, name: str) -> str:
    """The body in a host loop, as ``extern "C"`` functions ``NAME_float`` and ``NAME_double``.

    Their parameters: the element count, then the kernel's in CuPy's order
    (arrays as pointers, scalars by value), then its outputs.
    """
    split = _Split(ins, outs)
    decl, refs, call = ["long n"], [], ["n"]
    for v in split.ins:
        scalar = v.startswith("s_")
        decl.append(f"{{T}} {v}" if scalar else f"const {{T}}* _raw_{v}")
        call.append(v if scalar else f"_raw_{v}")
        if not scalar:
            refs.append(f"const T &{v} = _raw_{v}[i];")
    for v in split.outs:
        decl.append(f"{{T}}* _raw_{v}")
        call.append(f"_raw_{v}")
        refs.append(f"T &{v} = _raw_{v}[i];")
    lines = [
        f"template <typename T> static void {name}_body({', '.join(decl).format(T='T')}) {{",
        "  for (long i = 0; i < n; ++i) {",
        *[f"    {r}" for r in refs],
        body,
        "  }",
        "}",
    ]
    for ctype in ("float", "double"):
        typed = ", ".join(decl).format(T=ctype)
        lines.append(f'extern "C" void {name}_{ctype}({typed}) {{')
        lines.append(f"  {name}_body<{ctype}>({', '.join(call)});")
        lines.append("}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    """The host library of every reachable kernel: {kernel name: (ins, outs, the library)}."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("the host stand-in for CuPy's kernels needs a C++ compiler (g++)")
    programs, _ = reachable_programs()
    sources = {}
    for traced in programs.values():
        for _, program in traced:
            ins, outs, body, name = _engine.cupy_source(program)
            sources[name] = (ins, outs, body)
    units = [_cpp(ins, outs, body, name) for name, (ins, outs, body) in sources.items()]
    path = tmp_path_factory.mktemp("cupy_host")
    (path / "kernels.cpp").write_text(
        "#include <cmath>\nusing std::sqrt;\nusing std::fabs;\n\n" + "\n\n".join(units) + "\n"
    )
    flags = ["-O1", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC"]
    result = subprocess.run(
        [compiler, *flags, "-o", str(path / "kernels.so"), str(path / "kernels.cpp")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    library = ctypes.CDLL(str(path / "kernels.so"))
    return {name: (ins, outs, library) for name, (ins, outs, _) in sources.items()}


class HostKernel:
    """``cupy.ElementwiseKernel`` on the host: checks each call, then runs the C++ body."""

    launches = 0

    def __init__(self, known, in_params, out_params, operation, name, options=()):
        assert name in known, (
            f"the fast path built kernel {name}, which _cupy_kernels.reachable_programs "
            "(and so .ci/cupy_check) does not list"
        )
        assert "--fmad=false" in options, f"kernel {name} is built without --fmad=false"
        self.split = _Split(in_params, out_params)
        self.name, self.library = name, known[name][2]

    def __call__(self, *args):
        split, name = self.split, self.name
        assert _Device.depth > 0, f"{name} launched outside `with x.device:`"
        params = split.ins + split.outs
        assert len(args) == len(params), f"{name}: {len(args)} arguments for {params}"
        arrays = [a for v, a in zip(params, args, strict=True) if not v.startswith("s_")]
        like = arrays[-1]
        for v, a in zip(params, args, strict=True):
            if v.startswith("s_"):
                assert isinstance(a, (float, np.floating)), f"{name}: {v} is {a!r}, no float"
            else:
                assert type(a) is HostArray, f"{name}: {v} is a {type(a).__name__}"
                assert (a.dtype, a.shape) == (like.dtype, like.shape), f"{name}: {v} differs"
        ctype = _CTYPES[like.dtype]
        c_args, copies = [ctypes.c_long(like.size)], []
        for v, a in zip(params, args, strict=True):
            if v.startswith("s_"):
                c_args.append(ctype(float(a)))  # CuPy casts a scalar to the kernel's T
                continue
            c = np.ascontiguousarray(a)  # the kernel takes any strides; the host loop does not
            if v in split.outs and c is not a:
                copies.append((a, c))
            c_args.append(c.ctypes.data_as(ctypes.c_void_p))
        getattr(self.library, f"{name}_{_CNAMES[like.dtype]}")(*c_args)
        for a, c in copies:
            a[...] = c
        HostKernel.launches += 1


class _CompileError(Exception):
    """Stands in for ``cupy.cuda.compiler.CompileException``."""


@pytest.fixture
def host_cupy(host_kernels, monkeypatch):
    """Make ``_fastpath`` find the stand-in for CuPy, with a kernel cache of its own."""
    stand_in = types.SimpleNamespace(
        ElementwiseKernel=lambda *a, **kw: HostKernel(host_kernels, *a, **kw),
        empty_like=np.empty_like,
        cuda=types.SimpleNamespace(compiler=types.SimpleNamespace(CompileException=_CompileError)),
    )
    monkeypatch.setitem(_fastpath._loaded, "cupy", stand_in)
    monkeypatch.setattr(_fastpath, "_kernels", {})
    if not _fastpath.enabled():
        pytest.skip("the fast path is switched off (NEURAL_ARCH_FASTPATH=0)")


def _run(entry, kw, dtype, wrap):
    rng = np.random.default_rng(0)
    params = [P(wrap(rng.standard_normal(s).astype(dtype))) for s in SHAPES]
    opt = entry.make(params, **kw)
    for _ in range(STEPS):
        for p in params:
            g = rng.standard_normal(p.data.shape[::-1]).astype(dtype).T  # F-ordered when 2-d
            p.grad = wrap(g)
        opt.step()
    return params, opt


# the optimizers whose update is a rule (the others, LBFGS and Adafactor, have no kernels)
RULE_CASES = [case for case in covering_params() if case.values[0].cls._rule is not None]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("entry", "kw"), RULE_CASES)
def test_cupy_dispatch_matches_generic_bit_for_bit(entry, kw, dtype, host_cupy, monkeypatch):
    old = _fastpath.set_enabled(False)
    try:
        expected, opt_expected = _run(entry, kw, dtype, np.asarray)
    finally:
        _fastpath.set_enabled(old)

    def refuse(*args, **kwargs):
        raise AssertionError("the CuPy fast path left a parameter to the generic engine")

    monkeypatch.setattr(_engine, "run_generic", refuse)
    launches = HostKernel.launches
    got, opt_got = _run(entry, kw, dtype, lambda a: a.view(HostArray))
    assert HostKernel.launches - launches == STEPS * len(SHAPES)
    for pg, pe in zip(got, expected, strict=True):
        assert type(pg.data) is HostArray
        np.testing.assert_array_equal(np.asarray(pg.data), pe.data, strict=True)
        state, reference = opt_got.state[pg], opt_expected.state[pe]
        assert list(state) == list(reference)
        for key, value in state.items():
            if isinstance(value, np.ndarray):
                assert type(value) is HostArray, f"{key} left the stand-in's arrays"
                np.testing.assert_array_equal(np.asarray(value), reference[key], strict=True)
            else:
                assert value == reference[key], key
