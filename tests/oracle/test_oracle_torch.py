"""The torch path of the oracle: same numbers as NumPy, and differentiable (gradcheck)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oracle_cases import ALL, FP64_TOL, make_case, time_index
from scancc import ir
from scancc.oracle import as_torch, random_inputs, random_state, rel_l2, sequential


@pytest.mark.parametrize("name", sorted(ALL))
def test_torch_matches_numpy(name: str) -> None:
    program = ALL[name]
    inputs, state = make_case(program, 1, 9, groups=2, dim=4, heads=4)
    seq_idx = np.array([[0, 0, 0, 1, 1, 1, 1, 2, 2], [0] * 9])
    want, want_state = sequential(program, inputs, initial_state=state, seq_idx=seq_idx, return_final_state=True)
    got, got_state = sequential(program, as_torch(inputs), initial_state=as_torch(state),
                                seq_idx=torch.as_tensor(seq_idx), return_final_state=True)
    assert isinstance(got, torch.Tensor) and got.dtype in (torch.float64, torch.complex128)
    assert rel_l2(got, want) < FP64_TOL and rel_l2(got_state, want_state) < FP64_TOL
    step_out, step_state = sequential(program.as_step(), as_torch(time_index(program, inputs, 0)),
                                      initial_state=as_torch(state))
    want_step, want_step_state = sequential(program.as_step(), time_index(program, inputs, 0), initial_state=state)
    assert rel_l2(step_out, want_step) < FP64_TOL and rel_l2(step_state, want_step_state) < FP64_TOL
    assert isinstance(step_out, torch.Tensor)


def test_torch_float32_inputs_are_widened() -> None:
    program = ir.ssd()
    inputs = random_inputs(program, np.random.default_rng(0), dtype=np.float32)
    out = sequential(program, as_torch(inputs))
    assert out.dtype == torch.float64
    assert rel_l2(out, sequential(program, inputs)) < FP64_TOL


GRAD_CASES = {
    "selective": (ir.selective(), {"seqlen": 4, "dim": 2, "dstate": 2}),
    "selective_complex": (ir.selective(complex=True), {"seqlen": 3, "dim": 2, "dstate": 2}),
    "lti_zoh": (ir.lti(), {"seqlen": 4, "dim": 2, "dstate": 2}),
    "rglru": (ir.rglru(), {"seqlen": 4, "dim": 2}),
    "ssd": (ir.ssd(dt_limit=(0.0, 5.0)), {"seqlen": 4, "heads": 2, "headdim": 2, "dstate": 2}),
    "mamba3": (ir.mamba3(), {"seqlen": 4, "heads": 1, "headdim": 2, "dstate": 4, "pairs": 2}),
    "mamba3_mimo": (ir.mamba3(rank=2, pairing="halves"), {"seqlen": 3, "heads": 1, "headdim": 2, "dstate": 4,
                                                          "pairs": 1}),
    "gla": (ir.gla(), {"seqlen": 4, "heads": 1, "headdim": 2, "dstate": 2}),
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_gradcheck_through_torch_path(name: str) -> None:
    program, sizes = GRAD_CASES[name]
    rng = np.random.default_rng(2)
    inputs = random_inputs(program, rng, batch=1, **sizes)
    state = random_state(program, rng, inputs=inputs)
    names = sorted(inputs)
    leaves = [torch.tensor(inputs[k], requires_grad=True) for k in names]
    state_keys = sorted(state) if isinstance(state, dict) else None
    state_leaves = ([torch.tensor(state[k], requires_grad=True) for k in state_keys] if state_keys
                    else [torch.tensor(state, requires_grad=True)])

    def fn(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ins = dict(zip(names, tensors[:len(names)]))
        st = dict(zip(state_keys, tensors[len(names):])) if state_keys else tensors[len(names)]
        out, final = sequential(program, ins, initial_state=st, return_final_state=True)
        finals = tuple(final[k] for k in sorted(final)) if isinstance(final, dict) else (final,)
        return (out, *finals)

    assert torch.autograd.gradcheck(fn, (*leaves, *state_leaves), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradient_reaches_every_input() -> None:
    program = ir.mamba3(rank=2)
    inputs = random_inputs(program, np.random.default_rng(4), seqlen=5, pairs=1)
    leaves = as_torch(inputs, requires_grad=True)
    sequential(program, leaves).square().sum().backward()
    for name, leaf in leaves.items():
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0, name
