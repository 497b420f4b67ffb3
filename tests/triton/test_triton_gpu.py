"""Compiled Triton kernels on a CUDA GPU at realistic sizes (skipped without one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from triton_helpers import Case, check_backward, check_forward

from scancc import compiler, ir, oracle

pytestmark = pytest.mark.gpu


def _channels(t: torch.Tensor, idx: list[int]) -> torch.Tensor:
    return t[:, idx] if t.dim() == 3 else t


@pytest.mark.parametrize("program", [ir.linear(), ir.rglru(), ir.linear(complex=True)],
                         ids=["linear", "rglru", "complex"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_long_rows(program: ir.Program, dtype: torch.dtype) -> None:
    """B2 D1536 L4096: every channel written, sampled channels against the oracle."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, D, L = 2, 1536, 4096
    a_dtype = torch.complex64 if program.state.complex else dtype
    if program.state.complex:
        a = torch.polar(torch.rand(B, D, L, device="cuda", generator=gen) * 0.69 + 0.3,
                        torch.rand(B, D, L, device="cuda", generator=gen) * 6.28)
    else:
        a = (torch.rand(B, D, L, device="cuda", generator=gen) * 0.69 + 0.3).to(a_dtype)
    x = torch.randn(B, D, L, device="cuda", generator=gen).to(dtype if not program.state.complex else torch.float32)
    out = compiler.compile(program)({"a": a, "x": x})
    assert not torch.isnan(torch.view_as_real(out) if out.is_complex() else out).any()
    idx = [0, 1, 777, D - 1]
    wide = torch.complex128 if a.is_complex() else torch.float64
    ref = oracle.sequential(program, {"a": _channels(a, idx).cpu().to(wide), "x": _channels(x, idx).cpu().double()})
    tol = oracle.tolerance(dtype)
    assert oracle.rel_l2(out[:, idx].cpu(), ref) <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_mamba_shape(dtype: torch.dtype) -> None:
    """Mamba-1's shapes (N = 16, one group, z and D): B2 D1536 L4096, channels sampled."""
    program = ir.selective()
    rng = np.random.default_rng(0)
    B, D, N, L = 2, 1536, 16, 4096
    arrays = oracle.random_inputs(program, rng, batch=B, dim=D, dstate=N, seqlen=L, dtype=np.float32)
    inputs = {}
    for name, v in arrays.items():
        t = torch.from_numpy(v).cuda()
        inputs[name] = t.to(dtype) if name in ("u", "delta", "z", "B", "C") else t
    out, final = compiler.compile(program)(inputs, return_final_state=True)
    assert not torch.isnan(out).any() and not torch.isnan(final).any()
    idx = [0, 5, 1000, D - 1]
    sub = {k: (v[:, idx] if v.dim() == 3 else (v[idx] if k in ("A", "D", "delta_bias") else v)).cpu().double()
           for k, v in inputs.items()}
    ref, ref_final = oracle.sequential(program, sub, return_final_state=True)
    tol = oracle.tolerance(dtype)
    assert oracle.rel_l2(out[:, idx].cpu(), ref) <= tol
    assert oracle.rel_l2(final[:, idx].cpu(), ref_final) <= tol


@pytest.mark.parametrize("program", [ir.selective(), ir.selective(complex=True), ir.lti(), ir.hgrn()],
                         ids=["selective", "selective_c", "lti", "hgrn"])
def test_backward_long_sequence(program: ir.Program) -> None:
    """Gradients over many tiles (L = 2048, default schedule) against float64 autograd."""
    case = Case(program, batch=2, dim=8, dstate=16, seqlen=2048, groups=2, block_l=None)
    check_forward(case)
    check_backward(case)


@pytest.mark.parametrize("complex_, algorithm", [
    (False, "unrolled_scan"), (False, "sequential"), (False, "chunked_scan"),
    (True, "sequential"), (True, "chunked_scan"),  # complex unrolled_scan: minutes to compile, never the default
])
def test_forward_algorithms_at_full_tile_width(algorithm: str, complex_: bool) -> None:
    """Every forward algorithm (and the backward that goes with it) at its default tiles: 64
    channels per group, so unrolled_scan's lanes are all busy and its dB/dC sums cross lanes
    and programs (atomically); L = 1000 ends inside a tile."""
    case = Case(ir.selective(complex=complex_), batch=2, dim=128, dstate=16, seqlen=1000, groups=2, block_l=None,
                algorithm=algorithm)
    check_forward(case)
    check_backward(case)


def test_varlen_many_sequences() -> None:
    lengths = [1, 63, 64, 65, 300, 7, 1000]
    cu = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    case = Case(ir.selective(), batch=1, dim=16, dstate=16, seqlen=cu[-1], groups=4, block_l=64, cu_seqlens=cu)
    check_forward(case)
    check_backward(case)


@pytest.mark.slow
def test_more_than_2_to_the_31_elements() -> None:
    """fp32 B8 D1536 L262144 (3.2e9 elements per tensor): 64-bit offsets all the way."""
    free, _ = torch.cuda.mem_get_info()
    B, D, L = 8, 1536, 262144
    if free < 3 * B * D * L * 4 + (4 << 30):
        pytest.skip("needs about 44 GB of free GPU memory")
    a = torch.full((B, D, L), 0.999, device="cuda")
    x = torch.zeros(B, D, L, device="cuda")
    x[-1, -1, :] = torch.randn(L, device="cuda")
    x[0, 0, -5:] = 1.0
    out = compiler.compile(ir.linear())({"a": a, "x": x})
    for b, d in ((B - 1, D - 1), (0, 0)):
        ref = oracle.sequential(ir.linear(), {"a": a[b:b + 1, d:d + 1].cpu().double(),
                                             "x": x[b:b + 1, d:d + 1].cpu().double()})
        assert oracle.rel_l2(out[b:b + 1, d:d + 1].cpu(), ref) <= oracle.tolerance(torch.float32) * 10
