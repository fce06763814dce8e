"""The rule engine: tracing a rule, the generic evaluator, the generated numba and CuPy kernels.

The optimizers' numerics are checked through the public classes in
``test_optimizer_table.py`` (against torch.optim, and fast path against the
generic engine bit for bit); this module checks the machinery itself: what a
rule may and may not say, that the generated sources are what the engines
run (one compiled call per group, cached on disk, compile failures reported
once), and that the CuPy kernel sources compile.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
from _helpers import P

import neural_arch as na
from neural_arch.backend import to_backend, to_numpy
from neural_arch.optim import _engine, _fastpath, adam, sgd
from neural_arch.optim.rule import lerp, maximum, sign, sqrt, trace, where


def _numba():
    pytest.importorskip("numba", reason="the NumPy fast path needs numba (neural_arch[fast])")
    if not _fastpath.enabled():
        pytest.skip("the fast path is switched off (NEURAL_ARCH_FASTPATH=0)")
    from neural_arch.optim import _numba

    return _numba


# ------------------------------------------------------------------- tracing


def _rule_literal(p, g, *, s, f):
    return {"param": p - 0.1 * g}


def _rule_scalar_product(p, g, *, s, f):
    return {"param": p - g * (s.lr * s.wd)}


def _rule_branch(p, g, *, s, f):
    if g > p:
        return {"param": g}
    return {"param": p}


def _rule_flag(p, g, *, s, f):
    return {"param": p - g * s.lr if f.plain else p}


def _rule_unknown_state(p, g, *, s, f):
    return {"param": p, "momentum": g}


def _rule_not_an_array(p, g, *, s, f):
    return {"param": s.lr}


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        (_rule_literal, "numeric literal 0.1"),
        (_rule_scalar_product, "scalars only"),
        (_rule_branch, "cannot branch on array values"),
        (_rule_flag, "flag 'plain'"),
        (_rule_unknown_state, "'momentum', which is not one of its state arrays"),
        (_rule_not_an_array, "expected an array"),
    ],
)
def test_tracing_refuses_what_would_differ_between_engines(rule, match):
    with pytest.raises((TypeError, AttributeError), match=match):
        trace(rule, (), {})


def test_a_trace_keeps_only_what_the_outputs_need():
    def rule(p, g, unused=None, *, s, f):
        _ = sqrt(g) * s.waste  # computed, never used: dropped
        return {"param": p + g * s.lr}

    program = trace(rule, ("unused",), {})
    assert program.inputs == ("param", "grad")
    assert program.scalars == ("lr",)
    assert [op for op, _ in program.nodes] == ["input", "input", "scalar", "mul", "add"]
    assert program.arrays == ("param", "grad")
    assert trace(rule, ("unused",), {}) is program  # cached


def test_lerp_takes_torchs_branch_from_a_flag():
    def rule(p, g, *, s, f):
        return {"param": lerp(p, g, s.w, s.one_minus_w, f.small)}

    small = trace(rule, (), {"small": True})
    large = trace(rule, (), {"small": False})
    assert small.scalars == ("w",) and large.scalars == ("one_minus_w",)


def test_generic_engine_evaluates_where_sign_maximum_with_scalars(xp):
    def rule(p, g, *, s, f):
        step = where(g > s.zero, s.up, s.down)
        return {"param": maximum(p + sign(g) * step, s.floor)}

    program = trace(rule, (), {})
    p = xp.asarray([0.5, -1.0, 2.0, 0.0], dtype=xp.float64)
    g = xp.asarray([1.0, -3.0, 0.0, -1.0], dtype=xp.float64)
    scalars = {"zero": 0.0, "up": 0.25, "down": 2.0, "floor": -2.5}
    out = _engine.run_generic(program, xp, {"param": p, "grad": g}, scalars)
    # sign(g) * (0.25 if g > 0 else 2): [0.25, -2, 0, -2]; then max with -2.5
    expected = [0.75, -2.5, 2.0, -2.0]
    assert [float(v) for v in out["param"]] == expected


# ------------------------------------------------------------ generic engine


def test_generic_adam_step_allocates_two_temporaries():
    """In place where the arrays allow: the denominator and one reused scratch array."""
    old = _fastpath.set_enabled(False)
    try:
        n = 200_000
        params = [P(np.ones(n, np.float32), np.ones(n, np.float32))]
        opt = na.Adam(params, lr=0.1)
        opt.step()
        tracemalloc.start()
        opt.step()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        _fastpath.set_enabled(old)
    assert peak < 2 * 4 * n + 50_000, f"{peak} bytes for a step of {4 * n}-byte arrays"


def test_generic_engine_refuses_a_read_only_parameter_before_changing_anything():
    params = [P(np.ones(3), np.ones(3))]
    params[0].data.flags.writeable = False
    opt = na.SGD(params, lr=0.5, momentum=0.9)
    old = _fastpath.set_enabled(False)
    try:
        with pytest.raises(
            ValueError,
            match=r"parameter 0 \(param_groups\[0\]\['params'\]\[0\]\) is a read-only array",
        ):
            opt.step()
    finally:
        _fastpath.set_enabled(old)
    np.testing.assert_array_equal(params[0].data, np.ones(3))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_generated_generic_function_equals_the_interpreter_bit_for_bit(xp, dtype):
    """run_generic's generated function (the common case) and its interpreter (the rest)."""
    rng = np.random.default_rng(5)
    for program in _programs():
        if _engine.python_source(program) is None:
            continue
        values = {k: rng.standard_normal(6) for k in program.arrays}
        values.update({k: np.abs(v) for k, v in values.items() if "sq" in k})  # second moments
        scalars = {k: float(rng.uniform(0.1, 0.9)) for k in program.scalars}
        results = []
        for run in (_engine.run_generic, _engine._interpret):
            arrays = {k: to_backend(v, xp, dtype=dtype, copy=True) for k, v in values.items()}
            for k in program.arrays:
                if k not in program.inputs:
                    arrays[k] = None  # a state the rule creates
            out = run(program, xp, arrays, scalars)
            results.append({k: to_numpy(v) for k, v in out.items()})
        assert results[0].keys() == results[1].keys()
        for k in results[0]:
            np.testing.assert_array_equal(results[0][k], results[1][k], err_msg=program.name)


# -------------------------------------------------------------------- numba


def test_one_compiled_call_per_group(monkeypatch):
    _numba()
    params = [P(np.full(50, float(i), np.float32), np.ones(50, np.float32)) for i in range(200)]
    opt = na.SGD(params, lr=0.5, momentum=0.9)
    opt.step()  # creates the buffers
    program = trace(sgd.sgd, ("momentum_buffer",), sgd.flags(opt.param_groups[0]))
    kernels = _fastpath._numba_kernels(program)
    calls = []
    real = kernels.serial

    class Counting:
        def __call__(self, *args):
            calls.append(args[0].shape)
            return real(*args)

    monkeypatch.setattr(kernels, "serial", Counting())
    generic = []
    monkeypatch.setattr(_engine, "run_generic", lambda *a, **k: generic.append(a))
    opt.step()
    assert calls == [(200, 3)], calls  # one call: 200 rows of (param, grad, momentum_buffer)
    assert generic == []
    np.testing.assert_array_equal(params[7].data, np.full(50, 7.0 - 0.5 - 0.5 * 1.9, np.float32))


def test_numba_kernels_are_cached_on_disk_across_processes(tmp_path):
    _numba()
    code = textwrap.dedent(
        """
        import numpy as np, neural_arch as na
        from neural_arch.optim import _fastpath
        p = type("P", (), {})()
        p.data, p.grad = np.ones(4, np.float32), np.ones(4, np.float32)
        opt = na.Adam([p], amsgrad=True, weight_decay=0.25)
        opt.step()
        (kernels,) = [k for (prog, lib), k in _fastpath._kernels.items() if lib == "numba"]
        stats = kernels.serial.stats
        print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
        """
    )
    env = {**os.environ, "NEURAL_ARCH_CACHE_DIR": str(tmp_path)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
        ).stdout.split()
        for _ in range(2)
    ]
    assert runs[0] == ["0", "1"], runs  # compiled and stored
    assert runs[1] == ["1", "0"], runs  # loaded from the cache
    sources = list((tmp_path).rglob("neural_arch_kernel_*.py"))
    assert len(sources) == 1 and "def serial(" in sources[0].read_text()


def test_without_a_writable_cache_directory_kernels_compile_in_memory(tmp_path):
    _numba()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    code = textwrap.dedent(
        """
        import numpy as np, neural_arch as na
        from neural_arch.optim import _fastpath
        p = type("P", (), {})()
        p.data, p.grad = np.ones(4), np.full(4, 2.0)
        na.SGD([p], lr=0.25, weight_decay=0.5).step()
        assert p.data.tolist() == [0.375] * 4, p.data  # 1 - 0.25 * (2 + 0.5 * 1)
        (kernels,) = [k for (prog, lib), k in _fastpath._kernels.items() if lib == "numba"]
        assert not hasattr(kernels, "__file__")
        """
    )
    env = {**os.environ, "NEURAL_ARCH_CACHE_DIR": str(blocker)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def test_a_kernel_that_fails_to_compile_warns_once_and_the_generic_engine_takes_over(
    monkeypatch,
):
    numba_support = _numba()

    def broken(program):
        source = _engine.numba_source(program)
        return numba_support.load_kernels(source.replace("np.sqrt(", "np.linalg.svd("))

    monkeypatch.setattr(_fastpath, "_kernels", {})
    monkeypatch.setattr(_fastpath, "_numba_kernels", _wrap_cached(broken))

    def run():
        rng = np.random.default_rng(0)
        params = [P(rng.standard_normal(5).astype(np.float32)) for _ in range(2)]
        opt = na.Adam(params, lr=0.1)
        for _ in range(3):
            for p in params:
                p.grad = rng.standard_normal(5).astype(np.float32)
            opt.step()
        return [p.data for p in params]

    with pytest.warns(RuntimeWarning, match="failed to compile") as record:
        fast = run()
    assert len(record) == 1
    old = _fastpath.set_enabled(False)
    try:
        generic = run()
    finally:
        _fastpath.set_enabled(old)
    for a, b in zip(fast, generic, strict=True):
        np.testing.assert_array_equal(a, b)


def _wrap_cached(load):
    def kernels(program):
        key = (program, "numba")
        if key not in _fastpath._kernels:
            _fastpath._kernels[key] = load(program)
        return _fastpath._kernels[key]

    return kernels


def test_other_errors_in_a_kernel_are_not_swallowed(monkeypatch):
    _numba()
    params = [P(np.ones(3, np.float32), np.ones(3, np.float32))]
    opt = na.SGD(params, lr=0.5)
    key = (trace(sgd.sgd, (), sgd.flags(opt.param_groups[0])), "numba")
    _fastpath._numba_kernels(key[0])

    class Exploding:
        def __init__(self, real):
            self.threaded = real.threaded

        def serial(self, *args):
            raise MemoryError("not a compile error")

    monkeypatch.setitem(_fastpath._kernels, key, Exploding(_fastpath._kernels[key]))
    with pytest.raises(MemoryError, match="not a compile error"):
        opt.step()


# --------------------------------------------------------------------- CuPy


def _programs():
    """Every program Adam, AdamW and SGD trace to over their option grids."""
    programs = []
    for ams, mx, wd, small, dec in itertools.product(*[(False, True)] * 5):
        group = {
            "betas": (0.9 if small else 0.3, 0.999),
            "maximize": mx,
            "amsgrad": ams,
            "weight_decay": 0.1 if wd else 0.0,
        }
        present = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if ams else ())
        group["decoupled_weight_decay"] = dec
        programs.append(trace(adam.adam, present, adam.flags(group)))
    for mom, damp, nest, wd, mx, first in itertools.product(*[(False, True)] * 6):
        group = {
            "momentum": 0.9 if mom else 0.0,
            "dampening": 0.3 if damp else 0.0,
            "nesterov": nest,
            "weight_decay": 0.1 if wd else 0.0,
            "maximize": mx,
        }
        present = () if first or not mom else ("momentum_buffer",)
        programs.append(trace(sgd.sgd, present, sgd.flags(group)))
    return list({id(p): p for p in programs}.values())


def test_cupy_kernel_sources_compile_with_nvcc(tmp_path):
    """Each generated body, in the function CuPy wraps it in, for float and double."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("compiling the CuPy kernel sources needs nvcc (the CUDA toolkit)")
    units = []
    for k, program in enumerate(_programs()):
        ins, outs, body, name = _engine.cupy_source(program)
        kinds = [("const T", d.split()[1]) for d in ins.split(", ") if d]
        kinds += [("T&", d.split()[1]) for d in outs.split(", ") if d]
        params = ", ".join(f"{t} {v}" for t, v in kinds)
        unit = f"template <typename T> __device__ void {name}_{k}({params}) {{\n{body}\n}}\n"
        for ctype in ("float", "double"):
            types = ", ".join(t.replace("T", ctype) for t, _ in kinds)
            unit += f"template __device__ void {name}_{k}<{ctype}>({types});\n"
        units.append(unit)
    source = tmp_path / "kernels.cu"
    source.write_text("#include <cmath>\n" + "\n".join(units))
    result = subprocess.run(
        [nvcc, "--fmad=false", "-rdc=true", "-c", str(source), "-o", str(tmp_path / "k.o")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
