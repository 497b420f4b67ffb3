"""The Triton backend's declared spaces: discovery, pruning against the launch's real tiles,
pinned fields, and tuning real kernels (under the interpreter here, on the GPU when there is one)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

import scancc.autotune.cache as cache_mod
import scancc.autotune.space as space_mod
import scancc.ir as ir
from scancc.autotune import DeviceLimits, Problem, Record, ScheduleCache, best_schedule, cache_key, clear_memo
from scancc.autotune import parse_shape, resolve_backend, space_for, tune, tune_and_store
from scancc.autotune.inputs import make_inputs
from scancc.autotune.search import OK, advance_state
from scancc.autotune.space import SearchSpace, space_for_default, unregister_space
from scancc.backends import triton_space
from scancc.backends.diagonal import DiagonalPlan
from scancc.backends.triton import tile_sizes
from scancc.cli import main
from scancc.ir import Schedule

from autotune_fakes import FakeBackend

H100 = DeviceLimits(name="NVIDIA H100 80GB HBM3", capability=(9, 0), sm_count=132, smem_per_block=227 * 1024,
                    regs_per_sm=65536, l2_bytes=50 * 1024 * 1024)
ANCHORS = [  # the benchmarks' shapes
    (ir.selective(), "mamba1", "bf16", {"algorithm", "block_d", "block_l", "num_warps"}),
    (ir.linear(), "scan", "fp32", {"block_l", "block_d", "num_warps", "num_stages"}),
    (ir.ssd(gate=False), "mamba2", "bf16", {"chunk", "block_l", "block_d", "num_warps", "num_stages"}),
    (ir.ssd(gate=False).as_step(), "mamba2-decode", "bf16", {"block_d", "num_warps"}),
    (ir.selective().as_step(), "mamba1-decode", "bf16", {"block_d", "num_warps"}),
]
TRITON = resolve_backend("triton")


@pytest.mark.parametrize("program, shape, dtype, searched", ANCHORS, ids=[a[1] for a in ANCHORS])
def test_anchor_spaces_keep_the_default_and_prune_something(program: ir.Program, shape: str, dtype: str,
                                                            searched: set[str]) -> None:
    space = space_for(program, "triton")
    assert {n for n, _ in space.params} == searched
    problem = Problem.make(program, parse_shape(shape), dtype)
    default = TRITON.default_schedule(program)
    assert space.violations(default, problem, H100) == []  # stored defaults must stay usable
    pruned = space.prune(problem, H100)
    assert 0 < len(pruned.feasible) < pruned.total
    assert all(TRITON.supports(program, s) for s in pruned.feasible)


def test_diagonal_constraints_see_the_launch_tiles() -> None:
    """No feasible point is silently shrunk at launch (it would time another point twice),
    and distinct points launch distinct kernels."""
    program = ir.selective()
    problem = Problem.make(program, {"batch": 2, "dim": 24, "dstate": 16, "seqlen": 64}, "bf16")
    space = space_for(program, "triton")
    pruned = space.prune(problem, H100)
    plan = DiagonalPlan.of(program)
    launches = set()
    for s in pruned.feasible:
        tiles = tile_sizes(plan, s, 24, 16, 24, 2)
        assert tiles.block_d == s.block_d and tiles.block_l == s.block_l
        launches.add((s.algorithm, tiles, s.num_warps, s.num_stages))
    assert len(launches) == len(pruned.feasible)
    assert space.violations(Schedule(algorithm="sequential", block_d=16), problem, H100) == [
        "block_d_divides_channels"]
    assert pruned.rejected["block_d_divides_channels"] > 0  # 16, 32, 64 do not divide 24
    # a 64-channel, 64-step chunked tile on one warp would need thousands of registers per thread
    assert "fits_registers" in space.violations(
        Schedule(algorithm="chunked_scan", block_d=64, block_l=64, num_warps=1), problem, H100)
    assert "fits_registers" not in space.violations(
        Schedule(algorithm="chunked_scan", block_d=64, block_l=64, num_warps=1), problem, DeviceLimits.cpu())


def test_selective_space_searches_the_measured_algorithms() -> None:
    """unrolled_scan is not searched (slower than sequential on the H100, slow to compile); the
    space's points are the sequential and chunked forwards, and a pinned unrolled_scan schedule
    still passes the constraints."""
    program = ir.selective()
    problem = Problem.make(program, {"batch": 2, "dim": 64, "dstate": 16, "seqlen": 256}, "bf16")
    space = space_for(program, "triton")
    assert {s.algorithm for s in space.prune(problem, H100).feasible} == {"sequential", "chunked_scan"}
    assert space.violations(Schedule(algorithm="unrolled_scan", num_warps=1), problem, H100) == []


def test_ssd_space_prunes_by_chunk_shared_memory_and_pins() -> None:
    program = ir.ssd()
    problem = Problem.make(program, parse_shape("mamba2"), "fp32")
    space = space_for(program, "triton")
    assert space.violations(Schedule(algorithm="ssd_chunked", chunk=64, block_l=128), problem, H100) == [
        "block_l_within_chunk"]
    little = DeviceLimits(name="little smem", capability=(8, 0), smem_per_block=64 * 1024)
    staged = Schedule(algorithm="ssd_chunked", chunk=256, block_l=64, block_d=64, num_warps=8, num_stages=3)
    assert space.violations(staged, problem, little) == ["fits_shared_memory"]
    assert space.admits(staged.replace(num_stages=1), problem, little)
    pinned = space.pinned(chunk=128)
    assert "chunk" not in dict(pinned.params) and pinned.base.chunk == 128
    assert {s.chunk for s in pinned.prune(problem, H100).feasible} == {128}
    short = Problem.make(program, {"batch": 1, "seqlen": 40, "heads": 2, "headdim": 16, "dstate": 16}, "fp32")
    assert {s.chunk for s in space.prune(short, H100).feasible} == {64}
    with pytest.raises(ValueError, match="not a Schedule field"):
        space.pinned(tile=4)
    with pytest.raises(ValueError, match="chunk=100"):
        space.pinned(chunk=100)


def test_step_space_sizes_rows_by_layout() -> None:
    head = ir.ssd().as_step()
    problem = Problem.make(head, {"batch": 2, "heads": 4, "headdim": 16, "dstate": 16}, "fp32")
    space = space_for(head, "triton")
    assert {s.block_d for s in space.prune(problem, H100).feasible} <= {1, 2, 4, 8, 16}
    channel = ir.selective().as_step()
    problem = Problem.make(channel, {"batch": 2, "dim": 64, "dstate": 16, "groups": 2}, "fp32")
    assert {s.block_d for s in space_for(channel, "triton").prune(problem, DeviceLimits.cpu()).feasible} == {
        1, 2, 4, 8, 16, 32}


def test_programs_without_a_triton_space_get_none() -> None:
    assert triton_space.triton_space(ir.gla(), Schedule()) is None  # no Triton half lowers GLA
    mamba3 = ir.mamba3()
    assert triton_space.triton_space(mamba3, TRITON.default_schedule(mamba3)) is None  # Mamba-3's own tiles


def test_a_backend_declares_its_space_in_a_sibling_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "scancc_plugin_space.py").write_text(
        "from scancc.autotune import SearchSpace, register_space\n"
        "@register_space('plugin')\n"
        "def provide(program, default):\n"
        "    return SearchSpace(default, {'num_warps': (1, 2)})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(space_mod, "SPACE_MODULE", "scancc_{backend}_space")
    space_mod._DISCOVERED.discard("plugin")
    try:
        space = space_for_default(ir.linear(), "plugin", Schedule(block_l=64))
        assert dict(space.params) == {"num_warps": (1, 2)}
    finally:
        module = sys.modules.pop("scancc_plugin_space", None)
        if module is not None:
            unregister_space("plugin", module.provide)
        space_mod._DISCOVERED.discard("plugin")
    # a backend with no such module gets the generic space
    assert "num_stages" in dict(space_for_default(ir.linear(), "nomodule", Schedule(block_l=64)).params)


# -- tuning real kernels on the CPU (Triton interpreter) ----------------------------------------
SMALL = [
    (ir.selective(), {"batch": 1, "dim": 4, "dstate": 4, "seqlen": 16}, "fp32", None),
    (ir.ssd(gate=False), {"batch": 1, "seqlen": 32, "heads": 2, "headdim": 16, "dstate": 16}, "fp32", {"chunk": 16}),
    (ir.ssd(gate=False).as_step(), {"batch": 2, "heads": 2, "headdim": 16, "dstate": 16}, "fp32", None),
]


@pytest.mark.parametrize("program, shapes, dtype, pin", SMALL, ids=["selective", "ssd", "decode"])
def test_tuning_real_kernels_against_the_oracle(program: ir.Program, shapes: dict, dtype: str,
                                                pin: dict | None) -> None:
    result = tune(program, "triton", shapes, dtype=dtype, device="cpu", budget=60, trials=2, repeats=1, warmup=0,
                  reference="oracle", pin=pin, seed=1)
    assert result.default.status == OK, result.default.error
    assert [t.status for t in result.trials] == [OK, OK], [t.error for t in result.trials]
    assert result.best.status == OK and result.best.time_s is not None
    if pin:
        assert all(t.schedule.chunk == pin["chunk"] for t in [result.default, *result.trials])


def test_decode_is_timed_in_place_on_private_state_copies() -> None:
    program = ir.ssd(gate=False).as_step()
    problem = Problem.make(program, {"batch": 2, "heads": 2, "headdim": 16, "dstate": 16}, "fp32")
    inputs, state = make_inputs(problem, torch.device("cpu"))
    kernel = TRITON.build(program, TRITON.default_schedule(program), TRITON.lower(program,
                                                                                 TRITON.default_schedule(program)))
    expected = kernel.forward(inputs, initial_state=state, return_final_state=True)
    copy = state.clone()
    out = advance_state(kernel, inputs, copy)
    assert torch.equal(out, expected.out) and torch.equal(copy, expected.final_state)
    assert not torch.equal(copy, state)  # the copy moved, the original did not

    class NoAdvance:  # a backend without an in-place entry point: forward, then the state copied back
        def forward(self, inputs, *, initial_state=None, return_final_state=False, **kw):  # type: ignore[no-untyped-def]
            return kernel.forward(inputs, initial_state=initial_state, return_final_state=return_final_state)

    again = state.clone()
    assert torch.equal(advance_state(NoAdvance(), inputs, again), expected.out)  # type: ignore[arg-type]
    assert torch.equal(again, expected.final_state)


# -- pins in the cache and in best_schedule -----------------------------------------------------
def test_pinned_tuning_is_stored_and_found_under_its_pin() -> None:
    be = FakeBackend()
    shapes = {"batch": 1, "dim": 4, "seqlen": 512}
    space = SearchSpace(be.default, {"block_l": (128, 256, 512), "num_warps": (2, 4)})
    result = tune_and_store(ir.linear(), be, shapes, device="cpu", space=space, pin={"block_l": 128}, budget=5.0,
                            repeats=2, warmup=0)
    assert all(t.schedule.block_l == 128 for t in [result.default, *result.trials])
    problem = Problem.make(ir.linear(), shapes, "fp32")
    assert cache_key(problem, be, DeviceLimits.cpu(), {"block_l": 128}).bucket.endswith(" fp32 block_l=128")
    stored = ScheduleCache().records()
    assert len(stored) == 1 and stored[0].key.bucket.endswith("block_l=128")
    assert best_schedule(ir.linear(), be, shapes, "cpu", "fp32", pin={"block_l": 128}) == stored[0].schedule
    # without the pin (or with another) that record is not the answer: the default is, with the pin applied
    assert best_schedule(ir.linear(), be, shapes, "cpu", "fp32") == be.default
    assert best_schedule(ir.linear(), be, shapes, "cpu", "fp32", pin={"block_l": 512}) == be.default.replace(
        block_l=512)
    with pytest.raises(TypeError, match="pin"):
        best_schedule(ir.linear(), be, shapes, "cpu", "fp32", pin=[("block_l", 128)])  # type: ignore[arg-type]


def test_shipped_triton_default_is_used_on_a_cache_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    program = ir.selective()
    shapes = {"batch": 1, "dim": 8, "dstate": 4, "seqlen": 64}
    problem = Problem.make(program, shapes, "bf16")
    tuned = Schedule(algorithm="chunked_scan", block_d=4, block_l=8, num_warps=1)
    key = cache_key(problem, TRITON, DeviceLimits.cpu())
    h100_like = cache_mod.CacheKey("some GPU", key.arch, key.backend, "old", "0.0.1", key.program, key.bucket)
    monkeypatch.setattr(cache_mod, "shipped_records", lambda: (Record(h100_like, tuned),))
    # CPU keys match shipped records only by exact device name (arch "cpu" is not a GPU family)
    assert best_schedule(program, "triton", shapes, "cpu", "bf16") == TRITON.default_schedule(program)
    clear_memo()
    cpu_key = cache_mod.CacheKey(key.device, key.arch, key.backend, "old", "0.0.1", key.program, key.bucket)
    monkeypatch.setattr(cache_mod, "shipped_records", lambda: (Record(cpu_key, tuned),))
    assert best_schedule(program, "triton", shapes, "cpu", "bf16") == tuned
    clear_memo()
    # a shipped schedule that does not fit this exact shape is skipped
    monkeypatch.setattr(cache_mod, "shipped_records", lambda: (Record(cpu_key, tuned.replace(block_d=16)),))
    assert best_schedule(program, "triton", shapes, "cpu", "bf16") == TRITON.default_schedule(program)


def test_shipped_defaults_file_is_valid() -> None:
    """Every record in ``defaults/*.json`` parses, names a known program bucket, and its
    schedule passes the space's constraints at the shape it was tuned at (H100 limits)."""
    cache_mod.shipped_records.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = cache_mod.shipped_records()
    programs = {p.hash: p for p in (ir.selective(), ir.linear(), ir.ssd(gate=False), ir.ssd(gate=False).as_step(),
                                    ir.selective().as_step())}
    for record in records:
        assert record.key.backend == "triton" and record.key.arch == "sm90"
        program = programs.get(record.key.program)
        if program is None:
            continue  # tuned for a program variant this test does not build
        tokens = record.key.bucket.split()
        dtype = next(t for t in tokens if t in ("fp32", "bf16", "fp16"))
        problem = Problem.make(program, record.shape, dtype)
        pins = dict(t.split("=") for t in tokens if t.split("=")[0] in Schedule.__dataclass_fields__)
        for name, value in pins.items():
            assert str(getattr(record.schedule, name)) == value, record
        assert space_for(program, "triton").admits(record.schedule, problem, H100), record


def test_autotune_on_a_miss_with_the_triton_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCANCC_AUTOTUNE", "1")
    monkeypatch.setenv("SCANCC_AUTOTUNE_BUDGET", "4")
    program = ir.ssd(gate=False).as_step()
    shapes = {"batch": 2, "heads": 2, "headdim": 16, "dstate": 16, "groups": 1}
    chosen = best_schedule(program, "triton", shapes, "cpu", "fp32")
    record = ScheduleCache().lookup(cache_key(Problem.make(program, shapes, "fp32"), TRITON, DeviceLimits.cpu()))
    assert record is not None and record.schedule == chosen and TRITON.supports(program, chosen)


def test_cli_named_shapes_step_and_pin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import scancc.backends.registry as registry

    be = FakeBackend()
    real = registry.get_backend
    monkeypatch.setattr(registry, "get_backend", lambda name: be if name == "fake" else real(name))
    assert parse_shape("mamba1") == {"batch": 4, "dim": 5120, "dstate": 16, "seqlen": 4096}
    assert parse_shape(" mamba2 ")["headdim"] == 64
    code = main(["tune", "linear", "--step", "--shape", "batch=2,dim=4", "--backend", "fake", "--trials", "2",
                 "--repeats", "2", "--device", "cpu", "--pin", "num_stages=2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (record,) = ScheduleCache().records()
    assert record.program_name == "linear_scan_step" and record.schedule.num_stages == 2
    assert record.key.bucket.endswith("num_stages=2")
    assert main(["tune", "linear", "--shape", "scan", "--backend", "fake", "--pin", "chunk=7", "--device",
                 "cpu"]) == 2
    assert "chunk=7" in capsys.readouterr().err


# -- on the GPU -----------------------------------------------------------------------------------
GPU_CASES = [
    (ir.selective(), "mamba1", "bf16", None),
    (ir.linear(), "scan", "fp32", None),
    (ir.ssd(gate=False), "mamba2", "bf16", {"chunk": 256}),
    (ir.ssd(gate=False).as_step(), "mamba2-decode", "bf16", None),
]


@pytest.mark.gpu
@pytest.mark.timing
@pytest.mark.parametrize("program, shape, dtype, pin", GPU_CASES, ids=[c[1] for c in GPU_CASES])
def test_tune_anchor_shapes_on_the_gpu(program: ir.Program, shape: str, dtype: str, pin: dict | None) -> None:
    result = tune(program, "triton", parse_shape(shape), dtype=dtype, device="cuda", budget=20, pin=pin)
    assert result.default.status == OK and result.best.status == OK
    assert result.elapsed_s < 20 + 10  # one evaluation and the confirmation past the budget at most
    assert sum(t.status == OK for t in result.trials) >= 0.8 * len(result.trials)  # pruning leaves few failures
    assert result.speedup is not None and result.speedup >= 1.0


@pytest.mark.gpu
@pytest.mark.timing
def test_cached_selective_call_adds_little_host_time() -> None:
    import time

    from scancc.ops import selective_scan_fn

    dev = "cuda"
    u, delta, z = (torch.randn(1, 16, 16, device=dev, dtype=torch.bfloat16) for _ in range(3))
    delta = delta.abs()
    A = -torch.rand(16, 4, device=dev)
    B, C = (torch.randn(1, 1, 4, 16, device=dev, dtype=torch.bfloat16) for _ in range(2))

    def call() -> torch.Tensor:
        return selective_scan_fn(u, delta, A, B, C, None, z, None, delta_softplus=True)

    call()
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            call()
        best = min(best, (time.perf_counter() - t0) / 200)
        torch.cuda.synchronize()
    assert best < 200e-6, f"a cached selective_scan_fn call took {best * 1e6:.1f} us of host time"
