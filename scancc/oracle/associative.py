"""The diagonal (vector-state) family by a log-depth parallel scan (recurrences.md §6), in NumPy.

Each step is the affine map ``h ↦ a_t ⊙ h + b_t``; composing two (earlier first) is

    (a₁, b₁) ⊕ (a₂, b₂) = (a₂ a₁, a₂ b₁ + b₂),   identity (1, 0),

which is associative, so all prefixes come from ``⌈log₂ L⌉`` rounds of a Hillis–Steele scan.
An initial state folds into the first element (``b_0 += a_0 h_0``); a segment start
(``seq_idx``) sets its ``a`` to 0 so nothing earlier reaches it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from ..ir import Program
from . import vector
from .signature import Bound, bind, run_segments
from .xp import NumpyOps


def combine(earlier: tuple[np.ndarray, np.ndarray], later: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(a₁, b₁) ⊕ (a₂, b₂) = (a₂ a₁, a₂ b₁ + b₂)``: apply ``earlier``, then ``later``."""
    a1, b1 = earlier
    a2, b2 = later
    return a2 * a1, a2 * b1 + b2


def scan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Inclusive scan along the last axis: ``h_t = a_t h_{t−1} + b_t`` from ``h_{−1} = 0``.

    Hillis–Steele: after the round with offset ``k``, element ``t`` holds the composition of
    steps ``max(0, t − 2k + 1) … t``.
    """
    offset = 1
    L = a.shape[-1]
    while offset < L:
        ca, cb = combine((a[..., :-offset], b[..., :-offset]), (a[..., offset:], b[..., offset:]))
        a = np.concatenate([a[..., :offset], ca], axis=-1)
        b = np.concatenate([b[..., :offset], cb], axis=-1)
        offset *= 2
    return b


def associative(
    program: Program,
    inputs: Mapping[str, Any],
    *,
    initial_state: Any = None,
    cu_seqlens: Any = None,
    seq_idx: Any = None,
    return_final_state: bool = False,
) -> Any:
    """Run a vector-state program (linear/HGRN/RG-LRU, LTI, selective) with a parallel scan.

    NumPy inputs; same arguments, state forms and results as :func:`scancc.oracle.sequential`.
    """
    if not isinstance(program, Program):
        raise TypeError(f"program must be a scancc.ir.Program, got {type(program).__name__}")
    if program.state.shape != "vector" or program.mode != "sequence":
        raise ValueError(f"associative() needs a sequence-mode vector-state program; got {program.name!r} "
                         f"({program.state.shape} state, mode {program.mode!r})")
    bound = bind(program, inputs)
    if bound.ops is not NumpyOps:
        raise TypeError("associative() takes NumPy arrays; use sequential() for torch tensors")
    out, final = run_segments(_run, bound, initial_state, cu_seqlens, seq_idx)
    return (out, final) if return_final_state else out


def _run(bound: Bound, state: Optional[dict], resets: Optional[np.ndarray]) -> tuple[Any, dict]:
    co = vector.coefficients(bound)
    shape = co.state_shape + (bound.seqlen,)
    dtype = np.complex128 if co.complex else np.float64
    a = np.broadcast_to(co.a, shape).astype(dtype)
    b = np.broadcast_to(co.b, shape).astype(dtype)
    h0 = state["h"] if state is not None else np.zeros(co.state_shape, dtype)
    if bound.seqlen == 0:
        y = np.zeros((bound.batch, bound.dims["dim"], 0), dtype if co.c is None else np.float64)
        return vector.finish(bound, y), {"h": h0}
    if resets is not None:
        a = a * (~resets)[:, None, None, :]
    b = np.concatenate([b[..., :1] + a[..., :1] * h0[..., None], b[..., 1:]], axis=-1)
    h = scan(a, b)                                               # (batch, dim, dstate, L)
    y = h[:, :, 0, :] if co.c is None else np.sum(co.c * h, axis=2)
    return vector.finish(bound, y), {"h": h[..., -1]}
