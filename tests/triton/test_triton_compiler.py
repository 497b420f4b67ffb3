"""scancc.compile and the Triton backend's contract: registry, cache, lowering, errors."""

from __future__ import annotations

import ast

import pytest
import torch

from scancc import compiler, ir
from scancc.backends import registry
from scancc.backends.base import CompiledScan
from scancc.backends.triton import Tiles, TritonBackend, tile_sizes
from scancc.backends.diagonal import DiagonalPlan
from scancc.ir import Schedule

DIAGONAL = [ir.linear(), ir.hgrn(), ir.rglru(), ir.linear(complex=True), ir.selective(),
            ir.selective(complex=True, varying_B=False, gate=False), ir.lti(), ir.lti(complex=False), ir.lru()]


def test_compile_returns_a_cached_compiled_scan() -> None:
    kernel = compiler.compile(ir.selective())
    assert isinstance(kernel, CompiledScan)
    assert kernel.backend == "triton" and kernel.program == ir.selective()
    assert compiler.compile(ir.selective(), backend="triton") is kernel
    assert compiler.compile(ir.selective(), schedule=Schedule(block_l=32)) is not kernel


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown backend 'nope'.*'triton'"):
        compiler.compile(ir.linear(), backend="nope")


def test_backend_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compiler.BACKEND_ENV, "nope")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        compiler.compile(ir.linear(), backend=None)
    monkeypatch.setenv(compiler.BACKEND_ENV, "triton")
    assert compiler.compile(ir.linear(), backend=None).backend == "triton"


def test_missing_runtime_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TritonBackend, "available", lambda self: False)
    compiler.clear_cache()
    with pytest.raises(ImportError, match=r"pip install 'scancc\[triton\]'"):
        compiler.compile(ir.linear(name="needs_runtime"))


def test_bad_argument_types() -> None:
    with pytest.raises(TypeError, match="program must be a scancc.ir.Program"):
        compiler.compile("selective")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="schedule must be"):
        compiler.compile(ir.linear(), schedule={"block_l": 16})  # type: ignore[arg-type]


@pytest.mark.parametrize("program", [ir.gla(), ir.linear().as_step()], ids=["gla", "step"])
def test_programs_the_backend_cannot_lower_are_refused(program: ir.Program) -> None:
    backend = TritonBackend()
    assert not backend.supports(program, backend.default_schedule(program))
    with pytest.raises(ValueError, match="cannot lower"):
        compiler.compile(program)


def test_schedules_the_kernels_cannot_run_are_refused() -> None:
    with pytest.raises(ValueError, match="'chunked_scan', 'sequential' and 'unrolled_scan'"):
        compiler.compile(ir.linear(), schedule=Schedule(algorithm="fft_conv"))
    with pytest.raises(ValueError, match="block_n"):
        compiler.compile(ir.selective(), schedule=Schedule(block_n=8))
    with pytest.raises(ValueError, match="unrolls at most 64 state entries, got block_n=128"):
        compiler.compile(ir.selective(), schedule=Schedule(algorithm="unrolled_scan", block_n=128))
    with pytest.raises(ValueError, match="plain scan"):
        compiler.compile(ir.linear(), schedule=Schedule(algorithm="unrolled_scan"))


def test_registry_is_lazy_and_named() -> None:
    assert "triton" in registry.known_backends()
    assert registry.get_backend("triton").name == "triton"
    with pytest.raises(ValueError, match="unknown backend"):
        registry.get_backend("cuda-someday")


@pytest.mark.parametrize("program", DIAGONAL, ids=lambda p: f"{p.name}-{p.hash[:6]}")
def test_lowered_source_is_python_with_named_kernels(program: ir.Program) -> None:
    backend = TritonBackend()
    source = backend.lower(program, backend.default_schedule(program))
    tree = ast.parse(source)
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert {f"{program.name}_fwd_kernel", f"{program.name}_bwd_kernel"} <= names
    assert "\n\n\n\n" not in source  # no runs of blank lines left by the template
    assert all(line == line.rstrip() for line in source.splitlines()), "trailing whitespace"


def test_kernel_names_follow_the_program_name() -> None:
    kernel = compiler.compile(ir.linear(name="my_scan"))
    assert "def my_scan_fwd_kernel(" in kernel.source and "def my_scan_bwd_kernel(" in kernel.source


def test_source_branches_on_the_ir_once() -> None:
    """Features absent from a program leave no trace in its kernels."""
    plain = TritonBackend().lower(ir.selective(skip=False, gate=False, delta_bias=False, delta_softplus=False),
                                  Schedule())
    for word in ("softplus", "sigmoid", "HAS_Z", "HAS_D:", "delta_bias", "_re"):
        assert word not in plain, word
    full = TritonBackend().lower(ir.selective(complex=True), Schedule())
    for word in ("softplus", "HAS_Z", "HAS_D:", "delta_bias", "b_a_re", "reverse=True"):
        assert word in full, word


def test_generated_file_lives_in_the_cache_dir(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCANCC_CACHE_DIR", str(tmp_path))
    backend = TritonBackend()
    program = ir.linear(name="cached_scan")
    kernel = backend.build(program, Schedule(), backend.lower(program, Schedule()))
    files = list((tmp_path / "triton").glob("cached_scan_*.py"))
    assert len(files) == 1 and files[0].read_text() == kernel.source


def test_default_schedules() -> None:
    backend = TritonBackend()
    plain = backend.default_schedule(ir.linear())
    assert plain.algorithm == "chunked_scan" and plain.block_l == 2048 and plain.block_d == 1
    assert backend.default_schedule(ir.selective()) == Schedule(algorithm="sequential", num_warps=2)
    default = Schedule(algorithm="unrolled_scan", num_warps=1)
    plan = DiagonalPlan.of(ir.selective())
    # unrolled_scan: one warp's lanes along 32 channels, tiles of 32 steps, and its backward on the
    # same channels over one checkpoint interval of 32 steps
    unrolled = tile_sizes(plan, default, dim=5120, dstate=16, chans_per_group=5120, num_seqs=4)
    assert unrolled == Tiles(block_d=32, block_n=16, block_l=32, ckpt_every=1, bwd_block_d=32, bwd_num_warps=1,
                             unrolled=True, bwd_unrolled=True)
    assert tile_sizes(plan, default.replace(block_l=8), dim=5120, dstate=16, chans_per_group=5120,
                      num_seqs=4).bwd_block_l == 32
    assert backend.default_schedule(ir.selective(complex=True)).algorithm == "sequential"
    assert backend.default_schedule(ir.lti()).algorithm == "sequential"
    complex_unrolled = tile_sizes(DiagonalPlan.of(ir.selective(complex=True)), default, dim=64, dstate=16,
                                  chans_per_group=64, num_seqs=4)
    assert complex_unrolled.unrolled and not complex_unrolled.bwd_unrolled
    # LTI (a fixed decay) has an unrolled forward and keeps the chunked backward, every 64 steps
    lti = tile_sizes(DiagonalPlan.of(ir.lti()), default, dim=64, dstate=16, chans_per_group=64, num_seqs=4)
    assert lti.unrolled and not lti.bwd_unrolled and lti.bwd_block_l == 64
    # a state wider than the 16 entries unrolled by default runs the sequential forward's tiles
    wide = tile_sizes(plan, default, dim=5120, dstate=32, chans_per_group=5120, num_seqs=4)
    assert not wide.unrolled and (wide.block_l, wide.ckpt_every) == (16, 4)
    assert tile_sizes(plan, default.replace(block_n=32), dim=5120, dstate=32, chans_per_group=5120,
                      num_seqs=4).unrolled
    sel = Schedule(algorithm="sequential", num_warps=2)
    # tiles sized from dstate at launch; channels per program divide the channels of a group;
    # checkpoints (and backward tiles) every 64 steps
    mamba = tile_sizes(plan, sel, dim=5120, dstate=16, chans_per_group=5120, num_seqs=4)
    assert mamba == Tiles(block_d=32, block_n=16, block_l=16, ckpt_every=4, bwd_block_d=1, bwd_num_warps=1)
    assert mamba.bwd_block_l == 64
    # one long sequence: fewer channels per program, so that enough warps run
    assert tile_sizes(plan, sel, dim=5120, dstate=16, chans_per_group=5120, num_seqs=1).block_d == 16
    assert tile_sizes(plan, sel.replace(block_d=32), dim=5120, dstate=16, chans_per_group=5120,
                      num_seqs=1).block_d == 32
    scan = Schedule(algorithm="chunked_scan", num_warps=1)
    assert tile_sizes(plan, scan, dim=5120, dstate=16, chans_per_group=5120, num_seqs=4) == Tiles(8, 16, 4, 16, 1, 1)
    single = tile_sizes(plan, scan, dim=5120, dstate=16, chans_per_group=5120, num_seqs=1)
    assert (single.block_d, single.block_l) == (8, 4)
    odd = tile_sizes(DiagonalPlan.of(ir.selective()), sel, dim=6, dstate=3, chans_per_group=3, num_seqs=1000)
    assert (odd.block_d, odd.block_n, odd.block_l) == (1, 4, 16) and odd.bwd_block_l == 64
    linear = tile_sizes(DiagonalPlan.of(ir.linear()), plain, dim=5, dstate=1, chans_per_group=5, num_seqs=1)
    assert linear == Tiles(1, 1, 2048, 1, 1, 4)


def test_cpu_tensors_need_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    import scancc.backends.triton as tb

    kernel = compiler.compile(ir.linear())
    monkeypatch.setattr(tb, "_is_interpreted", lambda fn: False)
    a = torch.rand(1, 2, 8)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        kernel.forward({"a": a, "x": a})
