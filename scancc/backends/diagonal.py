"""The diagonal family as a kernel sees it: vector state, channel layout.

Every program here is ``h_t[d, n] = a_t[d, n]·h_{t−1}[d, n] + b_t[d, n]`` with a readout.
:class:`DiagonalPlan` is what a backend needs from the IR to write and launch one
kernel for all of them: the operands in kernel order and how each is addressed, and
the few facts the templates branch on (decay kind, input kind, readout, complex, ...).

LTI programs are reduced to a time-invariant decay here, on the host: ``Ā`` and ``B̄``
are ``(dim, dstate)`` tensors computed in torch (:func:`discretize`), so the kernel
sees a fixed decay and a fixed input matrix, and the backward chains their gradients
through torch autograd.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch

from ..ir import Program, Step

# How an operand is addressed; the strides a kernel takes for each (the last axis is unit).
LAYOUT_STRIDES: dict[str, tuple[str, ...]] = {
    "seq": ("b", "d"),      # (batch, dim, seqlen)
    "bc": ("b", "g", "n"),  # (batch, groups, dstate, seqlen)
    "dn": ("d",),           # (dim, dstate)
    "d": (),                # (dim,)
}


@dataclass(frozen=True)
class Operand:
    """One input tensor of the kernel.

    ``name`` is the kernel parameter (the program's tensor name, or ``A_bar``/``B_bar``
    for LTI programs, computed from ``A``/``B`` on the host).
    """

    name: str
    layout: str
    complex: bool = False
    optional: bool = False

    @functools.cached_property
    def strides(self) -> tuple[str, ...]:
        return tuple(f"stride_{self.name}_{axis}" for axis in LAYOUT_STRIDES[self.layout])

    @property
    def flag(self) -> str:
        """The constexpr that says whether an optional operand was given."""
        return f"HAS_{self.name.upper()}"


_LAYOUT_OF_DIMS = {
    ("batch", "dim", "seqlen"): "seq",
    ("batch", "groups", "dstate", "seqlen"): "bc",
    ("dim", "dstate"): "dn",
    ("dim",): "d",
}


def unsupported_reason(program: Program) -> Optional[str]:
    """Why the diagonal kernels cannot run ``program``, or ``None`` if they can."""
    if program.state.shape != "vector" or program.layout != "channel":
        return "only vector states in the channel layout (batch, dim, seqlen) belong to the diagonal family"
    if program.mode != "sequence":
        return "single-step (decode) programs are not lowered by the diagonal scan kernels"
    if program.decay.kind not in ("input", "exp", "lti"):
        return f"decay kind {program.decay.kind!r} has no channel-layout form"
    if program.input.kind not in ("direct", "euler", "discretized") or program.input.rank != 1:
        return f"input kind {program.input.kind!r} (rank {program.input.rank}) is not diagonal"
    rd = program.readout
    if program.state.complex and rd.kind == "state" and (rd.skip or rd.gate != "none"):
        return "a complex state read whole (y = h) takes no skip or gate"
    return None


@dataclass(frozen=True)
class DiagonalPlan:
    """What the templates and the launcher need to know about a diagonal program.

    ``decay``: ``input`` (a given), ``exp`` (``exp(Δ·A)``) or ``fixed`` (LTI ``Ā``).
    ``has_dstate``: whether the state tile has an ``n`` axis (``[BLOCK_D, BLOCK_N, BLOCK_L]``)
    or is one value per channel (``[BLOCK_D, BLOCK_L]``, plain scans).
    ``step``: the Δ the *kernel* forms per (batch, dim, t); ``None`` for LTI (Δ is used on
    the host) and programs without a step.
    """

    program: Program
    operands: tuple[Operand, ...]
    decay: str
    has_dstate: bool
    step: Optional[Step]

    @classmethod
    def of(cls, program: Program) -> "DiagonalPlan":
        reason = unsupported_reason(program)
        if reason is not None:
            raise ValueError(f"program {program.name!r}: {reason}")
        lti = program.decay.kind == "lti"
        operands = []
        for spec in program.tensors():
            if lti and spec.name == "delta":
                continue  # consumed by the host discretization
            if lti and spec.name == "delta_bias":
                continue
            name = {"A": "A_bar", "B": "B_bar"}.get(spec.name, spec.name) if lti else spec.name
            operands.append(Operand(name, _LAYOUT_OF_DIMS[spec.dims], spec.dtype == "complex", spec.optional))
        has_dstate = any("dstate" in spec.dims for spec in program.tensors())
        return cls(
            program=program,
            operands=tuple(operands),
            decay={"input": "input", "exp": "exp", "lti": "fixed"}[program.decay.kind],
            has_dstate=has_dstate,
            step=None if lti else program.step,
        )

    # -- facts the templates branch on -------------------------------------------------
    @property
    def complex(self) -> bool:
        return self.program.state.complex

    @property
    def x(self) -> str:
        """The name of the sequence input (``x`` for plain scans, ``u`` otherwise)."""
        return "x" if self.program.decay.kind == "input" else "u"

    @property
    def b_source(self) -> str:
        return self.program.input.b

    @property
    def c_source(self) -> str:
        return self.program.readout.c

    @property
    def grouped(self) -> bool:
        """Whether some operand is shared by a group of channels (varying B or C)."""
        return "varying" in (self.b_source, self.c_source)

    def operand(self, name: str) -> Optional[Operand]:
        return next((op for op in self.operands if op.name == name), None)

    @property
    def optional_operands(self) -> tuple[Operand, ...]:
        return tuple(op for op in self.operands if op.optional)


# -- host-side pieces of LTI programs --------------------------------------------------------------
def step_size(step: Step, delta: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``Δ = clamp(softplus(delta + bias) if softplus else delta + bias, lo, hi)`` in torch."""
    dt = delta if bias is None else delta + bias
    if step.softplus:
        dt = torch.nn.functional.softplus(dt, beta=1.0, threshold=20.0)
    if step.clamp is not None:
        dt = dt.clamp(step.clamp[0], step.clamp[1])
    return dt


def discretize(
    program: Program,
    A: torch.Tensor,
    B: torch.Tensor,
    delta: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Ā, B̄)``, both ``(dim, dstate)``, from ``λ = A``, ``B (dim, dstate)`` and ``Δ (dim,)``.

    ``zoh``: ``Ā = exp(Δλ)``, ``B̄ = (Ā − 1)/λ·B``; ``bilinear``: ``Ā = (1 + Δλ/2)/(1 − Δλ/2)``,
    ``B̄ = Δ/(1 − Δλ/2)·B``; ``none``: ``Ā = λ``, ``B̄ = B``. Computed in float64 (complex128)
    and returned in float32 (complex64); differentiable.
    """
    kind = program.decay.discretization
    wide = torch.complex128 if A.is_complex() else torch.float64
    lam = A.to(wide)
    Bw = B.to(wide) if program.input.kind == "discretized" else None
    if kind == "none":
        abar, bbar = lam, Bw
    else:
        if delta is None or program.step is None:
            raise ValueError(f"discretization {kind!r} needs delta")
        dt = step_size(program.step, delta.to(torch.float64),
                       None if delta_bias is None else delta_bias.to(torch.float64))[:, None]
        if kind == "zoh":
            abar = torch.exp(dt * lam)
            bbar = None if Bw is None else (abar - 1.0) / lam * Bw
        else:  # bilinear
            half = dt * lam / 2.0
            abar = (1.0 + half) / (1.0 - half)
            bbar = None if Bw is None else dt / (1.0 - half) * Bw
    narrow = torch.complex64 if A.is_complex() else torch.float32
    return abar.to(narrow), (None if bbar is None else bbar.to(narrow))
