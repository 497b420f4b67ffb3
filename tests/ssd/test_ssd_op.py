"""``scancc.ops.mamba_chunk_scan_combined``: the float64 oracle, mamba-ssm's conventions, bad input."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from ssd_cases import DEVICE, Case, grad_error, reference, reference_grads

from scancc import oracle
from scancc.ops import mamba_chunk_scan_combined

TOL = oracle.TOLERANCES["fp32_chunked"]
ARGS = ("x", "dt", "A", "B", "C")
KWARGS = ("D", "z", "dt_bias")


def op_args(case: Case, requires_grad: bool = False) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Positional tensors and keyword arguments of the op for ``case`` (leaves on DEVICE)."""
    t = {k: v.detach().clone().requires_grad_(requires_grad) for k, v in case.kernel_inputs().items()
         if k != "seq_idx"}
    kwargs: dict[str, Any] = {k: t[k] for k in KWARGS if k in t}
    if case.state is not None:
        kwargs["initial_states"] = case.kernel_state().clone().requires_grad_(requires_grad)
    if case.seq is not None:
        kwargs["seq_idx"] = case.seq.to(DEVICE)
    if case.cu_seqlens is not None:
        kwargs["cu_seqlens"] = case.cu()
    kwargs["dt_softplus"] = case.softplus
    if case.limit is not None:
        kwargs["dt_limit"] = case.limit
    return [t[k] for k in ARGS], kwargs


def leaves_of(args: list[torch.Tensor], kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    named = dict(zip(ARGS, args))
    named.update({k: kwargs[k] for k in KWARGS if k in kwargs})
    if "initial_states" in kwargs:
        named["initial_state"] = kwargs["initial_states"]
    return named


def test_matches_the_oracle_with_gradients() -> None:
    case = Case(batch=2, seqlen=45, heads=4, headdim=8, dstate=16, groups=2, chunk=32, D="hp", limit=(0.05, 0.9),
                seq_idx=True, seed=21)
    args, kwargs = op_args(case, requires_grad=True)
    out, final = mamba_chunk_scan_combined(*args, case.chunk, **kwargs, return_final_states=True)
    want, want_final = reference(case)
    assert out.dtype == torch.float32 and final.dtype == torch.float32
    assert oracle.rel_l2(out, want) <= TOL and oracle.rel_l2(final, want_final) <= TOL
    gen = torch.Generator().manual_seed(0)
    g_out = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    g_final = torch.randn(want_final.shape, generator=gen, dtype=torch.float64)
    leaves = leaves_of(args, kwargs)
    got = torch.autograd.grad([out, final], list(leaves.values()),
                              [g_out.float().to(DEVICE), g_final.float().to(DEVICE)])
    expected = reference_grads(case, g_out, g_final)
    scale = float(torch.linalg.vector_norm(expected["x"]))
    errors = {k: grad_error(g, expected[k], scale) for k, g in zip(leaves, got)}
    assert max(errors.values()) <= TOL, errors


def test_return_conventions() -> None:
    case = Case(batch=1, seqlen=20, heads=2, headdim=4, dstate=4, cu_seqlens=[0, 7, 20], h0=False)
    args, kwargs = op_args(case)
    out = mamba_chunk_scan_combined(*args, 16, **kwargs)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 20, 2, 4)
    out, final = mamba_chunk_scan_combined(*args, 16, **kwargs, return_final_states=True)
    assert final.shape == (1, 2, 4, 4)
    out, varlen = mamba_chunk_scan_combined(*args, 16, **kwargs, return_varlen_states=True)
    assert varlen.shape == (2, 2, 4, 4)
    out, final, varlen = mamba_chunk_scan_combined(*args, 16, **kwargs, return_final_states=True,
                                                   return_varlen_states=True)
    assert torch.equal(final, varlen[-1:])
    _, want_states = reference(case)
    assert oracle.rel_l2(varlen, want_states) <= TOL


def test_state_carry_equals_one_long_sequence() -> None:
    """[0, 29) then [29, 64) from the returned state ≡ [0, 64), and gradients flow through the
    carried state (the final state's gradient becomes the initial state's)."""
    case = Case(batch=2, seqlen=64, heads=2, headdim=8, dstate=8, chunk=16, seed=4)
    args, kwargs = op_args(case, requires_grad=True)
    whole = mamba_chunk_scan_combined(*args, 16, **kwargs)
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(whole.shape, generator=gen).to(DEVICE)
    leaves = leaves_of(args, kwargs)
    want = torch.autograd.grad(whole, list(leaves.values()), g)

    def part(lo: int, hi: int, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sliced = [a[:, lo:hi] if a.dim() > 1 else a for a in args]
        kw = dict(kwargs, z=kwargs["z"][:, lo:hi], initial_states=state)
        return mamba_chunk_scan_combined(*sliced, 16, **kw, return_final_states=True)

    first, state = part(0, 29, kwargs["initial_states"])
    second, _ = part(29, 64, state)
    joined = torch.cat([first, second], 1)
    assert oracle.rel_l2(joined, whole) <= TOL
    got = torch.autograd.grad(joined, list(leaves.values()), g)
    errors = {k: oracle.rel_l2(a, b) for k, a, b in zip(leaves, got, want)}
    assert max(errors.values()) <= TOL, errors


@pytest.mark.parametrize("state_rows", ["per_sequence", "first_only"])
def test_packed_sequences_equal_separate_runs(state_rows: str) -> None:
    """mamba-ssm style (cu_seqlens with the matching seq_idx) ≡ each sequence on its own,
    with gradients through the per-sequence final states."""
    cu = [0, 9, 10, 41, 57]
    case = Case(batch=1, seqlen=57, heads=2, headdim=8, dstate=8, chunk=16, cu_seqlens=cu, seed=9)
    args, kwargs = op_args(case, requires_grad=True)
    if state_rows == "first_only":
        kwargs["initial_states"] = kwargs["initial_states"][:1].detach().requires_grad_(True)
    seq_idx = torch.repeat_interleave(torch.arange(4), torch.tensor(cu[1:]) - torch.tensor(cu[:-1]))
    kwargs["seq_idx"] = seq_idx[None].to(torch.int32).to(DEVICE)
    out, varlen = mamba_chunk_scan_combined(*args, 16, **kwargs, return_varlen_states=True)
    gen = torch.Generator().manual_seed(2)
    g_out = torch.randn(out.shape, generator=gen).to(DEVICE)
    g_states = torch.randn(varlen.shape, generator=gen).to(DEVICE)
    leaves = leaves_of(args, kwargs)
    got = torch.autograd.grad([out, varlen], list(leaves.values()), [g_out, g_states])

    outs, states = [], []
    h0 = kwargs["initial_states"]
    for i, (lo, hi) in enumerate(zip(cu[:-1], cu[1:])):
        sliced = [a[:, lo:hi] if a.dim() > 1 else a for a in args]
        state = h0[i:i + 1] if i < h0.shape[0] else None
        o, s = mamba_chunk_scan_combined(*sliced, 16, D=kwargs["D"], z=kwargs["z"][:, lo:hi],
                                         dt_bias=kwargs["dt_bias"], initial_states=state, dt_softplus=True,
                                         return_final_states=True)
        outs.append(o)
        states.append(s)
    want_out, want_states = torch.cat(outs, 1), torch.cat(states, 0)
    assert oracle.rel_l2(out, want_out) <= TOL and oracle.rel_l2(varlen, want_states) <= TOL
    want = torch.autograd.grad([want_out, want_states], list(leaves.values()), [g_out, g_states])
    errors = {k: oracle.rel_l2(a, b) for k, a, b in zip(leaves, got, want)}
    assert max(errors.values()) <= TOL, errors


def test_non_contiguous_inputs_are_accepted() -> None:
    case = Case(batch=2, seqlen=20, heads=2, headdim=4, dstate=4, h0=False)
    args, kwargs = op_args(case)
    want = mamba_chunk_scan_combined(*args, 16, **kwargs)
    x = args[0].transpose(1, 2).contiguous().transpose(1, 2)
    assert not x.is_contiguous()
    got = mamba_chunk_scan_combined(x, *args[1:], 16, **kwargs)
    assert torch.equal(got, want)


def test_torch_compile_fullgraph() -> None:
    case = Case(batch=1, seqlen=24, heads=2, headdim=4, dstate=4, seq_idx=True, seed=3)
    args, kwargs = op_args(case, requires_grad=True)

    def f(x, dt, A, B, C, D, z, dt_bias, h0, seq_idx):
        out, final = mamba_chunk_scan_combined(x, dt, A, B, C, 16, D=D, z=z, dt_bias=dt_bias, initial_states=h0,
                                               seq_idx=seq_idx, dt_softplus=True, return_final_states=True)
        return out.sum() + (final * final).sum()

    inputs = [*args, kwargs["D"], kwargs["z"], kwargs["dt_bias"], kwargs["initial_states"], kwargs["seq_idx"]]
    leaves = inputs[:-1]
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(*inputs), leaves)
    want = torch.autograd.grad(f(*inputs), leaves)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


# -- bad input ---------------------------------------------------------------------------------------
def _case_args() -> tuple[list[torch.Tensor], dict[str, Any]]:
    return op_args(Case(batch=2, seqlen=20, heads=4, headdim=4, dstate=4, groups=2, h0=False))


def _with(**changes: Callable[[list[torch.Tensor], dict[str, Any]], Any]):
    def build() -> tuple[list[torch.Tensor], dict[str, Any], int]:
        args, kwargs = _case_args()
        chunk = 16
        for key, fn in changes.items():
            if key == "chunk":
                chunk = fn(args, kwargs)
            elif key in ARGS:
                args[ARGS.index(key)] = fn(args, kwargs)
            else:
                kwargs[key] = fn(args, kwargs)
        return args, kwargs, chunk
    return build


BAD = {
    "groups do not divide heads": (_with(B=lambda a, k: a[3][:, :, :1].expand(2, 20, 3, 4).contiguous(),
                                         C=lambda a, k: a[4][:, :, :1].expand(2, 20, 3, 4).contiguous()),
                                   ValueError, r"B: expected .*heads % groups == 0"),
    "C shape": (_with(C=lambda a, k: a[4][:, :, :1]), ValueError,
                r"C: expected \(batch=2, seqlen=20, groups=2, dstate=4\)"),
    "initial_states shape": (_with(initial_states=lambda a, k: torch.zeros(2, 4, 4, 5, device=DEVICE)), ValueError,
                             r"initial_states: expected \(batch=2, heads=4, headdim=4, dstate=4\)"),
    "seq_idx dtype": (_with(seq_idx=lambda a, k: torch.zeros(2, 20, device=DEVICE)), TypeError,
                      r"seq_idx: expected dtype int32 or int64"),
    "seq_idx shape": (_with(seq_idx=lambda a, k: torch.zeros(2, 19, dtype=torch.int32, device=DEVICE)), ValueError,
                      r"seq_idx: expected \(batch=2, seqlen=20\)"),
    "cu_seqlens not increasing": (_with(cu_seqlens=lambda a, k: torch.tensor([0, 12, 12, 20], device=DEVICE),
                                        x=lambda a, k: a[0][:1], dt=lambda a, k: a[1][:1], B=lambda a, k: a[3][:1],
                                        C=lambda a, k: a[4][:1], z=lambda a, k: k["z"][:1]),
                                  ValueError, "strictly increasing"),
    "cu_seqlens with batch 2": (_with(cu_seqlens=lambda a, k: torch.tensor([0, 12, 20], device=DEVICE)), ValueError,
                                "expected batch=1"),
    "cu_seqlens end": (_with(cu_seqlens=lambda a, k: torch.tensor([0, 12, 19], device=DEVICE),
                             x=lambda a, k: a[0][:1], dt=lambda a, k: a[1][:1], B=lambda a, k: a[3][:1],
                             C=lambda a, k: a[4][:1], z=lambda a, k: k["z"][:1]),
                       ValueError, "end at seqlen=20"),
    "varlen states without cu_seqlens": (_with(return_varlen_states=lambda a, k: True), ValueError,
                                         "return_varlen_states: needs cu_seqlens"),
    "chunk not a power of two": (_with(chunk=lambda a, k: 24), ValueError, r"chunk_size: expected a power of two"),
    "chunk too small": (_with(chunk=lambda a, k: 8), ValueError, r"in \[16, 4096\], got 8"),
    "chunk not an int": (_with(chunk=lambda a, k: 16.0), TypeError, "chunk_size: expected an int"),
    "dt_limit order": (_with(dt_limit=lambda a, k: (0.5, 0.1)), ValueError, r"dt_limit: expected 0 <= lo <= hi"),
    "x float64": (_with(x=lambda a, k: a[0].double()), TypeError, r"x: expected dtype float32, float16 or bfloat16"),
    "B dtype": (_with(B=lambda a, k: a[3].half()), TypeError, r"B: expected dtype torch.float32 \(the dtype of x\)"),
    "D shape": (_with(D=lambda a, k: torch.zeros(5, device=DEVICE)), ValueError, r"D: expected \(heads=4\) or"),
    "dt shape": (_with(dt=lambda a, k: a[1][:, :, :2]), ValueError, r"dt: expected \(batch=2, seqlen=20, heads=4\)"),
    "flag type": (_with(dt_softplus=lambda a, k: 1), TypeError, "dt_softplus: expected a bool"),
    "empty heads": (_with(x=lambda a, k: a[0][:, :, :0], dt=lambda a, k: a[1][:, :, :0], A=lambda a, k: a[2][:0],
                          D=lambda a, k: None, z=lambda a, k: None, dt_bias=lambda a, k: None,
                          initial_states=lambda a, k: None),
                    ValueError, r"x: expected \(batch, seqlen, heads, headdim\) with every size >= 1, .*\(heads = 0\)"),
    "empty headdim": (_with(x=lambda a, k: a[0][..., :0], z=lambda a, k: None, D=lambda a, k: None,
                            initial_states=lambda a, k: None),
                      ValueError, r"x: expected .* with every size >= 1, .*\(headdim = 0\)"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_refused_with_a_clear_message(name: str) -> None:
    build, exc, match = BAD[name]
    args, kwargs, chunk = build()
    with pytest.raises(exc, match=match):
        mamba_chunk_scan_combined(*args, chunk, **kwargs)
