"""Gradients of the TVM matrix-state scans (SSD, GLA, Mamba-3) on the CPU.

The backward is split where the math splits:

- per-token, elementwise pieces are formed on the host with torch and differentiated by
  ``torch.autograd``: Δ (bias, softplus, clamp), the decays ``α_t``, Mamba-3's trapezoid
  weights ``β_t``/``γ_t``, the rotary angles ``φ_t`` and rotated keys/queries, the MIMO
  weights, and the readout's skip and gate;
- the recurrence ``S_t = α_t ⊙ S_{t−1} + Σ_j v_{t,j} k_{t,j}ᵀ``, ``y_{t,r} = S_t q_{t,r}``
  and its adjoint (the same recurrence run backwards, ``recurrences.md`` §6) are the TVM
  kernels ``core_forward``/``core_backward`` of ``templates/tvm/matrix_core.py.j2``, wrapped
  in a :class:`torch.autograd.Function`.

SSD and GLA have one input term ``v = Δ·x``, ``k = B``; Mamba-3 has ``2R``: the previous
token's ``(β_t x_{t−1,r}, k̃_{t−1,r})`` and this token's ``(γ_t x_{t,r}, k̃_{t,r})``.
Batch rows are packed into one token axis (row ``b``, step ``t`` → token ``b·L + t``) with
``cu_seqlens`` offsets, so batched and packed (varlen) inputs take one path.

The backward recomputes the forward from the inputs (it needs nothing from ``fwd``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch
import torch.nn.functional as F

from ..ir import Program
from .tvm_diag import DiagCall, _check_shape, _need, aligned, sequences
from .tvm_matrix import matrix_meta
from .tvm_plan import MatrixPlan
from .tvm_runtime import empty

if TYPE_CHECKING:
    from .tvm import TVMCompiledScan

TWO_PI = 2.0 * math.pi


@dataclass
class Tokens:
    """Where each packed token sits: ``total`` tokens, ``nseq`` sequences.

    ``cu``: ``(nseq + 1,)`` int32 offsets; ``seg``/``first``: ``(total,)`` the sequence of each
    token and the index of that sequence's first token; ``start``: ``(total,)`` whether the
    token opens its sequence; ``covered``: ``(total,)`` whether it belongs to any sequence;
    ``last``: ``(nseq,)`` each sequence's last token (clamped to 0 when empty); ``nonempty``:
    ``(nseq,)``.
    """

    cu: torch.Tensor
    seg: torch.Tensor
    first: torch.Tensor
    start: torch.Tensor
    covered: torch.Tensor
    last: torch.Tensor
    nonempty: torch.Tensor
    total: int
    nseq: int

    @classmethod
    def of(cls, cu: torch.Tensor, total: int) -> "Tokens":
        cu64 = cu.to(torch.int64)
        nseq = cu64.numel() - 1
        idx = torch.arange(total)
        seg = (torch.searchsorted(cu64[1:], idx, right=True)).clamp(max=max(nseq - 1, 0))
        covered = idx < cu64[-1]
        first = cu64[seg]
        lengths = cu64[1:] - cu64[:-1]
        return cls(cu.to(torch.int32).contiguous(), seg, first, (idx == first) & covered, covered,
                   (cu64[1:] - 1).clamp(min=0), lengths > 0, total, nseq)


class CoreScan(torch.autograd.Function):
    """``(y, S_T) = core(α, v, k, q, S_0)`` on packed tokens, with the TVM adjoint as backward.

    Shapes: ``alpha (total, heads, dstate)``, ``v (total, J, heads, headdim)``, ``k (total, J,
    heads, dstate)``, ``q (total, R, heads, dstate)``, ``h0 (nseq, heads, headdim, dstate)``;
    ``y (total, R, heads, headdim)``, ``S_T`` like ``h0``. All float32.
    """

    @staticmethod
    def forward(ctx: Any, module: Any, tile: int, tokens: Tokens, alpha: torch.Tensor, v: torch.Tensor,
                k: torch.Tensor, q: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, v, k, q, h0 = (aligned(t.detach().to(torch.float32)) for t in (alpha, v, k, q, h0))
        total, heads, dstate = alpha.shape
        rank, headdim = q.shape[1], v.shape[3]
        lengths = (tokens.cu[1:] - tokens.cu[:-1]).to(torch.int64)
        nck = max(1, math.ceil(int(lengths.max()) / tile)) if tokens.nseq else 1
        alloc = empty if bool(tokens.covered.all()) else torch.zeros  # uncovered tokens are never written
        y = alloc((total, rank, heads, headdim))
        ck = empty((tokens.nseq, heads, nck, headdim, dstate))
        hT = empty((tokens.nseq, heads, headdim, dstate))
        module["core_forward"](alpha, v, k, q, tokens.cu, h0, y, ck, hT)
        ctx.module, ctx.tokens = module, tokens
        ctx.save_for_backward(alpha, v, k, q, ck)
        return y, hT

    @staticmethod
    def backward(ctx: Any, dy: Optional[torch.Tensor], dhT: Optional[torch.Tensor]) -> tuple[Any, ...]:
        alpha, v, k, q, ck = ctx.saved_tensors
        tokens: Tokens = ctx.tokens
        total, heads, dstate = alpha.shape
        headdim = v.shape[3]
        dy = torch.zeros(q.shape[:3] + (headdim,)) if dy is None else aligned(dy.to(torch.float32))
        dhT = torch.zeros((tokens.nseq, heads, headdim, dstate)) if dhT is None else aligned(dhT.to(torch.float32))
        alloc = empty if bool(tokens.covered.all()) else torch.zeros
        dalpha, dv, dk, dq = (alloc(tuple(t.shape)) for t in (alpha, v, k, q))
        dh0 = empty((tokens.nseq, heads, headdim, dstate))
        ctx.module["core_backward"](alpha, v, k, q, tokens.cu, ck, dy, dhT, dalpha, dv, dk, dq, dh0)
        return None, None, None, dalpha, dv, dk, dq, dh0


# -- the host-side pieces, differentiable -------------------------------------------------------------
def _step_size(plan: MatrixPlan, dt: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Δ from ``dt (total, heads)``: ``clamp(softplus(dt + bias))`` as the program says."""
    v = dt if bias is None else dt + bias
    if plan.step is None:
        return v
    if plan.step.softplus:
        v = F.softplus(v, beta=1.0, threshold=20.0)
    if plan.step.clamp is not None:
        v = v.clamp(plan.step.clamp[0], plan.step.clamp[1])
    return v


def _per_head(t: torch.Tensor, total: int, heads: int) -> torch.Tensor:
    """``(batch, seqlen, [rank,] groups, dstate)`` → ``(total, rank, heads, dstate)``."""
    t = t.reshape(total, -1, t.shape[-2], t.shape[-1])
    return t.repeat_interleave(heads // t.shape[2], dim=2)


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str) -> torch.Tensor:
    """Rotate the first ``K`` pairs of ``t (total, R, heads, dstate)`` by ``(cos, sin) (total, heads, K)``."""
    pairs, dstate = cos.shape[-1], t.shape[-1]
    i = torch.arange(pairs)
    i0, i1 = (2 * i, 2 * i + 1) if pairing == "interleaved" else (i, i + dstate // 2)
    c, s = cos[:, None], sin[:, None]
    u, w = t[..., i0], t[..., i1]
    out = t.clone()
    out[..., i0] = u * c - w * s
    out[..., i1] = u * s + w * c
    return out


def _angles(tokens: Tokens, delta: torch.Tensor, angles: torch.Tensor, phi0: torch.Tensor) -> torch.Tensor:
    """``φ_t = φ_0 + Σ_{s ≤ t} Δ_s π tanh(angles_s)`` within each sequence, ``(total, heads, K)``.

    Summed in float64 (the kernel's running angle is reduced mod 2π at every step; the
    cosines agree to rounding)."""
    inc = torch.cumsum((delta[..., None] * math.pi * torch.tanh(angles)).double(), 0)
    before = torch.where((tokens.first > 0)[:, None, None], inc[(tokens.first - 1).clamp(min=0)],
                         torch.zeros((), dtype=inc.dtype))
    return phi0.double()[tokens.seg] + inc - before


def _previous(tokens: Tokens, t: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Each token's predecessor in its sequence (token axis 0); ``first[seq]`` at a sequence start."""
    mask = tokens.start.reshape((-1,) + (1,) * (t.dim() - 1))
    return torch.where(mask, first[tokens.seg], torch.roll(t, 1, 0))


@dataclass
class Graph:
    """The recomputed forward as a torch graph: ``out`` like ``x``; ``final`` the state pieces."""

    out: torch.Tensor
    final: dict[str, torch.Tensor]


def build_graph(module: Any, plan: MatrixPlan, t: Mapping[str, Optional[torch.Tensor]], state: dict[str, torch.Tensor],
                tokens: Tokens, use_gate: bool) -> Graph:
    """The forward of a matrix program on float32 leaves ``t`` (names of ``program.tensors()``)
    and initial state pieces ``state`` (``ssm`` and, for Mamba-3, ``angle``, ``k``, ``x``),
    with the recurrence in :class:`CoreScan`."""
    x = t["x"]
    assert x is not None
    batch, seqlen, heads, headdim = x.shape
    total, R = tokens.total, plan.rank
    m3 = plan.kind == "mamba3"
    xf = x.reshape(total, heads, headdim)
    delta = _step_size(plan, t["dt"].reshape(total, heads), t.get("dt_bias"))  # type: ignore[union-attr]
    if plan.kind == "ssd":
        log_alpha = delta * t["A"]
    else:
        log_alpha = t["adt"].reshape((total, heads) + t["adt"].shape[3:])  # type: ignore[union-attr]
    alpha = torch.exp(log_alpha)
    keys = _per_head(t["B"], total, heads)  # type: ignore[arg-type]
    queries = _per_head(t["C"], total, heads)  # type: ignore[arg-type]
    dstate = keys.shape[-1]
    if plan.qk_bias:
        for name, ref in (("B_bias", "keys"), ("C_bias", "queries")):
            bias = t.get(name)
            if bias is not None:
                b = bias.reshape(heads, R, dstate).transpose(0, 1)
                if ref == "keys":
                    keys = keys + b
                else:
                    queries = queries + b
    final: dict[str, torch.Tensor] = {}
    if plan.rotary:
        phi = _angles(tokens, delta, t["angles"].reshape(total, heads, -1), state["angle"])  # type: ignore[union-attr]
        cos, sin = torch.cos(phi).float(), torch.sin(phi).float()
        keys, queries = _rotate(keys, cos, sin, plan.rotary), _rotate(queries, cos, sin, plan.rotary)
        final["angle"] = torch.where(tokens.nonempty[:, None, None], torch.remainder(phi[tokens.last], TWO_PI).float(),
                                     state["angle"])
    if R > 1:
        W_x = t["W_x"].transpose(0, 1)  # type: ignore[union-attr]  # (R, heads, headdim)
        xr = xf[:, None] * W_x
    else:
        xr = xf[:, None]
    if m3:
        lam = torch.sigmoid(t["trap"].reshape(total, heads))  # type: ignore[union-attr]
        gamma, beta = lam * delta, (1.0 - lam) * delta * alpha
        x_prev = _previous(tokens, xf, state["x"])
        k_prev = _previous(tokens, keys, state["k"])
        xr_prev = x_prev[:, None] * W_x if R > 1 else x_prev[:, None]
        v = torch.cat([beta[:, None, :, None] * xr_prev, gamma[:, None, :, None] * xr], 1)
        k = torch.cat([k_prev, keys], 1)
        final["x"] = torch.where(tokens.nonempty[:, None, None], xf[tokens.last], state["x"])
        final["k"] = torch.where(tokens.nonempty[:, None, None, None], keys[tokens.last], state["k"])
    else:
        v = delta[:, None, :, None] * xr
        k = keys
    if alpha.dim() == 2:
        alpha = alpha[..., None].expand(total, heads, dstate)
    y, final["ssm"] = CoreScan.apply(module, plan.tile, tokens, alpha, v, k, queries, state["ssm"])
    if plan.skip and t.get("D") is not None:
        D = t["D"]
        y = y + (D[:, None] if D.dim() == 1 else D) * xr  # type: ignore[index]
    if plan.gate and use_gate:
        zf = t["z"].reshape(total, heads, headdim)  # type: ignore[union-attr]
        zr = zf[:, None] * t["W_z"].transpose(0, 1) if R > 1 else zf[:, None]  # type: ignore[union-attr]
        y = y * F.silu(zr)
    out = (y * t["W_o"].transpose(0, 1)).sum(1) if R > 1 else y[:, 0]  # type: ignore[union-attr]
    out = out * tokens.covered[:, None, None]
    return Graph(out.reshape(batch, seqlen, heads, headdim), final)


# -- the backward -----------------------------------------------------------------------------------------
def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).requires_grad_(True)


def _state_leaves(initial_state: Any, m3: bool, rank: int, nseq: int, heads: int, headdim: int, dstate: int,
                  pairs: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(pieces, leaves)``: every state piece the graph needs (zeros where not given) and
    the float32 leaves of the given ones, keyed as the caller gave them."""
    shapes = {"ssm": (nseq, heads, headdim, dstate)}
    if m3:
        shapes.update(angle=(nseq, heads, pairs), x=(nseq, heads, headdim),
                      k=(nseq, heads, dstate) if rank == 1 else (nseq, rank, heads, dstate))
    given: Mapping[str, Any]
    if initial_state is None:
        given = {}
    elif isinstance(initial_state, torch.Tensor):
        given = {"ssm": initial_state}
    elif isinstance(initial_state, Mapping) and m3:
        unknown = sorted(set(initial_state) - set(shapes))
        if unknown:
            raise ValueError(f"initial_state keys must be among {sorted(shapes)}, got {sorted(initial_state)}")
        given = initial_state
    else:
        raise TypeError(f"initial_state must be a tensor{' or a dict' if m3 else ''}, "
                        f"got {type(initial_state).__name__}")
    leaves: dict[str, torch.Tensor] = {}
    pieces: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        value = given.get(key)
        if value is None:
            pieces[key] = torch.zeros(shape)
            continue
        _check_shape(f"initial_state[{key!r}]" if key != "ssm" or not isinstance(initial_state, torch.Tensor)
                     else "initial_state", value, shape)
        leaves[key] = _leaf(value)
        pieces[key] = leaves[key]
    if m3 and rank == 1:
        pieces["k"] = pieces["k"][:, None]
    return pieces, leaves


def run_backward(compiled: "TVMCompiledScan", plan: MatrixPlan, program: Program,
                 inputs: Mapping[str, Optional[torch.Tensor]], grad_out: Optional[torch.Tensor],
                 grad_final_state: Any, *, initial_state: Any,
                 cu_seqlens: Optional[torch.Tensor]) -> dict[str, Optional[torch.Tensor]]:
    """Gradients of every float input of ``program`` and of ``initial_state`` (same
    structure: a tensor, or Mamba-3's dict), each in its input's shape and dtype."""
    x = _need(inputs, "x")
    if x.dim() != 4:
        raise ValueError(f"input 'x' must be (batch, seqlen, heads, headdim), got shape {tuple(x.shape)}")
    batch, seqlen, heads, headdim = x.shape
    B = _need(inputs, "B")
    dstate = B.shape[-1]
    pairs = 0
    if plan.rotary:
        pairs = _need(inputs, "angles").shape[-1]
    call = DiagCall({}, batch, heads, seqlen, dstate, B.shape[-2], "x", x.dtype)
    cu, _, nseq, _ = sequences(call, cu_seqlens)
    tokens = Tokens.of(cu, batch * seqlen)
    if grad_out is not None and tuple(grad_out.shape) != tuple(x.shape):
        raise ValueError(f"grad_out must have shape {tuple(x.shape)}, got {tuple(grad_out.shape)}")
    names = [s.name for s in program.tensors()]
    given = {k: v for k, v in inputs.items() if k in names and v is not None}
    for name, value in given.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"input {name!r} must be a torch.Tensor, got {type(value).__name__}")
    leaves = {k: _leaf(v) for k, v in given.items()}
    m3 = plan.kind == "mamba3"
    module = compiled.module(matrix_meta(program, dstate, headdim, pairs), ("core_forward", "core_backward"))
    use_gate = plan.gate and inputs.get("z") is not None
    with torch.enable_grad():  # the caller may run under no_grad; the host pieces need a graph
        pieces, state_leaves = _state_leaves(initial_state, m3, plan.rank, nseq, heads, headdim, dstate, pairs)
        graph = build_graph(module, plan, leaves, pieces, tokens, use_gate)
        outs, gouts = _grad_targets(graph, grad_out, grad_final_state, m3, plan.rank)
        wrt = list(leaves.values()) + list(state_leaves.values())
        got = torch.autograd.grad(outs, wrt, gouts, allow_unused=True) if outs else [None] * len(wrt)
    grads: dict[str, Optional[torch.Tensor]] = {name: None for name in names}
    found = dict(zip(list(leaves) + [f"state:{k}" for k in state_leaves], got))
    for name, value in given.items():
        g = found[name]
        grads[name] = (torch.zeros_like(value) if g is None else g).to(value.dtype).reshape(value.shape)
    grads["initial_state"] = None
    if initial_state is not None:
        state_grads = {}
        for key, leaf in state_leaves.items():
            g = found[f"state:{key}"]
            src = initial_state if isinstance(initial_state, torch.Tensor) else initial_state[key]
            state_grads[key] = (torch.zeros_like(leaf) if g is None else g).to(src.dtype)
        grads["initial_state"] = (state_grads.get("ssm") if isinstance(initial_state, torch.Tensor)
                                  else state_grads)  # type: ignore[assignment]
    return grads


def _grad_targets(graph: Graph, grad_out: Optional[torch.Tensor], grad_final_state: Any, m3: bool,
                  rank: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    outs: list[torch.Tensor] = []
    gouts: list[torch.Tensor] = []
    if grad_out is not None:
        outs.append(graph.out)
        gouts.append(grad_out.to(torch.float32))
    if grad_final_state is None:
        return outs, gouts
    if isinstance(grad_final_state, torch.Tensor):
        grad_final_state = {"ssm": grad_final_state}
    if not isinstance(grad_final_state, Mapping):
        raise TypeError(f"grad_final_state must be a tensor{' or a dict' if m3 else ''}, "
                        f"got {type(grad_final_state).__name__}")
    for key, g in grad_final_state.items():
        if g is None:
            continue
        if key not in graph.final and g.numel() == 0:
            continue  # e.g. the angle state of a program without rotary (zero pairs)
        if key not in graph.final:
            raise ValueError(f"grad_final_state has no entry {key!r} for this program; "
                             f"entries: {sorted(graph.final)}")
        value = graph.final[key][:, 0] if key == "k" and rank == 1 else graph.final[key]
        _check_shape(f"grad_final_state[{key!r}]", g, tuple(value.shape))
        if value.requires_grad:  # the final angle is φ mod 2π: its slope is 1 wherever it is defined
            outs.append(value)
            gouts.append(g.to(torch.float32))
    return outs, gouts
