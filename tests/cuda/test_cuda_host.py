"""The CUDA backend's host side without a GPU: registration, lowering, geometry, the cubin cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cuda_programs import ALL, DIAGONAL

from scancc import ir
from scancc.autotune.space import space_for
from scancc.backends import cuda_diag, cuda_linear, cuda_runtime, cuda_selective
from scancc.backends.cuda import CUDABackend
from scancc.backends.diagonal import DiagonalPlan
from scancc.backends.registry import get_backend, known_backends
from scancc.ir import Schedule


def test_registered_and_lowers_without_cupy() -> None:
    assert "cuda" in known_backends()
    backend = get_backend("cuda")
    for program in ALL.values():
        source = backend.lower(program, backend.default_schedule(program))
        assert f"{program.name}_" in source and "extern \"C\" __global__" in source


def test_available_explains_itself() -> None:
    backend = CUDABackend()
    reason = backend.unavailable_reason()
    if reason is not None:
        assert not backend.available()
        assert "scancc[cuda]" in reason or "GPU" in reason


def test_refuses_what_it_cannot_lower() -> None:
    backend = CUDABackend()
    with pytest.raises(ValueError, match="sequential"):
        backend.lower(ir.selective(complex=True), Schedule(algorithm="chunked_scan"))
    with pytest.raises(ValueError, match="sequential"):
        backend.lower(ir.lti(), Schedule(algorithm="chunked_scan"))
    with pytest.raises(ValueError, match="fft_conv"):
        backend.lower(ir.linear(), Schedule(algorithm="fft_conv"))
    with pytest.raises(ValueError, match="recurrent"):
        backend.lower(ir.ssd(), Schedule(algorithm="ssd_chunked"))


def test_cli_emit() -> None:
    proc = subprocess.run([sys.executable, "-m", "scancc", "emit", "selective", "--backend", "cuda"], check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "selective_scan_chunked_fwd" in proc.stdout and "selective_scan_chunked_fwd_ckpt" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "scancc", "emit", "selective", "--backend", "cuda", "--schedule",
                           "algorithm=sequential"], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "selective_scan_fwd" in proc.stdout and "selective_scan_bwd" in proc.stdout


@pytest.mark.parametrize("name", sorted(DIAGONAL))
@pytest.mark.parametrize("dstate", [1, 3, 16, 64, 256])
@pytest.mark.parametrize("warps", [1, 4, 8])
def test_geometry(name: str, dstate: int, warps: int) -> None:
    plan = DiagonalPlan.of(DIAGONAL[name])
    dstate = dstate if plan.has_dstate else 1
    for dim, groups in ((1536, 1), (24, 4), (5, 5)):
        cfg = cuda_diag.choose_config(plan, Schedule(algorithm="sequential", num_warps=warps), dim, dstate, dim // groups)
        assert cfg.fwd_threads <= 1024 and cfg.bwd_threads <= 1024
        assert cfg.ckpt % cfg.tl == 0 and cfg.ckpt % cfg.bwd_tl == 0
        assert cfg.nsplit * -(-dstate // cfg.nsplit) >= dstate
        if plan.grouped:
            assert (dim // groups) % cfg.cb == 0 and (dim // groups) % cfg.bwd_cb == 0
        assert cuda_diag.smem_bytes(plan, cfg, False) <= cuda_diag.STATIC_SMEM_LIMIT
        assert cuda_diag.smem_bytes(plan, cfg, True) <= cuda_diag.STATIC_SMEM_LIMIT
        (blocks,) = cfg.grid(3, dim)
        assert blocks * cfg.cb >= 3 * dim
        assert cfg.n_ckpt(1) == 1 and cfg.n_ckpt(cfg.ckpt + 1) == 2


def test_pack_args_order_and_types() -> None:
    t = torch.zeros(3)
    args = cuda_runtime.pack_args([("const float*", "x"), ("long long", "n"), ("float*", "y"), ("int", "k")],
                                  {"x": t, "n": 2 ** 40, "y": None, "k": 7})
    assert [type(a).__name__ for a in args] == ["uint64", "int64", "uint64", "int32"]
    assert int(args[0]) == t.data_ptr() and int(args[1]) == 2 ** 40 and int(args[2]) == 0
    with pytest.raises(KeyError, match="missing"):
        cuda_runtime.pack_args([("int", "k")], {})


def test_cache_key_covers_everything() -> None:
    base = cuda_runtime.cache_key("src", ["-DX=1"], "sm_90", "13.0")
    assert base != cuda_runtime.cache_key("src2", ["-DX=1"], "sm_90", "13.0")
    assert base != cuda_runtime.cache_key("src", ["-DX=2"], "sm_90", "13.0")
    assert base != cuda_runtime.cache_key("src", ["-DX=1"], "sm_80", "13.0")
    assert base != cuda_runtime.cache_key("src", ["-DX=1"], "sm_90", "12.8")


def test_cubin_cache_rebuilds_corrupt_entries(tmp_path: Path) -> None:
    cache = cuda_runtime.CubinCache(tmp_path)
    builds: list[int] = []

    def build() -> bytes:
        builds.append(1)
        return b"cubin-bytes"

    path, data = cache.get_or_build("k", build, {"arch": "sm_90"})
    assert data == b"cubin-bytes" and path is not None and len(builds) == 1
    assert cache.get_or_build("k", build, {})[1] == b"cubin-bytes" and len(builds) == 1  # hit
    cubin, meta = cache.paths("k")
    cubin.write_bytes(b"truncated")          # the record's hash no longer matches
    assert cache.get("k") is None
    cache.get_or_build("k", build, {})
    assert len(builds) == 2 and cache.get("k") is not None
    meta.write_text("{not json")             # an unreadable record
    assert cache.get("k") is None
    cache.get_or_build("k", build, {})
    assert len(builds) == 3 and json.loads(meta.read_text())["sha256"]


def test_unwritable_cache_is_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = cuda_runtime.CubinCache(blocker / "sub")  # a folder under a file cannot exist
    with pytest.warns(UserWarning, match="cannot write"):
        path, data = cache.get_or_build("k", lambda: b"abc", {})
    assert path is None and data == b"abc"


def test_spaces_registered() -> None:
    assert space_for(ir.selective(), "cuda").size > 1
    assert space_for(ir.linear(), "cuda").size > 1
    assert space_for(ir.ssd(), "cuda").size >= 1


# -- the chunked kernels' schedules and geometry --------------------------------------------------
CHUNKED_DEFAULT = {"linear": "linear", "hgrn": "linear", "rglru": "linear", "linear_c": "linear", "hgrn_c": "linear",
                   "rglru_c": "linear", "selective": "selective", "selective_plain": "selective",
                   "selective_clamped": "selective"}


@pytest.mark.parametrize("name", sorted(DIAGONAL))
def test_default_algorithm(name: str) -> None:
    """The chunked kernels are the default wherever they apply; everything else stays sequential."""
    backend = CUDABackend()
    program = DIAGONAL[name]
    schedule = backend.default_schedule(program)
    kind = CHUNKED_DEFAULT.get(name)
    assert schedule.algorithm == ("chunked_scan" if kind else "sequential")
    assert backend.supports(program, Schedule(algorithm="sequential"))
    source = backend.lower(program, schedule)
    if kind == "linear":
        assert f"{program.name}_chunked_bwd" in source
    elif kind == "selective":
        assert f"{program.name}_chunked_fwd_ckpt" in source and f"{program.name}_bwd" not in source


@pytest.mark.parametrize("block_l", [None, 16, 32, 64, 256, 2048, 8192])
@pytest.mark.parametrize("warps", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("seqlen", [1, 7, 33, 1000, 4096, 1 << 18])
def test_linear_geometry(block_l: int | None, warps: int, seqlen: int) -> None:
    cfg = cuda_linear.choose_config(Schedule(algorithm="chunked_scan", block_l=block_l, num_warps=warps), seqlen)
    assert cfg.threads % 32 == 0 and 32 <= cfg.threads <= 1024 and cfg.threads <= 32 * warps
    assert 1 <= cfg.items <= cuda_linear.MAX_ITEMS
    want = block_l or cuda_linear.DEFAULT_BLOCK_L
    assert cfg.tile <= max(32, want)
    # the tile never exceeds the sequence rounded up to a power of two (one warp at least)
    assert cfg.tile <= max(32, 1 << (seqlen - 1).bit_length())
    if seqlen >= want >= 32 * warps and want <= 32 * warps * cuda_linear.MAX_ITEMS:
        assert cfg.tile == want and cfg.threads == 32 * warps  # the schedule is honoured exactly
    assert cfg.grid(3, 1536) == (3 * 1536,)
    assert cfg.defines() == [f"-DSCANCC_THREADS={cfg.threads}", f"-DSCANCC_ITEMS={cfg.items}"]


def test_linear_h100_default() -> None:
    cfg = cuda_linear.choose_config(cuda_linear.default_schedule(), 4096)
    assert (cfg.threads, cfg.items) == (256, 8)  # two float4 (fp32) or one bf16×8 vector per operand


@pytest.mark.parametrize("dim,chans_per_group", [(5120, 5120), (24, 12), (3, 3), (6, 2), (40, 5)])
@pytest.mark.parametrize("dstate", [1, 5, 16, 64, 256])
@pytest.mark.parametrize("block_l,warps", [(None, 4), (32, 1), (256, 8), (1024, 2), (2048, 32)])
@pytest.mark.parametrize("bc_bytes", [2, 4])
def test_selective_geometry(dim: int, chans_per_group: int, dstate: int, block_l: int | None, warps: int,
                            bc_bytes: int) -> None:
    schedule = Schedule(algorithm="chunked_scan", block_l=block_l, num_warps=warps)
    cfg = cuda_selective.choose_config(schedule, dim, dstate, chans_per_group, 4096, 64, bc_bytes)
    if cfg is None:  # only when one step per lane does not fit
        assert dstate * 32 * 2 * 2 * bc_bytes > cuda_selective.SMEM_LIMIT
        return
    assert chans_per_group % cfg.warps == 0 and cfg.warps <= warps  # a block's channels share B/C
    assert cfg.warps & (cfg.warps - 1) == 0 and cfg.threads <= 1024
    assert 1 <= cfg.items <= cuda_selective.MAX_ITEMS and cfg.tile <= max(32, block_l or 512)
    assert cfg.smem_bytes <= cuda_selective.SMEM_LIMIT
    assert cfg.smem_bytes == dstate * 32 * (cfg.items + 1) * 2 * bc_bytes + cfg.warps * dstate * 4
    (blocks,) = cfg.grid(3, dim)
    assert blocks * cfg.warps >= 3 * dim and (blocks - 3) * cfg.warps < 3 * dim


def test_selective_h100_default() -> None:
    cfg = cuda_selective.choose_config(cuda_selective.default_schedule(), 5120, 16, 5120, 4096, 64, 2)
    assert cfg is not None and (cfg.warps, cfg.items) == (4, 16)
    assert cfg.smem_bytes <= cuda_selective.STATIC_SMEM  # bf16 B/C: no opt-in needed


def test_selective_short_sequences_shrink_the_tile() -> None:
    schedule = cuda_selective.default_schedule()
    assert cuda_selective.choose_config(schedule, 8, 4, 8, 1, 64).items == 1
    assert cuda_selective.choose_config(schedule, 8, 4, 8, 100, 64).items == 4


def test_chunked_spaces() -> None:
    lin = space_for(ir.linear(), "cuda")
    sel = space_for(ir.selective(), "cuda")
    assert lin.base.algorithm == "chunked_scan" and sel.base.algorithm == "chunked_scan"
    assert space_for(ir.selective(complex=True), "cuda").base.algorithm == "sequential"
