"""The Mamba-3 ops under ``torch.compile(fullgraph=True)``: one graph, no breaks, the same values
and gradients as eager (the torch preparation is traced; the kernels are custom ops)."""

from __future__ import annotations

import pytest
import torch
from m3_cases import STATES, Case

from scancc import oracle
from scancc.ops import mamba3_mimo, mamba3_siso_combined, mamba3_step

SISO_ARGS = ("Q", "K", "V", "ADT", "DT", "Trap", "Q_bias", "K_bias", "Angles", "D", "Z")
MIMO_ARGS = ("Q", "K", "V", "ADT", "DT", "Trap", "Q_bias", "K_bias", "Angles", "W_x", "W_z", "W_o", "D", "Z")


def siso(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, angle, ssm, k, x):  # noqa: ANN001, ANN201
    out, *final = mamba3_siso_combined(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D=D, Z=Z,
                                       Input_States=(angle, ssm, k, x), chunk_size=16, return_final_states=True)
    return out, *final


def mimo(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, W_x, W_z, W_o, D, Z):  # noqa: ANN001, ANN201
    return mamba3_mimo(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, W_x, W_z, W_o, D=D, Z=Z, chunk_size=16)


def _siso_inputs(requires_grad: bool) -> list[torch.Tensor]:
    case = Case(seqlen=20, heads=2, heads_qk=1, headdim=4, dstate=8, states=True, seed=5)
    args = case.args(requires_grad=requires_grad)
    return [args[k] for k in SISO_ARGS] + list(case.state_args(requires_grad=requires_grad))


def _loss(outs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    return sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)


def test_siso_forward_backward_fullgraph() -> None:
    inputs = _siso_inputs(True)
    compiled = torch.compile(siso, fullgraph=True, backend="aot_eager")
    got = compiled(*inputs)
    want = siso(*inputs)
    for name, a, b in zip(("out", *STATES), got, want):
        assert oracle.rel_l2(a, b) <= 1e-6, name
    g_got = torch.autograd.grad(_loss(got), inputs)
    g_want = torch.autograd.grad(_loss(want), inputs)
    for name, a, b in zip(SISO_ARGS + STATES, g_got, g_want):
        assert oracle.rel_l2(a, b) <= 1e-6, f"d{name}"


def test_mimo_forward_fullgraph() -> None:
    case = Case(seqlen=12, heads=2, heads_qk=1, headdim=4, dstate=8, rank=2, states=False, seed=6)
    args = case.args()
    inputs = [args[k] for k in MIMO_ARGS]
    got = torch.compile(mimo, fullgraph=True, backend="aot_eager")(*inputs)
    assert oracle.rel_l2(got, mimo(*inputs)) <= 1e-6


def test_no_graph_breaks() -> None:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(siso)(*_siso_inputs(False))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_step_fullgraph_updates_states_in_place() -> None:
    case = Case(seqlen=1, heads=2, heads_qk=1, headdim=4, dstate=8, rank=2, states=True, seed=7)
    a = case.args()
    step = dict(Q=a["Q"][:, 0], K=a["K"][:, 0], V=a["V"][:, 0], ADT=a["ADT"][:, :, 0], DT=a["DT"][:, :, 0],
                Trap=a["Trap"][:, :, 0], Q_bias=a["Q_bias"], K_bias=a["K_bias"], Angles=a["Angles"][:, 0],
                D=a["D"], Z=a["Z"][:, 0], W_x=a["W_x"], W_z=a["W_z"], W_o=a["W_o"])
    eager_state = case.state_args()
    compiled_state = case.state_args()
    want = mamba3_step(eager_state, **step)
    got = torch.compile(mamba3_step, fullgraph=True, backend="aot_eager")(compiled_state, **step)
    assert oracle.rel_l2(got, want) <= 1e-6
    for name, s, r in zip(STATES, compiled_state, eager_state):
        assert oracle.rel_l2(s, r) <= 1e-6, name


@pytest.mark.slow
def test_siso_forward_inductor() -> None:
    inputs = _siso_inputs(False)
    got = torch.compile(siso, fullgraph=True)(*inputs)
    for a, b in zip(got, siso(*inputs)):
        assert oracle.rel_l2(a, b) <= 1e-5
