"""The Triton diagonal kernels (linear, selective, LTI) against the float64 oracle.

Shapes are tiny (the interpreter is slow) but chosen to cross tile boundaries: block_l is
8–32 while seqlen runs to 70, so sequences span several tiles, end inside a tile, or fit
in one; seqlen 1 is included.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from triton_helpers import LINEAR, LTI, SELECTIVE_FLAGS, Case, check_backward, check_forward, selective_program

from scancc import ir
from scancc.backends.diagonal import DiagonalPlan
from scancc.backends.triton import tile_sizes

DTYPES = st.sampled_from([torch.float32, torch.float32, torch.bfloat16, torch.float16])
SEQLEN = st.one_of(st.integers(1, 70), st.sampled_from([1, 16, 17, 32, 33]))
BLOCK_L = st.sampled_from([4, 8, 16, 32])
CHECKPOINTS = st.sampled_from([1, 16, 32, 64])  # steps between checkpoints: backward tiles of 4–64 steps
PLAIN_ALGORITHMS = st.sampled_from(["chunked_scan", "sequential"])  # the forward's; the backward is one kernel
ALGORITHMS = st.sampled_from(["chunked_scan", "sequential", "unrolled_scan", "unrolled_scan"])  # with a state axis
UNROLL = st.sampled_from([None, None, 2, 4])  # unrolled_scan's block_n: below dstate it runs the wide forward


@st.composite
def selective_cases(draw: st.DrawFn, *, max_seqlen: int = 70) -> Case:
    flags = {f: draw(st.booleans()) for f in SELECTIVE_FLAGS}
    program = selective_program(flags)
    dim = draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
    groups = draw(st.sampled_from([g for g in (1, 2, 3, 4) if dim % g == 0]))
    optional = ["D", "z", "delta_bias"]
    drop = tuple(n for n in optional if draw(st.booleans()) and draw(st.booleans()))
    return Case(program, batch=draw(st.integers(1, 2)), dim=dim, dstate=draw(st.sampled_from([1, 3, 4, 8])),
                seqlen=min(draw(SEQLEN), max_seqlen), groups=groups, dtype=draw(DTYPES), block_l=draw(BLOCK_L),
                block_d=draw(st.sampled_from([None, 1, 2, 4])), initial_state=draw(st.booleans()),
                final_state=draw(st.booleans()), drop=drop, checkpoint_steps=draw(CHECKPOINTS),
                algorithm=draw(ALGORITHMS), block_n=draw(UNROLL), seed=draw(st.integers(0, 2**16)))


@st.composite
def linear_cases(draw: st.DrawFn) -> Case:
    program = LINEAR[draw(st.sampled_from(sorted(LINEAR)))]
    return Case(program, batch=draw(st.integers(1, 2)), dim=draw(st.integers(1, 8)), seqlen=draw(SEQLEN),
                dtype=draw(DTYPES), block_l=draw(BLOCK_L), block_d=draw(st.sampled_from([None, 1, 2, 4])),
                initial_state=draw(st.booleans()), final_state=draw(st.booleans()),
                checkpoint_steps=draw(CHECKPOINTS), algorithm=draw(PLAIN_ALGORITHMS),
                seed=draw(st.integers(0, 2**16)))


@st.composite
def lti_cases(draw: st.DrawFn) -> Case:
    program = LTI[draw(st.sampled_from(sorted(LTI)))]
    drop = ("D",) if program.readout.skip and draw(st.booleans()) else ()
    return Case(program, batch=draw(st.integers(1, 2)), dim=draw(st.integers(1, 6)),
                dstate=draw(st.sampled_from([1, 2, 4, 8])), seqlen=draw(SEQLEN), dtype=draw(DTYPES),
                block_l=draw(BLOCK_L), initial_state=draw(st.booleans()), final_state=draw(st.booleans()),
                drop=drop, checkpoint_steps=draw(CHECKPOINTS), algorithm=draw(ALGORITHMS),
                block_n=draw(UNROLL), seed=draw(st.integers(0, 2**16)))


# -- forward -------------------------------------------------------------------------------------
@settings(max_examples=20)
@given(linear_cases())
def test_linear_forward(case: Case) -> None:
    check_forward(case)


@settings(max_examples=20)
@given(selective_cases())
def test_selective_forward(case: Case) -> None:
    check_forward(case)


@settings(max_examples=12)
@given(lti_cases())
def test_lti_forward(case: Case) -> None:
    check_forward(case)


# -- backward ------------------------------------------------------------------------------------
@settings(max_examples=15)
@given(linear_cases())
def test_linear_backward(case: Case) -> None:
    check_backward(case, grad_final=case.final_state)


@settings(max_examples=20)
@given(selective_cases(max_seqlen=40))
def test_selective_backward(case: Case) -> None:
    check_backward(case, grad_final=case.final_state)


@settings(max_examples=10)
@given(lti_cases())
def test_lti_backward(case: Case) -> None:
    check_backward(case, grad_final=case.final_state)


@pytest.mark.parametrize("algorithm", ["chunked_scan", "sequential", "unrolled_scan"])
@pytest.mark.parametrize("flags", [
    dict(complex=c, varying_B=vb, varying_C=vc)
    for c in (False, True) for vb in (False, True) for vc in (False, True)
])
def test_selective_b_c_sources(flags: dict[str, bool], algorithm: str) -> None:
    """Every B/C source (varying with groups, fixed) real and complex, forward and backward."""
    case = Case(ir.selective(**flags), batch=2, dim=4, dstate=3, seqlen=23, groups=2, block_l=4, block_d=2,
                checkpoint_steps=8, algorithm=algorithm)
    check_forward(case)
    check_backward(case)


@pytest.mark.parametrize("algorithm", ["chunked_scan", "sequential", "unrolled_scan"])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_selective_with_a_per_channel(complex_: bool, algorithm: str) -> None:
    """A of shape (dim,) (Decay("exp", "channel")): one decay for every state entry of a channel."""
    program = ir.selective(complex=complex_).replace(decay=ir.Decay("exp", "channel"), name="selective_channel_a")
    case = Case(program, batch=2, dim=4, dstate=3, seqlen=37, groups=2, block_l=8, block_d=2,
                checkpoint_steps=16, algorithm=algorithm)
    check_forward(case)
    check_backward(case)


def test_only_final_state_gradient() -> None:
    """grad_out None: the gradient flows from the final state alone."""
    case = Case(ir.selective(), dim=2, seqlen=19, block_l=8, checkpoint_steps=8)
    check_backward(case, grad_out=False, grad_final=True)


@pytest.mark.parametrize("chunk", [16, 32, 64])
def test_checkpoint_interval_from_the_schedule(chunk: int) -> None:
    """Schedule.chunk sets the steps between checkpoints: shorter intervals give the backward's
    tiles more channels (16, 8, 4 of a group's 16 here), which sum dB/dC among themselves before
    adding to memory; every interval gives the same gradients."""
    case = Case(ir.selective(), batch=2, dim=16, dstate=4, seqlen=45, groups=1, block_l=8, block_d=16,
                algorithm="sequential", chunk=chunk)
    plan = DiagonalPlan.of(case.program)
    tiles = tile_sizes(plan, case.schedule, dim=16, dstate=4, chans_per_group=16, num_seqs=2)
    assert (tiles.block_l * tiles.ckpt_every, tiles.bwd_block_d) == (chunk, 16 * 16 // chunk)
    check_forward(case)
    check_backward(case)


def test_channels_sharing_groups_accumulate_atomically() -> None:
    """Four channels per group, one channel per program: dB/dC are summed across programs."""
    case = Case(ir.selective(), batch=2, dim=8, dstate=4, seqlen=21, groups=2, block_l=8, block_d=1,
                checkpoint_steps=8)
    check_backward(case)


# -- packed sequences ----------------------------------------------------------------------------
VARLEN_PROGRAMS = {"linear": ir.linear(), "rglru_c": ir.linear(complex=True, scale="sqrt_one_minus_a2"),
                   "selective": ir.selective(), "selective_c": ir.selective(complex=True), "lru": ir.lru()}


@pytest.mark.parametrize("name, algorithm", [
    (name, algorithm) for name in sorted(VARLEN_PROGRAMS) for algorithm in ("chunked_scan", "sequential", "unrolled_scan")
    if algorithm != "unrolled_scan" or name not in ("linear", "rglru_c")  # plain scans have no state axis to unroll
])
def test_varlen_matches_oracle(name: str, algorithm: str) -> None:
    """cu_seqlens: sequences of length 1, exactly one tile, several tiles, packed in one row."""
    case = Case(VARLEN_PROGRAMS[name], batch=1, dim=3, dstate=4, seqlen=50, block_l=4,
                cu_seqlens=[0, 1, 9, 17, 50], checkpoint_steps=8, algorithm=algorithm)
    check_forward(case)
    check_backward(case)


def test_varlen_equals_separate_sequences() -> None:
    """A packed row computes exactly what the sequences computed one by one do."""
    program = ir.selective()
    cu = [0, 7, 8, 30]
    packed = Case(program, batch=1, dim=4, dstate=4, seqlen=30, groups=2, block_l=8, cu_seqlens=cu)
    kernel = packed.compiled()
    fwd = kernel.forward(packed.kernel_inputs(), initial_state=packed.kernel_state(), cu_seqlens=packed.cu(),
                         return_final_state=True)
    for s, (lo, hi) in enumerate(zip(cu[:-1], cu[1:])):
        part = {k: (v[..., lo:hi] if v.dim() >= 3 else v) for k, v in packed.kernel_inputs().items()}
        one = kernel.forward(part, initial_state=packed.kernel_state()[s:s + 1], return_final_state=True)
        torch.testing.assert_close(fwd.out[..., lo:hi], one.out, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(fwd.final_state[s:s + 1], one.final_state, rtol=1e-6, atol=1e-6)


# -- layouts -------------------------------------------------------------------------------------
def test_strided_inputs() -> None:
    """Inputs that are views with non-contiguous batch/channel strides give the same result."""
    case = Case(ir.selective(), batch=2, dim=4, dstate=4, seqlen=20, groups=2, block_l=8)
    inputs = case.kernel_inputs()
    strided = {}
    for name, t in inputs.items():
        if t.dim() >= 3:  # embed in a bigger tensor along the channel / group axis, keep the last axis unit
            big = torch.zeros((t.shape[0], 2 * t.shape[1]) + tuple(t.shape[2:]), dtype=t.dtype, device=t.device)
            big[:, ::2] = t
            strided[name] = big[:, ::2]
        else:
            strided[name] = t
    kernel = case.compiled()
    want = kernel.forward(inputs).out
    got = kernel.forward(strided).out
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_rejects_non_unit_last_stride() -> None:
    case = Case(ir.linear(), batch=1, dim=2, seqlen=8)
    inputs = case.kernel_inputs()
    inputs["x"] = torch.zeros(1, 2, 16, dtype=inputs["x"].dtype)[..., ::2]
    with pytest.raises(ValueError, match="contiguous along its last axis"):
        case.compiled().forward(inputs)


def test_backward_needs_saved_forward() -> None:
    case = Case(ir.linear(), batch=1, dim=2, seqlen=8)
    kernel = case.compiled()
    fwd = kernel.forward(case.kernel_inputs())
    with pytest.raises(ValueError, match="save_for_backward"):
        kernel.backward(fwd, case.kernel_inputs(), torch.zeros_like(fwd.out))


def test_call_returns_out_and_final_state() -> None:
    case = Case(ir.hgrn(), batch=1, dim=2, seqlen=9, block_l=8)
    kernel = case.compiled()
    out = kernel(case.kernel_inputs())
    out2, final = kernel(case.kernel_inputs(), return_final_state=True)
    torch.testing.assert_close(out, out2, rtol=0, atol=0)
    assert final.shape == (1, 2, 1)
    torch.testing.assert_close(final[:, :, 0], out[:, :, -1].float(), rtol=0, atol=0)
