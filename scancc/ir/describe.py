"""Human-readable rendering of a :class:`~scancc.ir.program.Program`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .program import Program


def _step(p: "Program") -> str:
    s = p.step
    assert s is not None
    dt = "delta" if p.layout == "channel" else "dt"
    inner = f"{dt} + {dt}_bias" if s.bias else dt
    expr = f"softplus({inner})" if s.softplus else inner
    if s.clamp is not None:
        expr = f"clamp({expr}, {s.clamp[0]:g}, {s.clamp[1]:g})"
    return f"Δ = {expr}"


def _decay(p: "Program") -> str:
    d = p.decay
    idx = {"state": "[d, n]", "channel": "[d]", "head": "[h]", "element": ""}[d.param]
    if d.kind == "input":
        return "a_t given (tensor a)"
    if d.kind == "exp":
        return f"a_t = exp(Δ_t · A{idx})"
    if d.kind == "log_input":
        return f"a_t = exp(adt_t{'[h]' if d.param == 'head' else '[h, n]'})"
    if d.discretization == "none":
        return "a = A[d, n] (fixed)"
    form = "exp(Δ·λ)" if d.discretization == "zoh" else "(1 + Δλ/2)/(1 − Δλ/2)"
    return f"a = {form}, λ = A[d, n] ({d.discretization}, fixed)"


def _input(p: "Program") -> str:
    i = p.input
    x = "x_t" if p.decay.kind == "input" else ("u_t[d]" if p.layout == "channel" else "x_t[h, p]")
    bidx = "B_t[g, n]" if i.b == "varying" else "B[d, n]"
    if p.layout == "head":
        bidx = "B_t[g, n]"
    if i.kind == "direct":
        scale = {"none": "", "one_minus_a": "(1 − a_t) · ", "sqrt_one_minus_a2": "sqrt(1 − |a_t|²) · "}[i.scale]
        return f"b_t = {scale}{x}"
    if i.kind == "euler":
        return f"b_t = Δ_t · {bidx} · {x}"
    if i.kind == "discretized":
        form = {"zoh": "(a − 1)/λ", "bilinear": "Δ/(1 − Δλ/2)", "none": "1"}[p.decay.discretization or "none"]
        return f"b_t = {form} · B[d, n] · {x}"
    rank = f", summed over rank r < {i.rank}" if i.rank > 1 else ""
    return (f"b_t = β_t · x_(t−1) B̃_(t−1)ᵀ + γ_t · x_t B̃_tᵀ, λ = sigmoid(trap), β = (1−λ)Δα, γ = λΔ{rank}")


def _readout(p: "Program") -> str:
    r = p.readout
    h = "h_t[d, n]" if p.layout == "channel" else "H_t[h] (P×N)"
    if r.kind == "state":
        y = "y_t = h_t"
    else:
        cidx = "C_t[g, n]" if r.c == "varying" else "C[d, n]"
        core = f"Σ_n {cidx} · {h}" if p.layout == "channel" else "H_t · C̃_t"
        if p.state.complex:
            core = f"{'2·' if r.scale == 2.0 else ''}Re({core})"
        y = f"y_t = {core}"
    x = "u_t[d]" if p.layout == "channel" else "x_t"
    if r.skip:
        y += f" + D · {x}"
    if r.gate == "silu":
        y += ";  out = y · silu(z_t)"
    return y


def describe(p: "Program") -> str:
    """Multi-line description, e.g. for ``repr`` and ``scancc emit --describe``."""
    state = f"{'complex' if p.state.complex else 'real'} {p.state.shape}"
    lines = [f"Program {p.name} ({p.family}, {p.layout} layout, {p.mode}, hash {p.hash})",
             f"  state    {state} {'h[d, n]' if p.state.shape == 'vector' else 'H[h, p, n]'}"]
    if p.step is not None:
        lines.append(f"  step     {_step(p)}")
    lines.append(f"  decay    {_decay(p)}")
    lines.append(f"  input    {_input(p)}")
    if p.rotary is not None:
        pairs = "(2i, 2i+1)" if p.rotary.pairing == "interleaved" else "(i, i + N/2)"
        bias = " after adding B_bias/C_bias" if p.rotary.bias else ""
        lines.append(f"  rotary   B̃, C̃ = R(φ_t) B, C on pairs {pairs}{bias}; φ_t = φ_(t−1) + Δ_t·π·tanh(angles_t)")
    lines.append("  recur    h_t = a_t ⊙ h_(t−1) + b_t")
    lines.append(f"  readout  {_readout(p)}")
    return "\n".join(lines)
