"""The oracle's public helpers and its argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oracle_cases import ALL, make_case
from scancc import ir
from scancc.oracle import (TOLERANCES, associative, chunked, convolution, random_inputs, random_state, rel_l2,
                           sequential, tolerance)
from scancc.oracle.common import step_size
from scancc.oracle.xp import NumpyOps

# -- rel_l2 and tolerances -------------------------------------------------------------------------


def test_rel_l2_values() -> None:
    ref = np.array([3.0, 4.0])
    assert rel_l2(ref, ref) == 0.0
    assert rel_l2(np.array([3.0, 4.5]), ref) == pytest.approx(0.1)
    assert rel_l2(torch.tensor([3.0, 4.5], dtype=torch.bfloat16), ref) == pytest.approx(0.1)
    assert rel_l2(np.array([1j, 0]), np.array([0j, 0])) == math.inf
    assert rel_l2(np.zeros(3), np.zeros(3)) == 0.0


def test_rel_l2_nan_never_passes() -> None:
    ref = np.ones(4)
    assert rel_l2(np.array([1.0, np.nan, 1.0, 1.0]), ref) == math.inf
    assert rel_l2(ref, np.array([np.nan, 1, 1, 1])) == math.inf
    assert rel_l2(np.array([1.0, np.inf, 1.0, 1.0]), ref) == math.inf


def test_rel_l2_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        rel_l2(np.ones(3), np.ones(4))


def test_rel_l2_state_dicts_wrap_angles() -> None:
    a = {"angle": np.array([2 * math.pi - 1e-9]), "ssm": np.ones(2)}
    b = {"angle": np.array([1e-9]), "ssm": np.ones(2)}
    assert rel_l2(a, b) < 1e-8
    with pytest.raises(ValueError, match="keys differ"):
        rel_l2(a, {"ssm": np.ones(2)})


def test_tolerances_follow_the_contract() -> None:
    assert TOLERANCES["fp32_sequential"] == 1e-5 and TOLERANCES["fp32_chunked"] == 1e-4
    assert TOLERANCES["tf32"] == 1e-3 and TOLERANCES["bf16"] == TOLERANCES["fp16"] == 2e-2
    assert tolerance(torch.float32) == 1e-5 and tolerance(np.float32, chunked=True) == 1e-4
    assert tolerance(torch.float32, tf32=True) == 1e-3 and tolerance(torch.bfloat16) == 2e-2
    with pytest.raises(ValueError, match="no tolerance"):
        tolerance(torch.float64)


# -- random inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL))
def test_random_inputs_match_the_signature_and_decay(name: str) -> None:
    program = ALL[name]
    rng = np.random.default_rng(0)
    for prog in (program, program.as_step()):
        inputs = random_inputs(prog, rng, seqlen=7, dim=4, groups=2, heads=4)
        assert set(inputs) == {s.name for s in prog.tensors()}
        out = sequential(prog, inputs) if prog.mode == "sequence" else sequential(prog, inputs)[0]
        assert np.all(np.isfinite(out))
    inputs = random_inputs(program, rng, seqlen=7)
    if program.decay.kind == "input":
        assert np.all((np.abs(inputs["a"]) > 0) & (np.abs(inputs["a"]) < 1))
    elif program.decay.kind == "lti" and program.decay.discretization == "none":
        assert np.all(np.abs(inputs["A"]) < 1)
    elif program.decay.kind == "exp":
        assert np.all(np.real(inputs["A"]) < 0)
    else:
        assert np.all(inputs.get("adt", -np.ones(1)) < 0)
    if program.step is not None and "dt" in inputs:
        delta = step_size(NumpyOps, program, inputs["dt"], inputs.get("dt_bias"), 1)
        assert np.all(delta > 0)


def test_random_inputs_dtype_and_state() -> None:
    program = ir.selective(complex=True)
    inputs = random_inputs(program, np.random.default_rng(0), dtype=np.float32)
    assert inputs["u"].dtype == np.float32 and inputs["A"].dtype == np.complex64
    state = random_state(program, np.random.default_rng(0), inputs=inputs, rows=3)
    assert state.shape == (3, 4, 4) and state.dtype == np.complex128
    m3 = random_state(ir.mamba3(rank=2), np.random.default_rng(0), heads=3, headdim=5, dstate=8, pairs=2)
    assert {k: v.shape for k, v in m3.items()} == {"angle": (2, 3, 2), "ssm": (2, 3, 5, 8), "k": (2, 2, 3, 8),
                                                   "x": (2, 3, 5)}
    assert np.all((m3["angle"] >= 0) & (m3["angle"] < 2 * math.pi))


def test_random_inputs_bad_sizes() -> None:
    with pytest.raises(ValueError, match="groups"):
        random_inputs(ir.ssd(), np.random.default_rng(0), heads=3, groups=2)
    with pytest.raises(ValueError, match="pairs"):
        random_inputs(ir.mamba3(), np.random.default_rng(0), dstate=4, pairs=3)
    with pytest.raises(ValueError, match="rank"):
        random_inputs(ir.mamba3(rank=2), np.random.default_rng(0), rank=3)


# -- argument checks -------------------------------------------------------------------------------------


def test_missing_unknown_and_misshaped_inputs() -> None:
    program = ir.ssd()
    inputs, _ = make_case(program, 0, 5, with_state=False)
    with pytest.raises(ValueError, match="missing input 'dt'"):
        sequential(program, {k: v for k, v in inputs.items() if k != "dt"})
    with pytest.raises(ValueError, match="unknown inputs"):
        sequential(program, {**inputs, "delta": inputs["dt"]})
    with pytest.raises(ValueError, match=r"input 'B' axis 1 \(seqlen\) has size 4"):
        sequential(program, {**inputs, "B": inputs["B"][:, :4]})
    with pytest.raises(ValueError, match=r"input 'x' must have shape \(batch, seqlen, heads, headdim\)"):
        sequential(program, {**inputs, "x": inputs["x"][0]})
    with pytest.raises(TypeError, match="must be real"):
        sequential(program, {**inputs, "x": inputs["x"] + 0j})
    with pytest.raises(TypeError, match="floating-point"):
        sequential(program, {**inputs, "A": np.array([-1, -2])})
    with pytest.raises(TypeError, match="mix NumPy arrays and torch"):
        sequential(program, {**inputs, "A": torch.tensor(inputs["A"])})
    # optional inputs may be left out
    assert sequential(program, {k: v for k, v in inputs.items() if k not in ("D", "z", "dt_bias")}).shape == (2, 5, 2, 3)


def test_bad_states_and_segments() -> None:
    program = ir.mamba3()
    inputs, state = make_case(program, 0, 6)
    with pytest.raises(ValueError, match=r"initial_state\['ssm'\] must have shape"):
        sequential(program, inputs, initial_state={**state, "ssm": state["ssm"][:1]})
    with pytest.raises(ValueError, match="unknown entries"):
        sequential(program, inputs, initial_state={**state, "h": state["ssm"]})
    with pytest.raises(ValueError, match="batch must be 1"):
        sequential(program, inputs, cu_seqlens=np.array([0, 6]))
    one, _ = make_case(program, 0, 6, batch=1)
    with pytest.raises(ValueError, match="cu_seqlens must rise"):
        sequential(program, one, cu_seqlens=np.array([0, 4, 3, 6]))
    with pytest.raises(TypeError, match="cu_seqlens must hold integers"):
        sequential(program, one, cu_seqlens=np.array([0.0, 6.0]))
    with pytest.raises(ValueError, match="seq_idx must have shape"):
        sequential(program, inputs, seq_idx=np.zeros((2, 5), dtype=np.int32))
    with pytest.raises(ValueError, match="not both"):
        sequential(program, one, seq_idx=np.zeros((1, 6), np.int32), cu_seqlens=np.array([0, 6]))
    with pytest.raises(TypeError, match="one array"):
        sequential(ir.ssd(), *make_case(ir.ssd(), 0, 3, with_state=False)[:1], initial_state={"h": 1})
    with pytest.raises(ValueError, match="step-mode program takes neither"):
        sequential(program.as_step(), inputs, seq_idx=np.zeros((2, 6), np.int32))


def test_mamba3_state_shorthand_and_step_state_form() -> None:
    program = ir.mamba3()
    inputs, state = make_case(program, 0, 6)
    only_ssm = {"ssm": state["ssm"]}
    a = sequential(program, inputs, initial_state=only_ssm)
    b = sequential(program, inputs, initial_state=state["ssm"])
    assert np.array_equal(a, b)
    _, new_state = sequential(program.as_step(), {k: (v[:, 0] if k in ("x", "dt", "adt", "trap", "B", "C", "angles",
                                                                      "z") else v) for k, v in inputs.items()})
    assert set(new_state) == {"angle", "ssm", "k", "x"}


def test_forms_refuse_other_families_and_torch() -> None:
    inputs, _ = make_case(ir.selective(), 0, 4, with_state=False)
    with pytest.raises(ValueError, match="scalar decay per head"):
        chunked(ir.selective(), inputs, 16)
    with pytest.raises(ValueError, match="LTI"):
        convolution(ir.selective(), inputs)
    ssd_inputs, _ = make_case(ir.ssd(), 0, 4, with_state=False)
    with pytest.raises(ValueError, match="vector-state"):
        associative(ir.ssd(), ssd_inputs)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked(ir.ssd(), ssd_inputs, 0)
    with pytest.raises(TypeError, match="NumPy"):
        chunked(ir.ssd(), {k: torch.tensor(v) for k, v in ssd_inputs.items()}, 16)
