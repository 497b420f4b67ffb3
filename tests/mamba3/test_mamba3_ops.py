"""Mamba-3 ops against the float64 oracle (Triton interpreter on CPU): every option, gradients,
the equivalences of recurrences.md §4, decode against the chunked form, and bad arguments."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from m3_cases import DEVICE, STATES, Case, fwd_tol

from scancc import oracle
from scancc.ops import mamba3_mimo, mamba3_siso_combined, mamba3_step, mamba_chunk_scan_combined

sys.path.insert(0, str(Path(__file__).parents[1] / "oracle"))
from test_oracle_equivalences import complex_diagonal_mamba3  # noqa: E402

GRAD_TOL = 1e-4


def close(what: str, got: object, want: object, tol: float) -> None:
    err = oracle.rel_l2(got, want)
    assert err <= tol, f"{what}: rel L2 {err:.3g} > {tol:.3g}"


def check_case(case: Case) -> None:
    out = case.run(case.args(), case.state_args())
    ref, ref_state = case.reference()
    tol = fwd_tol(case.dtype)
    close("out", out[0], ref, tol)
    for name, got in zip(STATES, out[1:]):
        if name == "angle":
            got = torch.exp(1j * got.double())       # compare angles on the circle (mod 2π)
            close("final angle", got, torch.exp(1j * ref_state[name].double()), tol)
        else:
            close(f"final {name}", got, ref_state[name], tol)


@settings(max_examples=14, deadline=None)
@given(rank=st.sampled_from([1, 1, 2, 4]), seqlen=st.integers(1, 40), chunk=st.sampled_from([16, 32]),
       heads_qk=st.sampled_from([1, 2]), headdim=st.sampled_from([4, 6]), dstate=st.sampled_from([8, 16]),
       pair_frac=st.sampled_from([0.0, 0.5, 1.0]), bias=st.booleans(), D=st.booleans(), z=st.booleans(),
       states=st.booleans(), varlen=st.booleans(), seed=st.integers(0, 2**16))
def test_ops_match_oracle(rank: int, seqlen: int, chunk: int, heads_qk: int, headdim: int, dstate: int,
                          pair_frac: float, bias: bool, D: bool, z: bool, states: bool, varlen: bool, seed: int) -> None:
    cu = None
    if varlen and seqlen >= 3:
        cuts = sorted(np.random.default_rng(seed).choice(np.arange(1, seqlen), 2, replace=False).tolist())
        cu = [0, *cuts, seqlen]
    case = Case(batch=1 if cu else 2, seqlen=seqlen, heads=2, heads_qk=heads_qk, headdim=headdim, dstate=dstate,
                pairs=int(pair_frac * dstate // 2), rank=rank, chunk=chunk, bias=bias, D=D, z=z, states=states,
                cu_seqlens=cu, seed=seed)
    check_case(case)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype: torch.dtype) -> None:
    check_case(Case(seqlen=40, dtype=dtype, heads=4, heads_qk=2))


@pytest.mark.parametrize("case", [
    Case(seqlen=40, chunk=16),
    Case(seqlen=33, chunk=16, pairs=2, heads=4, heads_qk=2, headdim=6),
    Case(batch=1, seqlen=40, chunk=16, cu_seqlens=[0, 7, 25, 40]),
    Case(seqlen=24, chunk=16, rank=2, states=True),
    Case(batch=1, seqlen=30, chunk=16, rank=4, cu_seqlens=[0, 13, 30], D=False, z=False, bias=False),
], ids=["siso", "siso_partial_rotary_gqa", "siso_varlen", "mimo2", "mimo4_varlen"])
def test_gradients_match_oracle_autograd(case: Case) -> None:
    args = case.args(requires_grad=True)
    states = case.state_args(requires_grad=True)
    out = case.run(args, states)
    args64 = case.args(requires_grad=True, dtype=torch.float64)
    states64 = case.state_args(requires_grad=True, dtype=torch.float64)
    ref, ref_state = case.reference(args64, states64)
    gen = torch.Generator().manual_seed(1)
    g_out = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    g_states = [torch.randn(ref_state[k].shape, generator=gen, dtype=torch.float64) for k in STATES]
    loss64 = (ref * g_out).sum() + sum((ref_state[k] * g).sum() for k, g in zip(STATES, g_states))
    loss = (out[0].double() * g_out).sum() + sum((o.double() * g).sum() for o, g in zip(out[1:], g_states))
    names = [k for k, v in args.items() if v is not None]
    leaves = [args[k] for k in names] + list(states or ())
    leaves64 = [args64[k] for k in names] + list(states64 or ())
    # W_z without Z takes no part: no gradient (None) on either side, compared as zeros
    got = [torch.zeros_like(v) if g is None else g
           for v, g in zip(leaves, torch.autograd.grad(loss, leaves, allow_unused=True))]
    want = [torch.zeros_like(v) if w is None else w
            for v, w in zip(leaves64, torch.autograd.grad(loss64, leaves64, allow_unused=True))]
    labels = names + [f"state {k}" for k in (STATES if states else ())]
    for label, g, w in zip(labels, got, want):
        close(f"d{label}", g, w, GRAD_TOL)


def test_reduces_to_ssd_when_lambda_is_one_without_rotation() -> None:
    """λ ≡ 1 (trap → +∞), no angles, no biases: Mamba-3 is SSD with Δ·A = ADT."""
    case = Case(seqlen=40, pairs=0, bias=False, states=False, heads=4, heads_qk=2)
    a = case.args()
    A = -torch.rand(case.heads, dtype=torch.float64) - 0.2
    DT = a["DT"].double()
    ADT = (DT * A[None, :, None]).float()
    Trap = torch.full_like(a["Trap"], 1e4)
    out = mamba3_siso_combined(a["Q"], a["K"], a["V"], ADT, a["DT"], Trap, None, None, a["Angles"], a["D"], a["Z"],
                               chunk_size=16)
    want = mamba_chunk_scan_combined(a["V"], a["DT"].transpose(1, 2), A.float(), a["K"], a["Q"], 16, D=a["D"], z=a["Z"])
    close("Mamba-3 (λ ≡ 1) vs SSD op", out, want, 1e-5)


@pytest.mark.parametrize("pairs", [1, 4])
def test_rotary_equals_complex_diagonal(pairs: int) -> None:
    case = Case(seqlen=30, pairs=pairs, states=False, heads=2, heads_qk=1)
    out = case.run(case.args(), None, final=False)
    inputs = {k: v for k, v in case.arrays.items()}
    close("rotary vs complex diagonal", out, complex_diagonal_mamba3(inputs, "interleaved"), fwd_tol(torch.float32))


def test_mimo_rank_one_equals_siso() -> None:
    """MIMO pairs (i, i + N/2); SISO (2i, 2i+1): the same problem with the key dims permuted."""
    case = Case(seqlen=30, states=True, heads=2, heads_qk=1, dstate=8)
    a = case.args()
    states = case.state_args()
    N = case.dstate
    perm = torch.cat([torch.arange(0, N, 2), torch.arange(1, N, 2)])     # interleaved → halves
    want = mamba3_siso_combined(**{k: a[k] for k in ("Q", "K", "V", "ADT", "DT", "Trap", "Q_bias", "K_bias",
                                                      "Angles", "D", "Z")},
                                Input_States=states, chunk_size=16, return_final_states=True)
    ones = torch.ones(case.heads, 1, case.headdim)
    m_states = (states[0], states[1][..., perm], states[2][:, None, :, perm], states[3])
    got = mamba3_mimo(a["Q"][..., perm][:, :, None], a["K"][..., perm][:, :, None], a["V"], a["ADT"], a["DT"],
                      a["Trap"], a["Q_bias"][..., perm][:, None], a["K_bias"][..., perm][:, None], a["Angles"],
                      ones, ones, ones, D=a["D"], Z=a["Z"], Input_States=m_states, chunk_size=16,
                      return_final_states=True)
    close("out", got[0], want[0], 1e-5)
    close("ssm", got[2], want[2][..., perm], 1e-5)
    close("k", got[3][:, 0], want[3][..., perm], 1e-5)


@pytest.mark.parametrize("rank", [1, 2])
def test_decode_steps_equal_chunked(rank: int) -> None:
    case = Case(seqlen=6, rank=rank, states=True, heads=2, heads_qk=1)
    a = case.args()
    states = case.state_args()
    want = case.run(a, states)
    state = tuple(s.clone() for s in states)
    outs = []
    for t in range(case.seqlen):
        step = dict(Q=a["Q"][:, t], K=a["K"][:, t], V=a["V"][:, t], ADT=a["ADT"][:, :, t], DT=a["DT"][:, :, t],
                    Trap=a["Trap"][:, :, t], Q_bias=a["Q_bias"], K_bias=a["K_bias"], Angles=a["Angles"][:, t],
                    D=a["D"], Z=a["Z"][:, t])
        if rank > 1:
            step.update(W_x=a["W_x"], W_z=a["W_z"], W_o=a["W_o"])
        outs.append(mamba3_step(state, **step))
    close("decoded out", torch.stack(outs, 1), want[0], 1e-5)
    for name, got, ref in zip(STATES, state, want[1:]):
        if name == "angle":
            got, ref = torch.exp(1j * got.double()), torch.exp(1j * ref.double())
        close(f"decoded {name} state", got, ref, 1e-5)


# -- bad arguments ------------------------------------------------------------------------------------
def _siso_args(**changes: object) -> dict[str, object]:
    a = dict(Case(seqlen=8, heads=2, heads_qk=1).args())
    a.pop("W_x"), a.pop("W_z"), a.pop("W_o")
    a.update(changes)
    return a


def test_too_many_angle_dims_raise() -> None:
    a = _siso_args()
    a["Angles"] = torch.zeros(2, 8, 2, 5)       # 5 pairs > headdim_qk / 2 = 4
    with pytest.raises(ValueError, match="Angles"):
        mamba3_siso_combined(**a)


def test_heads_not_a_multiple_of_qk_heads_raise() -> None:
    a = _siso_args()
    a["Q"] = torch.zeros(2, 8, 3, 8)
    a["K"] = torch.zeros(2, 8, 3, 8)
    with pytest.raises(ValueError, match="nheads_qk"):
        mamba3_siso_combined(**a)


def test_cu_seqlens_with_batch_above_one_raise() -> None:
    a = _siso_args()
    with pytest.raises(ValueError, match="cu_seqlens"):
        mamba3_siso_combined(**a, cu_seqlens=torch.tensor([0, 3, 8], dtype=torch.int32))


def test_partial_input_states_raise() -> None:
    case = Case(seqlen=8, heads=2, heads_qk=1)
    a = _siso_args()
    angle, ssm, k, x = case.state_args()
    with pytest.raises(ValueError, match="Input_States"):
        mamba3_siso_combined(**a, Input_States=(None, ssm, k, x))


def test_bad_chunk_and_mimo_rank_raise() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        mamba3_siso_combined(**_siso_args(), chunk_size=48)
    a = _siso_args()
    with pytest.raises(ValueError, match="Q"):
        mamba3_mimo(a["Q"][:, :, None].expand(2, 8, 3, 1, 8), a["K"], a["V"], a["ADT"], a["DT"], a["Trap"], None,
                    None, a["Angles"], torch.ones(2, 3, 8), torch.ones(2, 3, 8), torch.ones(2, 3, 8))


def test_device_is_cpu_or_cuda() -> None:
    assert DEVICE in ("cpu", "cuda") and math.isfinite(1.0)


def _mimo_rank_one_args() -> dict[str, object]:
    case = Case(seqlen=8, heads=2, heads_qk=1, headdim=4, dstate=8)
    a = dict(case.args())
    a["Q"], a["K"] = a["Q"][:, :, None], a["K"][:, :, None]
    a["Q_bias"], a["K_bias"] = a["Q_bias"][:, None], a["K_bias"][:, None]
    a["W_x"], a["W_z"], a["W_o"] = (torch.full((2, 1, 4), 0.5, device=DEVICE) for _ in range(3))
    angle, ssm, k, v = case.state_args()
    a["Input_States"] = (angle, ssm, k[:, None], v)
    return a


@pytest.mark.parametrize("v_state, exc", [
    (torch.zeros(2, 2), ValueError),                              # a dimension missing
    (torch.zeros(2, 3, 4), ValueError),                           # nheads 3 for 2
    (torch.zeros(2, 2, 5), ValueError),                           # headdim 5 for 4
    (torch.zeros(2, 2, 4, device="meta"), ValueError),            # another device
    (torch.zeros(2, 2, 4, dtype=torch.int32), TypeError),
])
def test_mimo_rank_one_bad_v_state(v_state: torch.Tensor, exc: type) -> None:
    a = _mimo_rank_one_args()
    angle, ssm, k, _ = a["Input_States"]
    a["Input_States"] = (angle, ssm, k, v_state)
    with pytest.raises(exc, match=r"Input_States\[3\] \(v\)"):
        mamba3_mimo(**a)


@pytest.mark.parametrize("op", ["siso", "mimo1", "mimo2"])
def test_empty_axes_raise(op: str) -> None:
    if op == "siso":
        a = _siso_args()
        a["V"], a["Z"] = a["V"][:, :, :, :0], None
        with pytest.raises(ValueError, match=r"V: expected .* with every size >= 1, .*\(headdim_v = 0\)"):
            mamba3_siso_combined(**a)
    elif op == "mimo1":
        a = _mimo_rank_one_args()
        a["Q"], a["K"] = a["Q"][..., :0], a["K"][..., :0]
        a["Q_bias"] = a["K_bias"] = a["Input_States"] = None
        a["Angles"] = a["Angles"][..., :0]
        with pytest.raises(ValueError, match=r"Q: expected .* with every size >= 1, .*\(headdim_qk = 0\)"):
            mamba3_mimo(**a)
    else:
        case = Case(seqlen=8, heads=2, heads_qk=1, headdim=4, dstate=8, rank=2)
        a = dict(case.args())
        a = {k: (None if v is None else v[:0] if k in ("Q", "K", "V", "ADT", "DT", "Trap", "Angles", "Z") else v)
             for k, v in a.items()}
        with pytest.raises(ValueError, match=r"V: expected .* with every size >= 1, .*\(batch = 0\)"):
            mamba3_mimo(**a)


def _step_args(case: Case) -> dict[str, object]:
    a = dict(case.args())
    a.pop("W_x"), a.pop("W_z"), a.pop("W_o")
    a = {k: (None if v is None else v[:, 0] if k in ("Q", "K", "V", "Z", "Angles") else
             v[:, :, 0] if k in ("ADT", "DT", "Trap") else v) for k, v in a.items()}
    a["state"] = tuple(s.clone() for s in case.state_args())
    return a


@pytest.mark.parametrize("given", ["Q_bias", "K_bias"])
def test_step_with_one_bias_adds_zero_for_the_other(given: str) -> None:
    """One bias alone is the pair with a zero bias for the other (the decode kernel takes both)."""
    case = Case(seqlen=1, heads=2, heads_qk=1, headdim=4, dstate=8)
    other = "K_bias" if given == "Q_bias" else "Q_bias"
    one = _step_args(case)
    one[other] = None
    both = _step_args(case)
    both[other] = torch.zeros_like(both[given])
    got, want = mamba3_step(**one), mamba3_step(**both)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)
    for s, t in zip(one["state"], both["state"]):
        assert torch.allclose(s, t, rtol=1e-6, atol=1e-6)


def test_step_state_errors_name_state() -> None:
    case = Case(seqlen=1, heads=2, heads_qk=1, headdim=4, dstate=8)
    a = _step_args(case)
    angle, ssm, k, v = a["state"]
    a["state"] = (angle, ssm[:, :, :3], k, v)
    with pytest.raises(ValueError, match=r"^state\[1\] \(ssm\): expected \(batch=2, heads=2, headdim=4, dstate=8\)"):
        mamba3_step(**a)
