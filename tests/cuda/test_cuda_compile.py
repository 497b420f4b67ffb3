"""Every generated CUDA kernel compiles with nvcc for sm_80 and sm_90, warnings as errors.

Programs with a chunked default (first-order and real selective scans) are built with both
algorithms, and the chunked kernels also at other tile geometries.

No GPU is needed: the sources are rendered exactly as the backend renders them and built
with the ``-D`` macros (state size, block geometry, element types) the launcher would pass.
sm_90 builds a cubin (ptxas included: register or shared-memory overflows fail here) with
fp32 activations; sm_80 builds PTX with bf16 activations (and fp16 for a few programs).
Skipped when ``nvcc`` is not on PATH (or ``$SCANCC_NVCC``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cuda_programs import ALL, DIAGONAL, MATRIX, STEP

from scancc.backends import (
    cuda_diag,
    cuda_linear,
    cuda_matrix,
    cuda_selective,
    cuda_step,
)
from scancc.backends.cuda import CUDABackend
from scancc.backends.diagonal import DiagonalPlan
from scancc.ir import Schedule

NVCC = os.environ.get("SCANCC_NVCC") or shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set $SCANCC_NVCC or put nvcc on PATH)")

CTYPE = {"fp32": "float", "bf16": "__nv_bfloat16", "fp16": "__half"}


SEQUENTIAL = Schedule(algorithm="sequential", num_warps=4)
CHUNKED = sorted(n for n, p in DIAGONAL.items() if CUDABackend().default_schedule(p).algorithm == "chunked_scan")


def options(name: str, dtype: str, schedule: Schedule | None = None) -> list[str]:
    """The -D macros the launcher passes, for a typical size (dstate 16, headdim 64, seqlen 4096)."""
    program = ALL[name]
    backend = CUDABackend()
    schedule = schedule or backend.default_schedule(program)
    if name in DIAGONAL:
        plan = DiagonalPlan.of(program)
        types = cuda_diag.type_macros(plan)
        if schedule.algorithm == "chunked_scan" and cuda_linear.unsupported_reason(program) is None:
            macros = cuda_linear.choose_config(schedule, 4096).defines()
        elif schedule.algorithm == "chunked_scan":
            bc = 2 if dtype != "fp32" else 4
            cfg = cuda_selective.choose_config(schedule, 256, 16, 256, 4096, 64, bc)
            assert cfg is not None
            macros = cfg.defines() + [f"-DSCANCC_T_BC={CTYPE[dtype]}"]
        else:
            cfg = cuda_diag.choose_config(plan, schedule, 256, 16 if plan.has_dstate else 1, 256)
            macros = cfg.defines()
    elif name in STEP:
        macros = [f"-DSCANCC_{k}={v}" for k, v in cuda_step.choose_config(schedule, 16, 64).macros().items()]
        types = [f"SCANCC_T_{n}" for n, _, _ in cuda_step.TENSORS if n != "state"]
    else:
        assert name in MATRIX
        macros = [f"-DSCANCC_{k}={v}" for k, v in cuda_matrix.choose_config(schedule, 64, 32).macros().items()]
        types = [f"SCANCC_T_{n}" for n in cuda_matrix.TYPED]
    return macros + [f"-D{t}={CTYPE[dtype]}" for t in types]


def nvcc(source: Path, arch: str, output: str, opts: list[str]) -> None:
    flag = "-cubin" if output.endswith(".cubin") else "-ptx"
    cmd = [NVCC, f"-arch={arch}", flag, "-std=c++17", "-Werror", "all-warnings", *opts, "-o", output, str(source)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    log = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and "warning" not in log.lower(), f"{' '.join(cmd)}\n{log}"


@pytest.mark.parametrize("name", sorted(ALL))
def test_compiles(name: str, tmp_path: Path) -> None:
    program = ALL[name]
    backend = CUDABackend()
    source = tmp_path / f"{program.name}.cu"
    source.write_text(backend.lower(program, backend.default_schedule(program)))
    nvcc(source, "sm_90", str(tmp_path / "k90.cubin"), options(name, "fp32"))
    nvcc(source, "sm_80", str(tmp_path / "k80.ptx"), options(name, "bf16"))
    if name in ("selective", "ssd_step"):
        nvcc(source, "sm_80", str(tmp_path / "k80h.ptx"), options(name, "fp16"))


@pytest.mark.parametrize("dstate", [5, 64])
def test_compiles_other_state_sizes(dstate: int, tmp_path: Path) -> None:
    """Odd state sizes (entries past dstate masked) and large ones (complex, many entries per thread)."""
    program = DIAGONAL["selective_c"]
    plan = DiagonalPlan.of(program)
    cfg = cuda_diag.choose_config(plan, CUDABackend().default_schedule(program), 100, dstate, 50)
    source = tmp_path / "k.cu"
    source.write_text(cuda_diag.render(program))
    nvcc(source, "sm_90", str(tmp_path / "k.cubin"), cfg.defines())


@pytest.mark.parametrize("name", ["linear", "rglru_c", "selective", "selective_clamped"])
def test_sequential_algorithm_still_compiles(name: str, tmp_path: Path) -> None:
    """The sequential kernels of programs whose default is chunked (the chunked selective
    forward's backward, and the schedule the autotuner may still pick)."""
    assert name in CHUNKED
    source = tmp_path / "k.cu"
    source.write_text(CUDABackend().lower(DIAGONAL[name], SEQUENTIAL))
    nvcc(source, "sm_90", str(tmp_path / "k.cubin"), options(name, "fp32", SEQUENTIAL))
    nvcc(source, "sm_80", str(tmp_path / "k.ptx"), options(name, "bf16", SEQUENTIAL))


@pytest.mark.parametrize("name,block_l,warps,dtype", [
    ("linear", 32, 1, "fp32"), ("rglru", 64, 2, "bf16"), ("hgrn", 512, 4, "fp16"), ("linear", 4096, 16, "bf16"),
    ("hgrn_c", 64, 2, "fp32"), ("rglru_c", 4096, 16, "fp32"),
])
def test_linear_chunked_geometries(name: str, block_l: int, warps: int, dtype: str, tmp_path: Path) -> None:
    """Scalar-only (items below a vector), one vector and several vectors per thread."""
    schedule = cuda_linear.default_schedule().replace(block_l=block_l, num_warps=warps)
    source = tmp_path / "k.cu"
    source.write_text(CUDABackend().lower(DIAGONAL[name], schedule))
    nvcc(source, "sm_90", str(tmp_path / "k.cubin"), options(name, dtype, schedule))


@pytest.mark.parametrize("block_l,warps,dstate,dtype", [
    (32, 1, 1, "fp32"), (256, 2, 5, "bf16"), (1024, 8, 16, "bf16"), (512, 4, 64, "fp32"),
])
def test_selective_chunked_geometries(block_l: int, warps: int, dstate: int, dtype: str, tmp_path: Path) -> None:
    program = DIAGONAL["selective_clamped"]
    schedule = cuda_selective.default_schedule().replace(block_l=block_l, num_warps=warps)
    cfg = cuda_selective.choose_config(schedule, 64, dstate, 64, 8192, 32, 4 if dtype == "fp32" else 2)
    assert cfg is not None
    types = [f"-D{t}={CTYPE[dtype]}" for t in cuda_diag.type_macros(DiagonalPlan.of(program))]
    source = tmp_path / "k.cu"
    source.write_text(CUDABackend().lower(program, schedule))
    nvcc(source, "sm_90", str(tmp_path / "k.cubin"), cfg.defines() + types + [f"-DSCANCC_T_BC={CTYPE[dtype]}"])
