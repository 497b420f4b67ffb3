"""LTI scans as a long convolution via FFT (recurrences.md §1), in NumPy.

With the decay ``Ā`` and the input map ``B̄`` fixed over time, ``y = K * u + D·u`` with
``K_l[d] = scale·Re Σ_n C[d, n] B̄[d, n] Ā[d, n]^l`` (``Re`` only for complex states read by
a contraction), computed as ``irfft(rfft(u, 2L)·rfft(K, 2L))[:L]`` (zero padding to 2L makes
the circular convolution linear).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..ir import Program
from .signature import bind, bind_state, export_state
from .xp import NumpyOps, softplus


def _discretize(program: Program, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``Ā`` and ``B̄`` ``(dim, dstate)``; for a direct input ``B̄`` is its scale of ``Ā``."""
    lam = arrays["A"]
    dec, inp = program.decay, program.input
    delta = None
    if program.step is not None:
        delta = arrays["delta"] + (arrays["delta_bias"] if program.step.bias and "delta_bias" in arrays else 0.0)
        if program.step.softplus:
            delta = softplus(NumpyOps, delta)
        if program.step.clamp is not None:
            delta = np.clip(delta, *program.step.clamp)
        delta = delta[:, None]
    if dec.discretization == "zoh":
        abar = np.exp(delta * lam)
    elif dec.discretization == "bilinear":
        abar = (2.0 + delta * lam) / (2.0 - delta * lam)
    else:
        abar = lam
    if inp.kind == "direct":
        scale = {"none": np.ones_like(abar), "one_minus_a": 1.0 - abar,
                 "sqrt_one_minus_a2": np.sqrt(1.0 - np.abs(abar) ** 2)}[inp.scale]
        return abar, scale
    if dec.discretization == "zoh":
        return abar, np.expm1(delta * lam) / lam * arrays["B"]
    if dec.discretization == "bilinear":
        return abar, 2.0 * delta / (2.0 - delta * lam) * arrays["B"]
    return abar, arrays["B"]


def convolution(
    program: Program,
    inputs: Mapping[str, Any],
    *,
    initial_state: Any = None,
    return_final_state: bool = False,
) -> Any:
    """Run an LTI program (decay kind ``lti``, time-invariant readout) by FFT convolution.

    NumPy inputs as for :func:`scancc.oracle.sequential`; ``initial_state (batch, dim, dstate)``
    adds its free response ``C Ā^{t+1} h_0``. Returns ``out (batch, dim, seqlen)`` or
    ``(out, final_state)``.
    """
    if not isinstance(program, Program):
        raise TypeError(f"program must be a scancc.ir.Program, got {type(program).__name__}")
    if program.decay.kind != "lti" or program.readout.c == "varying" or program.mode != "sequence":
        raise ValueError(f"convolution() needs a sequence-mode LTI program with a fixed (or no) C; got "
                         f"{program.name!r} (decay {program.decay.kind!r}, C {program.readout.c!r}, mode {program.mode!r})")
    bound = bind(program, inputs)
    if bound.ops is not NumpyOps:
        raise TypeError("convolution() takes NumPy arrays; use sequential() for torch tensors")
    arr, rd = bound.arrays, program.readout
    u = arr["u"]                                                     # (batch, dim, L)
    L = bound.seqlen
    abar, bbar = _discretize(program, arr)                           # (dim, dstate)
    C = arr["C"] if rd.kind == "contract" else np.ones_like(abar)
    powers = np.power(abar[..., None], np.arange(L + 1))             # Ā^l, (dim, dstate, L + 1)
    real_out = rd.kind == "contract" and program.state.complex
    kernel = np.einsum("dn,dnl->dl", C * bbar, powers[..., :L])      # (dim, L)
    if real_out:
        kernel = rd.scale * kernel.real

    n = 2 * L
    if np.iscomplexobj(kernel):
        y = np.fft.ifft(np.fft.fft(u, n) * np.fft.fft(kernel, n))[..., :L]
    else:
        y = np.fft.irfft(np.fft.rfft(u, n) * np.fft.rfft(kernel, n), n)[..., :L]

    state = bind_state(bound, initial_state, bound.batch)
    h0 = state["h"] if state is not None else None
    if h0 is not None:
        free = np.einsum("dn,bdn,dnl->bdl", C, h0, powers[..., 1:])
        y = y + (rd.scale * free.real if real_out else free)
    if rd.skip and "D" in arr:
        y = y + arr["D"][None, :, None] * u
    if rd.gate == "silu" and "z" in arr:
        y = y * arr["z"] / (1.0 + np.exp(-arr["z"]))
    if not return_final_state:
        return y
    # h_L = Ā^L h_0 + Σ_l Ā^{L−1−l} B̄ u_l
    final = np.einsum("dn,dnl,bdl->bdn", bbar, powers[..., L - 1::-1][..., :L] if L else powers[..., :0], u)
    if h0 is not None:
        final = final + powers[..., L] * h0
    if not program.state.complex:
        final = final.real
    return y, export_state(program, {"h": final})
