"""The Triton SSD kernels (``scancc.backends.triton_ssd``) against the float64 oracle.

Under the interpreter the shapes stay tiny (seqlen <= 80, heads <= 4, headdim and dstate
<= 16, chunks of 16 or 32 tokens, unless a test is about the chunk size itself).
"""

from __future__ import annotations

import ast
from typing import Optional

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ssd_cases import DEVICE, FWD_TOL, Case, grad_error, kernel_grads, passing, reference, reference_grads

from scancc import compiler, ir, oracle
from scancc.backends import triton_ssd
from scancc.backends.triton import TritonBackend
from scancc.ir import Schedule

TOL = oracle.TOLERANCES["fp32_chunked"]


@st.composite
def cases(draw: st.DrawFn, max_seqlen: int = 80) -> Case:
    heads = draw(st.sampled_from([1, 2, 4]))
    limit = draw(st.sampled_from([None, None, (0.05, 0.8), (0.1, float("inf"))]))
    return Case(
        batch=draw(st.integers(1, 2)), seqlen=draw(st.integers(1, max_seqlen)), heads=heads,
        headdim=draw(st.sampled_from([4, 8, 16])), dstate=draw(st.sampled_from([4, 8, 16])),
        groups=draw(st.sampled_from([g for g in (1, 2, 4) if heads % g == 0])), chunk=draw(st.sampled_from([16, 32])),
        D=draw(st.sampled_from([None, "h", "hp"])), z=draw(st.booleans()), bias=draw(st.booleans()),
        softplus=draw(st.booleans()), limit=limit, h0=draw(st.booleans()), seq_idx=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def run_forward(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    fwd = case.compiled().forward(case.kernel_inputs(), initial_state=case.kernel_state(), cu_seqlens=case.cu(),
                                  return_final_state=True)
    assert fwd.final_state is not None
    return fwd.out, fwd.final_state


def assert_grads(case: Case, seed: int = 0, tol: float = TOL) -> None:
    gen = torch.Generator().manual_seed(seed)
    out, final = reference(case)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(case.dtype).to(torch.float64)
    grad_state = torch.randn(final.shape, generator=gen, dtype=torch.float64)
    want = reference_grads(case, grad_out, grad_state)
    got = kernel_grads(case, grad_out, grad_state)
    scale = float(torch.linalg.vector_norm(want["x"]))
    errors = {name: grad_error(got[name], w, scale) for name, w in want.items()}
    assert max(errors.values()) <= tol, errors


# -- forward ---------------------------------------------------------------------------------------
@settings(max_examples=20)
@given(cases(), st.booleans())
def test_forward_matches_both_oracle_forms(case: Case, split: bool) -> None:
    with passing(split):
        out, final = run_forward(case)
    want, want_final = reference(case)
    assert oracle.rel_l2(out, want) <= TOL and oracle.rel_l2(final, want_final) <= TOL
    arrays = {k: v.numpy() for k, v in case.inputs.items()}
    chunked, chunked_final = oracle.chunked(case.program, arrays, case.chunk, return_final_state=True,
                                            initial_state=None if case.state is None else case.state.numpy(),
                                            seq_idx=None if case.seq is None else case.seq.numpy())
    assert oracle.rel_l2(out, chunked) <= TOL and oracle.rel_l2(final, chunked_final) <= TOL


@pytest.mark.parametrize("chunk", [16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
def test_every_chunk_size_gives_the_sequential_result(chunk: int) -> None:
    case = Case(batch=1, seqlen=70, heads=2, headdim=4, dstate=4, chunk=chunk, D="hp", seed=chunk)
    out, final = run_forward(case)
    want, want_final = reference(case)
    assert oracle.rel_l2(out, want) <= TOL and oracle.rel_l2(final, want_final) <= TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    case = Case(batch=2, seqlen=48, heads=2, headdim=16, dstate=16, dtype=dtype, seed=3)
    out, final = run_forward(case)
    want, want_final = reference(case)
    assert out.dtype == dtype and final.dtype == torch.float32
    assert oracle.rel_l2(out, want) <= FWD_TOL[dtype] and oracle.rel_l2(final, want_final) <= FWD_TOL[dtype]


def test_one_token() -> None:
    case = Case(batch=2, seqlen=1, heads=2, headdim=4, dstate=4, h0=False, D=None, z=False, bias=False)
    out, final = run_forward(case)
    want, want_final = reference(case)
    assert oracle.rel_l2(out, want) <= TOL and oracle.rel_l2(final, want_final) <= TOL
    assert_grads(case)


# -- segments and packed sequences ------------------------------------------------------------------
@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
def test_packed_sequences_match_the_oracle(split: bool) -> None:
    # a one-token sequence, one ending on a chunk boundary, one spanning three chunks
    case = Case(batch=1, seqlen=70, heads=2, headdim=8, dstate=8, groups=2, cu_seqlens=[0, 5, 6, 32, 70], seed=7)
    with passing(split):
        out, final = run_forward(case)
        want, want_final = reference(case)
        assert final.shape == (4, 2, 8, 8)
        assert oracle.rel_l2(out, want) <= TOL and oracle.rel_l2(final, want_final) <= TOL
        assert_grads(case)


@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
def test_prepare_backward_saves_what_the_forward_saves(split: bool) -> None:
    """The ops run prepare_backward (no chunk_scan, passing always split) before the backward:
    it must save the same chunk sums, CB and passed states as the whole forward."""
    case = Case(batch=2, seqlen=45, heads=2, headdim=8, dstate=8, h0=True, seed=3)
    kernel, inputs = case.compiled(), case.kernel_inputs()
    args = dict(initial_state=case.kernel_state(), cu_seqlens=case.cu(), return_final_state=True)
    with passing(split):
        full = kernel.forward(inputs, save_for_backward=True, **args)
        lean = kernel.prepare_backward(inputs, **args)
    assert lean.out.numel() == 0
    assert lean.final_state is not None and full.final_state is not None
    torch.testing.assert_close(lean.final_state, full.final_state, rtol=1e-6, atol=1e-6)
    for key in ("cs", "dl", "CB", "states"):
        assert not torch.isnan(lean.saved[key]).any(), key
        torch.testing.assert_close(lean.saved[key], full.saved[key], rtol=1e-6, atol=1e-6)


def _segment_case(seed: int) -> Case:
    case = Case(batch=2, seqlen=60, heads=2, headdim=8, dstate=8, seq_idx=True, seed=seed)
    # row 0: segments 0 | 1 | 2 starting inside chunks; row 1: one boundary on a chunk edge
    seq = torch.zeros(2, 60, dtype=torch.int32)
    seq[0, 13:40], seq[0, 40:] = 1, 2
    seq[1, 32:] = 5
    case.seq = seq
    return case


def test_segments_never_interact() -> None:
    case = _segment_case(11)
    out, final = run_forward(case)
    want, want_final = reference(case)
    assert oracle.rel_l2(out, want) <= TOL and oracle.rel_l2(final, want_final) <= TOL
    # new values for every input of row 0's middle segment: nothing outside it may change
    gen = torch.Generator().manual_seed(1)
    for name in ("x", "dt", "B", "C", "z"):
        case.inputs[name][0, 13:40] = torch.randn(case.inputs[name][0, 13:40].shape, generator=gen,
                                                  dtype=torch.float64)
    out2, final2 = run_forward(case)
    outside = torch.ones(60, dtype=torch.bool)
    outside[13:40] = False
    assert torch.equal(out2[0, outside], out[0, outside]) and torch.equal(out2[1], out[1])
    assert torch.equal(final2, final)


@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
def test_segment_gradients(split: bool) -> None:
    with passing(split):
        assert_grads(_segment_case(12), seed=2)


# -- gradients -------------------------------------------------------------------------------------
@settings(max_examples=10)
@given(cases(max_seqlen=48), st.booleans())
def test_gradients_match_autograd_of_the_oracle(case: Case, split: bool) -> None:
    with passing(split):
        assert_grads(case, seed=case.seed)


@pytest.mark.parametrize("chunk", [64, 4096])
def test_gradients_with_long_chunks(chunk: int) -> None:
    assert_grads(Case(batch=1, seqlen=70, heads=2, headdim=4, dstate=4, chunk=chunk, D="hp", limit=(0.05, 0.7),
                      seed=chunk))


def test_fp16_gradients() -> None:
    case = Case(batch=1, seqlen=40, heads=2, headdim=16, dstate=16, dtype=torch.float16, seed=5)
    assert_grads(case, tol=FWD_TOL[torch.float16])


# -- the backend's surface -------------------------------------------------------------------------
def test_the_triton_backend_lowers_ssd_and_refuses_what_it_cannot_run() -> None:
    backend = TritonBackend()
    program = ir.ssd()
    schedule = backend.default_schedule(program)
    assert schedule.algorithm == "ssd_chunked" and backend.supports(program, schedule)
    kernel = compiler.compile(program, backend="triton", schedule=schedule.replace(chunk=32))
    assert isinstance(kernel, triton_ssd.SSDScan)
    for other in (ir.gla(), ir.ssd().as_step()):  # Mamba-3: tests/mamba3
        assert not backend.supports(other, schedule)
    for bad, why in ((Schedule(algorithm="chunked_scan"), "ssd_chunked"),
                     (schedule.replace(block_n=16), "block_n"),
                     (schedule.replace(chunk=16, block_l=32), "block_l")):
        assert why in (backend.unsupported_reason(program, bad) or "")
        with pytest.raises(ValueError, match="cannot lower"):
            compiler.compile(program, backend="triton", schedule=bad)


def test_generated_source_reads_like_kernels() -> None:
    program = ir.ssd(dt_limit=(0.01, 0.5))
    source = triton_ssd.lower(program, triton_ssd.default_schedule(program))
    ast.parse(source)
    for kernel in triton_ssd.SSDScan.KERNELS:
        assert f"def ssd_{kernel}_kernel(" in source
    assert "exp(min(cs_t − cs_s, 0))" in source and "Generated code" in source
    assert "tl.minimum(tl.maximum(" in source  # the clamp of dt_limit
    plain = ir.ssd(skip=False, gate=False, dt_bias=False, dt_softplus=False)
    bare = triton_ssd.lower(plain, triton_ssd.default_schedule(plain))
    assert "def softplus" not in bare and "HAS_D:" in bare and "b_D" not in bare


def test_mismatched_inputs_are_refused() -> None:
    case = Case(batch=1, seqlen=20, heads=2, headdim=4, dstate=4)
    kernel = case.compiled()
    inputs = case.kernel_inputs()
    bad: dict[str, Optional[torch.Tensor]] = dict(inputs, B=inputs["B"][:, :10])
    with pytest.raises(ValueError, match="B and C"):
        kernel.forward(bad)
    with pytest.raises(ValueError, match="initial_state"):
        kernel.forward(inputs, initial_state=torch.zeros(2, 2, 4, 4, device=DEVICE))
    fwd = kernel.forward(inputs)
    with pytest.raises(ValueError, match="save_for_backward"):
        kernel.backward(fwd, inputs, torch.zeros_like(fwd.out))


def test_chunk_table_of_packed_sequences() -> None:
    cu = torch.tensor([0, 5, 6, 32, 70])
    table = triton_ssd.chunk_table(cu, 16, (70 + 4 * 15) // 16, 70)
    rows = [tuple(r) for r in table.tolist()]
    assert rows[:7] == [(0, 0, 5, 3), (1, 5, 6, 3), (2, 6, 22, 1), (2, 22, 32, 2), (3, 32, 48, 1), (3, 48, 64, 0),
                        (3, 64, 70, 2)]
    assert all(r[1] == r[2] == 70 and r[3] == 0 for r in rows[7:])
    seg = triton_ssd.segment_ids(torch.tensor([[3, 3, 7, 7, 3], [0, 0, 0, 0, 0]]))
    assert seg.tolist() == [[0, 0, 1, 1, 2], [0, 0, 0, 0, 0]] and seg.dtype == torch.int32
    assert np.array_equal(triton_ssd.segment_ids(torch.zeros(1, 1, dtype=torch.int64)).numpy(), [[0]])


@pytest.mark.parametrize("splits", [1, 3])
def test_dbc_head_splits(splits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """dB, dC with the 4 heads of the group shared out among 1 or 3 programs (2, 2, 0 heads)."""
    case = Case(batch=1, seqlen=20, heads=4, headdim=4, dstate=4, chunk=16, seed=splits)
    total = 2 * 1 * 1  # chunks · groups · row tiles
    monkeypatch.setattr(triton_ssd, "DBC_MIN_PROGRAMS", splits * total)
    assert triton_ssd.head_splits(total, 4) == splits
    assert_grads(case)
