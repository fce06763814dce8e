"""neural_arch.distributed: one process without MPI, and real MPI jobs of 2 and 3 ranks.

The MPI tests start ``mpiexec -n N python -m mpi4py tests/distributed_scripts/ranks.py``
once per world size (in its own process group, killed on timeout; a failure
shows the job's last output).  The ranks write their results to a
temporary directory and every comparison is made here: broadcasts are
bitwise; DistributedOptimizer on halves of each batch equals one process on
the whole batch (float64, < 1e-12) with every rank bitwise identical, for
Adam, AdamW and SGD, on NumPy, array-api-strict and PyTorch CPU;
ZeroRedundancyOptimizer equals DistributedOptimizer (bitwise at 2 ranks)
and keeps about 1/world of the state per rank; checkpoints move between a
ZeRO job and one process both ways; a NaN on one rank makes every rank
raise or skip; an exception on one rank ends the job.  Those tests skip,
saying why, without mpi4py or mpiexec (``pip install -e ".[mpi]" mpich``).

The others run everywhere, in one process (world size 1), on every backend.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import neural_arch as na
import neural_arch.distributed as dist
from neural_arch.backend import to_numpy
from neural_arch.distributed import _comm, _device

SCRIPTS = Path(__file__).resolve().parent / "distributed_scripts"
sys.path.insert(0, str(SCRIPTS))
import mpi_common as common  # noqa: E402

JOB_TIMEOUT = 180  # seconds; a job takes a few seconds, so this only catches a hang


# ----------------------------------------------------------------- launching jobs


def _mpiexec() -> str | None:
    """mpiexec on PATH, or beside this Python (the mpich wheel installs it in the venv)."""
    found = shutil.which("mpiexec")
    if found is None:
        beside = Path(sys.executable).parent / "mpiexec"
        found = str(beside) if beside.exists() else None
    return found


def _mpi_missing() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return 'mpi4py is not installed (pip install -e ".[mpi]" mpich)'
    if _mpiexec() is None:
        return "mpiexec is not on PATH (pip install mpich, or an MPI of the system)"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))


def _launcher(n: int) -> list[str]:
    """``mpiexec -n N``, with the flags Open MPI needs as root and with more ranks than cores."""
    exe = _mpiexec()
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    command = [exe, "-n", str(n)]
    if "open mpi" in (version.stdout + version.stderr).lower():
        command.append("--oversubscribe")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-run-as-root")
    return command


def run_job(n: int, script: str, *args: str, timeout: float = JOB_TIMEOUT, **env_vars: str):
    """Run ``mpiexec -n n python -W error -m mpi4py script args`` in its own process group.

    Warnings are errors in the ranks too, as in this suite.  Returns (return code,
    output, seconds); on timeout the whole group is killed and the test fails with
    the end of the output.
    """
    command = [*_launcher(n), sys.executable, "-W", "error", "-m", "mpi4py"]
    command += [str(SCRIPTS / script), *args]
    # (an absolute path as script is taken as it is)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("NEURAL_ARCH_NO_MPI", None)
    env.update(env_vars)
    start = time.perf_counter()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(command)} hung for {timeout} s; killed. Output:\n{output[-4000:]}")
    return proc.returncode, output, time.perf_counter() - start


class Job:
    """What the ranks of one launch wrote."""

    def __init__(self, outdir: Path, world: int) -> None:
        self.outdir, self.world = outdir, world
        self.arrays = [dict(np.load(outdir / f"rank{r}.npz")) for r in range(world)]
        self.values = [json.loads((outdir / f"rank{r}.json").read_text()) for r in range(world)]

    def arr(self, key: str) -> list[np.ndarray]:
        return [a[key] for a in self.arrays]

    def trained(self, backend: str) -> None:
        """Skip unless this job trained on ``backend`` (see JOB_ENV)."""
        if not any(key.startswith(f"{backend}/") for key in self.arrays[0]):
            pytest.skip(f"the {self.world}-rank job does not train on {backend} (see JOB_ENV)")

    def val(self, key: str) -> list:
        return [v[key] for v in self.values]


def _emulated_run(parts: int, steps: range, model=None, opt=None):
    """One process taking what ``parts`` ranks take: ``steps`` of Adam on mean gradients."""
    model = common.build_model(0) if model is None else model
    opt = na.Adam(model.parameters(), lr=0.01) if opt is None else opt
    for step in steps:
        common.emulated_step(model, opt, step, parts)
    return model, opt


# The 2-rank job runs the NumPy fast path (numba) and trains on every host backend; the
# 3-rank job (more ranks than this CI's cores) runs the generic engine on NumPy and
# array-api-strict only: importing torch and loading numba kernels cost each rank seconds.
JOB_ENV = {
    2: {},
    3: {"NEURAL_ARCH_FASTPATH": "0", "NEURAL_ARCH_TEST_BACKENDS": "numpy,array_api_strict"},
}


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}ranks")
def job(request, tmp_path_factory):
    """One launch of ranks.py with every check, per world size."""
    if _mpi_missing() is not None:
        pytest.skip(_mpi_missing())
    world = request.param
    outdir = tmp_path_factory.mktemp(f"mpi{world}")
    model, opt = _emulated_run(world, range(common.STEPS))
    state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    na.save(state, outdir / "single.safetensors")
    rc, output, seconds = run_job(world, "ranks.py", str(outdir), **JOB_ENV[world])
    if rc != 0:
        pytest.fail(f"the {world}-rank job failed (exit {rc}, {seconds:.1f} s):\n{output[-6000:]}")
    return Job(outdir, world)


def _same_bits(arrays: list[np.ndarray]) -> bool:
    return all(a.tobytes() == arrays[0].tobytes() for a in arrays)


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# ------------------------------------------------------------------- MPI jobs


def test_broadcast_makes_ranks_bitwise_equal(job):
    before = job.arr("bcast/before")
    assert not _same_bits(before), "the ranks should start from different values"
    for after in job.arr("bcast/after"):
        assert after.tobytes() == before[0].tobytes()
    before = job.arr("bcast/before_last")
    assert not _same_bits(before)
    for after in job.arr("bcast/after_last"):  # root = the last rank
        assert after.tobytes() == before[-1].tobytes()


TRAINING = [
    (backend, name)
    for backend in common.available_backends()
    for name in (common.OPTIMIZERS if backend == "numpy" else ["Adam"])
]


@pytest.mark.parametrize(("backend", "name"), TRAINING, ids=[f"{b}-{n}" for b, n in TRAINING])
def test_ddp_equals_one_process_on_the_full_batch(job, backend, name):
    job.trained(backend)
    tag = f"{backend}/{name}"
    ddp = job.arr(f"{tag}/ddp")
    assert _same_bits(ddp), "the ranks' parameters differ"
    single = job.arr(f"{tag}/single")[0]
    assert _maxdiff(ddp[0], single) < 1e-12
    assert _maxdiff(ddp[0], common.flat(common.build_model(0))) > 1e-3  # it did train


@pytest.mark.parametrize(("backend", "name"), TRAINING, ids=[f"{b}-{n}" for b, n in TRAINING])
def test_zero_equals_ddp(job, backend, name):
    job.trained(backend)
    tag = f"{backend}/{name}"
    zero, ddp = job.arr(f"{tag}/zero"), job.arr(f"{tag}/ddp")
    assert _same_bits(zero), "the ranks' parameters differ"
    assert job.val(f"{tag}/zero_sliced") == [True] * job.world
    # a state dict from ZeRO is DistributedOptimizer's (the plain optimizer's), on every rank
    assert job.val(f"{tag}/zero_layout") == job.val(f"{tag}/ddp_layout")
    zero_state, ddp_state = job.arr(f"{tag}/zero_state"), job.arr(f"{tag}/ddp_state")
    assert _same_bits(zero_state)
    if job.world == 2:  # a + b is b + a: both reductions give the same bits
        assert zero[0].tobytes() == ddp[0].tobytes()
        assert zero_state[0].tobytes() == ddp_state[0].tobytes()
    else:
        assert _maxdiff(zero[0], ddp[0]) < 1e-12
        assert _maxdiff(zero_state[0], ddp_state[0]) < 1e-12


@pytest.mark.parametrize("name", list(common.OPTIMIZERS))
def test_zero_keeps_one_share_of_the_state_per_rank(job, name):
    per_rank = job.val(f"numpy/{name}/zero_state_numel")
    full = job.val(f"numpy/{name}/full_state_numel")[0]
    arrays_per_parameter = full // common.flat(common.build_model(0)).size  # Adam 2, SGD 1
    assert arrays_per_parameter >= 1
    assert sum(per_rank) == full
    for numel in per_rank:  # shares of floor or ceil(N / world) elements of each array
        assert abs(numel - full / job.world) <= arrays_per_parameter, (per_rank, full)


def test_groups_and_scheduler_reach_every_shard(job):
    single = job.arr("groups/single")[0]
    for which in ("ddp", "zero"):
        values = job.arr(f"groups/{which}")
        assert _same_bits(values)
        assert _maxdiff(values[0], single) < 1e-12
    lrs = job.val("groups/lrs")[0]
    assert lrs == [[0.03 * 0.25, 0.01 * 0.25]] * 3


def test_zero_checkpoint_resumes_in_one_process(job):
    """Rank 0 saved ZeRO's full state dict; one process resumes it and takes the same steps."""
    checkpoint = na.load(job.outdir / "zero.safetensors")
    # the saved state is the one-process optimizer's after the same steps
    _, reference_opt = _emulated_run(job.world, range(common.STEPS))
    saved, layout = common.flat_state(checkpoint["optimizer"])
    expected, expected_layout = common.flat_state(reference_opt.state_dict())
    assert layout == expected_layout
    assert _same_bits(job.arr("ckpt_out/state"))
    model = common.build_model(1)
    model.load_state_dict(checkpoint["model"])
    opt = na.Adam(model.parameters(), lr=0.01)
    opt.load_state_dict(checkpoint["optimizer"])
    _emulated_run(job.world, range(common.STEPS, 2 * common.STEPS), model, opt)
    final = job.arr("ckpt_out/final")
    assert _same_bits(final)
    if job.world == 2:  # the emulation sums the two halves as MPI does: the same bits
        assert saved.tobytes() == expected.tobytes()
        assert common.flat(model).tobytes() == final[0].tobytes()
    else:
        assert _maxdiff(saved, expected) < 1e-12
        assert _maxdiff(common.flat(model), final[0]) < 1e-12


def test_one_process_checkpoint_resumes_sharded(job):
    """The checkpoint of a one-process run continues on the ranks as it would in one process."""
    checkpoint = na.load(job.outdir / "single.safetensors")
    model = common.build_model(1)
    model.load_state_dict(checkpoint["model"])
    opt = na.Adam(model.parameters(), lr=0.01)
    opt.load_state_dict(checkpoint["optimizer"])
    _emulated_run(job.world, range(common.STEPS, 2 * common.STEPS), model, opt)
    assert job.val("ckpt_in/lr") == [0.01] * job.world
    assert job.val("ckpt_in/step_count") == [common.STEPS] * job.world
    assert job.val("ckpt_in/step_count_after") == [2 * common.STEPS] * job.world
    final = job.arr("ckpt_in/final")
    assert _same_bits(final)
    if job.world == 2:
        assert common.flat(model).tobytes() == final[0].tobytes()
    else:
        assert _maxdiff(common.flat(model), final[0]) < 1e-12


@pytest.mark.parametrize("kind", ["ddp", "zero"])
@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_nan_on_one_rank_every_rank_raises_or_skips(job, kind, mode):
    tag = f"nonfinite/{kind}/{mode}"
    raised = job.val(f"{tag}/raised")
    if mode == "raise":
        for message in raised:
            assert (
                message is not None and "parameter '0.weight'" in message
            ) or "parameter 0" in message
            assert "NaN or infinity" in message
        assert job.val(f"{tag}/counts") == [[1, 0]] * job.world
    else:
        assert raised == [None] * job.world
        assert job.val(f"{tag}/counts") == [[1, 1]] * job.world
    for unchanged in job.arr(f"{tag}/unchanged"):
        assert unchanged.tolist() == [True, True]  # parameters and state, on every rank
    assert _same_bits(job.arr(f"{tag}/after"))


def test_mismatches_raise_on_every_rank_instead_of_hanging(job):
    w = job.world
    mean_a = np.mean([2.0 * (r + 1) for r in range(w)])
    expected = np.concatenate([np.full(6, mean_a), np.arange(4.0) / w])  # b: rank 0's only
    for grads in job.arr("mismatch/grads"):
        assert grads.tobytes() == expected.tobytes()
    bad = job.val("mismatch/bad_shape")
    assert (
        bad[-1]
        == "ValueError: gradient of parameter 1 has shape (5,), but the parameter has shape (3,)"
    )
    for message in bad[:-1]:
        assert message.startswith("ValueError: all_reduce_gradients: another rank refused")
    for key in ("mismatch/layout", "mismatch/bcast_layout"):
        for message in job.val(key):
            assert "the ranks passed different parameters" in message
    for total in job.arr("mismatch/sum"):
        assert total.tolist() == [float(w)] * 6


def test_clip_grad_norm_uses_the_global_norm(job):
    norms = job.arr("clip/norms")
    assert _same_bits(norms)
    single, ddp_norm, zero_norm = norms[0].T
    assert np.all(single > 0.05)  # clipping was active
    np.testing.assert_allclose(ddp_norm, single, rtol=1e-13)
    np.testing.assert_allclose(zero_norm, single, rtol=1e-13)
    reference = job.arr("clip/single")[0]
    for which in ("ddp", "zero"):
        values = job.arr(f"clip/{which}")
        assert _same_bits(values)
        assert _maxdiff(values[0], reference) < 1e-12


def test_lbfgs_and_closures_see_the_global_loss(job):
    assert _same_bits(job.arr("lbfgs/ddp"))
    assert _maxdiff(job.arr("lbfgs/ddp")[0], job.arr("lbfgs/single")[0]) < 1e-10
    losses = job.arr("lbfgs/losses")[0]
    np.testing.assert_allclose(losses[:, 1], losses[:, 0], rtol=1e-12)
    for kind, loss in job.val("closure/loss"):
        assert kind == "Tensor"
        assert abs(loss - job.val("closure/full_loss")[0]) < 1e-14


def test_adafactor_is_sharded_by_whole_parameters(job):
    assert job.val("adafactor/sliced") == [False] * job.world
    zero, ddp = job.arr("adafactor/zero"), job.arr("adafactor/ddp")
    assert _same_bits(zero)
    assert job.val("adafactor/zero_layout") == job.val("adafactor/ddp_layout")
    # not bitwise: Adafactor's means run over a C-ordered gradient in ZeRO's buffer and
    # over the F-ordered one a matrix product gives in DistributedOptimizer
    assert _maxdiff(zero[0], ddp[0]) < 1e-12
    zero_state, ddp_state = job.arr("adafactor/zero_state")[0], job.arr("adafactor/ddp_state")[0]
    np.testing.assert_allclose(zero_state, ddp_state, rtol=1e-12)


def test_nccl_unique_id_travels_from_rank_0(job):
    drawn = job.val("nccl/drawn")[0]
    assert len(drawn) == _device.UNIQUE_ID_BYTES
    for rank, seen in enumerate(job.val("nccl/seen")):
        assert seen == {"ndev": job.world, "uid": drawn, "rank": rank}


def test_shard_indices_split_every_epoch(job):
    order = np.random.default_rng([3, 2]).permutation(23)
    for drop_last in (False, True):
        shards = job.arr(f"sampler/{drop_last}")
        assert len({len(s) for s in shards}) == 1
        total = len(shards[0]) * job.world
        expected = np.resize(order, total) if not drop_last else order[:total]
        for rank, shard in enumerate(shards):
            assert shard.tolist() == expected[rank :: job.world].tolist()


@needs_mpi
def test_an_exception_on_one_rank_ends_the_job():
    rc, output, seconds = run_job(2, "crash.py", timeout=120)
    assert rc != 0
    assert "rank 1 fails on purpose" in output
    assert "unreachable" not in output
    assert seconds < 60


@needs_mpi
def test_without_mpiexec_mpi4py_gives_world_size_one(tmp_path):
    code = (
        "import neural_arch.distributed as d; c = d.init(); print(c.world_size, c.mpi is not None)"
    )
    env = dict(os.environ)
    env.pop("NEURAL_ARCH_NO_MPI", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "True"]


# ------------------------------------------------------- one process, no MPI


@pytest.fixture(autouse=True)
def _no_default_communicator(monkeypatch):
    """Each test starts without a default communicator, and without MPI in this process."""
    monkeypatch.setenv("NEURAL_ARCH_NO_MPI", "1")
    monkeypatch.setattr(_comm, "_default", None)


def _jax_adam_only(xp, name: str) -> None:
    if na.backend.backend_name(xp) == "jax" and name != "Adam":
        pytest.skip("on JAX (every new shape compiles: slow) Adam alone covers the copy path")


def _model(xp, seed=0, dtype="float32"):
    return common.build_model(seed, xp, dtype)


def _train(model, opt, steps, start=0):
    for step in range(start, start + steps):
        common.backward(model, common.part_slice(step))
        opt.step()


def test_import_does_not_import_mpi4py():
    code = "import sys, neural_arch, neural_arch.distributed; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_init_without_mpi_is_world_size_one():
    comm = dist.init()
    assert (comm.rank, comm.world_size, comm.mpi) == (0, 1, None)
    assert dist.rank() == 0 and dist.world_size() == 1
    comm.barrier()
    assert dist.init(comm) is comm
    assert _comm.resolve(None) is comm


def test_collectives_of_one_rank_change_nothing(xp):
    model = _model(xp)
    common.backward(model, common.part_slice(0))
    params = model.parameters()
    data = [p.data for p in params]
    grads = [to_numpy(p.grad).copy() for p in params]
    dist.broadcast_parameters(model)
    dist.all_reduce_gradients(params)
    for p, d, g in zip(params, data, grads, strict=True):
        assert p.data is d
        assert to_numpy(p.grad).tobytes() == g.tobytes()


@pytest.mark.parametrize("name", list(common.OPTIMIZERS))
def test_distributed_optimizer_of_one_rank_is_the_optimizer(xp, name):
    _jax_adam_only(xp, name)
    cls, kw = common.OPTIMIZERS[name]
    plain, wrapped = _model(xp), _model(xp)
    opt = cls(plain.parameters(), **kw)
    ddp = dist.DistributedOptimizer(cls(wrapped.parameters(), **kw))
    _train(plain, opt, 3)
    _train(wrapped, ddp, 3)
    assert common.flat(wrapped).tobytes() == common.flat(plain).tobytes()
    assert common.flat_state(ddp.state_dict())[1] == common.flat_state(opt.state_dict())[1]
    assert ddp.step_count == 3 and ddp.lr == kw["lr"]
    ddp.lr = 0.5
    assert ddp.param_groups[0]["lr"] == 0.5


def test_distributed_lbfgs_of_one_rank_is_lbfgs():
    plain, wrapped = _model(np, dtype="float64"), _model(np, dtype="float64")
    opt = na.LBFGS(plain.parameters(), line_search_fn="strong_wolfe", max_iter=4)
    ddp = dist.DistributedOptimizer(
        na.LBFGS(wrapped.parameters(), line_search_fn="strong_wolfe", max_iter=4)
    )
    for step in range(2):
        a = opt.step(lambda step=step: common.backward(plain, common.part_slice(step)))
        b = ddp.step(lambda step=step: common.backward(wrapped, common.part_slice(step)))
        assert a.item() == b.item()
    assert common.flat(wrapped).tobytes() == common.flat(plain).tobytes()


FAMILY = ["RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop", "Lion"]


@pytest.mark.parametrize("name", [*common.OPTIMIZERS, *FAMILY, "Adafactor"])
def test_zero_of_one_rank_is_the_optimizer(xp, name):
    _jax_adam_only(xp, name)
    cls, kw = common.OPTIMIZERS.get(name, (getattr(na, name), {}))
    plain, sharded = _model(xp), _model(xp, seed=1)
    opt = cls(plain.parameters(), **kw)
    zero = dist.ZeroRedundancyOptimizer(sharded.parameters(), cls, **kw)
    sharded.load_state_dict(plain.state_dict())
    _train(plain, opt, 3)
    _train(sharded, zero, 3)
    mine, layout = common.flat_state(zero.state_dict())
    theirs, their_layout = common.flat_state(opt.state_dict())
    assert layout == their_layout
    assert zero._sliced == (name != "Adafactor")
    if zero._sliced:
        assert common.flat(sharded).tobytes() == common.flat(plain).tobytes()
        assert mine.tobytes() == theirs.tobytes()
    else:  # Adafactor's means over rows and columns of a C- (ZeRO) or F-ordered gradient
        assert _maxdiff(common.flat(sharded), common.flat(plain)) < 1e-6
        np.testing.assert_allclose(mine, theirs, rtol=1e-5)


def test_zero_parameters_are_views_of_one_buffer(xp):
    model = _model(xp)
    zero = dist.ZeroRedundancyOptimizer(model.parameters(), na.Adam)
    (space,) = zero._spaces
    if na.backend.backend_name(xp) == "jax":  # immutable: a host copy, new arrays bound
        assert space.mode == "copy"
        return
    assert space.mode == ("cupy" if na.backend.backend_name(xp) == "cupy" else "shared")
    space.buf[...] = 0
    space.buf[0] = 42  # the first parameter's first element, and the first piece's
    first = model.parameters()[0]
    assert float(to_numpy(first.data).reshape(-1)[0]) == 42.0
    assert float(to_numpy(zero._owned[0].piece.data)[0]) == 42.0
    assert float(xp.sum(first.data)) == 42.0 and float(xp.sum(model.parameters()[1].data)) == 0


def test_zero_state_dict_round_trip_continues_exactly(xp):
    plain, sharded = _model(xp), _model(xp)
    opt = na.Adam(plain.parameters(), lr=0.01)
    _train(plain, opt, 2)
    sharded.load_state_dict(plain.state_dict())
    zero = dist.ZeroRedundancyOptimizer(sharded.parameters(), na.Adam, lr=0.5)
    zero.load_state_dict(opt.state_dict())
    assert zero.lr == 0.01 and zero.step_count == 2
    _train(plain, opt, 2, start=2)
    _train(sharded, zero, 2, start=2)
    assert common.flat(sharded).tobytes() == common.flat(plain).tobytes()


def test_zero_load_state_dict_refuses_bad_state_and_changes_nothing():
    model = _model(np)
    zero = dist.ZeroRedundancyOptimizer(model.parameters(), na.Adam, lr=0.01)
    _train(model, zero, 1)
    good = zero.state_dict()
    before = common.flat_state(good)
    bad = {**good, "state": {**good["state"], 0: {**good["state"][0]}}}
    bad["state"][0]["exp_avg"] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"state 'exp_avg' of parameter 0 has shape \(3, 3\)"):
        zero.load_state_dict(bad)
    with pytest.raises(ValueError, match="has 0 parameter groups, this optimizer has 1"):
        zero.load_state_dict({**good, "param_groups": []})
    nan_lr = {**good, "param_groups": [{**good["param_groups"][0], "lr": float("nan")}]}
    with pytest.raises(ValueError, match="lr"):
        zero.load_state_dict(nan_lr)
    after = common.flat_state(zero.state_dict())
    assert after[1] == before[1] and after[0].tobytes() == before[0].tobytes()


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_zero_of_one_rank_refuses_a_nonfinite_gradient(mode):
    model = _model(np)
    zero = dist.ZeroRedundancyOptimizer(model.parameters(), na.Adam, nonfinite=mode)
    _train(model, zero, 1)
    before, state = common.flat(model), common.flat_state(zero.state_dict())[0]
    common.backward(model, common.part_slice(1))
    model.parameters()[2].grad[1, 1] = np.inf
    if mode == "raise":
        with pytest.raises(FloatingPointError, match="parameter 2 contains NaN or infinity"):
            zero.step()
    else:
        zero.step()
        assert zero.skipped_steps == 1
    assert zero.step_count == 1
    assert common.flat(model).tobytes() == before.tobytes()
    assert common.flat_state(zero.state_dict())[0].tobytes() == state.tobytes()


def test_zero_refuses_an_optimizer_that_needs_a_closure():
    model = _model(np)
    with pytest.raises(TypeError, match=r"cannot shard LBFGS.*DistributedOptimizer"):
        dist.ZeroRedundancyOptimizer(model.parameters(), na.LBFGS)
    with pytest.raises(TypeError, match="optimizer_class must be an optimizer class"):
        dist.ZeroRedundancyOptimizer(model.parameters(), na.Adam(model.parameters()))


def test_zero_takes_back_parameters_whose_array_was_replaced():
    plain, sharded = _model(np), _model(np)
    opt = na.Adam(plain.parameters(), lr=0.01)
    zero = dist.ZeroRedundancyOptimizer(sharded.parameters(), na.Adam, lr=0.01)
    _train(plain, opt, 1)
    _train(sharded, zero, 1)
    for p, q in zip(plain.parameters(), sharded.parameters(), strict=True):
        p.data = p.data * 0.5
        q.data = q.data * 0.5  # a new array, not the buffer's view
    _train(plain, opt, 2, start=1)
    _train(sharded, zero, 2, start=1)
    assert common.flat(sharded).tobytes() == common.flat(plain).tobytes()


def test_clip_grad_norm_of_one_rank_is_the_local_one(xp):
    _jax_adam_only(xp, "clip")
    models = [_model(xp, dtype="float64") for _ in range(3)]
    opts = [
        na.Adam(models[0].parameters()),
        dist.DistributedOptimizer(na.Adam(models[1].parameters())),
        dist.ZeroRedundancyOptimizer(models[2].parameters(), na.Adam),
    ]
    for model in models:
        common.backward(model, common.part_slice(0))
    expected = float(na.clip_grad_norm_(models[0].parameters(), 0.01))
    assert abs(float(dist.clip_grad_norm_(opts[1], 0.01)) - expected) < 1e-12 * expected
    assert abs(float(dist.clip_grad_norm_(opts[2], 0.01)) - expected) < 1e-12 * expected
    for opt in opts:
        opt.step()
    assert _maxdiff(common.flat(models[1]), common.flat(models[0])) < 1e-12
    assert _maxdiff(common.flat(models[2]), common.flat(models[0])) < 1e-12
    third = _model(xp, dtype="float64")
    common.backward(third, common.part_slice(0))
    assert abs(float(dist.clip_grad_norm_(third.parameters(), 0.01)) - expected) < 1e-12 * expected


def _comm_of(rank, world):
    comm = dist.Communicator()
    comm.rank, comm.world_size = rank, world
    return comm


@pytest.mark.parametrize("n", [0, 1, 5, 12, 23])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shard_indices_follow_torchs_distributed_sampler(n, world, drop_last):
    torch_data = pytest.importorskip("torch.utils.data", reason="compared with torch's sampler")
    for rank in range(world):
        sampler = torch_data.DistributedSampler(
            range(n), num_replicas=world, rank=rank, shuffle=False, drop_last=drop_last
        )
        ours = dist.shard_indices(n, _comm_of(rank, world), shuffle=False, drop_last=drop_last)
        assert ours.dtype == np.int64
        assert ours.tolist() == list(sampler)


def test_shard_indices_of_one_rank_are_the_epochs_order():
    order = np.random.default_rng([5, 3]).permutation(17)
    assert dist.shard_indices(17, seed=5, epoch=3).tolist() == order.tolist()
    assert dist.shard_indices(17, seed=5, epoch=4).tolist() != order.tolist()
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="n must be a non-negative int"):
            dist.shard_indices(bad)
    with pytest.raises(TypeError, match="shuffle must be a bool"):
        dist.shard_indices(3, shuffle=1)


def test_arguments_are_checked():
    model = _model(np)
    with pytest.raises(TypeError, match=r"comm must be None, a neural_arch\.distributed"):
        dist.broadcast_parameters(model, comm="world")
    with pytest.raises(ValueError, match=r"root must be a rank in \[0, 1\), got 1"):
        dist.broadcast_parameters(model, root=1)
    with pytest.raises(ValueError, match="bucket_cap_mb must be a positive number"):
        dist.all_reduce_gradients(model, bucket_cap_mb=0)
    with pytest.raises(TypeError, match="average must be a bool"):
        dist.all_reduce_gradients(model, average=1)
    with pytest.raises(TypeError, match="a set has no order"):
        dist.all_reduce_gradients(set(model.parameters()))
    with pytest.raises(TypeError, match=r"params\[0\] is a str"):
        dist.all_reduce_gradients(["w"])
    with pytest.raises(TypeError, match="optimizer must be an optimizer"):
        dist.DistributedOptimizer(model)
    with pytest.raises(TypeError, match="nccl must be None, True or False"):
        dist.init(nccl="yes")


# ------------------------------------------------------- CuPy's paths, without a GPU


def test_cupy_path_is_chosen_from_the_communicator():
    fake_nccl = SimpleNamespace()
    assert _device.cupy_path(_comm_of(0, 1), fake_nccl) == "local"
    two = _comm_of(0, 2)
    assert _device.cupy_path(two, fake_nccl) == "nccl"
    two.nccl = False
    assert _device.cupy_path(two, fake_nccl) == "host"
    two.cuda_aware_mpi = True
    assert _device.cupy_path(two, fake_nccl) == "mpi"
    if _device._nccl_module() is None:  # no CuPy with NCCL here: None means "not available"
        two.nccl = None
        assert _device.cupy_path(two) == "mpi"
        two.nccl = True
        with pytest.raises(ImportError, match=r"requires cupy\.cuda\.nccl"):
            _device.cupy_path(two)


class _FakeDeviceArray:
    """Just enough of a CuPy array for the NCCL calls: a pointer, a size, a dtype."""

    def __init__(self, host: np.ndarray) -> None:
        self.host = host
        self.data = SimpleNamespace(ptr=host.ctypes.data)

    size = property(lambda self: self.host.size)
    itemsize = property(lambda self: self.host.itemsize)
    dtype = property(lambda self: self.host.dtype)

    def reshape(self, *shape):
        return _FakeDeviceArray(self.host.reshape(*shape))

    def view(self, dtype):
        return _FakeDeviceArray(self.host.view(dtype))


def _fake_nccl(calls):
    class Communicator:
        def __init__(self, ndev, uid, rank):
            calls.append(("init", ndev, len(uid), rank))

        def __getattr__(self, name):
            return lambda *args: calls.append((name, *args))

    names = {f"NCCL_{t}": t.lower() for t in ("FLOAT16", "FLOAT32", "FLOAT64", "UINT8", "SUM")}
    return SimpleNamespace(
        NcclCommunicator=Communicator,
        get_unique_id=lambda: tuple(range(-64, 64)),
        groupStart=lambda: calls.append(("groupStart",)),
        groupEnd=lambda: calls.append(("groupEnd",)),
        **{k: v for k, v in names.items()},
    )


def test_nccl_collectives_are_grouped_broadcasts_and_reduces():
    calls: list[tuple] = []
    comm = _comm_of(1, 3)
    comm.bcast_ = lambda buf, root: buf  # the id exchange of a single process
    stream = SimpleNamespace(ptr=77)
    cuda = SimpleNamespace(get_current_stream=lambda: stream, Device=lambda i: nullcontext())
    cupy = SimpleNamespace(cuda=cuda)
    wire = _device.DeviceWire(comm, 0, nccl_module=_fake_nccl(calls), cupy_module=cupy)
    assert wire.path == "nccl" and calls == [("init", 3, 128, 1)]
    host = np.zeros(10, dtype=np.float64)
    buf, base = _FakeDeviceArray(host), host.ctypes.data
    calls.clear()
    wire.allgatherv_(buf, [4, 0, 6], [0, 4, 4])
    assert calls == [
        ("groupStart",),
        ("broadcast", base, base, 32, "uint8", 0, 77),
        ("broadcast", base + 32, base + 32, 48, "uint8", 2, 77),
        ("groupEnd",),
    ]
    calls.clear()
    recv_host = np.zeros(0)
    recv = _FakeDeviceArray(recv_host)
    wire.reduce_scatter_(buf, recv, [4, 0, 6])
    assert calls == [
        ("groupStart",),
        ("reduce", base, base, 4, "float64", "sum", 0, 77),
        ("reduce", base + 32, base + 32, 6, "float64", "sum", 2, 77),
        ("groupEnd",),
    ]
    calls.clear()
    wire.allreduce_(buf)
    assert calls == [("allReduce", base, base, 10, "float64", "sum", 77)]


# ------------------------------------------------------------------ the example

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_digits_distributed.py"


def _example_requirements() -> str | None:
    for module in ("sklearn", "matplotlib", "tqdm"):
        if importlib.util.find_spec(module) is None:
            return f"the example needs {module} (the examples extra)"
    return None


def _load_example():
    sys.path.insert(0, str(EXAMPLE.parent))
    spec = importlib.util.spec_from_file_location("train_digits_distributed", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_on_one_rank_takes_train_digits_steps(tmp_path):
    if _example_requirements():
        pytest.skip(_example_requirements())
    example = _load_example()
    args = ["--epochs", "1", "--out"]
    ours = example.main([*args, str(tmp_path / "ours")])
    (theirs,) = example.train_digits.main([*args, str(tmp_path / "theirs"), "--no-progress"])
    assert ours["world"] == 1 and ours["steps"] == theirs["steps"] == 45
    assert ours["test_loss"] == theirs["test_loss"]  # the same batches, bit for bit
    assert ours["test_acc"] > 0.85


@needs_mpi
def test_example_trains_on_two_ranks_and_resumes_on_one(tmp_path):
    if _example_requirements():
        pytest.skip(_example_requirements())
    args = ["--zero", "--epochs", "1", "--out", str(tmp_path)]
    rc, output, _ = run_job(2, str(EXAMPLE), *args, "--max-steps", "20")
    assert rc == 0, output[-4000:]
    assert "on 2 rank(s): global batch 32 = 2 x 16" in output
    assert "after 20 steps" in output
    resumed = subprocess.run(
        [sys.executable, str(EXAMPLE), *args, "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, NEURAL_ARCH_NO_MPI="1"),
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "at step 20 of 45" in resumed.stdout
    accuracy = float(resumed.stdout.split("test accuracy ")[1].split("%")[0])
    assert accuracy > 85
