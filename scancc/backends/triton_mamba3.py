"""Mamba-3 programs on the Triton backend: the SSD kernels with the two-tap input.

A Mamba-3 program (``scancc.ir.mamba3``: trapezoid input, per-head log-decay, optional rotary
and MIMO rank R) is lowered by rendering the SSD templates with the template variable
``trap`` (:func:`scancc.backends.triton_ssd.lower`), so the chunked kernels are the SSD ones
with two hooks: the log-decay is read per token instead of formed as Δ·A, and the weight of
a column token in the intra-chunk mask is γ on the token's own slots and w elsewhere.

This module prepares the kernels' inputs and finishes their outputs, in torch (elementwise
and differentiable, so the backward chains the kernels' gradients through it by autograd):

- ``λ = sigmoid(trap)``, ``γ = λΔ``, ``μ = (1 − λ)Δ``; the column weight
  ``w_t = γ_t + μ_(t+1)`` (``μ_(t+1) = 0`` after a sequence's last token). With
  ``α_t = exp(adt_t)`` the recurrence ``h_t = α_t h_(t−1) + β_t u_(t−1) + γ_t u_t`` (β = μα)
  has the mask form ``M_ts = exp(cs_t − cs_s)·(γ_s if s = t else w_s)`` when every chunk's
  end state also carries ``μ_(next)·u_last`` (the "augmented" state, recurrences.md §4).
- Rotary: ``φ_t = φ_0 + Σ_(s ≤ t) Δ_s·π·tanh(angles_s)`` (mod 2π) restarted per sequence;
  ``k̃ = R(φ)(B + B_bias)``, ``q̃ = R(φ)(C + C_bias)`` on ``pairs`` pairs, interleaved
  ``(2i, 2i+1)`` or halves ``(i, i + N/2)``; keys and queries become per head.
- MIMO: rows become ``(token, rank)`` slots: ``x_(t,r) = x_t ⊙ W_x[r]``, ``z_(t,r) = z_t ⊙ W_z[r]``,
  keys/queries of rank r; ``adt`` on each token's first slot (zero on the others);
  ``out = Σ_r W_o[r] ⊙ y_(t,r)``.
- Input state ``{angle, ssm, k, x}``: the kernels start from ``ssm + μ_0·Σ_r (x ⊙ W_x[r]) k[r]ᵀ``
  (the previous token's half step). Final state: the kernels' last state is exact (no next
  token), ``angle = φ_last mod 2π``, ``k = k̃_last`` (fp32), ``x = x_last``.

Schedule: ``algorithm="ssd_chunked"``, ``chunk`` in tokens (the kernels take ``chunk·R`` slots).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch

from ..ir import Program, Schedule
from . import triton_ssd
from .modules import load_source
from .templating import render

DEFAULT_CHUNK = 64
STATE_KEYS = ("angle", "ssm", "k", "x")
ANGLE_BLOCK = 64
ROTARY_TEMPLATE = "triton/mamba3_rotary.py.j2"
ROTARY_BLOCK_L = 16
ROTARY_WARPS = 8
"""The rotary kernels' tiles: 16 tokens × dstate, 8 warps (ptxas for sm_90 at dstate 128, bf16:
forward 116 registers, backward 254, neither spilling; 64-token tiles spilled heavily)."""
"""Rotary angles are summed in fp32 inside blocks of this many tokens and across blocks in fp64."""


def unsupported_reason(program: Program, schedule: Schedule) -> Optional[str]:
    """Why the Mamba-3 kernels cannot run ``program`` with ``schedule``, or ``None``."""
    if program.input.kind != "trapezoid":
        return "not a Mamba-3 (trapezoid input) program"
    reason = triton_ssd.unsupported_reason(program, schedule)
    if reason is not None:
        return reason
    if (schedule.chunk or DEFAULT_CHUNK) * program.input.rank > 4096:
        return f"chunk · rank must stay within 4096 slots, got {schedule.chunk} · {program.input.rank}"
    return None


def default_schedule(program: Program) -> Schedule:
    """Chunks of 64 tokens (mamba-ssm's Mamba-3 default), 4 warps."""
    return Schedule(algorithm="ssd_chunked", chunk=DEFAULT_CHUNK, num_warps=4, num_stages=2)


def lower(program: Program, schedule: Schedule) -> str:
    """The SSD templates rendered for a Mamba-3 program (``trap`` hooks on)."""
    return triton_ssd.lower(program, schedule)


def build(program: Program, schedule: Schedule, source: str) -> "Mamba3Scan":
    return Mamba3Scan(program, schedule, source, load_source(source, "triton", program.name))


# -- preparation ----------------------------------------------------------------------------------
def rotate(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str) -> torch.Tensor:
    """Rotate pairs of the last axis of ``v (..., N)`` by angles whose ``cos``/``sin`` are
    ``(..., K)`` (broadcast): ``(u, w) → (u cos − w sin, u sin + w cos)`` on pairs ``(2i, 2i+1)``
    (``interleaved``) or ``(i, i + N/2)`` (``halves``), ``i < K``; other entries unchanged."""
    K, N = cos.shape[-1], v.shape[-1]
    if K == 0:
        return v
    if pairing == "interleaved":
        u, w = v[..., 0:2 * K:2], v[..., 1:2 * K:2]
        pairs = torch.stack([u * cos - w * sin, u * sin + w * cos], -1).flatten(-2)
        return torch.cat([pairs, v[..., 2 * K:]], -1)
    u, w = v[..., :K], v[..., N // 2:N // 2 + K]
    return torch.cat([u * cos - w * sin, v[..., K:N // 2], u * sin + w * cos, v[..., N // 2 + K:]], -1)


def cumulative_angles(inc: torch.Tensor, starts: torch.Tensor, phi0: Optional[torch.Tensor],
                      seq_of: torch.Tensor) -> torch.Tensor:
    """``φ (batch, seqlen, heads, K)`` fp32 in [0, 2π): the sum of ``inc`` restarted at every
    sequence start, plus the sequence's initial angle ``phi0 (rows, heads, K)``.

    ``starts (batch, seqlen)`` bool marks sequence starts (token 0 always); ``seq_of (batch,
    seqlen)`` the state row of each token. Sums run in fp32 inside blocks of
    :data:`ANGLE_BLOCK` tokens and in fp64 across blocks (reduced mod 2π), so long sequences
    keep fp32 accuracy; every step is differentiable.
    """
    Bsz, L = inc.shape[:2]
    pad = -L % ANGLE_BLOCK
    x = torch.nn.functional.pad(inc, (0, 0, 0, 0, 0, pad)) if pad else inc
    nb = x.shape[1] // ANGLE_BLOCK
    local = torch.cumsum(x.reshape(Bsz, nb, ANGLE_BLOCK, *x.shape[2:]), 2)
    before = torch.cumsum(local[:, :, -1].double(), 1) - local[:, :, -1].double()
    before = torch.remainder(before, 2 * math.pi).float()
    total = (local + before[:, :, None]).reshape(x.shape)[:, :L]          # Σ_(s ≤ t) inc_s, mod 2π blockwise
    idx = torch.arange(L, device=inc.device).expand(Bsz, L)
    start = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), 1).values
    base = torch.gather(total - inc, 1, start[:, :, None, None].expand_as(total))
    phi = total - base
    if phi0 is not None:
        phi = phi + phi0.float()[seq_of]
    return torch.remainder(phi, 2 * math.pi)


# -- the rotary prologue (rank 1, one sequence per row) ---------------------------------------------
@functools.lru_cache(maxsize=None)
def _rotary_kernel(pairing: str, which: str = "") -> Any:
    """The forward (``which=""``) or backward (``"bwd"``) rotary kernel for a pairing."""
    name = f"mamba3_rotary_{pairing}"
    source = render(ROTARY_TEMPLATE, name=name, pairing=pairing)
    return getattr(load_source(source, "triton", name), f"{name}_{which + '_' if which else ''}kernel")


def rotary_prologue(pairing: str, k: torch.Tensor, q: torch.Tensor, k_bias: Optional[torch.Tensor],
                    q_bias: Optional[torch.Tensor], angles: torch.Tensor, dt: torch.Tensor,
                    phi0: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys and queries rotated per head by one kernel (``scancc/templates/triton/mamba3_rotary.py.j2``).

    ``k, q (batch, seqlen, groups, N)``; ``k_bias, q_bias (heads, N)`` or None; ``angles (batch,
    seqlen, heads, K)``; ``dt (batch, seqlen, heads)`` (any strides); ``phi0 (batch, heads, K)``
    or None. Returns ``k̃, q̃ (batch, seqlen, heads, N)`` in k's dtype and ``φ_last (batch,
    heads, K)`` fp32; the same values as :func:`rotary_reference`.
    """
    Bsz, L, G, N = k.shape
    H, K = angles.shape[2], angles.shape[3]
    k_out = torch.empty((Bsz, L, H, N), dtype=k.dtype, device=k.device)
    q_out = torch.empty_like(k_out)
    phi_last = torch.empty((Bsz, H, K), dtype=torch.float32, device=k.device)

    def c(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.contiguous()

    if (k_bias is None) != (q_bias is None):                     # the kernel adds both biases or neither
        zero = torch.zeros((H, N), dtype=torch.float32, device=k.device)
        k_bias, q_bias = (zero if k_bias is None else k_bias), (zero if q_bias is None else q_bias)
    kernel = _rotary_kernel(pairing)
    args = (c(k), c(q), c(k_bias), c(q_bias), c(angles), dt, *dt.stride(), c(phi0), k_out, q_out, phi_last,
            L, H, G, N, K, H // G)
    meta = dict(HAS_BIAS=k_bias is not None, HAS_PHI0=phi0 is not None, BLOCK_L=ROTARY_BLOCK_L,
                BLOCK_N=max(2, 1 << max(0, (N - 1).bit_length())), num_warps=ROTARY_WARPS)
    if k.device.type == "cuda":
        with torch.cuda.device(k.device):
            kernel[(Bsz, H)](*args, **meta)
    else:
        kernel[(Bsz, H)](*args, **meta)
    return k_out, q_out, phi_last


def rotary_prologue_backward(pairing: str, k: torch.Tensor, q: torch.Tensor, k_bias: Optional[torch.Tensor],
                             q_bias: Optional[torch.Tensor], angles: torch.Tensor, dt: torch.Tensor,
                             phi0: Optional[torch.Tensor], grad_k: torch.Tensor, grad_q: torch.Tensor,
                             grad_phi: torch.Tensor) -> dict[str, Optional[torch.Tensor]]:
    """Gradients of :func:`rotary_prologue`'s inputs by name (``k, q, k_bias, q_bias, angles, dt,
    phi0``; None for inputs not given) from those of ``k̃, q̃, φ_last``: one kernel per (row,
    head), then the sums over the heads of a group and over rows (deterministic, no atomics)."""
    Bsz, L, G, N = k.shape
    H, K = angles.shape[2], angles.shape[3]
    dev, f32 = k.device, torch.float32
    block_n = max(2, 1 << max(0, (N - 1).bit_length()))
    n_blocks = -(-L // ROTARY_BLOCK_L)

    def c(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.contiguous()

    kb, qb = k_bias, q_bias
    if (kb is None) != (qb is None):
        zero = torch.zeros((H, N), dtype=f32, device=dev)
        kb, qb = (zero if kb is None else kb), (zero if qb is None else qb)
    per_head = G == H                       # ∂L/∂u is then ∂L/∂k itself: written in k's dtype
    du_dtype = k.dtype if per_head else f32
    du_k = torch.empty((Bsz, L, H, N), dtype=du_dtype, device=dev)
    du_q = torch.empty_like(du_k)
    dkb_part = torch.empty((Bsz, H, N), dtype=f32, device=dev)
    dqb_part = torch.empty_like(dkb_part)
    dangles = torch.empty((Bsz, L, H, K), dtype=f32, device=dev)
    ddt = torch.empty((Bsz, L, H), dtype=f32, device=dev)
    dphi0 = torch.empty((Bsz, H, K), dtype=f32, device=dev)
    carries = torch.empty((Bsz, H, n_blocks, block_n), dtype=torch.float64, device=dev)
    kernel = _rotary_kernel(pairing, "bwd")
    args = (c(k), c(q), c(kb), c(qb), c(angles), dt, *dt.stride(), c(phi0), c(grad_k), c(grad_q), c(grad_phi),
            carries, du_k, du_q, dkb_part, dqb_part, dangles, ddt, dphi0, L, H, G, N, K, H // G, n_blocks)
    meta = dict(HAS_BIAS=kb is not None, HAS_PHI0=phi0 is not None, BLOCK_L=ROTARY_BLOCK_L, BLOCK_N=block_n,
                num_warps=ROTARY_WARPS)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            kernel[(Bsz, H)](*args, **meta)
    else:
        kernel[(Bsz, H)](*args, **meta)
    if not per_head:
        du_k = du_k.view(Bsz, L, G, H // G, N).sum(3)
        du_q = du_q.view(Bsz, L, G, H // G, N).sum(3)
    return {
        "k": du_k.to(k.dtype), "q": du_q.to(q.dtype),
        "k_bias": None if k_bias is None else dkb_part.sum(0).to(k_bias.dtype),
        "q_bias": None if q_bias is None else dqb_part.sum(0).to(q_bias.dtype),
        "angles": dangles.to(angles.dtype), "dt": ddt.to(dt.dtype),
        "phi0": None if phi0 is None else dphi0.to(phi0.dtype),
    }


def rotary_reference(pairing: str, k: torch.Tensor, q: torch.Tensor, k_bias: Optional[torch.Tensor],
                     q_bias: Optional[torch.Tensor], angles: torch.Tensor, dt: torch.Tensor,
                     phi0: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`rotary_prologue` in torch (differentiable; its backward recomputes through this)."""
    Bsz, L, G, N = k.shape
    H = angles.shape[2]
    f32 = torch.float64 if k.dtype == torch.float64 else torch.float32     # float64: a reference for tests
    inc = dt.to(f32)[..., None] * (math.pi * torch.tanh(angles.to(f32)))
    starts, seq_of = sequence_starts(Bsz, L, None, k.device)
    phi = cumulative_angles(inc, starts, phi0, seq_of)
    cos, sin = torch.cos(phi), torch.sin(phi)
    out = []
    for v, bias in ((k, k_bias), (q, q_bias)):
        v = v.to(f32).repeat_interleave(H // G, 2) if G != H else v.to(f32)
        if bias is not None:
            v = v + bias.to(f32)
        out.append(rotate(v, cos, sin, pairing).to(k.dtype))
    return out[0], out[1], phi[:, -1]


def sequence_starts(batch: int, seqlen: int, cu_seqlens: Optional[torch.Tensor],
                    device: Optional[torch.device] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``starts (batch, seqlen)`` bool, True at every sequence's first token, and ``seq_of
    (batch, seqlen)`` the state row of each token (rows are batch rows without ``cu_seqlens``)."""
    if cu_seqlens is None:
        starts = torch.zeros((batch, seqlen), dtype=torch.bool, device=device)
        starts[:, 0] = True
        return starts, torch.arange(batch, device=device)[:, None].expand(batch, seqlen)
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    starts = torch.zeros((1, seqlen + 1), dtype=torch.bool, device=device)
    starts[0, cu[:-1]] = True
    seq_of = torch.searchsorted(cu[1:], torch.arange(seqlen, device=device), right=True)[None]
    return starts[:, :seqlen], seq_of


@dataclass
class Prepared:
    """The kernels' inputs for one call, and what the output and final state are made from.

    ``core``: :data:`triton_ssd.CORE_INPUTS` by name; ``h0``: the augmented initial state
    ``(rows, heads, headdim, dstate)`` fp32 or None; ``k_last (rows, R, heads, N)`` fp32 the
    last key of each row as it entered the state; ``phi_last (rows, heads, K)`` its rotary
    angles or None; ``last (rows,)`` the last token of each row.
    """

    core: dict[str, Optional[torch.Tensor]]
    h0: Optional[torch.Tensor]
    k_last: torch.Tensor
    phi_last: Optional[torch.Tensor]
    last: torch.Tensor
    batch: int
    seqlen: int


def prepare(inputs: Mapping[str, Optional[torch.Tensor]], initial_state: Optional[Mapping[str, Any]],
            cu_seqlens: Optional[torch.Tensor], rank: int, pairing: Optional[str],
            rotary_op: Optional[Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = None) -> Prepared:
    """Form the kernels' inputs (module docstring) of a Mamba-3 program of MIMO rank ``rank``
    and rotary ``pairing`` (``None``: no rotary); differentiable in every float input, and
    plain torch (no host synchronisation), so ``torch.compile`` traces it.

    ``rotary_op``: a differentiable form of :func:`rotary_prologue` (the ops pass the custom op
    ``scancc::mamba3_rotary``), used for rank 1 without ``cu_seqlens``: keys and queries are then
    rotated per head by one kernel instead of a chain of torch operations."""
    R = rank
    x, dt, adt, trap = (inputs[k] for k in ("x", "dt", "adt", "trap"))
    Bsz, L, H, P = x.shape
    dev, f32 = x.device, torch.float32
    Bk, Cq = inputs["B"], inputs["C"]
    if R == 1:
        Bk, Cq = Bk[:, :, None], Cq[:, :, None]                       # (b, L, R, G, N)
    G, N = Bk.shape[3], Bk.shape[4]
    if H % G:
        raise ValueError(f"mamba3: the groups of B/C ({G}) must divide heads ({H})")

    # sequences: each row's first and last token (and, for the angles, start flags and state rows)
    if cu_seqlens is None:
        last = torch.full((Bsz,), L - 1, device=dev, dtype=torch.int64)
        firsts = torch.zeros((Bsz,), device=dev, dtype=torch.int64)
    else:
        cu = cu_seqlens.to(device=dev, dtype=torch.int64)
        last = cu[1:] - 1
        firsts = cu[:-1]

    delta = dt.to(f32)
    lam = torch.sigmoid(trap.to(f32))
    gamma = lam * delta
    mu = (1.0 - lam) * delta
    # μ of the next token of the same sequence (0 after a sequence's last token)
    if cu_seqlens is None:
        mu_next = torch.nn.functional.pad(mu[:, 1:], (0, 0, 0, 1))
    else:
        starts, _ = sequence_starts(Bsz, L, cu_seqlens, dev)
        mu_next = torch.nn.functional.pad(mu[:, 1:] * (~starts[:, 1:])[..., None], (0, 0, 0, 1))
    w = gamma + mu_next

    phi_last: Optional[torch.Tensor] = None
    phi0 = None if initial_state is None else initial_state.get("angle")
    fused = rotary_op is not None and R == 1 and cu_seqlens is None and pairing is not None
    if fused:
        assert rotary_op is not None and pairing is not None
        kb, qb = inputs.get("B_bias"), inputs.get("C_bias")
        k_in, q_in, phi_last = rotary_op(pairing, inputs["B"], inputs["C"], kb, qb, inputs["angles"], dt, phi0)
        k_last = inputs["B"][:, -1].to(f32)                              # the last key, in fp32 (b, H, N)
        k_last = k_last.repeat_interleave(H // G, 1) if G != H else k_last
        if kb is not None:
            k_last = k_last + kb.to(f32)
        k_last = rotate(k_last, torch.cos(phi_last), torch.sin(phi_last), pairing)[:, None]
        G = H
    else:
        k = Bk.to(f32).repeat_interleave(H // G, 3) if G != H else Bk.to(f32)   # (b, L, R, H, N)
        q = Cq.to(f32).repeat_interleave(H // G, 3) if G != H else Cq.to(f32)
        phi = None
        if pairing is not None:
            for key, which in (("B_bias", "k"), ("C_bias", "q")):
                bias = inputs.get(key)
                if bias is not None:
                    bias = bias.to(f32) if R > 1 else bias.to(f32)[:, None]     # (H, R, N)
                    if which == "k":
                        k = k + bias.transpose(0, 1)
                    else:
                        q = q + bias.transpose(0, 1)
            angles = inputs["angles"]
            inc = delta[..., None] * (math.pi * torch.tanh(angles.to(f32)))
            starts, seq_of = sequence_starts(Bsz, L, cu_seqlens, dev)
            phi = cumulative_angles(inc, starts, phi0, seq_of)
            cos, sin = torch.cos(phi)[:, :, None], torch.sin(phi)[:, :, None]
            k, q = rotate(k, cos, sin, pairing), rotate(q, cos, sin, pairing)
            G = H
        k_last = k[:, -1] if cu_seqlens is None else k[0, last]
        if phi is not None:
            phi_last = phi[:, -1] if cu_seqlens is None else phi[0, last]
    keep_groups = G != H                                             # B/C still per group

    xr = x if R == 1 else (x[:, :, None] * inputs["W_x"].transpose(0, 1).to(x.dtype))
    z = inputs.get("z")
    if z is not None and R > 1:
        z = z[:, :, None] * inputs["W_z"].transpose(0, 1).to(z.dtype)

    def slots(t: torch.Tensor) -> torch.Tensor:                    # (b, L, R, ...) → (b, L·R, ...)
        return t.reshape(Bsz, L * R, *t.shape[3:])

    def per_slot(t: torch.Tensor) -> torch.Tensor:                 # (b, L, H) → (b, L·R, H)
        return t if R == 1 else t[:, :, None].expand(Bsz, L, R, H).reshape(Bsz, L * R, H)

    adt_s = adt.to(f32)
    if R > 1:
        adt_s = torch.cat([adt_s[:, :, None], adt_s.new_zeros((Bsz, L, R - 1, H))], 2).reshape(Bsz, L * R, H)
    if keep_groups:
        k_in, q_in = slots(Bk), slots(Cq)
    elif not fused:
        k_in, q_in = slots(k.to(x.dtype)), slots(q.to(x.dtype))
    core = {
        "x": xr if R == 1 else slots(xr), "dt": per_slot(w), "A": adt_s, "gam": per_slot(gamma),
        "B": k_in, "C": q_in, "D": inputs.get("D"), "z": z if (z is None or R == 1) else slots(z),
    }

    h0 = None
    if initial_state is not None and any(initial_state.get(key) is not None for key in ("ssm", "k", "x")):
        rows = last.shape[0]
        ssm0 = initial_state.get("ssm")
        h0 = torch.zeros((rows, H, P, N), device=dev, dtype=f32) if ssm0 is None else ssm0.to(f32)
        k0, x0 = initial_state.get("k"), initial_state.get("x")
        if k0 is not None and x0 is not None:
            k0 = k0.to(f32) if R > 1 else k0.to(f32)[:, None]                # (rows, R, H, N)
            x0r = x0.to(f32)[:, None]                                        # (rows, 1, H, P)
            if R > 1:
                x0r = x0r * inputs["W_x"].transpose(0, 1).to(f32)
            mu0 = mu[0, firsts] if cu_seqlens is not None else mu[:, 0]      # (rows, H)
            h0 = h0 + mu0[..., None, None] * torch.einsum("brhp,brhn->bhpn", x0r, k0)
    return Prepared(core, h0, k_last, phi_last, last, Bsz, L)


def finish(inputs: Mapping[str, Optional[torch.Tensor]], y: torch.Tensor, prep: Prepared, rank: int) -> torch.Tensor:
    """``out (batch, seqlen, heads, headdim)`` from the kernels' ``y (batch, slots, heads, headdim)``."""
    if rank == 1:
        return y
    Bsz, L = prep.batch, prep.seqlen
    yr = y.reshape(Bsz, L, rank, *y.shape[2:])
    return (yr.float() * inputs["W_o"].transpose(0, 1).float()).sum(2).to(y.dtype)

def final_pieces(inputs: Mapping[str, Optional[torch.Tensor]], prep: Prepared, cu_seqlens: Optional[torch.Tensor],
                 rank: int) -> dict[str, Any]:
    """The final ``angle``, ``k`` and ``x`` states (rows first)."""
    x = inputs["x"]
    x_last = x[:, -1] if cu_seqlens is None else x[0, prep.last]
    k_last, phi_last = prep.k_last, prep.phi_last
    rows, H = x_last.shape[0], x_last.shape[1]
    if phi_last is None:
        phi_last = x.new_zeros((rows, H, 0), dtype=torch.float32)
    return {"angle": phi_last, "k": k_last if rank > 1 else k_last[:, 0], "x": x_last}


@dataclass
class Mamba3Forward:
    """``out (batch, seqlen, heads, headdim)``; ``final_state`` ``{angle, ssm, k, x}`` or None;
    ``saved``: the kernels' forward and output for the backward."""

    out: torch.Tensor
    final_state: Optional[dict[str, torch.Tensor]] = None
    saved: dict[str, Any] = field(default_factory=dict)


class Mamba3Scan:
    """A Mamba-3 program compiled to Triton.

    ``inputs`` are named as ``program.tensors()``; ``initial_state`` is a mapping with any of
    ``angle (rows, heads, pairs)``, ``ssm (rows, heads, headdim, dstate)``, ``k (rows, heads,
    dstate)`` (MIMO ``(rows, rank, heads, dstate)``), ``x (rows, heads, headdim)`` (missing
    ones are zero), as in :func:`scancc.oracle.sequential`.
    """

    backend = "triton"

    def __init__(self, program: Program, schedule: Schedule, source: str, module: Any) -> None:
        self.program = program
        self.schedule = schedule
        self.source = source
        self.core = triton_ssd.SSDScan(program, schedule, source, module)
        self.rank = program.input.rank

    def __repr__(self) -> str:
        return f"Mamba3Scan({self.program.name!r}, {self.schedule.to_json()})"

    # -- preparation -----------------------------------------------------------------------------
    def _check(self, inputs: Mapping[str, Optional[torch.Tensor]]) -> None:
        name = self.program.name
        for spec in self.program.tensors():
            v = inputs.get(spec.name)
            if v is None:
                if not spec.optional:
                    raise ValueError(f"{name}: input {spec.name!r} is required")
                continue
            if v.dim() != len(spec.dims):
                raise ValueError(f"{name}: {spec.name} must be {spec.dims}, got shape {tuple(v.shape)}")

    def prepare(self, inputs: Mapping[str, Optional[torch.Tensor]], initial_state: Optional[Mapping[str, Any]],
                cu_seqlens: Optional[torch.Tensor]) -> Prepared:
        """:func:`prepare` for this program, after checking the inputs' ranks."""
        self._check(inputs)
        rot = self.program.rotary
        return prepare(inputs, initial_state, cu_seqlens, self.rank, None if rot is None else rot.pairing)

    def finish(self, inputs: Mapping[str, Optional[torch.Tensor]], y: torch.Tensor, prep: Prepared) -> torch.Tensor:
        return finish(inputs, y, prep, self.rank)

    def final_pieces(self, inputs: Mapping[str, Optional[torch.Tensor]], prep: Prepared,
                     initial_state: Optional[Mapping[str, Any]], cu_seqlens: Optional[torch.Tensor]) -> dict[str, Any]:
        return final_pieces(inputs, prep, cu_seqlens, self.rank)

    # -- forward / backward ----------------------------------------------------------------------
    def _core_cu(self, cu_seqlens: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if cu_seqlens is None else cu_seqlens * self.rank

    def forward(
        self,
        inputs: Mapping[str, Optional[torch.Tensor]],
        *,
        initial_state: Optional[Mapping[str, Any]] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        return_final_state: bool = False,
        save_for_backward: bool = False,
    ) -> Mamba3Forward:
        with torch.no_grad():
            prep = self.prepare(inputs, initial_state, cu_seqlens)
            fwd = self.core.forward(prep.core, initial_state=prep.h0, cu_seqlens=self._core_cu(cu_seqlens),
                                    return_final_state=return_final_state, save_for_backward=save_for_backward)
            out = self.finish(inputs, fwd.out, prep)
            final = None
            if return_final_state:
                assert fwd.final_state is not None
                final = {"ssm": fwd.final_state, **self.final_pieces(inputs, prep, initial_state, cu_seqlens)}
        saved = {"core": fwd, "y": fwd.out} if save_for_backward else {}
        return Mamba3Forward(out=out, final_state=final, saved=saved)

    def __call__(self, inputs: Mapping[str, Optional[torch.Tensor]], **kwargs: Any):
        fwd = self.forward(inputs, **kwargs)
        return (fwd.out, fwd.final_state) if kwargs.get("return_final_state") else fwd.out

    def backward(
        self,
        fwd: Mamba3Forward,
        inputs: Mapping[str, Optional[torch.Tensor]],
        grad_out: Optional[torch.Tensor],
        grad_final_state: Optional[Mapping[str, Optional[torch.Tensor]]] = None,
        *,
        initial_state: Optional[Mapping[str, Any]] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
    ) -> dict[str, Any]:
        """Gradients of every present float input by name, and ``"initial_state"``: a dict of
        the given state parts' gradients (or None). The kernels' gradients are chained through
        :meth:`prepare`/:meth:`finish` by ``torch.autograd``."""
        if "core" not in fwd.saved:
            raise ValueError("backward needs the forward of forward(..., save_for_backward=True)")
        gfs = dict(grad_final_state or {})
        with torch.enable_grad():
            leaves = {k: (v.detach().requires_grad_(True) if v is not None and v.is_floating_point() else v)
                      for k, v in inputs.items()}
            state_leaves = None
            if initial_state is not None:
                state_leaves = {k: (v.detach().requires_grad_(True) if v is not None else None)
                                for k, v in initial_state.items()}
            prep = self.prepare(leaves, state_leaves, cu_seqlens)
            y = fwd.saved["y"].detach().requires_grad_(True)
            out = self.finish(leaves, y, prep)
            pieces = self.final_pieces(leaves, prep, state_leaves, cu_seqlens)

            go = torch.zeros_like(out) if grad_out is None else grad_out.to(out.dtype)
            if self.rank > 1:
                dy, = torch.autograd.grad(out, [y], go, retain_graph=True)
            else:
                dy = go
            core_in = {k: (None if v is None else v.detach()) for k, v in prep.core.items()}
            h0 = None if prep.h0 is None else prep.h0.detach()
            g = self.core.backward(fwd.saved["core"], core_in, dy.contiguous(), gfs.get("ssm"), initial_state=h0,
                                   cu_seqlens=self._core_cu(cu_seqlens))

            outs: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            for key, t in prep.core.items():
                if t is not None and t.requires_grad and g.get(key) is not None:
                    outs.append(t)
                    grads.append(g[key])
            if prep.h0 is not None and prep.h0.requires_grad and g.get("initial_state") is not None:
                outs.append(prep.h0)
                grads.append(g["initial_state"])
            if self.rank > 1:
                outs.append(out)
                grads.append(go)
            for key in ("angle", "k", "x"):
                gk = gfs.get(key)
                if gk is not None and pieces[key].requires_grad and pieces[key].numel():
                    outs.append(pieces[key])
                    grads.append(gk.to(pieces[key].dtype))
            want = [(k, v) for k, v in leaves.items() if v is not None and v.requires_grad]
            want_state = [(k, v) for k, v in (state_leaves or {}).items() if v is not None]
            targets = [v for _, v in want] + [v for _, v in want_state]
            # y is not a leaf of the prepared graph: through `out` only W_o's share is new
            found = torch.autograd.grad(outs, targets, grads, allow_unused=True) if outs else [None] * len(targets)
        result: dict[str, Any] = {}
        for (key, v), gv in zip(want, found[:len(want)]):
            result[key] = torch.zeros_like(v) if gv is None else gv.to(v.dtype)
        if state_leaves is not None:
            result["initial_state"] = {
                key: (None if v is None else (torch.zeros_like(v) if gv is None else gv.to(v.dtype)))
                for (key, v), gv in zip(want_state, found[len(want):])
            }
        else:
            result["initial_state"] = None
        return result
