"""The diagonal (vector-state) family in coefficient form: linear/HGRN/RG-LRU, LTI, selective.

Channel layout ``(batch, dim, seqlen)``. Every program of the family is

    h_t[d, n] = a_t[d, n] · h_{t−1}[d, n] + b_t[d, n]
    y_t[d]    = readout(h_t)  (+ D[d]·x_t[d])  (· silu(z_t[d]))

:func:`coefficients` forms ``a`` and ``b`` (and the readout's ``C``) from the inputs;
:func:`finish` applies the readout's scale, skip and gate. The sequential and the
associative-scan oracles share these and differ only in how they run the recurrence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .common import expand_groups, step_size
from .signature import Bound
from .xp import silu


@dataclass(frozen=True)
class VectorCoefficients:
    """``a``: ``(batch or 1, dim, dstate or 1, seqlen or 1)`` (a size-1 axis broadcasts);
    ``b``: ``(batch, dim, dstate or 1, seqlen)`` (dstate 1 broadcasts: direct input); ``c``: ``(batch or 1, dim, dstate, seqlen or 1)``
    for a contracting readout, ``None`` for ``y = h``. ``state_shape``: ``(batch, dim, dstate)``."""

    a: Any
    b: Any
    c: Optional[Any]
    state_shape: tuple[int, int, int]
    complex: bool


def input_name(bound: Bound) -> str:
    return "x" if bound.program.decay.kind == "input" else "u"


def coefficients(bound: Bound) -> VectorCoefficients:
    """Form the decay ``a_t``, the state input ``b_t`` and the readout's ``C`` (shapes in the class doc)."""
    p, ops, arr, dims = bound.program, bound.ops, bound.arrays, bound.dims
    D, N = dims["dim"], dims["dstate"]
    x = arr[input_name(bound)]  # (batch, dim, seqlen)
    delta = None
    if p.step is not None:
        delta = step_size(ops, p, arr["delta"], arr.get("delta_bias"), 2 if p.decay.kind != "lti" else 1)

    dec = p.decay
    lam = abar = None
    if dec.kind == "input":
        a = arr["a"][:, :, None, :]
    elif dec.kind == "exp":
        A = arr["A"]
        if dec.param == "state":
            a = ops.exp(delta[:, :, None, :] * A[None, :, :, None])
        else:
            a = ops.exp(delta * A[None, :, None])[:, :, None, :]
    else:  # lti: fixed Ā from λ = A (dim, dstate)
        lam = arr["A"]
        if dec.discretization == "zoh":
            abar = ops.exp(delta[:, None] * lam)
        elif dec.discretization == "bilinear":
            half = delta[:, None] * lam / 2.0
            abar = (1.0 + half) / (1.0 - half)
        else:
            abar = lam
        a = abar[None, :, :, None]

    inp = p.input
    if inp.kind == "direct":
        if inp.scale == "one_minus_a":
            b = (1.0 - a) * x[:, :, None, :]
        elif inp.scale == "sqrt_one_minus_a2":
            b = ops.sqrt(1.0 - ops.abs(a) ** 2) * x[:, :, None, :]
        else:
            b = x[:, :, None, :]
    elif inp.kind == "euler":
        if inp.b == "varying":
            Bx = expand_groups(ops, arr["B"], 1, D)
        else:
            Bx = arr["B"][None, :, :, None]
        b = (delta * x)[:, :, None, :] * Bx
    else:  # discretized: B̄ from the LTI discretization, fixed over time
        B = arr["B"]
        if dec.discretization == "zoh":
            bbar = (abar - 1.0) / lam * B
        elif dec.discretization == "bilinear":
            bbar = delta[:, None] / (1.0 - delta[:, None] * lam / 2.0) * B
        else:  # Ā = λ given: B̄ = B (LRU's γ = sqrt(1 − |λ|²) is folded into B by the caller)
            bbar = B
        b = bbar[None, :, :, None] * x[:, :, None, :]

    rd = p.readout
    c = None
    if rd.kind == "contract":
        c = expand_groups(ops, arr["C"], 1, D) if rd.c == "varying" else arr["C"][None, :, :, None]
    return VectorCoefficients(a, b, c, (bound.batch, D, N), p.state.complex)


def readout(co: VectorCoefficients, ops: Any, h: Any, t: int) -> Any:
    """``y_t`` before scale/skip/gate: ``Σ_n C_t h_t`` or ``h_t`` (``(batch, dim)``)."""
    if co.c is None:
        return h[:, :, 0]
    c = co.c[..., t if co.c.shape[-1] > 1 else 0]
    return ops.sum(c * h, -1)


def finish(bound: Bound, y: Any) -> Any:
    """Scale / real part, skip and gate on ``y (batch, dim, seqlen)``."""
    p, ops, arr = bound.program, bound.ops, bound.arrays
    rd = p.readout
    if rd.kind == "contract" and p.state.complex:
        y = rd.scale * ops.real(y)
    if rd.skip and "D" in arr:
        y = y + arr["D"][None, :, None] * arr[input_name(bound)]
    if rd.gate == "silu" and "z" in arr:
        y = y * silu(ops, arr["z"])
    return y
