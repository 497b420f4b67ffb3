"""What the TVM templates need to know about a program, decided once from the IR.

A :class:`DiagPlan` describes a vector-state (diagonal) program in the terms of
``templates/tvm/diag.py.j2``: how ``a_t`` and ``b_t`` are formed *inside the kernel*. LTI
programs are discretised on the host (``Ā``, ``B̄`` are fixed ``(dim, dstate)`` tensors),
so the kernel sees a fixed decay. A :class:`MatrixPlan` does the same for head-layout
programs (SSD, Mamba-3, GLA) lowered with the recurrent template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..ir import Program, Schedule

_FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class StepPlan:
    """``Δ = clamp(softplus(v) if softplus else v, lo, hi)`` with ``v = delta + bias``."""

    softplus: bool
    clamp: Optional[tuple[float, float]]


def _step(program: Program) -> Optional[StepPlan]:
    if program.step is None:
        return None
    clamp = program.step.clamp
    if clamp is not None:
        clamp = (float(clamp[0]), _FLOAT32_MAX if math.isinf(clamp[1]) else float(clamp[1]))
    return StepPlan(program.step.softplus, clamp)


@dataclass(frozen=True)
class DiagPlan:
    cplx: bool          # complex state
    x_complex: bool     # the input x is complex (the templates handle it; no IR program has one yet)
    out_complex: bool   # the output is complex
    decay: str          # "input" (a given), "exp" (exp(Δ·A)), "fixed" (Ā from the host)
    inp: str            # "direct" (s(a)·x), "euler" (Δ·B·x), "fixed" (B̄·x)
    scale: str
    b_src: str          # "varying" | "fixed" | "none"
    c_src: str
    readout: str        # "state" | "contract"
    rscale: float
    step: Optional[StepPlan]  # Δ formed in the kernel (None for LTI: Δ is used on the host)
    skip: bool
    gate: bool
    channel_decay: bool  # A is (dim,), broadcast over the state on the host
    tile: int
    block_d: int

    @classmethod
    def of(cls, program: Program, schedule: Schedule) -> "DiagPlan":
        dec, inp, rd = program.decay, program.input, program.readout
        lti = dec.kind == "lti"
        direct = inp.kind == "direct"
        return cls(
            cplx=program.state.complex,
            x_complex=False,  # every program's x/u is real (Program.tensors)
            out_complex=program.state.complex and rd.kind == "state",
            decay={"input": "input", "exp": "exp", "lti": "fixed"}[dec.kind],
            inp="direct" if direct else ("fixed" if lti else "euler"),
            scale=inp.scale,
            b_src=inp.b,
            c_src=rd.c,
            readout=rd.kind,
            rscale=rd.scale,
            step=None if lti else _step(program),
            skip=rd.skip,
            gate=rd.gate != "none",
            channel_decay=dec.param == "channel",
            tile=schedule.block_l or 16,
            block_d=schedule.block_d or 64,
        )


def diag_unsupported(program: Program) -> Optional[str]:
    """Why the diagonal template cannot lower ``program`` (None if it can)."""
    dec, inp, rd = program.decay, program.input, program.readout
    if program.state.shape != "vector":
        return "not a vector-state program"
    if dec.kind == "log_input":
        return "log-input decay on a vector state has no input tensor in the IR's channel signature"
    if program.state.complex and rd.kind == "state" and (rd.skip or rd.gate != "none"):
        return "a complex y = h output with skip or gate is not lowered"
    if dec.kind == "input" and inp.kind != "direct":
        return "a given decay goes with a direct input"
    return None


@dataclass(frozen=True)
class MatrixPlan:
    kind: str           # "ssd" (exp(Δ·A_h), Euler), "gla" (per-key log decay), "mamba3" (trapezoid)
    step: Optional[StepPlan]
    skip: bool
    gate: bool
    rotary: Optional[str]   # None, "interleaved" or "halves"
    qk_bias: bool
    rank: int
    tile: int = 16      # steps between state checkpoints of the gradient's core recurrence

    @classmethod
    def of(cls, program: Program, schedule: Schedule) -> "MatrixPlan":
        kind = program.family
        rot = program.rotary
        return cls(
            kind=kind,
            step=_step(program),
            skip=program.readout.skip,
            gate=program.readout.gate != "none",
            rotary=None if rot is None else rot.pairing,
            qk_bias=rot is not None and rot.bias,
            rank=program.input.rank,
            tile=schedule.block_l or 16,
        )


def matrix_unsupported(program: Program) -> Optional[str]:
    if program.state.shape != "matrix":
        return "not a matrix-state program"
    if program.family not in ("ssd", "gla", "mamba3"):
        return f"matrix family {program.family!r} is not lowered"
    return None
