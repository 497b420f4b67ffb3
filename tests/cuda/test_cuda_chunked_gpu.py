"""The chunked CUDA kernels (first-order scan, selective-scan forward) against the float64 oracle
on a GPU (skipped without one, or without CuPy).

Every test names its algorithm explicitly, so a failure says which kernel is wrong: linear /
HGRN / RG-LRU (real and complex) forward and backward, and the selective forward (whose
gradients come from the sequential backward through the checkpoints the chunked forward
writes). Short tiles (``block_l`` 32..256) make small sequences cross many tiles; odd lengths
misalign rows so the scalar path and the vector path meet inside one row; packed sequences
start at unaligned offsets. Outputs are NaN-poisoned (``conftest.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from cuda_programs import DIAGONAL
from hypothesis import given, settings
from hypothesis import strategies as st
from triton_helpers import DEVICE, Case, check_backward, check_forward

from scancc import compiler, oracle
from scancc.backends.cuda import CUDABackend
from scancc.ir import Schedule

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not CUDABackend().available(), reason=str(CUDABackend().unavailable_reason()))]

LINEAR = ["linear", "hgrn", "rglru", "linear_c", "hgrn_c", "rglru_c"]
SELECTIVE = ["selective", "selective_plain", "selective_clamped"]


@dataclass
class ChunkedCase(Case):
    """A case compiled by the CUDA backend with an explicit algorithm and tile."""

    num_warps: int | None = None

    @property
    def schedule(self) -> Schedule:  # type: ignore[override]
        algorithm = self.algorithm or "chunked_scan"
        base = CUDABackend().default_schedule(self.program)
        if base.algorithm != algorithm:
            base = Schedule(algorithm=algorithm, num_warps=4)
        return base.replace(block_l=self.block_l if self.block_l is not None else base.block_l,
                            num_warps=self.num_warps or base.num_warps)

    def compiled(self):
        schedule = self.schedule
        assert CUDABackend().supports(self.program, schedule), schedule
        return compiler.compile(self.program, backend="cuda", schedule=schedule)


def _case(name: str, **kw: Any) -> ChunkedCase:
    program = DIAGONAL[name]
    if "groups" not in kw and program.input.b == "varying" and kw.get("dim", 4) % 2 == 0:
        kw["groups"] = 2
    return ChunkedCase(program, **kw)


# -- first-order scans ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("seqlen", [1, 2, 31, 32, 33, 255, 256, 257, 1000])
def test_linear_forward_backward_lengths(name: str, seqlen: int) -> None:
    """Tiles of 64 steps (2 warps × 1 item, or 1 warp × 2): L = 1, tails, exact multiples."""
    for warps in (1, 2):
        case = _case(name, batch=2, dim=3, seqlen=seqlen, block_l=64, num_warps=warps)
        check_forward(case)
        check_backward(case)


@pytest.mark.parametrize("name", ["linear", "rglru", "hgrn_c"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seqlen", [4096, 4099])
def test_linear_vector_path(name: str, dtype: torch.dtype, seqlen: int) -> None:
    """The default H100 tile (256 threads × 8 items: 16-byte vectors). L = 4099 misaligns every
    row after the first, so vector and scalar loads meet inside one row."""
    if DIAGONAL[name].state.complex and dtype != torch.float32:
        pytest.skip("complex decays take fp32 x")
    case = _case(name, batch=2, dim=5, seqlen=seqlen, dtype=dtype, block_l=None)
    check_forward(case)
    check_backward(case)


@pytest.mark.parametrize("name", ["linear", "hgrn", "linear_c"])
def test_linear_varlen(name: str) -> None:
    """Packed sequences starting at unaligned offsets, crossing 64-step tiles; zero gradients outside."""
    lengths = [1, 63, 64, 65, 130, 7, 200]
    cu = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    for block_l in (64, None):
        case = _case(name, batch=1, dim=4, seqlen=cu[-1], cu_seqlens=cu, block_l=block_l, num_warps=2)
        check_forward(case)
        check_backward(case)


@pytest.mark.parametrize("name", ["linear", "rglru_c"])
def test_linear_strided_inputs(name: str) -> None:
    """Channel-strided (every other channel) and batch-strided inputs with a unit time stride."""
    case = _case(name, batch=2, dim=6, seqlen=300, block_l=128, num_warps=2, initial_state=True)
    inputs = case.kernel_inputs()
    wide = {k: torch.stack([v, torch.full_like(v, float("nan"))], dim=2).flatten(1, 2)[:, ::2] if v.dim() == 3 else v
            for k, v in inputs.items()}
    assert wide["a"].stride(1) == 2 * 300
    ref_out, ref_final = oracle.sequential(case.program, case.inputs, initial_state=case.h0, return_final_state=True)
    fwd = case.compiled().forward(wide, initial_state=case.kernel_state(), return_final_state=True)
    assert oracle.rel_l2(fwd.out.cpu(), ref_out) <= oracle.tolerance(torch.float32)
    assert oracle.rel_l2(fwd.final_state.cpu(), ref_final) <= oracle.tolerance(torch.float32)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(LINEAR), seqlen=st.integers(1, 3000), dim=st.sampled_from([1, 3, 8]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), h0=st.booleans(), ht=st.booleans(),
       block_l=st.sampled_from([None, 32, 128, 512, 2048]), warps=st.sampled_from([1, 2, 4, 8]),
       varlen=st.booleans(), seed=st.integers(0, 99))
def test_linear_hypothesis(name: str, seqlen: int, dim: int, dtype: torch.dtype, h0: bool, ht: bool, block_l: Any,
                           warps: int, varlen: bool, seed: int) -> None:
    if DIAGONAL[name].state.complex:
        dtype = torch.float32
    cu = None
    batch = 2
    if varlen:
        rng = np.random.default_rng(seed)
        cuts = sorted(rng.integers(0, seqlen + 1, size=3).tolist())
        cu, batch = [0, *cuts, seqlen], 1
    case = _case(name, batch=batch, dim=dim, seqlen=seqlen, dtype=dtype, initial_state=h0, final_state=ht,
                 block_l=block_l, num_warps=warps, cu_seqlens=cu, seed=seed)
    check_forward(case)
    check_backward(case, grad_final=ht)


def test_linear_int64_offsets() -> None:
    """B1 D520 L2^22 fp16: 2.2 G elements per tensor, past 2^31. The last channel (offsets past
    2^31) equals the same channel scanned on its own (offsets below 2^31), bit for bit."""
    from scancc.ops import linear_scan

    dim, seqlen = 520, 1 << 22
    a = torch.empty(1, dim, seqlen, device=DEVICE, dtype=torch.float16).uniform_(0.9, 1.0)
    x = torch.randn(1, dim, seqlen, device=DEVICE, dtype=torch.float16)
    y, last = linear_scan(a, x, backend="cuda", return_final_state=True)
    for d in (0, dim - 1):
        y1, last1 = linear_scan(a[:, d:d + 1].contiguous(), x[:, d:d + 1].contiguous(), backend="cuda",
                                return_final_state=True)
        assert torch.equal(y[:, d:d + 1], y1) and torch.equal(last[:, d:d + 1], last1), f"channel {d}"
    ref = oracle.sequential(DIAGONAL["linear"], {"a": a[:, -1:, :4096].double().cpu().numpy(),
                                                 "x": x[:, -1:, :4096].double().cpu().numpy()})
    assert oracle.rel_l2(y[:, -1:, :4096].float().cpu(), ref) <= oracle.tolerance(torch.float16)


# -- selective scan ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SELECTIVE)
@pytest.mark.parametrize("seqlen", [1, 31, 32, 33, 150, 1000])
def test_selective_forward_backward_lengths(name: str, seqlen: int) -> None:
    """Tiles of 32 and 256 steps; the backward runs from the chunked forward's checkpoints."""
    for block_l, warps in ((32, 1), (256, 2)):
        case = _case(name, batch=2, dim=8, dstate=5, seqlen=seqlen, block_l=block_l, num_warps=warps)
        check_forward(case)
        check_backward(case)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seqlen", [2048, 2051])
@pytest.mark.parametrize("dstate", [16, 64])
def test_selective_vector_path(dtype: torch.dtype, seqlen: int, dstate: int) -> None:
    """The default tile (32 lanes × 16 items, 16-byte vectors); 64 entries need the opt-in
    dynamic shared memory for fp32 B/C; an odd length misaligns the rows."""
    case = _case("selective", batch=2, dim=8, dstate=dstate, seqlen=seqlen, dtype=dtype, block_l=None)
    check_forward(case)
    check_backward(case)


@pytest.mark.parametrize("dim,groups", [(3, 1), (12, 3), (40, 2)])
def test_selective_partial_blocks_and_groups(dim: int, groups: int) -> None:
    """Channels past dim in the last block, blocks shrunk to divide a group's channels."""
    case = _case("selective", batch=2, dim=dim, dstate=4, seqlen=300, groups=groups, block_l=64, num_warps=8)
    check_forward(case)
    check_backward(case)


def test_selective_varlen() -> None:
    lengths = [1, 63, 64, 65, 130, 7, 600]
    cu = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    for block_l in (64, None):
        case = _case("selective", batch=1, dim=8, dstate=4, seqlen=cu[-1], cu_seqlens=cu, block_l=block_l)
        check_forward(case)
        check_backward(case)


def test_selective_large_state_falls_back() -> None:
    """dstate 300 with fp32 B/C cannot stage even one step per lane: the sequential forward runs."""
    case = _case("selective_plain", batch=1, dim=2, dstate=300, seqlen=40, block_l=None)
    check_forward(case)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(SELECTIVE), seqlen=st.integers(1, 1500), dim=st.sampled_from([1, 3, 8, 40]),
       dstate=st.sampled_from([1, 2, 4, 16, 33]), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       h0=st.booleans(), ht=st.booleans(), block_l=st.sampled_from([None, 32, 128, 1024]),
       warps=st.sampled_from([1, 2, 4, 8]), seed=st.integers(0, 99))
def test_selective_hypothesis(name: str, seqlen: int, dim: int, dstate: int, dtype: torch.dtype, h0: bool, ht: bool,
                              block_l: Any, warps: int, seed: int) -> None:
    case = _case(name, batch=2, dim=dim, dstate=dstate, seqlen=seqlen, dtype=dtype, initial_state=h0,
                 final_state=ht, block_l=block_l, num_warps=warps, seed=seed)
    check_forward(case)
    check_backward(case, grad_final=ht)


@pytest.mark.parametrize("algorithm", ["chunked_scan", "sequential"])
def test_selective_mamba_shape_agrees(algorithm: str) -> None:
    """B4 D5120 N16 L4096 bf16 (the benchmark's shape, B/C shared by all channels): sampled
    channels against the oracle, and the two algorithms against each other."""
    case = _case("selective", batch=4, dim=5120, dstate=16, seqlen=4096, groups=1, dtype=torch.bfloat16,
                 block_l=None, algorithm=algorithm, initial_state=False)
    fwd = case.compiled().forward(case.kernel_inputs(), return_final_state=True)
    assert not torch.isnan(fwd.out).any()
    idx = [0, 7, 2561, 5119]
    sub = {k: (v[:, idx] if v.dim() == 3 else (v[idx] if k in ("A", "D", "delta_bias") else v))
           for k, v in case.inputs.items()}
    ref, ref_final = oracle.sequential(case.program, sub, return_final_state=True)
    assert oracle.rel_l2(fwd.out[:, idx].cpu(), ref) <= oracle.tolerance(torch.bfloat16)
    assert oracle.rel_l2(fwd.final_state[:, idx].cpu(), ref_final) <= oracle.tolerance(torch.bfloat16)


def test_selective_int64_offsets() -> None:
    """B1 D520 L2^22 bf16 (u, delta, z, out past 2^31 elements): the last channel agrees with
    the same channel scanned on its own (a one-warp block: another binary, hence a tolerance)."""
    program = DIAGONAL["selective"]
    dim, seqlen, dstate = 520, 1 << 22, 4
    gen = torch.Generator(device=DEVICE).manual_seed(0)

    def rnd(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return torch.randn(*shape, device=DEVICE, generator=gen).to(dtype)

    inputs = {"u": rnd(1, dim, seqlen), "delta": rnd(1, dim, seqlen), "z": rnd(1, dim, seqlen),
              "B": rnd(1, 1, dstate, seqlen), "C": rnd(1, 1, dstate, seqlen),
              "A": -torch.rand(dim, dstate, device=DEVICE, generator=gen) - 0.5,
              "D": rnd(dim, dtype=torch.float32), "delta_bias": rnd(dim, dtype=torch.float32)}
    scan = compiler.compile(program, backend="cuda", schedule=CUDABackend().default_schedule(program))
    fwd = scan.forward(inputs, return_final_state=True)
    for d in (0, dim - 1):
        one = {k: (v[:, d:d + 1].contiguous() if k in ("u", "delta", "z") else
                   (v[d:d + 1] if k in ("A", "D", "delta_bias") else v)) for k, v in inputs.items()}
        alone = scan.forward(one, return_final_state=True)
        assert oracle.rel_l2(fwd.out[:, d:d + 1].float().cpu(), alone.out.float().cpu()) <= 1e-3, f"channel {d}"
        assert oracle.rel_l2(fwd.final_state[:, d:d + 1].cpu(), alone.final_state.cpu()) <= 1e-5, f"channel {d}"
