"""``selective_scan_fn``: mamba-ssm's Mamba-1 selective scan, as a drop-in op."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..fastpath import Memo, signature
from ..ir import selective
from . import checks as ck
from .registry import run_checked

WEIGHT_DTYPES = (torch.float32, torch.complex64)


@functools.lru_cache(maxsize=None)
def _json(*flags: bool) -> str:
    complex_, varying_b, varying_c, skip, gate, bias, softplus = flags
    return selective(complex=complex_, varying_B=varying_b, varying_C=varying_c, skip=skip, gate=gate,
                     delta_bias=bias, delta_softplus=softplus).to_json()


@torch.compiler.assume_constant_result
def program_json(complex_: bool, varying_b: bool, varying_c: bool, skip: bool, gate: bool, bias: bool,
                 softplus: bool) -> str:
    """The selective-scan program (canonical JSON) for the given optional parts."""
    return _json(complex_, varying_b, varying_c, skip, gate, bias, softplus)


def _as_complex(t: torch.Tensor) -> torch.Tensor:
    """``(..., 2L)`` real with (re, im) interleaved → ``(..., L)`` complex64, a view when possible."""
    if t.dtype != torch.float32:
        t = t.float()
    # view_as_complex needs an even storage offset (not inspectable while tracing: a
    # traced call with an odd offset fails loudly in view_as_complex).
    if not t.is_contiguous() or (not torch.compiler.is_compiling() and t.storage_offset() % 2):
        t = t.contiguous()
    return torch.view_as_complex(t.unflatten(-1, (t.shape[-1] // 2, 2)))


@dataclass(frozen=True)
class _Form:
    """How a checked B or C becomes the kernel's operand."""

    varying: bool             # (batch, groups, dstate, seqlen) rather than (dim, dstate)
    to_complex: bool = False  # a real time-invariant B/C of a complex A: cast to complex64
    interleaved: bool = False  # real (re, im) pairs along time: viewed as complex64
    add_groups: bool = False   # (batch, dstate, seqlen): one group axis added

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        if self.to_complex:
            t = t.to(torch.complex64)
        if self.interleaved:
            t = _as_complex(t)
        return t.unsqueeze(1) if self.add_groups else t


def _b_or_c(name: str, t: object, u: torch.Tensor, A: torch.Tensor) -> _Form:
    """Validate B or C; return how it becomes the kernel's form (complex64 for complex A), which
    tells whether it varies over time (``(batch, groups, dstate, seqlen)``) or not (``(dim, dstate)``)."""
    t = ck.check_tensor(name, t)
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    cplx = A.is_complex()
    ck.check_device(name, t, "u", u)
    if t.dim() == 2:
        allowed = (torch.complex64, torch.float32) if cplx else (torch.float32,)
        ck.check_dtype(name, t, allowed, " (a time-invariant B/C has A's dtype)")
        ck.check_shape(name, t, [("dim", dim), ("dstate", dstate)])
        return _Form(varying=False, to_complex=cplx and not t.is_complex())

    # Varying: real in u's dtype (complex A: re/im interleaved, length 2L), or complex64.
    if t.is_complex():
        if not cplx:
            raise TypeError(f"{name}: expected a real dtype ({u.dtype}, the dtype of u) because A is real, "
                            f"got {t.dtype}")
        ck.check_dtype(name, t, (torch.complex64,))
    else:
        ck.check_same_dtype(name, t, "u", u)
    interleaved = cplx and not t.is_complex()
    length = ("2*seqlen", 2 * seqlen) if interleaved else ("seqlen", seqlen)
    options = [[("batch", batch), ("dstate", dstate), length],
               [("batch", batch), ("groups", None), ("dstate", dstate), length],
               [("dim", dim), ("dstate", dstate)]]
    ok = t.dim() in (3, 4) and t.shape[0] == batch and t.shape[-2] == dstate and t.shape[-1] == length[1]
    if not ok:
        ck.shape_error(name, t, options, "with dim % groups == 0")
    if t.dim() == 4 and (t.shape[1] < 1 or dim % t.shape[1] != 0):
        ck.shape_error(name, t, options[1:2], "with dim % groups == 0")
    return _Form(varying=True, interleaved=interleaved, add_groups=t.dim() == 3)


@dataclass(frozen=True)
class _Call:
    """What the checks of one argument signature decided."""

    program: str
    b: _Form
    c: _Form


_CHECKED: Memo[_Call] = Memo()


def _check(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state,
           cu_seqlens) -> _Call:
    """Every argument check of :func:`selective_scan_fn` (raises naming the argument)."""
    batch, dim, seqlen = ck.check_channel_input("u", u)
    seq = [("batch", batch), ("dim", dim), ("seqlen", seqlen)]
    ck.check_arg("delta", delta, seq, "u", u)
    ck.check_arg("A", A, [("dim", dim), ("dstate", None)], "u", u, WEIGHT_DTYPES)
    ck.check_nonempty("A", A, ("dim", "dstate"))
    b_form = _b_or_c("B", B, u, A)
    c_form = _b_or_c("C", C, u, A)
    b_groups = B.shape[1] if B.dim() == 4 else 1
    c_groups = C.shape[1] if C.dim() == 4 else 1
    if b_form.varying and c_form.varying and b_groups != c_groups:
        raise ValueError(f"C: expected groups={b_groups} (the groups of B), got groups={c_groups}; "
                         "a (batch, dstate, seqlen) B/C has one group")
    vec = [("dim", dim)]
    if D is not None:
        ck.check_arg("D", D, vec, "u", u, (torch.float32,))
    if z is not None:
        ck.check_arg("z", z, seq, "u", u)
    if delta_bias is not None:
        ck.check_arg("delta_bias", delta_bias, vec, "u", u, (torch.float32,))
    softplus = ck.check_flag("delta_softplus", delta_softplus)
    ck.check_flag("return_last_state", return_last_state)
    rows = batch
    if cu_seqlens is not None:
        rows = ck.check_packed(cu_seqlens, batch, seqlen, "u", u)
    if initial_state is not None:
        ck.check_state("initial_state", initial_state,
                       [("batch" if cu_seqlens is None else "num_seqs", rows), ("dim", dim), ("dstate", A.shape[1])],
                       A.dtype, "u", u)
    prog = program_json(A.is_complex(), b_form.varying, c_form.varying, D is not None, z is not None,
                        delta_bias is not None, softplus)
    return _Call(prog, b_form, c_form)


def selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Mamba-1's selective scan with mamba-ssm's signature and semantics.

    ``Δ = softplus(delta + delta_bias)`` (softplus if ``delta_softplus``);
    ``h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t u_t``; ``y_t = Σ_n C_t h_t + D u_t``
    (complex A: ``2·Re(Σ_n C_t h_t)``); ``out = y · silu(z)``.

    Args:
        u, delta: ``(batch, dim, seqlen)``, float32/float16/bfloat16 (one dtype).
        A: ``(dim, dstate)`` float32 or complex64.
        B, C: ``(batch, dstate, seqlen)`` (one group), ``(batch, groups, dstate, seqlen)``
            with ``dim % groups == 0`` (the same groups for B and C), in u's dtype, or time-invariant ``(dim, dstate)``
            in A's dtype. With complex A a varying B/C is real with (re, im) interleaved
            along the last axis (length ``2*seqlen``, viewed as complex64 without a copy
            when float32 and contiguous) or complex64 ``(..., seqlen)``.
        D, delta_bias: ``(dim,)`` float32.
        z: ``(batch, dim, seqlen)`` in u's dtype.
        initial_state: ``(batch, dim, dstate)`` (``(num_seqs, dim, dstate)`` with
            ``cu_seqlens``), float32 (complex64 for complex A); gradients flow into it.
        cu_seqlens: ``(num_seqs + 1,)`` int32/int64 boundaries of sequences packed along
            seqlen (batch must be 1); states never cross a boundary.
        backend: ``"triton"``, ``"tvm"``, ... or ``None``: ``$SCANCC_BACKEND``, else Triton for
            CUDA tensors and TVM for CPU tensors when installed (see :mod:`scancc.compiler`).

    Returns:
        ``out (batch, dim, seqlen)`` in u's dtype, and with ``return_last_state`` also
        ``last_state (batch or num_seqs, dim, dstate)`` float32 (complex64 for complex A).
    """
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state, cu_seqlens)
    if cu_seqlens is None and not torch.compiler.is_compiling():  # cu_seqlens' values are checked each call
        call = _CHECKED.get_or_make(signature(args), lambda: _check(*args))
    else:
        call = _check(*args)
    B, C = call.b.apply(B), call.c.apply(C)
    out, last = run_checked(
        call.program, {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias},
        initial_state=initial_state, cu_seqlens=cu_seqlens, return_final_state=return_last_state, backend=backend,
    )
    return (out, last) if return_last_state else out
