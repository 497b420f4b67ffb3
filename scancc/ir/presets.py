"""Presets: the models of the family, each a few lines of IR.

A new model of this family is a new function here, not a new kernel.
"""

from __future__ import annotations

import math
from typing import Optional

from .program import Decay, Input, Program, Readout, Rotary, State, Step


def linear(*, complex: bool = False, scale: str = "none", name: str = "linear_scan") -> Program:
    """Plain first-order scan ``h_t = a_t ⊙ h_{t−1} + s(a_t)·x_t``, ``y = h``.

    ``a, x: (batch, dim, seqlen)``. ``scale`` normalises the input
    (``one_minus_a`` for HGRN, ``sqrt_one_minus_a2`` for RG-LRU).
    """
    return Program(
        name=name, layout="channel", state=State("vector", complex),
        decay=Decay("input", "element"), input=Input("direct", "none", scale), readout=Readout("state"),
    )


def hgrn(*, name: str = "hgrn") -> Program:
    """HGRN: ``h_t = a_t h_{t−1} + (1 − a_t) x_t`` with the gate ``a_t`` computed by the model."""
    return linear(scale="one_minus_a", name=name)


def rglru(*, name: str = "rglru") -> Program:
    """Griffin's RG-LRU core: ``h_t = a_t h_{t−1} + sqrt(1 − a_t²)·x_t`` (``x`` already gated)."""
    return linear(scale="sqrt_one_minus_a2", name=name)


def lti(
    *,
    discretization: str = "zoh",
    complex: bool = True,
    conj_pairs: bool = True,
    skip: bool = True,
    name: str = "lti_scan",
) -> Program:
    """S4D / S5-style LTI scan: ``h_t = Ā h_{t−1} + B̄ u_t``, ``y = 2·Re(Σ C h) + D u``.

    ``u: (batch, dim, seqlen)``, ``A`` (λ), ``B``, ``C``: ``(dim, dstate)``, ``delta``: ``(dim,)``.
    ``conj_pairs`` selects S4D's ``2·Re`` readout (conjugate pairs stored once); it needs a
    complex state.
    """
    return Program(
        name=name, layout="channel", state=State("vector", complex),
        step=None if discretization == "none" else Step(),
        decay=Decay("lti", "state", discretization), input=Input("discretized", "fixed"),
        readout=Readout("contract", "fixed", 2.0 if (conj_pairs and complex) else 1.0, skip),
    )


def lru(*, name: str = "lru") -> Program:
    """LRU: ``h_t = λ ⊙ h_{t−1} + B u_t``, ``y = Re(Σ C h) + D u``.

    ``A`` holds λ directly (``exp(−exp(ν) + i·exp(θ))`` computed by the model) and ``B``
    already includes LRU's normalisation ``γ = sqrt(1 − |λ|²)`` (the model scales its rows).
    """
    return Program(
        name=name, layout="channel", state=State("vector", True),
        decay=Decay("lti", "state", "none"), input=Input("discretized", "fixed"),
        readout=Readout("contract", "fixed", 1.0, skip=True),
    )


def selective(
    *,
    complex: bool = False,
    varying_B: bool = True,
    varying_C: bool = True,
    skip: bool = True,
    gate: bool = True,
    delta_bias: bool = True,
    delta_softplus: bool = True,
    name: str = "selective_scan",
) -> Program:
    """Mamba-1's selective scan (S6) in mamba-ssm's layout.

    ``u, delta, z: (batch, dim, seqlen)``; ``A: (dim, dstate)``; ``B, C: (batch, groups,
    dstate, seqlen)`` (or ``(dim, dstate)`` when not varying); ``D, delta_bias: (dim,)``.
    ``h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t u_t``, ``y = Σ C_t h_t + D u``, ``out = y·silu(z)``;
    a complex ``A`` reads ``2·Re(Σ C h)``.
    """
    return Program(
        name=name, layout="channel", state=State("vector", complex),
        step=Step(bias=delta_bias, softplus=delta_softplus),
        decay=Decay("exp", "state"),
        input=Input("euler", "varying" if varying_B else "fixed"),
        readout=Readout("contract", "varying" if varying_C else "fixed", 2.0 if complex else 1.0, skip,
                        "silu" if gate else "none"),
    )


def ssd(
    *,
    skip: bool = True,
    gate: bool = True,
    dt_bias: bool = True,
    dt_softplus: bool = True,
    dt_limit: Optional[tuple[float, float]] = None,
    name: str = "ssd",
) -> Program:
    """Mamba-2's SSD: scalar decay per head, ``P × N`` matrix state.

    ``x, z: (batch, seqlen, heads, headdim)``; ``dt: (batch, seqlen, heads)``; ``A: (heads,)``;
    ``B, C: (batch, seqlen, groups, dstate)``; ``D: (heads,)`` or ``(heads, headdim)``.
    """
    clamp = None if dt_limit is None or tuple(dt_limit) == (0.0, math.inf) else tuple(dt_limit)
    return Program(
        name=name, layout="head", state=State("matrix"),
        step=Step(bias=dt_bias, softplus=dt_softplus, clamp=clamp),  # type: ignore[arg-type]
        decay=Decay("exp", "head"), input=Input("euler", "varying"),
        readout=Readout("contract", "varying", 1.0, skip, "silu" if gate else "none"),
    )


def mamba3(
    *,
    rotary: bool = True,
    pairing: str = "interleaved",
    rank: int = 1,
    qk_bias: bool = True,
    skip: bool = True,
    gate: bool = True,
    name: str = "mamba3",
) -> Program:
    """Mamba-3: exponential-trapezoidal input, optional rotary (complex) B/C, MIMO rank ``rank``.

    ``x, z: (batch, seqlen, heads, headdim)``; ``dt, adt, trap: (batch, seqlen, heads)``;
    ``B`` (keys), ``C`` (queries): ``(batch, seqlen, [rank,] groups, dstate)``;
    ``angles: (batch, seqlen, heads, pairs)``; ``W_x, W_z, W_o: (heads, rank, headdim)``.
    MIMO kernels use ``pairing="halves"``; SISO kernels ``"interleaved"``.
    """
    return Program(
        name=name, layout="head", state=State("matrix"), step=Step(),
        decay=Decay("log_input", "head"), input=Input("trapezoid", "varying", rank=rank),
        readout=Readout("contract", "varying", 1.0, skip, "silu" if gate else "none"),
        rotary=Rotary(pairing, qk_bias) if rotary else None,
    )


def gla(*, name: str = "gla") -> Program:
    """GLA-style gated linear attention: per-key decay ``exp(adt[h, n])``, input ``Δ·k vᵀ``, readout ``Hq``."""
    return Program(
        name=name, layout="head", state=State("matrix"), step=Step(),
        decay=Decay("log_input", "state"), input=Input("euler", "varying"),
        readout=Readout("contract", "varying"),
    )


PRESETS = {
    "linear": linear, "hgrn": hgrn, "rglru": rglru, "lti": lti, "lru": lru, "selective": selective,
    "ssd": ssd, "mamba3": mamba3, "gla": gla,
}
