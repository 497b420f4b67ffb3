"""The sequential oracle: every IR program's recurrence, one time step after another.

This is the float64 ground truth of scancc. Other oracle forms (chunked, FFT
convolution, associative scan) and every kernel are checked against it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from ..ir import Program
from . import heads, vector
from .signature import Bound, bind, run_segments, sequence_form, state_shapes
from .xp import TWO_PI


def sequential(
    program: Program,
    inputs: Mapping[str, Any],
    *,
    initial_state: Any = None,
    cu_seqlens: Any = None,
    seq_idx: Any = None,
    return_final_state: bool = False,
) -> Any:
    """Run ``program`` step by step in float64 (complex128 for complex quantities).

    ``inputs`` maps the names of ``program.tensors()`` to NumPy arrays or torch tensors
    (not mixed) of exactly those shapes; optional inputs may be missing or ``None``. Complex
    quantities are complex arrays in their natural shape. Results come back in the input's
    namespace; with torch tensors every operation is differentiable (``torch.autograd``
    gives float64 reference gradients).

    Output: channel layout ``(batch, dim, seqlen)`` (complex for a complex ``y = h`` scan),
    head layout ``(batch, seqlen, heads, headdim)``.

    State (``initial_state`` / final state), with ``rows`` = batch, or ``num_seqs`` with
    ``cu_seqlens``:

    - vector state: ``(rows, dim, dstate)`` (``dstate = 1`` for ``y = h`` scans);
    - matrix state (SSD, GLA): ``(rows, heads, headdim, dstate)``;
    - Mamba-3: a dict ``{"angle": (rows, heads, pairs), "ssm": (rows, heads, headdim, dstate),
      "k": (rows, heads, dstate)`` SISO or ``(rows, rank, heads, dstate)`` MIMO, ``"x": (rows,
      heads, headdim)}``. ``angle`` is ``φ_t`` reduced mod 2π (``pairs = 0`` without rotary).
      ``k`` is the last token's key *as it enters the state*: ``k̃_{t} = R(φ_t)(B_t + B_bias)``
      (group expanded to the head, bias added, then rotated by that token's own accumulated
      angle). ``x`` is the last token's raw ``x_t`` (before ``W_x``). With this, running
      ``[0, t)`` and then ``[t, L)`` from the returned state equals running ``[0, L)``: the first
      token of the second part adds ``β · Σ_r (x ⊙ W_x[r]) k̃[r]ᵀ`` from the carried ``x`` and ``k``.
      An initial state may leave ``angle``/``k``/``x`` out (zero), or be a plain array (``ssm``).

    ``cu_seqlens ((num_seqs + 1,) int)``: batch 1, sequences packed along seqlen, each run on
    its own. ``seq_idx ((batch, seqlen) int)``: the whole state (Mamba-3: ssm, k, x, angle)
    is reset to zero before a token whose ``seq_idx`` differs from the previous token's, so
    segments never interact; ``initial_state`` applies to the first segment only and the final
    state is the state after the last token.

    ``mode="step"`` programs take one token (inputs without the seqlen axis) and always
    return ``(out, new_state)``.

    Returns ``out``, or ``(out, final_state)`` with ``return_final_state``.
    """
    if program.mode == "step":
        if cu_seqlens is not None or seq_idx is not None:
            raise ValueError("a step-mode program takes neither cu_seqlens nor seq_idx")
        seq_program, seq_inputs = sequence_form(program, inputs)
        out, state = sequential(seq_program, seq_inputs, initial_state=initial_state, return_final_state=True)
        axis = 2 if program.layout == "channel" else 1
        return out[(slice(None),) * axis + (0,)], state
    bound = bind(program, inputs)
    runner = _run_heads if program.layout == "head" else _run_vector
    out, final = run_segments(runner, bound, initial_state, cu_seqlens, seq_idx)
    return (out, final) if return_final_state else out


def _keep(bound: Bound, resets: Optional[np.ndarray], t: int, like: Any) -> Optional[Any]:
    """A float ``(batch,)`` mask that is 0 where token ``t`` starts a new segment, or None."""
    if resets is None or not resets[:, t].any():
        return None
    return bound.ops.mask(~resets[:, t], like)


def _run_vector(bound: Bound, state: Optional[dict[str, Any]], resets: Optional[np.ndarray]) -> tuple[Any, dict]:
    ops = bound.ops
    co = vector.coefficients(bound)
    h = state["h"] if state is not None else ops.zeros(co.state_shape, complex=co.complex, like=co.b)
    ys = []
    for t in range(bound.seqlen):
        keep = _keep(bound, resets, t, h)
        if keep is not None:
            h = h * keep[:, None, None]
        h = co.a[..., t if co.a.shape[-1] > 1 else 0] * h + co.b[..., t]
        ys.append(vector.readout(co, ops, h, t))
    if ys:
        y = ops.stack(ys, -1)
    else:
        y = ops.zeros((bound.batch, bound.dims["dim"], 0), complex=co.complex and co.c is None, like=co.b)
    return vector.finish(bound, y), {"h": h}


def _run_heads(bound: Bound, state: Optional[dict[str, Any]], resets: Optional[np.ndarray]) -> tuple[Any, dict]:
    p, ops, dims = bound.program, bound.ops, bound.dims
    co = heads.coefficients(bound)
    trapezoid = co.lam is not None
    shapes = state_shapes(bound, bound.batch)
    if trapezoid:
        zeros = {key: ops.zeros(shape, like=co.x) for key, shape in shapes.items()}
        cur = dict(zeros if state is None else state)
        S, phi, x_prev = cur["ssm"], cur["angle"], cur["x"]
        k_prev = cur["k"] if p.input.rank > 1 else cur["k"][:, None]  # (batch, rank, heads, dstate)
    else:
        S = state["h"] if state is not None else ops.zeros(shapes["h"], like=co.x)
        phi = x_prev = k_prev = None
    ys = []
    for t in range(bound.seqlen):
        keep = _keep(bound, resets, t, S)
        if keep is not None:
            S = S * keep[:, None, None, None]
            if trapezoid:
                phi, x_prev, k_prev = phi * keep[:, None, None], x_prev * keep[:, None, None], k_prev * keep[:, None, None, None]
        dt = co.delta[:, t][..., None, None]  # (batch, heads, 1, 1)
        k_t, q_t = co.k[:, t], co.q[:, t]      # (batch, rank, heads, dstate)
        if co.theta is not None:
            phi = ops.remainder(phi + co.delta[:, t][..., None] * co.theta[:, t], TWO_PI)
            cos, sin = ops.cos(phi)[:, None], ops.sin(phi)[:, None]
            k_t, q_t = heads.rotate(ops, k_t, cos, sin, co.pairing), heads.rotate(ops, q_t, cos, sin, co.pairing)
        x_t = co.x[:, t]
        alpha = ops.exp(co.log_a[:, t])
        update = ops.einsum("brhp,brhn->bhpn", co.expand_rank(x_t), k_t)
        if trapezoid:
            lam = co.lam[:, t][..., None, None]
            carried = ops.einsum("brhp,brhn->bhpn", co.expand_rank(x_prev), k_prev)
            S = alpha * S + (1.0 - lam) * dt * alpha * carried + lam * dt * update
            x_prev, k_prev = x_t, k_t
        else:
            S = alpha * S + dt * update
        ys.append(ops.einsum("bhpn,brhn->brhp", S, q_t))
    if ys:
        y = ops.stack(ys, 1)
    else:
        y = ops.zeros((bound.batch, 0, p.input.rank, dims["heads"], dims["headdim"]), like=co.x)
    out = heads.finish(bound, co, y)
    if not trapezoid:
        return out, {"h": S}
    return out, {"angle": phi, "ssm": S, "k": k_prev if p.input.rank > 1 else k_prev[:, 0], "x": x_prev}
