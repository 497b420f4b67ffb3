"""Mamba-3 at the benchmark shape on a GPU (bf16, B4 L4096 H32 Dv64 Hqk1 Dqk128, chunk 64):
against the float64 oracle on a slice, and against mamba-ssm's kernels when importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from scancc import oracle
from scancc.ops import mamba3_siso_combined

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
SHAPE = (4, 4096, 32, 64, 1, 128)
BF16_TOL = oracle.TOLERANCES["bf16"]
PEER_TOL = 3e-2   # both sides bf16, and mamba-ssm's approximate tanh/sigmoid/cos/sin


def _inputs() -> dict[str, torch.Tensor]:
    from bench_mamba3 import make_inputs

    return make_inputs(*SHAPE, device="cuda")


def _run(fn, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    from bench_mamba3 import ARGS

    return fn(*(inputs[n] for n in ARGS), D=inputs["D"], Z=inputs["Z"], chunk_size=64)


@pytest.mark.gpu
def test_benchmark_shape_matches_oracle() -> None:
    from bench_mamba3 import oracle_error

    inputs = _inputs()
    with torch.no_grad():
        out = _run(mamba3_siso_combined, inputs)
    assert not out.isnan().any()
    err = oracle_error(inputs, out)
    assert err <= BF16_TOL, f"rel L2 {err:.3g} vs the float64 oracle"


@pytest.mark.gpu
@pytest.mark.peer
def test_benchmark_shape_matches_mamba_ssm() -> None:
    peer = pytest.importorskip("mamba_ssm.ops.triton.mamba3.mamba3_siso_combined")
    from bench_mamba3 import GRAD_ARGS

    inputs = _inputs()
    mine = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    theirs = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    out = _run(mamba3_siso_combined, mine)
    ref = _run(peer.mamba3_siso_combined, theirs)
    err = oracle.rel_l2(out, ref)
    assert err <= PEER_TOL, f"out: rel L2 {err:.3g} vs mamba-ssm"
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [mine[k] for k in GRAD_ARGS], g)
    want = torch.autograd.grad(ref, [theirs[k] for k in GRAD_ARGS], g)
    for name, a, b in zip(GRAD_ARGS, got, want):
        e = oracle.rel_l2(a, b)
        assert e <= 5e-2, f"d{name}: rel L2 {e:.3g} vs mamba-ssm"
