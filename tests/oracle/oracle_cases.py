"""Shared pieces of the oracle tests: a catalogue of programs covering every IR variant,
small shapes, and helpers to slice / concatenate inputs along time."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from scancc import ir
from scancc.ir import Decay, Input, Program, Readout, Rotary, State, Step
from scancc.oracle import random_inputs, random_state

# float64 forms of one recurrence agree to rounding; this leaves room for long products.
FP64_TOL = 1e-11

VECTOR: dict[str, Program] = {
    "linear": ir.linear(),
    "linear_complex": ir.linear(complex=True),
    "hgrn": ir.hgrn(),
    "hgrn_complex": ir.linear(complex=True, scale="one_minus_a"),
    "rglru": ir.rglru(),
    "rglru_complex": ir.linear(complex=True, scale="sqrt_one_minus_a2"),
    "lti_zoh": ir.lti(),
    "lti_bilinear": ir.lti(discretization="bilinear"),
    "lti_none": ir.lti(discretization="none"),
    "lti_re_readout": ir.lti(conj_pairs=False),
    "lti_real_zoh": ir.lti(complex=False),
    "lti_real_bilinear": ir.lti(complex=False, discretization="bilinear"),
    "lru": ir.lru(),
    "lti_direct": Program(
        name="lti_direct", layout="channel", state=State("vector", True), decay=Decay("lti", "state", "none"),
        input=Input("direct", "none", "sqrt_one_minus_a2"), readout=Readout("contract", "fixed", 1.0, skip=True)),
    "selective": ir.selective(),
    "selective_complex": ir.selective(complex=True),
    "selective_fixed_BC": ir.selective(varying_B=False, varying_C=False),
    "selective_complex_fixed_B": ir.selective(complex=True, varying_B=False),
    "selective_plain": ir.selective(skip=False, gate=False, delta_bias=False, delta_softplus=False),
    "selective_channel_decay": Program(
        name="selective_channel", layout="channel", state=State("vector"), step=Step(bias=True, softplus=True),
        decay=Decay("exp", "channel"), input=Input("euler", "varying"),
        readout=Readout("contract", "varying", 1.0, True, "silu")),
}

MAMBA3: dict[str, Program] = {
    "mamba3": ir.mamba3(),
    "mamba3_halves": ir.mamba3(pairing="halves"),
    "mamba3_norotary": ir.mamba3(rotary=False),
    "mamba3_plain": ir.mamba3(qk_bias=False, skip=False, gate=False),
    "mamba3_mimo": ir.mamba3(rank=2, pairing="halves"),
    "mamba3_mimo_interleaved": ir.mamba3(rank=3),
}

HEAD: dict[str, Program] = {
    "ssd": ir.ssd(),
    "ssd_clamp": ir.ssd(dt_limit=(0.1, 0.6)),
    "ssd_plain": ir.ssd(skip=False, gate=False, dt_bias=False, dt_softplus=False),
    "gla": ir.gla(),
    "gla_gated": Program(
        name="gla_gated", layout="head", state=State("matrix"), step=Step(bias=True), decay=Decay("log_input", "state"),
        input=Input("euler", "varying"), readout=Readout("contract", "varying", 1.0, True, "silu")),
    "mamba3_per_key_decay": Program(
        name="mamba3_per_key", layout="head", state=State("matrix"), step=Step(), decay=Decay("log_input", "state"),
        input=Input("trapezoid", "varying"), readout=Readout("contract", "varying", 1.0, True, "silu"),
        rotary=Rotary("interleaved", True)),
    **MAMBA3,
}

ALL: dict[str, Program] = {**VECTOR, **HEAD}

SIZES = {"batch": 2, "dim": 4, "dstate": 4, "heads": 2, "headdim": 3, "pairs": 2}


def make_case(program: Program, seed: int, seqlen: int, *, groups: int = 1, batch: int = 2,
              with_state: bool = True, **sizes: int) -> tuple[dict[str, np.ndarray], Any]:
    """Random inputs and (optionally) a random initial state for ``program``."""
    rng = np.random.default_rng(seed)
    dims = {**SIZES, "batch": batch, **sizes}
    if program.rotary is None:
        dims.pop("pairs")
    inputs = random_inputs(program, rng, seqlen=seqlen, groups=groups, **dims)
    state = random_state(program, rng, inputs=inputs) if with_state else None
    return inputs, state


def seq_axes(program: Program) -> dict[str, int]:
    return {s.name: s.dims.index("seqlen") for s in program.tensors() if "seqlen" in s.dims}


def out_axis(program: Program) -> int:
    return 2 if program.layout == "channel" else 1


def time_slice(program: Program, inputs: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    axes = seq_axes(program)
    out = {}
    for name, value in inputs.items():
        if name in axes:
            index = [slice(None)] * value.ndim
            index[axes[name]] = slice(start, stop)
            value = value[tuple(index)]
        out[name] = value
    return out


def time_index(program: Program, inputs: Mapping[str, np.ndarray], t: int) -> dict[str, np.ndarray]:
    """The step-mode inputs of token ``t`` (seqlen axis removed)."""
    axes = seq_axes(program)
    return {name: np.take(value, t, axis=axes[name]) if name in axes else value for name, value in inputs.items()}


def concat_time(program: Program, parts: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    axes = seq_axes(program)
    return {name: np.concatenate([p[name] for p in parts], axis=axes[name]) if name in axes else parts[0][name]
            for name in parts[0]}


def batch_row(program: Program, inputs: Mapping[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
    """Batch element ``b`` of the inputs (batch 1)."""
    batched = {s.name for s in program.tensors() if s.dims and s.dims[0] == "batch"}
    return {name: value[b:b + 1] if name in batched else value for name, value in inputs.items()}


def state_row(state: Any, b: int) -> Any:
    if state is None:
        return None
    if isinstance(state, Mapping):
        return {k: v[b:b + 1] for k, v in state.items()}
    return state[b:b + 1]


def state_concat(states: list[Any]) -> Any:
    if isinstance(states[0], Mapping):
        return {k: np.concatenate([s[k] for s in states]) for k in states[0]}
    return np.concatenate(states)


def zero_state(state: Any) -> Any:
    if isinstance(state, Mapping):
        return {k: np.zeros_like(v) for k, v in state.items()}
    return np.zeros_like(state)
