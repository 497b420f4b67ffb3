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
from scancc.backends import cuda_diag, cuda_runtime
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
        backend.lower(ir.selective(), Schedule(algorithm="chunked_scan"))
    with pytest.raises(ValueError, match="recurrent"):
        backend.lower(ir.ssd(), Schedule(algorithm="ssd_chunked"))


def test_cli_emit() -> None:
    proc = subprocess.run([sys.executable, "-m", "scancc", "emit", "selective", "--backend", "cuda"], check=False,
                          capture_output=True, text=True, timeout=120)
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
