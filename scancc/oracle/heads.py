"""The matrix-state family in coefficient form: SSD (Mamba-2), GLA and Mamba-3.

Head layout ``x: (batch, seqlen, heads, headdim)``. With ``α_t = exp(log_a_t)`` and
``λ_t`` (``λ ≡ 1`` for the Euler input of SSD/GLA), per head::

    H_t = α_t H_{t−1} + β_t Σ_r x_{t−1,r} k̃_{t−1,r}ᵀ + γ_t Σ_r x_{t,r} k̃_{t,r}ᵀ
    β_t = (1 − λ_t) Δ_t α_t,   γ_t = λ_t Δ_t
    y_{t,r} = H_t q̃_{t,r} + D x_{t,r};  · silu(z_t ⊙ W_z[r]);  out = Σ_r W_o[r] ⊙ y_{t,r}

``x_{t,r} = x_t ⊙ W_x[r]`` (MIMO; rank 1 without W), ``k̃ = R(φ_t)(B + B_bias)``,
``q̃ = R(φ_t)(C + C_bias)``. :func:`coefficients` forms everything but the rotation
(whose angle ``φ`` the oracles accumulate themselves); :func:`rotate` applies ``R(φ)``;
:func:`finish` applies skip, gate and the rank reduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from .common import expand_groups, step_size
from .signature import Bound
from .xp import silu


@dataclass(frozen=True)
class HeadCoefficients:
    """``delta (batch, seqlen, heads)``; ``log_a (batch, seqlen, heads, 1, dstate or 1)``;
    ``lam (batch, seqlen, heads)`` or ``None`` (Euler input: ``β = 0``, ``γ = Δ``);
    ``x (batch, seqlen, heads, headdim)``; ``w_x (rank, heads, headdim)`` or ``None``;
    ``k``, ``q`` ``(batch, seqlen, rank, heads, dstate)`` (bias added, not rotated);
    ``theta (batch, seqlen, heads, pairs)`` (``π·tanh(angles)``) or ``None``."""

    delta: Any
    log_a: Any
    lam: Optional[Any]
    x: Any
    w_x: Optional[Any]
    k: Any
    q: Any
    theta: Optional[Any]
    pairing: str

    def expand_rank(self, x: Any) -> Any:
        """``x (..., heads, headdim)`` → ``x_r (..., rank, heads, headdim)``."""
        x = x[..., None, :, :]
        return x if self.w_x is None else x * self.w_x


def _rank_axis(value: Any, rank: int, axis: int) -> Any:
    """Insert a rank axis of size 1 at ``axis`` for SISO tensors."""
    if rank > 1:
        return value
    index = [slice(None)] * axis + [None]
    return value[tuple(index)]


def coefficients(bound: Bound) -> HeadCoefficients:
    """Form the per-step quantities of the head-layout family (shapes in the class doc)."""
    p, ops, arr, dims = bound.program, bound.ops, bound.arrays, bound.dims
    H, R = dims["heads"], p.input.rank
    delta = step_size(ops, p, arr["dt"], arr.get("dt_bias"), 1)
    if p.decay.kind == "exp":
        log_a = (delta * arr["A"])[..., None, None]
    elif p.decay.param == "head":
        log_a = arr["adt"][..., None, None]
    else:
        log_a = arr["adt"][..., None, :]
    lam = ops.sigmoid(arr["trap"]) if p.input.kind == "trapezoid" else None

    k = expand_groups(ops, _rank_axis(arr["B"], R, 2), 3, H)
    q = expand_groups(ops, _rank_axis(arr["C"], R, 2), 3, H)
    theta = None
    pairing = "interleaved"
    if p.rotary is not None:
        pairing = p.rotary.pairing
        for name, target in (("B_bias", "k"), ("C_bias", "q")):
            if name in arr:
                bias = ops.moveaxis(arr[name], 1, 0) if R > 1 else arr[name][None]  # (rank, heads, dstate)
                if target == "k":
                    k = k + bias
                else:
                    q = q + bias
        theta = math.pi * ops.tanh(arr["angles"])
    w_x = ops.moveaxis(arr["W_x"], 1, 0) if R > 1 else None
    return HeadCoefficients(delta, log_a, lam, arr["x"], w_x, k, q, theta, pairing)


def rotate(ops: Any, v: Any, cos: Any, sin: Any, pairing: str) -> Any:
    """Rotate pairs of the last axis of ``v (..., dstate)`` by angles with ``cos``/``sin``
    ``(..., pairs)`` (broadcast against ``v``'s leading axes).

    Each pair ``(u, w)`` becomes ``(u cos φ − w sin φ, u sin φ + w cos φ)``. Pairs are
    ``(2i, 2i+1)`` (``interleaved``) or ``(i, i + dstate/2)`` (``halves``) for ``i < pairs``;
    the other entries are left as they are.
    """
    K = cos.shape[-1]
    if K == 0:
        return v
    N = v.shape[-1]
    if pairing == "interleaved":
        u, w = v[..., 0:2 * K:2], v[..., 1:2 * K:2]
    else:
        u, w = v[..., :K], v[..., N // 2:N // 2 + K]
    ru, rw = u * cos - w * sin, u * sin + w * cos
    if pairing == "interleaved":
        paired = ops.stack([ru, rw], -1)  # (..., K, 2) -> (..., 2K) puts each pair back at (2i, 2i+1)
        return ops.concat([paired.reshape(tuple(paired.shape[:-2]) + (2 * K,)), v[..., 2 * K:]], -1)
    return ops.concat([ru, v[..., K:N // 2], rw, v[..., N // 2 + K:]], -1)


def finish(bound: Bound, co: HeadCoefficients, y: Any) -> Any:
    """Skip, gate and rank reduction: ``y (batch, seqlen, rank, heads, headdim)`` → out
    ``(batch, seqlen, heads, headdim)``."""
    p, ops, arr = bound.program, bound.ops, bound.arrays
    rd = p.readout
    xr = co.expand_rank(co.x)
    if rd.skip and "D" in arr:
        D = arr["D"]
        y = y + (D[:, None] if len(D.shape) == 1 else D) * xr
    if rd.gate == "silu" and "z" in arr:
        zr = arr["z"][:, :, None]
        if p.input.rank > 1:
            zr = zr * ops.moveaxis(arr["W_z"], 1, 0)
        y = y * silu(ops, zr)
    if p.input.rank > 1:
        return ops.sum(y * ops.moveaxis(arr["W_o"], 1, 0), 2)
    return y[:, :, 0]
