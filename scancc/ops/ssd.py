"""``mamba_chunk_scan_combined``: mamba-ssm's Mamba-2 SSD (chunked scan), as a drop-in op."""

from __future__ import annotations

import functools
from typing import Optional, Union

import torch

from ..fastpath import Memo, signature
from ..ir import ssd
from . import checks as ck
from .registry import check_backend, dispatch_scan

MIN_CHUNK, MAX_CHUNK = 16, 4096
PARAM_DTYPES = ck.ACTIVATION_DTYPES


@functools.lru_cache(maxsize=None)
def _json(skip: bool, gate: bool, bias: bool, softplus: bool, lo: float, hi: float) -> str:
    return ssd(skip=skip, gate=gate, dt_bias=bias, dt_softplus=softplus, dt_limit=(lo, hi)).to_json()


@torch.compiler.assume_constant_result
def program_json(skip: bool, gate: bool, bias: bool, softplus: bool, lo: float, hi: float) -> str:
    """The SSD program (canonical JSON) for the given optional parts and ``dt_limit``."""
    return _json(skip, gate, bias, softplus, lo, hi)


@functools.lru_cache(maxsize=None)
def _schedule_json(chunk_size: int) -> str:
    from ..backends.triton_ssd import default_schedule

    return default_schedule(ssd()).replace(chunk=chunk_size).to_json()


@torch.compiler.assume_constant_result
def schedule_json(chunk_size: int) -> str:
    """The Triton SSD schedule with ``chunk_size`` (tiles sized by the backend at launch)."""
    return _schedule_json(chunk_size)


def _float_arg(name: str, t: object, dims: list[ck.Dim], x: torch.Tensor) -> torch.Tensor:
    return ck.check_arg(name, t, dims, "x", x, PARAM_DTYPES)


def _check(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus, dt_limit,
           return_final_states, return_varlen_states) -> tuple[str, str, Optional[torch.Tensor]]:
    """Every argument check of :func:`mamba_chunk_scan_combined` (raises naming the argument);
    returns the program and schedule JSON and the initial states in kernel form."""
    x = ck.check_tensor("x", x)
    ck.check_dtype("x", x, ck.ACTIVATION_DTYPES)
    if x.dim() != 4:
        ck.shape_error("x", x, [[("batch", None), ("seqlen", None), ("heads", None), ("headdim", None)]])
    batch, seqlen, heads, headdim = x.shape
    ck.check_seqlen("x", seqlen)
    ck.check_nonempty("x", x, ("batch", "seqlen", "heads", "headdim"))
    ck.check_arg("dt", dt, [("batch", batch), ("seqlen", seqlen), ("heads", heads)], "x", x, ck.ACTIVATION_DTYPES)
    _float_arg("A", A, [("heads", heads)], x)
    B = ck.check_tensor("B", B)
    ck.check_same_dtype("B", B, "x", x)
    ck.check_device("B", B, "x", x)
    ck.check_shape("B", B, [("batch", batch), ("seqlen", seqlen), ("groups", None), ("dstate", None)],
                   f"with heads % groups == 0 (heads={heads})")
    groups, dstate = B.shape[2], B.shape[3]
    if groups < 1 or dstate < 1 or heads % groups:
        ck.shape_error("B", B, [[("batch", batch), ("seqlen", seqlen), ("groups", None), ("dstate", None)]],
                       f"with heads % groups == 0 (heads={heads})")
    ck.check_arg("C", C, [("batch", batch), ("seqlen", seqlen), ("groups", groups), ("dstate", dstate)], "x", x)
    chunk = ck.check_power_of_two("chunk_size", chunk_size, MIN_CHUNK, MAX_CHUNK)
    if D is not None:
        D = ck.check_tensor("D", D)
        if D.dim() == 2:
            _float_arg("D", D, [("heads", heads), ("headdim", headdim)], x)
        else:
            ck.check_dtype("D", D, PARAM_DTYPES)
            ck.check_device("D", D, "x", x)
            if tuple(D.shape) != (heads,):
                ck.shape_error("D", D, [[("heads", heads)], [("heads", heads), ("headdim", headdim)]])
    if z is not None:
        ck.check_arg("z", z, [("batch", batch), ("seqlen", seqlen), ("heads", heads), ("headdim", headdim)], "x", x)
    if dt_bias is not None:
        _float_arg("dt_bias", dt_bias, [("heads", heads)], x)
    if seq_idx is not None:
        ck.check_arg("seq_idx", seq_idx, [("batch", batch), ("seqlen", seqlen)], "x", x, ck.INDEX_DTYPES)
    softplus = ck.check_flag("dt_softplus", dt_softplus)
    lo, hi = ck.check_limits("dt_limit", dt_limit)
    ck.check_flag("return_final_states", return_final_states)
    if ck.check_flag("return_varlen_states", return_varlen_states) and cu_seqlens is None:
        raise ValueError("return_varlen_states: needs cu_seqlens (the packed sequences' offsets), got None")
    num_seqs = batch
    if cu_seqlens is not None:
        num_seqs = ck.check_packed(cu_seqlens, batch, seqlen, "x", x)
    if initial_states is not None:
        initial_states = _initial_states(initial_states, x, batch, num_seqs, cu_seqlens is not None, heads, headdim,
                                         dstate)
    return (program_json(D is not None, z is not None, dt_bias is not None, softplus, lo, hi), schedule_json(chunk),
            initial_states)


_CHECKED: Memo[tuple[str, str]] = Memo()


def mamba_chunk_scan_combined(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None,
    seq_idx: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_states: bool = False,
    return_varlen_states: bool = False,
    backend: Optional[str] = None,
) -> Union[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Mamba-2's SSD with mamba-ssm's signature and return conventions.

    ``Δ = clamp(softplus(dt + dt_bias) if dt_softplus else dt + dt_bias, *dt_limit)``;
    per head ``H_t = exp(Δ_t A) H_(t−1) + Δ_t x_t B_tᵀ`` (a ``headdim × dstate`` state),
    ``y_t = H_t C_t + D x_t``, ``out = y · silu(z)``. Computed by chunks of ``chunk_size``
    tokens (any power of two from 16 to 4096; the result does not depend on it beyond
    rounding). Differentiable in every float argument, the initial states included.

    Args:
        x: ``(batch, seqlen, heads, headdim)`` float32, float16 or bfloat16.
        dt: ``(batch, seqlen, heads)``, any of those dtypes.
        A: ``(heads,)``, negative (``−exp(A_log)``): with ``Δ >= 0`` every log-decay ``Δ·A`` is
            ``<= 0``, which the kernels rely on (decays are computed as ``exp(min(·, 0))``).
        B, C: ``(batch, seqlen, groups, dstate)`` in x's dtype, ``heads % groups == 0``.
        D: ``(heads,)`` or ``(heads, headdim)``. z: like x. dt_bias: ``(heads,)``.
        initial_states: ``(batch, heads, headdim, dstate)``; with ``cu_seqlens`` one per
            sequence, ``(num_seqs, ...)``, or ``(1, ...)`` for the first sequence only.
        seq_idx: ``(batch, seqlen)`` int32/int64; tokens whose ``seq_idx`` differs from the
            previous token's start a new segment, and segments never interact (the initial
            state belongs to each row's first segment).
        cu_seqlens: ``(num_seqs + 1,)`` int32/int64 offsets of sequences packed along
            seqlen (batch 1). Unlike mamba-ssm, which reads it only for ``return_varlen_states``
            and separates sequences by ``seq_idx`` alone, the sequences are always kept apart.
        dt_softplus, dt_limit: as above; ``dt_limit`` is ``(lo, hi)`` with ``0 <= lo <= hi``.
        return_final_states: also return the state after the last token of each batch row
            (with ``cu_seqlens``: of the last sequence), ``(batch, heads, headdim, dstate)`` fp32.
        return_varlen_states: also return the last state of every packed sequence,
            ``(num_seqs, heads, headdim, dstate)`` fp32 (needs ``cu_seqlens``); unlike
            mamba-ssm, gradients flow through it.
        backend: ``"triton"``, ``"tvm"``, ... or ``None``: ``$SCANCC_BACKEND``, else Triton for
            CUDA tensors and TVM for CPU tensors when installed (see :mod:`scancc.compiler`);
            ``chunk_size`` applies to chunked backends, ``seq_idx`` to those that read it.

    Returns:
        ``out`` (x's shape and dtype), then ``final_states`` if asked, then ``varlen_states``
        if asked: ``out``, ``(out, final_states)``, ``(out, varlen_states)`` or
        ``(out, final_states, varlen_states)``.
    """
    args = (x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus, dt_limit,
            return_final_states, return_varlen_states)
    if cu_seqlens is None and not torch.compiler.is_compiling():  # cu_seqlens' values are checked each call
        program, schedule = _CHECKED.get_or_make(signature(args), lambda: _check(*args)[:2])
    else:
        program, schedule, initial_states = _check(*args)
    named = [("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("dt_bias", dt_bias),
             ("seq_idx", seq_idx)]
    present = [(k, t) for k, t in named if t is not None]
    # seq_idx rides along after the program's own inputs: the SSD kernels read it by name.
    out, final = dispatch_scan(program, check_backend(backend), schedule, ",".join(k for k, _ in present),
                               [t for _, t in present], initial_states, cu_seqlens,
                               return_final_states or return_varlen_states)
    results = [out]
    if return_final_states:
        results.append(final[-1:] if cu_seqlens is not None else final)
    if return_varlen_states:
        results.append(final)
    return results[0] if len(results) == 1 else tuple(results)


def _initial_states(t: object, x: torch.Tensor, batch: int, num_seqs: int, packed: bool, heads: int, headdim: int,
                    dstate: int) -> torch.Tensor:
    """``(rows, heads, headdim, dstate)``; with packed sequences ``(1, ...)`` is the first
    sequence's state (the others start from zero, as in mamba-ssm)."""
    t = ck.check_tensor("initial_states", t)
    ck.check_dtype("initial_states", t, PARAM_DTYPES)
    ck.check_device("initial_states", t, "x", x)
    state = [("heads", heads), ("headdim", headdim), ("dstate", dstate)]
    if not packed:
        ck.check_shape("initial_states", t, [("batch", batch)] + state)
        return t
    if t.dim() == 4 and t.shape[0] == 1 and tuple(t.shape[1:]) == (heads, headdim, dstate) and num_seqs > 1:
        return torch.cat([t, t.new_zeros((num_seqs - 1, heads, headdim, dstate))], 0)
    ck.check_shape("initial_states", t, [("num_seqs", num_seqs)] + state, "(or 1 row: the first sequence's state)")
    return t


__all__ = ["mamba_chunk_scan_combined", "program_json", "schedule_json"]
