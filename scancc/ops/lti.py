"""``lti_scan``: time-invariant diagonal SSMs (S4D, S5, DSS, LRU)."""

from __future__ import annotations

import functools
from typing import Optional, Union

import torch

from ..ir import lti
from ..ir.program import DISCRETIZATIONS
from . import checks as ck
from .registry import run_checked

WEIGHT_DTYPES = (torch.float32, torch.complex64)


@functools.lru_cache(maxsize=None)
def _json(discretization: str, complex_: bool, conj_pairs: bool, skip: bool) -> str:
    return lti(discretization=discretization, complex=complex_, conj_pairs=conj_pairs, skip=skip).to_json()


@torch.compiler.assume_constant_result
def program_json(discretization: str, complex_: bool, conj_pairs: bool, skip: bool) -> str:
    """The LTI program (canonical JSON) for the given discretization and readout."""
    return _json(discretization, complex_, conj_pairs, skip)


def lti_scan(
    u: torch.Tensor,
    delta: Optional[torch.Tensor],
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    *,
    discretization: str = "zoh",
    conj_pairs: bool = True,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``h_t = Ā ⊙ h_{t−1} + B̄ u_t``, ``y_t = 2·Re(Σ_n C_n h_{t,n}) + D u_t`` per channel.

    ``discretization``: ``"zoh"`` (``Ā = exp(Δλ)``, ``B̄ = (Ā − 1)/λ·B``), ``"bilinear"``
    (``Ā = (1 + Δλ/2)/(1 − Δλ/2)``, ``B̄ = Δ/(1 − Δλ/2)·B``) or ``"none"`` (``A`` holds
    Ā itself, as LRU's ``λ``; then ``delta`` must be ``None``). ``conj_pairs`` selects
    S4D's ``2·Re`` readout (conjugate pairs stored once); without it (LRU) the readout
    is ``Re(Σ_n C_n h_n)``. It has no effect for a real ``A`` (readout ``Σ_n C_n h_n``).

    Args:
        u: ``(batch, dim, seqlen)`` float32/float16/bfloat16.
        delta: ``(dim,)`` float32 step ``Δ``; must be positive (not checked: that would
            need a host sync).
        A: ``(dim, dstate)`` complex64 ``λ`` (``Re λ < 0``) or float32.
        B, C: ``(dim, dstate)`` in A's dtype (float32 ones are promoted for a complex A).
        D: ``(dim,)`` float32 skip.
        initial_state: ``(batch or num_seqs, dim, dstate)`` float32 or complex64 (A's dtype).
        cu_seqlens: ``(num_seqs + 1,)`` int32/int64 packed-sequence boundaries (batch 1).
        backend: ``"triton"``, ``"tvm"``, ... or ``None``: ``$SCANCC_BACKEND``, else Triton for
            CUDA tensors and TVM for CPU tensors when installed (see :mod:`scancc.compiler`).

    Returns:
        ``y (batch, dim, seqlen)`` in u's dtype, and with ``return_final_state`` also the
        final state ``(batch or num_seqs, dim, dstate)``.
    """
    disc = ck.check_choice("discretization", discretization, DISCRETIZATIONS)
    pairs = ck.check_flag("conj_pairs", conj_pairs)
    want_state = ck.check_flag("return_final_state", return_final_state)
    batch, dim, seqlen = ck.check_channel_input("u", u)
    vec = [("dim", dim)]
    if disc == "none":
        if delta is not None:
            raise ValueError("delta: expected None with discretization='none' (A holds the discrete Ā), got a tensor")
    else:
        delta = ck.check_arg("delta", delta, vec, "u", u, (torch.float32,))
    A = ck.check_arg("A", A, [("dim", dim), ("dstate", None)], "u", u, WEIGHT_DTYPES)
    ck.check_nonempty("A", A, ("dim", "dstate"))
    cplx = A.is_complex()
    mat = [("dim", dim), ("dstate", A.shape[1])]
    allowed = WEIGHT_DTYPES if cplx else (torch.float32,)
    B = ck.check_arg("B", B, mat, "u", u, allowed, " (A's dtype)")
    C = ck.check_arg("C", C, mat, "u", u, allowed, " (A's dtype)")
    if cplx:
        B, C = B.to(torch.complex64), C.to(torch.complex64)
    if D is not None:
        D = ck.check_arg("D", D, vec, "u", u, (torch.float32,))
    rows = batch
    if cu_seqlens is not None:
        rows = ck.check_packed(cu_seqlens, batch, seqlen, "u", u)
    if initial_state is not None:
        initial_state = ck.check_state("initial_state", initial_state,
                                       [("batch" if cu_seqlens is None else "num_seqs", rows), *mat],
                                       A.dtype, "u", u)

    prog = program_json(disc, cplx, pairs and cplx, D is not None)
    out, last = run_checked(prog, {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D},
                            initial_state=initial_state, cu_seqlens=cu_seqlens, return_final_state=want_state,
                            backend=backend)
    return (out, last) if want_state else out
