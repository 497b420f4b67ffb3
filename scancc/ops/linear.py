"""``linear_scan``: the plain first-order scan ``h_t = a_t ⊙ h_{t−1} + s(a_t)·x_t``."""

from __future__ import annotations

import functools
from typing import Optional, Union, cast

import torch

from ..ir import linear
from ..ir.program import INPUT_SCALES
from . import checks as ck
from .registry import run_checked

REAL_DTYPES = ck.ACTIVATION_DTYPES
SCALES = INPUT_SCALES


@functools.lru_cache(maxsize=None)
def _json(complex_: bool, scale: str) -> str:
    return linear(complex=complex_, scale=scale).to_json()


@torch.compiler.assume_constant_result
def program_json(complex_: bool, scale: str) -> str:
    """The linear-scan program (canonical JSON) for a real or complex decay."""
    return _json(complex_, scale)


def _to_3d(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, 1, -1) if t.dim() == 1 else (t.unsqueeze(1) if t.dim() == 2 else t)


def _state_dims(a: torch.Tensor, rows: int, packed: bool) -> list[ck.Dim]:
    """The user-facing state shape: ``a.shape[:-1]`` with the batch replaced by ``num_seqs``."""
    lead = "num_seqs" if packed else "batch"
    if a.dim() == 1:
        return [(lead, rows)] if packed else []
    return [(lead, rows)] + ([("dim", a.shape[1])] if a.dim() == 3 else [])


def linear_scan(
    a: torch.Tensor,
    x: torch.Tensor,
    *,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    scale: str = "none",
    backend: Optional[str] = None,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``h_t = a_t ⊙ h_{t−1} + s(a_t)·x_t`` over the last axis; returns every ``h_t``.

    ``scale`` s: ``"none"`` (1), ``"one_minus_a"`` (``1 − a``, HGRN) or
    ``"sqrt_one_minus_a2"`` (``sqrt(1 − |a|²)``, RG-LRU/LRU).

    Args:
        a, x: ``(batch, dim, seqlen)`` as accelerated-scan's ``scan(gates, tokens)``, or
            ``(batch, seqlen)``, or ``(seqlen,)``. Real ``a``: float32/float16/bfloat16 with
            ``x`` in the same dtype. Complex ``a`` (complex64): ``x`` float32 or complex64.
            A complex ``x`` with a real ``a`` (float32) is also accepted.
        initial_state: ``h_0`` shaped ``a.shape[:-1]`` (batch replaced by ``num_seqs`` with
            ``cu_seqlens``; ``(num_seqs,)`` for 1-D inputs), float32, or complex64 when
            ``a`` or ``x`` is complex.
        cu_seqlens: ``(num_seqs + 1,)`` int32/int64 boundaries of packed sequences; the
            batch must be 1 (1-D inputs count as batch 1).
        backend: ``"triton"``, ``"tvm"``, ... or ``None``: ``$SCANCC_BACKEND``, else Triton for
            CUDA tensors and TVM for CPU tensors when installed (see :mod:`scancc.compiler`).

    Returns:
        ``h`` shaped like ``x``: in x's dtype for real inputs, complex64 when ``a`` or ``x``
        is complex; with ``return_final_state`` also the final state (shaped like
        ``initial_state``, float32 or complex64).

    A complex ``x`` is scanned as its real and imaginary parts side by side (the
    recurrence is linear in ``(h_0, x)``), so the kernel only ever sees a real ``x``.
    """
    a = ck.check_tensor("a", a)
    x = ck.check_tensor("x", x)
    scale = ck.check_choice("scale", scale, SCALES)
    if a.dim() not in (1, 2, 3):
        ck.shape_error("a", a, [[("batch", None), ("dim", None), ("seqlen", None)],
                                [("batch", None), ("seqlen", None)], [("seqlen", None)]])
    ck.check_device("x", x, "a", a)
    ck.check_shape("x", x, [(f"a.shape[{i}]", s) for i, s in enumerate(a.shape)])
    ck.check_seqlen("a", a.shape[-1])
    ck.check_nonempty("a", a, {1: ("seqlen",), 2: ("batch", "seqlen"), 3: ("batch", "dim", "seqlen")}[a.dim()])
    complex_a, complex_x = a.is_complex(), x.is_complex()
    if complex_a:
        ck.check_dtype("a", a, (torch.complex64,))
        ck.check_dtype("x", x, (torch.float32, torch.complex64), " (a is complex64)")
    elif complex_x:
        ck.check_dtype("x", x, (torch.complex64,))
        ck.check_dtype("a", a, (torch.float32,), " (x is complex64)")
    else:
        ck.check_dtype("a", a, REAL_DTYPES)
        ck.check_same_dtype("x", x, "a", a)
    want_state = ck.check_flag("return_final_state", return_final_state)

    a3, x3 = _to_3d(a), _to_3d(x)
    batch, dim, seqlen = a3.shape
    rows = batch
    if cu_seqlens is not None:
        rows = ck.check_packed(cu_seqlens, batch, seqlen, "a", a3)
    state_dtype = torch.complex64 if (complex_a or complex_x) else torch.float32
    h0 = None
    if initial_state is not None:
        h0 = ck.check_state("initial_state", initial_state, _state_dims(a, rows, cu_seqlens is not None),
                            state_dtype, "a", a).reshape(rows, dim, 1)

    if complex_x:  # scan (Re x, Im x) as 2·dim real channels, then recombine
        a3 = torch.cat([a3, a3], dim=1)
        x3 = torch.cat([x3.real, x3.imag], dim=1)
        if h0 is not None:
            h0 = (torch.cat([h0, torch.zeros_like(h0)], dim=1) if complex_a
                  else torch.cat([h0.real, h0.imag], dim=1))
    out, last = run_checked(program_json(complex_a, scale), {"a": a3, "x": x3}, initial_state=h0,
                            cu_seqlens=cu_seqlens, return_final_state=want_state, backend=backend)
    if complex_x:
        out = _merge(out, dim)
        last = None if last is None else _merge(last, dim)
    out = out.reshape(x.shape)
    if not want_state:
        return out
    shape = tuple(size for _, size in _state_dims(a, rows, cu_seqlens is not None))
    return out, cast(torch.Tensor, last).reshape(shape)


def _merge(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``(…, 2·dim, …)`` halves scanned from (Re x, Im x) → the complex result."""
    re, im = t[:, :dim], t[:, dim:]
    if t.is_complex():
        return re + 1j * im
    return torch.complex(re, im)
