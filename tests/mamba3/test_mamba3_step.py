"""The Mamba-3 decode kernel (scancc/templates/triton/mamba3_step.py.j2): the compiled step program
against the float64 oracle, and ``mamba3_step`` against the chunked op run token by token, over
ranks, pairings, partial rotary, optional inputs, state dtypes and strides, headdim tiling."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pytest
import torch
from m3_cases import STATES, Case

import scancc
from scancc import ir, oracle
from scancc.ir import Schedule
from scancc.ops import mamba3_step

TOL = oracle.tolerance(torch.float32)


def on_circle(name: str, t: Any) -> Any:
    """Angles compare as points on the unit circle (they are kept mod 2π)."""
    t = torch.as_tensor(t).double()
    return torch.exp(1j * t) if name == "angle" else t


def close(what: str, got: Any, want: Any, tol: float) -> None:
    err = oracle.rel_l2(on_circle(what, got), on_circle(what, want))
    assert err <= tol, f"{what}: rel L2 {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("rank, pairing, pairs, rotary, headdim, dstate, block_d", [
    (1, "interleaved", 4, True, 4, 8, None),
    (1, "interleaved", 2, True, 6, 12, None),     # partial rotary, headdim and dstate not powers of two
    (2, "halves", 3, True, 5, 8, 2),              # three headdim tiles: k̃ and φ go through buffers
    (4, "halves", 4, True, 4, 8, None),
    (1, "halves", 0, False, 4, 8, None),          # no rotary at all
], ids=["siso", "siso_partial", "mimo2_tiled", "mimo4", "plain"])
def test_compiled_step_program_matches_oracle(rank: int, pairing: str, pairs: int, rotary: bool, headdim: int,
                                              dstate: int, block_d: Optional[int]) -> None:
    program = ir.mamba3(rank=rank, pairing=pairing, rotary=rotary).as_step()
    schedule = Schedule(algorithm="step", block_d=block_d, num_warps=2)
    compiled = scancc.compile(program, "triton", schedule)
    rng = np.random.default_rng(rank + pairs)
    inputs = oracle.random_inputs(program, rng, batch=3, heads=4, headdim=headdim, dstate=dstate, groups=2,
                                  pairs=pairs, rank=rank)
    if rotary:
        inputs["angles"] = inputs["angles"] * 4.0
    state = oracle.random_state(program, rng, inputs=inputs)
    want, want_state = oracle.sequential(program, inputs, initial_state=state, return_final_state=True)
    fwd = compiled.forward({k: torch.as_tensor(v).float() for k, v in inputs.items()},
                           initial_state={k: torch.as_tensor(v).float() for k, v in state.items()},
                           return_final_state=True)
    close("out", fwd.out, want, TOL)
    for name in STATES:
        close(name, fwd.final_state[name], want_state[name], TOL)


def step_args(a: dict[str, Any], t: int, rank: int) -> dict[str, Any]:
    """The arguments of token ``t`` of a sequence case for :func:`mamba3_step`."""
    step = dict(Q=a["Q"][:, t], K=a["K"][:, t], V=a["V"][:, t], ADT=a["ADT"][:, :, t], DT=a["DT"][:, :, t],
                Trap=a["Trap"][:, :, t], Q_bias=a["Q_bias"], K_bias=a["K_bias"], Angles=a["Angles"][:, t],
                D=a["D"], Z=None if a["Z"] is None else a["Z"][:, t])
    if rank > 1:
        step.update(W_x=a["W_x"], W_z=a["W_z"], W_o=a["W_o"])
    return step


def decode(case: Case, state: tuple[torch.Tensor, ...], a: Optional[dict[str, Any]] = None) -> torch.Tensor:
    a = case.args() if a is None else a
    return torch.stack([mamba3_step(state, **step_args(a, t, case.rank)) for t in range(case.seqlen)], 1)


@pytest.mark.parametrize("case", [
    Case(seqlen=5, rank=4, heads=4, heads_qk=2, dstate=8, pairs=2, bias=False, D=False, z=False),
    Case(seqlen=5, rank=8, heads=2, heads_qk=1, headdim=4, dstate=16, pairs=8),
    Case(seqlen=5, rank=1, heads=4, heads_qk=4, headdim=6, dstate=8, pairs=3, z=False),
], ids=["mimo4_partial_plain", "mimo8", "siso_mha"])
def test_decode_equals_chunked(case: Case) -> None:
    a = case.args()
    states = case.state_args()
    want = case.run(a, states)
    state = tuple(s.clone() for s in states)
    close("out", decode(case, state, a), want[0], 1e-5)
    for name, got, ref in zip(STATES, state, want[1:]):
        close(name, got, ref, 1e-5)


def test_low_precision_inputs_and_states() -> None:
    """bf16 tokens and bf16 states (read and written in their dtype, math in fp32), against the
    same steps on fp32 copies of the states rounded to bf16 after each token."""
    case = Case(seqlen=4, rank=2, heads=2, heads_qk=1, dtype=torch.bfloat16)
    a = case.args()
    state16 = tuple(s.to(torch.bfloat16) for s in case.state_args())
    state32 = tuple(s.float() for s in state16)
    outs16, outs32 = [], []
    for t in range(case.seqlen):
        outs16.append(mamba3_step(state16, **step_args(a, t, 2)))
        outs32.append(mamba3_step(state32, **step_args(a, t, 2)))
        for s16, s32 in zip(state16, state32):
            s32.copy_(s16.float())          # continue both from the same rounded state
    assert outs16[0].dtype == torch.bfloat16
    close("out", torch.stack(outs16).float(), torch.stack(outs32), oracle.tolerance(torch.bfloat16))


def test_strided_states_update_in_place() -> None:
    """States that are views (every other batch row of a larger buffer; ssm stored (N, P)-major)."""
    case = Case(seqlen=3, rank=1, heads=2, heads_qk=1, headdim=4, dstate=8)
    states = case.state_args()
    want_state = tuple(s.clone() for s in states)
    want = decode(case, want_state)
    bufs = [torch.full((2 * s.shape[0], *s.shape[1:]), float("nan")) for s in states]
    views = [b[::2] for b in bufs]
    ssm_t = torch.full((states[1].shape[0], 2, 8, 4), float("nan")).transpose(2, 3)   # (b, h, P, N) view
    views[1] = ssm_t
    for v, s in zip(views, states):
        v.copy_(s)
    got = decode(case, tuple(views))
    close("out", got, want, 1e-6)
    for name, v, w in zip(STATES, views, want_state):
        close(name, v, w, 1e-6)
    assert all(b[1::2].isnan().all() for b in bufs), "rows between the views were written"


def test_rank_one_mimo_equals_siso_with_permuted_keys() -> None:
    """MIMO rank 1 (a rank axis of 1, W ≡ 1, pairs (i, i + N/2)) ≡ SISO with the key dims permuted."""
    case = Case(seqlen=3, rank=1, heads=2, heads_qk=1, headdim=4, dstate=8)
    a = case.args()
    N = case.dstate
    perm = torch.cat([torch.arange(0, N, 2), torch.arange(1, N, 2)])
    siso_state = tuple(s.clone() for s in case.state_args())
    want = decode(case, siso_state, a)
    angle, ssm, k, x = (s.clone() for s in case.state_args())
    mimo_state = (angle, ssm[..., perm].contiguous(), k[:, None, :, perm].contiguous(), x)
    ones = torch.ones(case.heads, 1, case.headdim)
    outs = []
    for t in range(case.seqlen):
        s = step_args(a, t, 1)
        s.update(Q=s["Q"][:, None, :, perm], K=s["K"][:, None, :, perm], Q_bias=s["Q_bias"][:, None, perm],
                 K_bias=s["K_bias"][:, None, perm], W_x=ones, W_z=ones, W_o=ones)
        outs.append(mamba3_step(mimo_state, **s))
    close("out", torch.stack(outs, 1), want, 1e-6)
    close("ssm", mimo_state[1], siso_state[1][..., perm], 1e-6)
    close("k", mimo_state[2][:, 0], siso_state[2][..., perm], 1e-6)


def test_bad_step_arguments_raise() -> None:
    case = Case(seqlen=1, rank=2, heads=2, heads_qk=1)
    a = case.args()
    s = step_args(a, 0, 2)
    state = case.state_args()
    with pytest.raises(ValueError, match="W_x, W_z, W_o"):
        mamba3_step(state, **{**s, "W_z": None})
    with pytest.raises(ValueError, match="state"):
        mamba3_step(state[:3], **s)
    with pytest.raises(ValueError, match="ssm"):
        mamba3_step((state[0], state[1][:, :1], state[2], state[3]), **s)


# -- GPU: state bandwidth -----------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("rank", [1, 4])
def test_decode_state_bandwidth(rank: int) -> None:
    """B64 H32 P64 N128 fp32 states on the GPU: ≥ 80 % of copy bandwidth on the state traffic."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from bench_mamba3 import decode_bandwidth

    result = decode_bandwidth(64, 32, 64, 128, rank, device="cuda")
    assert result["fraction"] >= 0.8, result
