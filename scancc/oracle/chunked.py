"""The chunked matrix ("dual") form of SSD and Mamba-3 (recurrences.md §3, §4), in NumPy.

Inside a chunk of ``Q`` tokens starting at ``s0``, with ``cs_t = Σ_{r=s0}^{t} log α_r``::

    M_ts = exp(cs_t − cs_s) · (γ_s + [t > s] · μ_{s+1}),   μ = (1 − λ)·Δ    (t ≥ s, else 0)
    y_{t,r} = exp(cs_t) · H̃ q̃_{t,r} + Σ_{s, r'} M_ts (q̃_{t,r} · k̃_{s,r'}) x_{s,r'}
    H_end  = exp(cs_end) · H̃ + Σ_{s, r'} M_{end,s} x_{s,r'} k̃_{s,r'}ᵀ

where ``H̃ = H_{s0−1} + μ_{s0} Σ_r x_{s0−1,r} k̃_{s0−1,r}ᵀ`` is the *augmented* state: the
trapezoid's half-step term of the previous chunk's last token, which only the next chunk's
``λ``/``Δ`` can complete. MIMO flattens ``(t, r)`` to ``Q·R`` rows with the mask
``kron(M, 1_{R×R})``. SSD is the case ``λ ≡ 1`` (``μ = 0``, ``γ = Δ``), rank 1, no rotation.
Rotary angles are a cumulative sum here (not reduced step by step as in the sequential form).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from ..ir import Program
from . import heads
from .signature import Bound, bind, run_segments, state_shapes
from .xp import TWO_PI, NumpyOps


def chunked(
    program: Program,
    inputs: Mapping[str, Any],
    chunk_size: int,
    *,
    initial_state: Any = None,
    cu_seqlens: Any = None,
    seq_idx: Any = None,
    return_final_state: bool = False,
) -> Any:
    """SSD / Mamba-3 (SISO or MIMO) by chunks of ``chunk_size`` tokens (any size ≥ 1; the
    last chunk may be shorter). NumPy float64 inputs only. Same arguments, state forms and
    results as :func:`scancc.oracle.sequential`."""
    _check_program(program)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    bound = bind(program, inputs)
    if bound.ops is not NumpyOps:
        raise TypeError("chunked() takes NumPy arrays; use sequential() for torch tensors")

    def run(b: Bound, state: Optional[dict], resets: Optional[np.ndarray]) -> tuple[Any, dict]:
        return _run(b, state, resets, int(chunk_size))

    out, final = run_segments(run, bound, initial_state, cu_seqlens, seq_idx)
    return (out, final) if return_final_state else out


def _check_program(program: Program) -> None:
    if not isinstance(program, Program):
        raise TypeError(f"program must be a scancc.ir.Program, got {type(program).__name__}")
    if program.layout != "head" or program.decay.param != "head" or program.mode != "sequence":
        raise ValueError(f"chunked() needs a sequence-mode program with a matrix state and a scalar decay per head "
                         f"(SSD, Mamba-3); got {program.name!r} ({program.family}, decay param "
                         f"{program.decay.param!r}, mode {program.mode!r})")


def _angles(co: heads.HeadCoefficients, phi0: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """``φ_t (batch, seqlen, heads, pairs)``: the cumulative sum of ``Δ·θ`` restarted at each
    segment, plus the initial angle in the first segment."""
    inc = co.delta[..., None] * co.theta
    total = np.cumsum(inc, axis=1)
    L = segment.shape[1]
    is_start = np.ones_like(segment, dtype=bool)
    is_start[:, 1:] = segment[:, 1:] != segment[:, :-1]
    start = np.maximum.accumulate(np.where(is_start, np.arange(L), 0), axis=1)     # (b, L)
    base = np.take_along_axis(total - inc, start[:, :, None, None], axis=1)        # sum before the segment
    return total - base + phi0[:, None] * (segment == 0)[:, :, None, None]


def _run(bound: Bound, state: Optional[dict], resets: Optional[np.ndarray], Q: int) -> tuple[Any, dict]:
    p, dims = bound.program, bound.dims
    co = heads.coefficients(bound)
    Bsz, L, H, P, N, R = bound.batch, bound.seqlen, dims["heads"], dims["headdim"], dims["dstate"], p.input.rank
    trapezoid = co.lam is not None
    shapes = state_shapes(bound, Bsz)
    if state is None:
        state = {key: np.zeros(shape) for key, shape in shapes.items()}
    S = state["ssm"] if trapezoid else state["h"]
    k_last = (state["k"] if R > 1 else state["k"][:, None]) if trapezoid else np.zeros((Bsz, R, H, N))
    x_last = state["x"] if trapezoid else np.zeros((Bsz, H, P))

    segment = np.zeros((Bsz, L), dtype=np.int64) if resets is None else np.cumsum(resets, axis=1)
    log_a = co.log_a[..., 0, 0]                                  # (b, L, H)
    lam = co.lam if trapezoid else np.ones_like(co.delta)
    gamma, mu = lam * co.delta, (1.0 - lam) * co.delta          # (b, L, H)
    k, q = co.k, co.q                                            # (b, L, R, H, N)
    phi = None
    if co.theta is not None:
        phi = _angles(co, state["angle"], segment)
        cos, sin = np.cos(phi)[:, :, None], np.sin(phi)[:, :, None]
        k, q = heads.rotate(NumpyOps, k, cos, sin, co.pairing), heads.rotate(NumpyOps, q, cos, sin, co.pairing)
    xr = co.expand_rank(co.x)                                    # (b, L, R, H, P)

    ys = []
    seg_prev = np.zeros(Bsz, dtype=np.int64)  # segment of the token before the chunk (initial state: 0)
    for s0 in range(0, L, Q):
        s1 = min(s0 + Q, L)
        n = s1 - s0
        cs = np.moveaxis(np.cumsum(log_a[:, s0:s1], axis=1), 1, -1)             # (b, H, n)
        diff = cs[..., :, None] - cs[..., None, :]                               # (b, H, t, s)
        causal = np.tril(np.ones((n, n), dtype=bool))
        decay = np.exp(np.where(causal, diff, -np.inf))
        g = np.moveaxis(gamma[:, s0:s1], 1, -1)                                  # (b, H, n)
        mu_next = np.concatenate([np.moveaxis(mu[:, s0 + 1:s1], 1, -1), np.zeros((Bsz, H, 1))], -1)
        band = g[..., None, :] + np.tril(np.ones((n, n)), -1) * mu_next[..., None, :]
        seg = segment[:, s0:s1]
        same = (seg[:, :, None] == seg[:, None, :])[:, None]                    # (b, 1, t, s)
        M = decay * band * same
        inter = (seg == seg_prev[:, None])[:, None, :] * np.exp(cs)             # (b, H, n)

        carried = np.einsum("brhp,brhn->bhpn", x_last[:, None] * (co.w_x if co.w_x is not None else 1.0), k_last)
        S_aug = S + mu[:, s0][..., None, None] * carried

        # flatten (t, r) -> t·R + r; kron(M, 1_{R×R})
        qf = np.moveaxis(q[:, s0:s1], 3, 1).reshape(Bsz, H, n * R, N)
        kf = np.moveaxis(k[:, s0:s1], 3, 1).reshape(Bsz, H, n * R, N)
        xf = np.moveaxis(xr[:, s0:s1], 3, 1).reshape(Bsz, H, n * R, P)
        Mf = np.repeat(np.repeat(M, R, axis=-1), R, axis=-2)
        scores = np.einsum("bhin,bhjn->bhij", qf, kf) * Mf
        y = np.einsum("bhij,bhjp->bhip", scores, xf)
        y = y + np.repeat(inter, R, axis=-1)[..., None] * np.einsum("bhpn,bhin->bhip", S_aug, qf)
        ys.append(np.moveaxis(y.reshape(Bsz, H, n, R, P), 1, 3))                 # (b, n, R, H, P)

        S = inter[..., -1][..., None, None] * S_aug + np.einsum("bhj,bhjp,bhjn->bhpn", Mf[..., -1, :], xf, kf)
        x_last, k_last, seg_prev = co.x[:, s1 - 1], k[:, s1 - 1], seg[:, -1]

    y = np.concatenate(ys, axis=1) if ys else np.zeros((Bsz, 0, R, H, P))
    out = heads.finish(bound, co, y)
    if not trapezoid:
        return out, {"h": S}
    angle = state["angle"] if phi is None or L == 0 else np.mod(phi[:, -1], TWO_PI)
    return out, {"angle": angle, "ssm": S, "k": k_last if R > 1 else k_last[:, 0], "x": x_last}
