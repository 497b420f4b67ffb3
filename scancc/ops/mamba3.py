"""Mamba-3 ops: ``mamba3_siso_combined`` (mamba-ssm's signature), ``mamba3_mimo`` and the
decode step ``mamba3_step``.

Per head (recurrences.md §4), with ``α = exp(ADT)``, ``λ = sigmoid(Trap)``, ``Δ = DT``::

    H_t = α_t H_(t−1) + (1 − λ_t) Δ_t α_t · x_(t−1) k̃_(t−1)ᵀ + λ_t Δ_t · x_t k̃_tᵀ
    y_t = H_t q̃_t + D x_t,   out = y · silu(Z)

``k̃ = R(φ_t)(K + K_bias)``, ``q̃ = R(φ_t)(Q + Q_bias)``, ``φ_t = (φ_(t−1) + Δ_t·π·tanh(Angles_t))
mod 2π`` rotating ``Angles.shape[-1]`` pairs (SISO: ``(2i, 2i+1)``; MIMO: ``(i, i + N/2)``), the
rest of the key dimensions unrotated. MIMO rank R sums R rank-1 inputs ``x ⊙ W_x[r]`` and reads
``Σ_r W_o[r] ⊙ (H q̃_r + D x ⊙ W_x[r]) · silu(Z ⊙ W_z[r])``.

The kernels are the SSD chunked kernels rendered for the Mamba-3 program
(:mod:`scancc.backends.triton_mamba3`); the ops validate arguments, build the program from
the optional arguments present and run it through one ``torch.autograd.Function``.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Union

import torch

from ..ir import Program, Schedule, mamba3
from . import checks as ck
from .mamba3_op import rotary, run_core
from .mamba3_op import step as mamba3_step_op

MIN_CHUNK, MAX_CHUNK = 16, 4096
RANKS = (1, 2, 4, 8)
STATE_NAMES = ("angle", "ssm", "k", "x")
Result = Union[torch.Tensor, tuple[torch.Tensor, ...]]


@torch.compiler.assume_constant_result
def program_json(rank: int, pairing: str, skip: bool, gate: bool) -> str:
    """The Mamba-3 program (canonical JSON) for a rank, pairing and the optional parts present."""
    return _program(rank, pairing, skip, gate).to_json()


@functools.lru_cache(maxsize=None)
def _program(rank: int, pairing: str, skip: bool, gate: bool) -> Program:
    return mamba3(rank=rank, pairing=pairing, skip=skip, gate=gate)


@torch.compiler.assume_constant_result
def schedule_json(chunk: int) -> str:
    """The chunked schedule (JSON) with ``chunk`` tokens per chunk."""
    return Schedule(algorithm="ssd_chunked", chunk=chunk).to_json()


# -- argument checks ------------------------------------------------------------------------------
def _float(name: str, t: object, dims: list[ck.Dim], ref_name: str, ref: torch.Tensor,
           same_dtype: bool = False) -> torch.Tensor:
    return ck.check_arg(name, t, dims, ref_name, ref, None if same_dtype else ck.ACTIVATION_DTYPES)


def _states(states: object, rows: int, heads: int, headdim: int, dstate: int, pairs: int, rank: int,
            ref: torch.Tensor, name: str = "Input_States") -> Optional[tuple[torch.Tensor, ...]]:
    """``Input_States`` (``name``: the argument, ``state`` for the decode step): ``None`` or all
    four of (angle, ssm, k, x)."""
    if states is None:
        return None
    if not isinstance(states, (tuple, list)) or len(states) != 4:
        raise ValueError(f"{name}: expected a tuple (angle_state, ssm_state, k_state, v_state) or None, "
                         f"got {type(states).__name__}{'' if not isinstance(states, (tuple, list)) else f' of {len(states)}'}")
    if any(s is None for s in states):
        given = [n for n, s in zip(("angle_state", "ssm_state", "k_state", "v_state"), states) if s is not None]
        raise ValueError(f"{name}: give all four states or none (None); only {given} were given")
    angle, ssm, k, v = states
    rows_dim = ("num_seqs" if name == "Input_States" else "batch", rows)
    k_dims: list[ck.Dim] = [rows_dim, ("heads", heads), ("dstate", dstate)]
    if rank > 1:
        k_dims.insert(1, ("rank", rank))
    return (
        _float(f"{name}[0] (angle)", angle, [rows_dim, ("heads", heads), ("pairs", pairs)], "V", ref),
        _float(f"{name}[1] (ssm)", ssm, [rows_dim, ("heads", heads), ("headdim", headdim), ("dstate", dstate)],
               "V", ref),
        _float(f"{name}[2] (k)", k, k_dims, "V", ref),
        _float(f"{name}[3] (v)", v, [rows_dim, ("heads", heads), ("headdim", headdim)], "V", ref),
    )


def _check_common(Q: object, K: object, V: object, ADT: object, DT: object, Trap: object, Q_bias: object,
                  K_bias: object, Angles: object, D: object, Z: object, rank: int, pairing: str, seq_axis: bool
                  ) -> dict[str, Any]:
    """Validate the arguments shared by the three ops; returns sizes and the checked tensors in
    the program's layout. ``seq_axis``: sequence ops (True) or a decode step (False)."""
    V = ck.check_tensor("V", V)
    ck.check_dtype("V", V, ck.ACTIVATION_DTYPES)
    want_v = 4 if seq_axis else 3
    if V.dim() != want_v:
        names = [("batch", None), ("seqlen", None), ("nheads", None), ("headdim_v", None)]
        ck.shape_error("V", V, [names if seq_axis else [names[0], names[2], names[3]]])
    if seq_axis:
        batch, seqlen, heads, headdim = V.shape
        ck.check_seqlen("V", seqlen)
        ck.check_nonempty("V", V, ("batch", "seqlen", "nheads", "headdim_v"))
    else:
        (batch, heads, headdim), seqlen = V.shape, 1
    lead: list[ck.Dim] = [("batch", batch)] + ([("seqlen", seqlen)] if seq_axis else [])
    rank_dims: list[ck.Dim] = [("rank", rank)] if rank > 1 else []
    Q = ck.check_tensor("Q", Q)
    ck.check_device("Q", Q, "V", V)
    ck.check_dtype("Q", Q, ck.ACTIVATION_DTYPES)
    q_rank = len(lead) + len(rank_dims) + 2
    if Q.dim() != q_rank:
        ck.shape_error("Q", Q, [lead + rank_dims + [("nheads_qk", None), ("headdim_qk", None)]])
    heads_qk, dstate = Q.shape[-2], Q.shape[-1]
    if seq_axis:
        ck.check_nonempty("Q", Q, [n for n, _ in lead + rank_dims] + ["nheads_qk", "headdim_qk"])
    if heads_qk < 1 or heads % heads_qk:
        raise ValueError(f"Q: nheads ({heads}) must be a multiple of nheads_qk ({heads_qk}), got Q of shape "
                         f"{tuple(Q.shape)} and V of shape {tuple(V.shape)}")
    ck.check_shape("Q", Q, lead + rank_dims + [("nheads_qk", heads_qk), ("headdim_qk", dstate)])
    K = _float("K", K, lead + rank_dims + [("nheads_qk", heads_qk), ("headdim_qk", dstate)], "V", V)
    per_head = [("batch", batch), ("nheads", heads)] + ([("seqlen", seqlen)] if seq_axis else [])
    ADT = _float("ADT", ADT, per_head, "V", V)
    DT = _float("DT", DT, per_head, "V", V)
    Trap = _float("Trap", Trap, per_head, "V", V)
    Angles = ck.check_tensor("Angles", Angles)
    if Angles.dim() != len(lead) + 2:
        ck.shape_error("Angles", Angles, [lead + [("nheads", heads), ("headdim_angles", None)]])
    pairs = Angles.shape[-1]
    if 2 * pairs > dstate or (pairing == "halves" and dstate % 2):
        raise ValueError(f"Angles: headdim_angles ({pairs}) must be at most headdim_qk / 2 = {dstate // 2}"
                         + (" (and headdim_qk even)" if pairing == "halves" else "") + f", got Angles of shape "
                         f"{tuple(Angles.shape)}")
    Angles = _float("Angles", Angles, lead + [("nheads", heads), ("headdim_angles", pairs)], "V", V)
    bias_dims = [("nheads", heads)] + rank_dims + [("headdim_qk", dstate)]
    Q_bias = None if Q_bias is None else _float("Q_bias", Q_bias, bias_dims, "V", V)
    K_bias = None if K_bias is None else _float("K_bias", K_bias, bias_dims, "V", V)
    if D is not None:
        D = _float("D", D, [("nheads", heads)], "V", V)
    if Z is not None:
        Z = _float("Z", Z, lead + [("nheads", heads), ("headdim_v", headdim)], "V", V)
    return dict(V=V, Q=Q, K=K, ADT=ADT, DT=DT, Trap=Trap, Angles=Angles, Q_bias=Q_bias, K_bias=K_bias, D=D, Z=Z,
                batch=batch, seqlen=seqlen, heads=heads, headdim=headdim, dstate=dstate, pairs=pairs)


def _weights(W_x: object, W_z: object, W_o: object, heads: int, rank: int, headdim: int, V: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dims: list[ck.Dim] = [("nheads", heads), ("rank", rank), ("headdim_v", headdim)]
    return (_float("W_x", W_x, dims, "V", V), _float("W_z", W_z, dims, "V", V), _float("W_o", W_o, dims, "V", V))


def _program_inputs(a: dict[str, Any], seq_axis: bool) -> dict[str, Optional[torch.Tensor]]:
    """The checked arguments in the program's names and layout (``(batch, seqlen, heads)`` per-head
    inputs; keys, queries, gate in V's dtype)."""
    V = a["V"]

    def per_head(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2) if seq_axis else t

    return {
        "x": V, "dt": per_head(a["DT"]), "adt": per_head(a["ADT"]), "trap": per_head(a["Trap"]),
        "B": a["K"].to(V.dtype), "C": a["Q"].to(V.dtype), "B_bias": a["K_bias"], "C_bias": a["Q_bias"],
        "angles": a["Angles"], "D": a["D"], "z": None if a["Z"] is None else a["Z"].to(V.dtype),
    }


def _run(a: dict[str, Any], inputs: dict[str, Optional[torch.Tensor]], rank: int, pairing: str, chunk: int,
         states: Optional[Sequence[torch.Tensor]], cu_seqlens: Optional[torch.Tensor], want_final: bool) -> Result:
    """The torch preparation (:func:`scancc.backends.triton_mamba3.prepare`, traced by
    ``torch.compile``, differentiated by autograd) around the core op ``scancc::mamba3_core``."""
    from ..backends import triton_mamba3 as m3

    program = program_json(rank, pairing, inputs.get("D") is not None, inputs.get("z") is not None)
    state = None if states is None else dict(zip(STATE_NAMES, states))
    prep = m3.prepare(inputs, state, cu_seqlens, rank, pairing, rotary_op=rotary)
    core_cu = None if cu_seqlens is None else cu_seqlens * rank
    y, ssm = run_core(program, schedule_json(chunk), prep.core, prep.h0, core_cu, want_final)
    out = m3.finish(inputs, y, prep, rank)
    if not want_final:
        return out
    pieces = m3.final_pieces(inputs, prep, cu_seqlens, rank)
    return out, pieces["angle"], ssm, pieces["k"], pieces["x"].clone()  # never a view of an input


# -- public ops -------------------------------------------------------------------------------------
def mamba3_siso_combined(
    Q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    ADT: torch.Tensor,
    DT: torch.Tensor,
    Trap: torch.Tensor,
    Q_bias: Optional[torch.Tensor],
    K_bias: Optional[torch.Tensor],
    Angles: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    Z: Optional[torch.Tensor] = None,
    Input_States: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = None,
    chunk_size: int = 64,
    return_final_states: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Result:
    """Mamba-3 SISO with mamba-ssm's signature and return conventions (module docstring).

    Args:
        Q, K: ``(batch, seqlen, nheads_qk, headdim_qk)``; head h reads q/k head
            ``h // (nheads / nheads_qk)``.
        V: ``(batch, seqlen, nheads, headdim_v)`` float32, float16 or bfloat16 (the kernels'
            dtype: Q, K, Z are cast to it).
        ADT, DT, Trap: ``(batch, nheads, seqlen)``: the log-decay ``A·Δ`` (≤ 0), ``Δ`` (> 0) and
            ``trap`` (``λ = sigmoid(trap)``).
        Q_bias, K_bias: ``(nheads, headdim_qk)`` or None.
        Angles: ``(batch, seqlen, nheads, headdim_angles)``, ``headdim_angles ≤ headdim_qk / 2``.
        D: ``(nheads,)``. Z: like V.
        Input_States: ``(angle (num_seqs, nheads, headdim_angles), ssm (num_seqs, nheads,
            headdim_v, headdim_qk), k (num_seqs, nheads, headdim_qk), v (num_seqs, nheads,
            headdim_v))`` or None; ``k`` is the last key as it entered the state (bias added,
            rotated), ``v`` the last value.
        chunk_size: a power of two from 16 to 4096 (the result does not depend on it beyond rounding).
        return_final_states: also return the four final states (fp32; ``v`` in V's dtype).
        cu_seqlens: ``(num_seqs + 1,)`` int32/int64 offsets of sequences packed along seqlen (batch 1).

    Returns:
        ``out (batch, seqlen, nheads, headdim_v)``, or ``(out, angle, ssm, k, v)`` final states.
    """
    a = _check_common(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, 1, "interleaved", True)
    return _sequence_op(a, 1, "interleaved", Input_States, chunk_size, return_final_states, cu_seqlens)


def mamba3_mimo(
    Q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    ADT: torch.Tensor,
    DT: torch.Tensor,
    Trap: torch.Tensor,
    Q_bias: Optional[torch.Tensor],
    K_bias: Optional[torch.Tensor],
    Angles: torch.Tensor,
    W_x: torch.Tensor,
    W_z: torch.Tensor,
    W_o: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    Z: Optional[torch.Tensor] = None,
    Input_States: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = None,
    chunk_size: int = 64,
    return_final_states: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Result:
    """Mamba-3 MIMO of rank ``R = Q.shape[2]`` ∈ {1, 2, 4, 8}, rotary pairs ``(i, i + N/2)``.

    As :func:`mamba3_siso_combined` except: ``Q, K: (batch, seqlen, R, nheads_qk, headdim_qk)``;
    ``Q_bias, K_bias: (nheads, R, headdim_qk)``; ``W_x, W_z, W_o: (nheads, R, headdim_v)``;
    the ``k`` state is ``(num_seqs, R, nheads, headdim_qk)``. ``chunk_size`` counts tokens (the
    kernels take ``chunk_size · R`` rows per chunk, at most 4096).
    """
    Q = ck.check_tensor("Q", Q)
    if Q.dim() != 5 or Q.shape[2] not in RANKS:
        raise ValueError(f"Q: expected (batch, seqlen, rank, nheads_qk, headdim_qk) with rank in {RANKS}, "
                         f"got shape {tuple(Q.shape)}")
    rank = Q.shape[2]
    if rank == 1:
        return _mimo_rank_one(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, W_x, W_z, W_o, D, Z, Input_States,
                              chunk_size, return_final_states, cu_seqlens)
    a = _check_common(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, rank, "halves", True)
    a["W"] = _weights(W_x, W_z, W_o, a["heads"], rank, a["headdim"], a["V"])
    return _sequence_op(a, rank, "halves", Input_States, chunk_size, return_final_states, cu_seqlens)


def _mimo_rank_one(Q: torch.Tensor, K: object, V: object, ADT: object, DT: object, Trap: object, Q_bias: object,
                   K_bias: object, Angles: object, W_x: object, W_z: object, W_o: object, D: object, Z: object,
                   Input_States: object, chunk_size: int, return_final_states: bool,
                   cu_seqlens: Optional[torch.Tensor]) -> Result:
    """Rank 1: the single-rank program (no rank axis) with the W scalings applied around it:
    ``x ⊙ W_x`` in, ``z ⊙ W_z`` as the gate, ``W_o ⊙ y`` out (every step differentiable)."""
    K = ck.check_tensor("K", K)
    if K.dim() != 5 or K.shape[2] != 1:
        raise ValueError(f"K: expected (batch, seqlen, 1, nheads_qk, headdim_qk) like Q, got {tuple(K.shape)}")
    squeeze = [None if b is None else ck.check_tensor(n, b) for n, b in (("Q_bias", Q_bias), ("K_bias", K_bias))]
    for n, b in zip(("Q_bias", "K_bias"), squeeze):
        if b is not None and (b.dim() != 3 or b.shape[1] != 1):
            raise ValueError(f"{n}: expected (nheads, 1, headdim_qk), got {tuple(b.shape)}")
    a = _check_common(Q[:, :, 0], K[:, :, 0], V, ADT, DT, Trap, *[None if b is None else b[:, 0] for b in squeeze],
                      Angles, D, Z, 1, "halves", True)
    wx, wz, wo = (w[:, 0] for w in _weights(W_x, W_z, W_o, a["heads"], 1, a["headdim"], a["V"]))
    Vr = a["V"]
    rows = a["batch"] if cu_seqlens is None else ck.check_packed(cu_seqlens, a["batch"], a["seqlen"], "V", Vr)
    states = None
    if Input_States is not None:
        given = list(Input_States) if isinstance(Input_States, (tuple, list)) else Input_States
        if isinstance(given, list) and len(given) == 4 and all(s is not None for s in given):
            k0 = ck.check_tensor("Input_States[2] (k)", given[2])
            if k0.dim() != 4 or k0.shape[1] != 1:
                raise ValueError(f"Input_States[2] (k): expected (num_seqs, 1, nheads, headdim_qk), got {tuple(k0.shape)}")
            x0 = _float("Input_States[3] (v)", given[3], [("num_seqs", rows), ("heads", a["heads"]),
                                                          ("headdim", a["headdim"])], "V", Vr)
            given = [given[0], given[1], k0[:, 0], x0 * wx.to(x0.dtype)]
        states = _states(given, rows, a["heads"], a["headdim"], a["dstate"], a["pairs"], 1, Vr)
    a["V"] = Vr * wx.to(Vr.dtype)
    if a["Z"] is not None:
        a["Z"] = a["Z"] * wz.to(a["Z"].dtype)
    chunk = ck.check_power_of_two("chunk_size", chunk_size, MIN_CHUNK, MAX_CHUNK)
    want_final = ck.check_flag("return_final_states", return_final_states)
    result = _run(a, _program_inputs(a, True), 1, "halves", chunk, states, cu_seqlens, want_final)
    if not want_final:
        return result * wo.to(result.dtype)
    out, angle, ssm, k, _ = result
    last = Vr[:, -1] if cu_seqlens is None else Vr[0, cu_seqlens[1:].long() - 1]
    return out * wo.to(out.dtype), angle, ssm, k[:, None], last.clone()


def _sequence_op(a: dict[str, Any], rank: int, pairing: str, Input_States: object, chunk_size: int,
                 return_final_states: bool, cu_seqlens: Optional[torch.Tensor]) -> Result:
    chunk = ck.check_power_of_two("chunk_size", chunk_size, MIN_CHUNK, MAX_CHUNK)
    if chunk * rank > MAX_CHUNK:
        raise ValueError(f"chunk_size: chunk_size · rank must be at most {MAX_CHUNK}, got {chunk} · {rank}")
    ck.check_seqlen("V", a["seqlen"])
    want_final = ck.check_flag("return_final_states", return_final_states)
    rows = a["batch"]
    if cu_seqlens is not None:
        rows = ck.check_packed(cu_seqlens, a["batch"], a["seqlen"], "V", a["V"])
    states = _states(Input_States, rows, a["heads"], a["headdim"], a["dstate"], a["pairs"], rank, a["V"])
    inputs = _program_inputs(a, True)
    if rank > 1:
        inputs.update(zip(("W_x", "W_z", "W_o"), a["W"]))
    return _run(a, inputs, rank, pairing, chunk, states, cu_seqlens, want_final)


def mamba3_step(
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    Q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    ADT: torch.Tensor,
    DT: torch.Tensor,
    Trap: torch.Tensor,
    Q_bias: Optional[torch.Tensor],
    K_bias: Optional[torch.Tensor],
    Angles: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    Z: Optional[torch.Tensor] = None,
    W_x: Optional[torch.Tensor] = None,
    W_z: Optional[torch.Tensor] = None,
    W_o: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One decode token of Mamba-3; ``state = (angle, ssm, k, v)`` is updated in place.

    SISO: ``Q, K: (batch, nheads_qk, headdim_qk)``; MIMO (``W_x``, ``W_z``, ``W_o`` given, pairs
    ``(i, i + N/2)``): ``Q, K: (batch, R, nheads_qk, headdim_qk)``. ``V, Z: (batch, nheads,
    headdim_v)``; ``ADT, DT, Trap: (batch, nheads)``; ``Angles: (batch, nheads, headdim_angles)``;
    biases, D and W as in the sequence ops. ``state`` as ``Input_States`` of
    :func:`mamba3_siso_combined` (MIMO ``k``: ``(batch, R, nheads, headdim_qk)``), any float
    dtype and strides; it holds the state after this token on return. Returns ``out (batch,
    nheads, headdim_v)``.

    One Triton kernel (:mod:`scancc.backends.triton_mamba3_step`) behind the custom op
    ``scancc::mamba3_step``, which declares the four states mutated (no gradient).
    """
    mimo = W_x is not None or W_z is not None or W_o is not None
    Q = ck.check_tensor("Q", Q)
    rank = 1
    if mimo:
        if W_x is None or W_z is None or W_o is None:
            raise ValueError("W_x, W_z, W_o: MIMO decode takes all three or none")
        if Q.dim() != 4 or Q.shape[1] not in RANKS:
            raise ValueError(f"Q: expected (batch, rank, nheads_qk, headdim_qk) with rank in {RANKS} (MIMO), "
                             f"got shape {tuple(Q.shape)}")
        rank = Q.shape[1]
    if not isinstance(state, (tuple, list)) or len(state) != 4 or any(s is None for s in state):
        raise ValueError("state: expected the tuple (angle_state, ssm_state, k_state, v_state), all four given")
    for i, s in enumerate(state):
        if not isinstance(s, torch.Tensor):
            raise TypeError(f"state[{i}]: expected a torch.Tensor, got {type(s).__name__}")
    pairing = "halves" if mimo else "interleaved"
    k_state = state[2]
    if mimo and rank == 1:
        # rank 1 carries a rank axis of size 1 on Q, K, the biases and the k state: checked without it
        K = ck.check_tensor("K", K)
        if K.dim() != 4 or K.shape[1] != 1:
            raise ValueError(f"K: expected (batch, 1, nheads_qk, headdim_qk) like Q, got {tuple(K.shape)}")
        if k_state.dim() != 4 or k_state.shape[1] != 1:
            raise ValueError(f"state[2] (k): expected (batch, 1, nheads, headdim_qk), got {tuple(k_state.shape)}")
        biases = []
        for name, bias in (("Q_bias", Q_bias), ("K_bias", K_bias)):
            if bias is not None:
                bias = ck.check_tensor(name, bias)
                if bias.dim() != 3 or bias.shape[1] != 1:
                    raise ValueError(f"{name}: expected (nheads, 1, headdim_qk), got {tuple(bias.shape)}")
                bias = bias[:, 0]
            biases.append(bias)
        a = _check_common(Q[:, 0], K[:, 0], V, ADT, DT, Trap, *biases, Angles, D, Z, 1, pairing, False)
        k_state = k_state[:, 0]
    else:
        a = _check_common(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, rank, pairing, False)
    states = _states((state[0], state[1], k_state, state[3]), a["batch"], a["heads"], a["headdim"], a["dstate"],
                     a["pairs"], rank, a["V"], name="state")
    assert states is not None
    angle, ssm, k_state, x_state = states
    W: tuple[Optional[torch.Tensor], ...] = (None, None, None)
    if mimo:
        W = _weights(W_x, W_z, W_o, a["heads"], rank, a["headdim"], a["V"])

    def with_rank(t: Optional[torch.Tensor], axis: int) -> Optional[torch.Tensor]:
        return t if t is None or (mimo and rank > 1) else t.unsqueeze(axis)

    V = a["V"]
    # The decode kernel takes both biases or neither: a missing one of the two is zero.
    if (a["Q_bias"] is None) != (a["K_bias"] is None):
        given = a["K_bias"] if a["Q_bias"] is None else a["Q_bias"]
        a["Q_bias"], a["K_bias"] = (torch.zeros_like(given) if b is None else b for b in (a["Q_bias"], a["K_bias"]))
    program = step_program_json(rank, pairing, a["D"] is not None, a["Z"] is not None)
    return mamba3_step_op(
        program, step_schedule_json(), angle, ssm, with_rank(k_state, 1), x_state, V, a["DT"], a["ADT"], a["Trap"],
        a["Angles"], with_rank(a["Q"].to(V.dtype), 1), with_rank(a["K"].to(V.dtype), 1), with_rank(a["Q_bias"], 1),
        with_rank(a["K_bias"], 1), a["D"], a["Z"], *W)


@torch.compiler.assume_constant_result
def step_program_json(rank: int, pairing: str, skip: bool, gate: bool) -> str:
    """The decode form (``as_step()``) of :func:`program_json`'s program."""
    return _program(rank, pairing, skip, gate).as_step().to_json()


@torch.compiler.assume_constant_result
def step_schedule_json() -> str:
    from ..backends.triton_mamba3_step import default_schedule

    return default_schedule(_program(1, "interleaved", True, True).as_step()).to_json()


__all__ = ["mamba3_mimo", "mamba3_siso_combined", "mamba3_step"]
