"""Search spaces: validation, pruning by shape and device limits, provider registration, problems."""

from __future__ import annotations

import pytest
import torch

import scancc.ir as ir
from scancc.autotune import Constraint, DeviceLimits, Problem, SearchSpace, generic_space, parse_dtype, parse_shape
from scancc.autotune.space import register_space, space_for, space_for_default, unregister_space
from scancc.ir import Schedule

from autotune_fakes import FakeBackend

H100 = DeviceLimits(name="NVIDIA H100 80GB HBM3", capability=(9, 0), sm_count=132, smem_per_block=227 * 1024,
                    regs_per_sm=65536, l2_bytes=50 * 1024 * 1024)


def _selective(seqlen: int = 4096, dtype: str = "bf16") -> Problem:
    return Problem.make(ir.selective(), {"batch": 4, "dim": 5120, "dstate": 16, "seqlen": seqlen}, dtype)


def test_generic_chunked_scan_space_is_the_documented_grid() -> None:
    space = generic_space(ir.selective(), Schedule(block_l=256))
    assert dict(space.params) == {"block_l": (64, 128, 256, 512, 1024, 2048, 4096),
                                  "num_warps": (1, 2, 4, 8, 16), "num_stages": (1, 2, 3)}
    assert space.size == 105 == len(list(space.points()))
    # Fields the space does not search keep the default's values.
    assert {p.block_d for p in space.points()} == {None}


def test_pruning_by_sequence_length_and_device() -> None:
    space = generic_space(ir.selective(), Schedule(block_l=256))
    long = space.prune(_selective(4096), H100)
    short = space.prune(_selective(100), H100)
    assert long.total == short.total == 105
    assert len(long.feasible) + sum(long.rejected.values()) == 105
    # seqlen 100 pads to 128: no tile longer than 128, and one tile leaves nothing to pipeline.
    assert {s.block_l for s in short.feasible} <= {64, 128}
    assert all(s.num_stages == 1 for s in short.feasible if s.block_l == 128)
    assert short.rejected["block_l_within_seqlen"] > 0
    assert len(short.feasible) < len(long.feasible)


def test_register_and_shared_memory_limits_prune_big_tiles() -> None:
    space = generic_space(ir.selective(), Schedule(block_l=256))
    problem = _selective()
    few_regs = DeviceLimits(name="few regs", capability=(8, 0), regs_per_sm=16384)
    little_smem = DeviceLimits(name="little smem", capability=(8, 0), smem_per_block=16 * 1024)
    big = space.prune(problem, H100)
    assert space.prune(problem, few_regs).rejected["fits_registers"] > big.rejected["fits_registers"]
    small = space.prune(problem, little_smem)
    assert small.rejected["fits_shared_memory"] > big.rejected["fits_shared_memory"]
    for s in small.feasible:
        assert space.admits(s, problem, little_smem)
        # Each thread keeps 3 fp32 words per state element: 16 states × block_l / threads.
        assert 3 * 16 * s.block_l / (32 * s.num_warps) + 32 <= 255
        # Five (batch, ·, seqlen) bf16 inputs staged num_stages times.
        assert s.num_stages * s.block_l * 5 * 2 <= 16 * 1024
    assert space.violations(Schedule(block_l=2048, num_warps=1, num_stages=3), problem, little_smem) == [
        "fits_registers", "fits_shared_memory"]


def test_cpu_limits_prune_only_by_shape() -> None:
    space = generic_space(ir.selective(), Schedule(block_l=256))
    pruned = space.prune(_selective(), DeviceLimits.cpu())
    assert pruned.rejected["fits_registers"] == pruned.rejected["fits_shared_memory"] == 0


def test_ssd_and_fallback_spaces() -> None:
    ssd = generic_space(ir.ssd(), Schedule(algorithm="ssd_chunked", chunk=64))
    assert dict(ssd.params)["chunk"] == (32, 64, 128, 256)
    problem = Problem.make(ir.ssd(), {"batch": 1, "seqlen": 48, "heads": 4, "headdim": 64, "dstate": 128}, "bf16")
    assert {s.chunk for s in ssd.prune(problem, H100).feasible} <= {32, 64}
    step = generic_space(ir.selective().as_step(), Schedule(algorithm="step"))
    assert [n for n, _ in step.params] == ["num_warps"]


@pytest.mark.parametrize("params, match", [
    ({"block_x": (1,)}, "not a Schedule field"),
    ({"block_l": ()}, "no candidate values"),
    ({"block_l": (64, 64)}, "repeats values"),
    ({"block_l": (64, 100)}, "block_l=100 is not a valid schedule value"),
    ({"chunk": (8,)}, "chunk=8"),
])
def test_space_rejects_bad_parameters(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SearchSpace(Schedule(), params)


def test_space_rejects_non_constraints_and_non_schedules() -> None:
    with pytest.raises(TypeError, match="Constraint"):
        SearchSpace(Schedule(), {"num_warps": (4,)}, (lambda s, p, d: True,))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Schedule"):
        SearchSpace({"block_l": 64}, {})  # type: ignore[arg-type]


def test_registered_providers_answer_first_latest_first() -> None:
    prog = ir.linear()
    mine = SearchSpace(Schedule(block_l=128), {"num_warps": (2, 4)},
                       (Constraint("always", lambda s, p, d: True),))

    def declines(program: ir.Program, default: Schedule) -> None:
        return None

    def answers(program: ir.Program, default: Schedule) -> SearchSpace:
        return mine

    register_space("fake", answers)
    register_space("fake", declines)
    try:
        assert space_for_default(prog, "fake", Schedule()) is mine
        assert space_for(prog, FakeBackend()) is mine
        # Other backends still get the generic space.
        assert dict(space_for_default(prog, "other", Schedule(block_l=256)).params)["num_stages"] == (1, 2, 3)
    finally:
        unregister_space("fake", answers)
        unregister_space("fake", declines)
    assert space_for_default(prog, "fake", Schedule()) is not mine


def test_provider_returning_garbage_is_a_type_error() -> None:
    @register_space("fake")
    def bad(program: ir.Program, default: Schedule) -> object:
        return {"block_l": (64,)}

    try:
        with pytest.raises(TypeError, match="expected a SearchSpace"):
            space_for_default(ir.linear(), "fake", Schedule())
    finally:
        unregister_space("fake", bad)


def test_problem_fills_implicit_dims_and_checks_the_rest() -> None:
    assert Problem.make(ir.linear(), {"batch": 2, "dim": 8, "seqlen": 16}, "fp32").shape == {
        "batch": 2, "dim": 8, "dstate": 1, "seqlen": 16}
    m3 = Problem.make(ir.mamba3(rank=2), {"batch": 1, "seqlen": 8, "heads": 2, "headdim": 4, "dstate": 16}, "bf16")
    assert (m3["groups"], m3["rank"], m3["pairs"]) == (1, 2, 4)
    assert m3.rows == 2 and m3.dtype is torch.bfloat16 and m3.itemsize == 2
    with pytest.raises(ValueError, match=r"missing \['seqlen'\]"):
        Problem.make(ir.selective(), {"batch": 1, "dim": 4, "dstate": 4}, "fp32")
    with pytest.raises(ValueError, match="does not use"):
        Problem.make(ir.linear(), {"batch": 1, "dim": 4, "seqlen": 4, "heads": 2}, "fp32")
    with pytest.raises(ValueError, match="positive int"):
        Problem.make(ir.linear(), {"batch": 0, "dim": 4, "seqlen": 4}, "fp32")
    with pytest.raises(ValueError, match="multiple of"):
        Problem.make(ir.selective(), {"batch": 1, "dim": 6, "dstate": 4, "seqlen": 4, "groups": 4}, "fp32")
    with pytest.raises(ValueError, match="rank"):
        Problem.make(ir.mamba3(rank=2), {"batch": 1, "seqlen": 8, "heads": 2, "headdim": 4, "dstate": 16, "rank": 3},
                     "bf16")
    with pytest.raises(TypeError, match="Program"):
        Problem.make("selective", {}, "fp32")  # type: ignore[arg-type]


def test_parse_shape_and_dtype() -> None:
    assert parse_shape("batch=4, dim=5120,dstate=16,seqlen=4096") == {"batch": 4, "dim": 5120, "dstate": 16,
                                                                       "seqlen": 4096}
    for bad in ("", "batch=4,", "batch=x", "batch=1,batch=2"):
        with pytest.raises(ValueError):
            parse_shape(bad)
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="dtype"):
        parse_dtype("int8")
    with pytest.raises(ValueError, match="dtype"):
        parse_dtype(torch.int32)


def test_device_limits() -> None:
    assert DeviceLimits.cpu().arch == "cpu" and H100.arch == "sm90"
    assert DeviceLimits.from_torch("cpu") == DeviceLimits.cpu()
    with pytest.raises(ValueError, match="sm_count"):
        DeviceLimits(name="x", sm_count=0)
    with pytest.raises(ValueError, match="kind"):
        DeviceLimits(name="x", kind="tpu")
