"""The CUDA backend against the float64 oracle on a GPU (skipped without one, or without CuPy).

Diagonal family: forward and every gradient (Hypothesis over programs, flags, sizes, dtypes,
states, varlen), through the Triton suite's ``Case``/``check_forward``/``check_backward``
with the backend swapped. Decode steps and the recurrent matrix-state forward against
``scancc.oracle.sequential``. Tolerances from ``scancc.oracle``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from cuda_programs import DIAGONAL, MATRIX, STEP
from hypothesis import given, settings
from hypothesis import strategies as st
from triton_helpers import DEVICE, Case, check_backward, check_forward

from scancc import compiler, oracle
from scancc.backends.cuda import CUDABackend
from scancc.ir import Program, Schedule

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not CUDABackend().available(), reason=str(CUDABackend().unavailable_reason()))]


class CudaCase(Case):
    """A Triton-suite case compiled by the CUDA backend (block_l: the forward tile)."""

    @property
    def schedule(self):  # type: ignore[override]
        schedule = CUDABackend().default_schedule(self.program)
        if self.algorithm is not None and self.algorithm != schedule.algorithm:
            schedule = Schedule(algorithm=self.algorithm, num_warps=4)
        return schedule.replace(block_l=self.block_l, block_d=self.block_d)

    def compiled(self):
        return compiler.compile(self.program, backend="cuda", schedule=self.schedule)


def _case(name: str, **kw: Any) -> CudaCase:
    return CudaCase(DIAGONAL[name], **kw)


@pytest.mark.parametrize("name", sorted(DIAGONAL))
def test_forward_and_backward_every_program(name: str) -> None:
    """Crosses tiles and checkpoint segments (seqlen 150: ckpt 64), groups of channels."""
    groups = 2 if DIAGONAL[name].input.b == "varying" else 1
    case = _case(name, batch=2, dim=8, dstate=5, seqlen=150, groups=groups, block_l=None)
    check_forward(case)
    check_backward(case)


@pytest.mark.parametrize("name", [n for n, p in sorted(DIAGONAL.items())
                                  if CUDABackend().default_schedule(p).algorithm == "chunked_scan"])
def test_sequential_algorithm_of_chunked_programs(name: str) -> None:
    """The sequential kernels of programs whose default is chunked (autotuner candidates)."""
    groups = 2 if DIAGONAL[name].input.b == "varying" else 1
    case = _case(name, batch=2, dim=8, dstate=5, seqlen=150, groups=groups, block_l=None, algorithm="sequential")
    assert case.schedule.algorithm == "sequential"
    check_forward(case)
    check_backward(case)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(DIAGONAL)), seqlen=st.integers(1, 300), dim=st.sampled_from([1, 3, 8, 40]),
       dstate=st.sampled_from([1, 2, 4, 16, 33]), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       h0=st.booleans(), ht=st.booleans(), block_l=st.sampled_from([None, 16, 64]), seed=st.integers(0, 99))
def test_hypothesis_vs_oracle(name: str, seqlen: int, dim: int, dstate: int, dtype: torch.dtype, h0: bool, ht: bool,
                              block_l: Any, seed: int) -> None:
    program = DIAGONAL[name]
    groups = 2 if program.input.b == "varying" and dim % 2 == 0 else 1
    case = _case(name, batch=2, dim=dim, dstate=dstate, seqlen=seqlen, groups=groups, dtype=dtype, block_l=block_l,
                 initial_state=h0, final_state=ht, seed=seed)
    check_forward(case)
    check_backward(case, grad_final=ht)


@pytest.mark.parametrize("name", ["selective", "selective_c", "linear", "s4d_zoh", "rglru_c"])
def test_varlen(name: str) -> None:
    lengths = [1, 63, 64, 65, 130, 7]
    cu = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    groups = 2 if DIAGONAL[name].input.b == "varying" else 1
    case = _case(name, batch=1, dim=8, dstate=4, seqlen=cu[-1], groups=groups, cu_seqlens=cu, block_l=None)
    check_forward(case)
    check_backward(case)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_mamba_shape(dtype: torch.dtype) -> None:
    """Mamba-1's shapes (B2 D1536 N16 L4096), sampled channels against the oracle."""
    case = _case("selective", batch=2, dim=1536, dstate=16, seqlen=4096, dtype=dtype, block_l=None,
                 initial_state=False, final_state=True)
    program = case.program
    fwd = case.compiled().forward(case.kernel_inputs(), return_final_state=True)
    assert not torch.isnan(fwd.out).any()
    idx = [0, 5, 1000, 1535]
    sub = {k: (v[:, idx] if v.dim() == 3 else (v[idx] if k in ("A", "D", "delta_bias") else v))
           for k, v in case.inputs.items()}
    ref, ref_final = oracle.sequential(program, sub, return_final_state=True)
    tol = oracle.tolerance(dtype)
    assert oracle.rel_l2(fwd.out[:, idx].cpu(), ref) <= tol
    assert oracle.rel_l2(fwd.final_state[:, idx].cpu(), ref_final) <= tol


def _torch(arrays: dict[str, np.ndarray], dtype: torch.dtype, params: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in arrays.items():
        t = torch.from_numpy(v)
        out[k] = t.to(DEVICE, torch.float32 if k in params else dtype)
    return out


@pytest.mark.parametrize("name", sorted(STEP))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_step(name: str, dtype: torch.dtype) -> None:
    program = STEP[name]
    rng = np.random.default_rng(0)
    kw = dict(batch=3, dim=24, dstate=16, groups=2, heads=4, headdim=8)
    arrays = oracle.random_inputs(program, rng, **kw)
    state = oracle.random_state(program, rng, inputs=arrays)
    params = ("A", "D", "delta_bias", "dt_bias")
    inputs = _torch(arrays, dtype, params)
    # the reference sees the activations rounded as the kernel does
    ref_out, ref_state = oracle.sequential(program, {k: v.double().cpu().numpy() for k, v in inputs.items()},
                                           initial_state=state)
    h = torch.from_numpy(state).to(DEVICE, torch.float32)
    fwd = compiler.compile(program, backend="cuda").forward(inputs, initial_state=h, return_final_state=True)
    tol = oracle.tolerance(dtype)
    assert oracle.rel_l2(fwd.out.cpu(), ref_out) <= tol
    assert oracle.rel_l2(fwd.final_state.cpu(), ref_state) <= oracle.tolerance(torch.float32) * 10


def _state_to(state: Any) -> Any:
    if isinstance(state, dict):
        return {k: torch.from_numpy(v).to(DEVICE, torch.float32) for k, v in state.items()}
    return torch.from_numpy(state).to(DEVICE, torch.float32)


@pytest.mark.parametrize("name", sorted(MATRIX))
@pytest.mark.parametrize("varlen", [False, True])
def test_matrix_recurrent_forward(name: str, varlen: bool) -> None:
    program: Program = MATRIX[name]
    rng = np.random.default_rng(1)
    batch, seqlen = (1, 70) if varlen else (2, 37)
    cu = [0, 1, 33, 70] if varlen else None
    kw = dict(batch=batch, seqlen=seqlen, dstate=16, groups=1, heads=4, headdim=8)
    arrays = oracle.random_inputs(program, rng, **kw)
    rows = 3 if varlen else batch
    state = oracle.random_state(program, rng, inputs=arrays, rows=rows)
    ref, ref_final = oracle.sequential(program, arrays, initial_state=state, return_final_state=True,
                                       cu_seqlens=None if cu is None else np.array(cu))
    inputs = {k: torch.from_numpy(v).to(DEVICE, torch.float32) for k, v in arrays.items()}
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=DEVICE)
    fwd = compiler.compile(program, backend="cuda").forward(inputs, initial_state=_state_to(state), cu_seqlens=cu_t,
                                                             return_final_state=True)
    tol = oracle.tolerance(torch.float32)
    assert oracle.rel_l2(fwd.out.cpu(), ref) <= tol
    final = {k: v.cpu() for k, v in fwd.final_state.items()} if isinstance(fwd.final_state, dict) else fwd.final_state.cpu()
    assert oracle.rel_l2(final, ref_final) <= tol
