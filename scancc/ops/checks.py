"""Argument validation shared by the public ops.

Every message names the argument and says what was expected and what was given.
Dtype problems raise :class:`TypeError`; shapes, devices and values raise
:class:`ValueError`. Conventions the ops share (documented once here):

- float64/complex128 inputs are rejected: the kernels compute in float32, so a float64
  input would silently lose precision (``scancc.oracle`` is the float64 reference).
- Non-contiguous tensors are accepted and copied to contiguous memory inside the op
  (the kernels index dense row-major tensors), as mamba-ssm does for a non-unit last
  stride; contiguous inputs are never copied.
- ``cu_seqlens`` values are checked on the host (one device-to-host copy) in eager mode;
  while ``torch.compile`` traces or a CUDA graph is captured that check is skipped
  (:func:`check_packed`), so compiled and captured graphs never synchronise.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import torch

ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""Dtypes accepted for sequence tensors (``u``, ``delta``, ``z``, ``x``...)."""

Dim = tuple[str, Optional[int]]
"""A named dimension with its expected size (``None``: any size)."""


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    names = [str(d).replace("torch.", "") for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_tensor(name: str, t: object) -> torch.Tensor:
    """``t`` must be a tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def check_dtype(name: str, t: torch.Tensor, allowed: Sequence[torch.dtype], why: str = "") -> None:
    """``t.dtype`` must be one of ``allowed`` (``why`` is appended to the message)."""
    if t.dtype not in allowed:
        hint = ""
        if t.dtype in (torch.float64, torch.complex128):
            hint = " (kernels compute in float32; use scancc.oracle for a float64 reference)"
        elif not (t.dtype.is_floating_point or t.dtype.is_complex):
            hint = " (integer and bool tensors are not accepted)"
        raise TypeError(f"{name}: expected dtype {_dtype_names(allowed)}{why}, got {t.dtype}{hint}")


def check_same_dtype(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``t`` must have the dtype of ``ref`` (mixed activation dtypes are rejected)."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (the dtype of {ref_name}), got {t.dtype}")


def check_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``t`` must live on ``ref``'s device."""
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; all tensors must share a device")


def _fmt(dims: Sequence[Dim]) -> str:
    return "(" + ", ".join(label if size is None else f"{label}={size}" for label, size in dims) + ")"


def check_shape(name: str, t: torch.Tensor, dims: Sequence[Dim], note: str = "") -> None:
    """``t.shape`` must match ``dims``; a size of ``None`` matches anything.

    The message reads e.g. ``B: expected (batch=2, groups, dstate=16, seqlen=64) with
    dim % groups == 0, got (2, 3, 16, 64)``.
    """
    ok = t.dim() == len(dims) and all(size is None or t.shape[i] == size for i, (_, size) in enumerate(dims))
    if not ok:
        shape_error(name, t, [dims], note)


def shape_error(name: str, t: torch.Tensor, options: Sequence[Sequence[Dim]], note: str = "") -> None:
    """Raise the standard shape message listing every accepted layout."""
    expected = " or ".join(_fmt(d) for d in options)
    suffix = f" {note}" if note else ""
    raise ValueError(f"{name}: expected {expected}{suffix}, got {tuple(t.shape)}")


def check_groups(name: str, groups: int, dim: int) -> None:
    """The channel count must be a multiple of the group count of B/C."""
    if groups < 1 or dim % groups != 0:
        raise ValueError(f"{name}: expected groups dividing dim ({dim} % groups == 0), got groups={groups}")


def check_seqlen(name: str, seqlen: int) -> None:
    """Empty sequences are rejected (there is nothing to scan and no last state)."""
    if seqlen == 0:
        raise ValueError(f"{name}: expected seqlen >= 1, got seqlen=0")


def check_nonempty(name: str, t: torch.Tensor, labels: Sequence[str]) -> None:
    """Every axis of ``t`` (named ``labels``) has size >= 1: the kernels' launch sizes must be
    positive, and the other arguments' sizes are checked against this tensor's."""
    empty = [label for label, size in zip(labels, t.shape) if size == 0]
    if empty:
        dims = [(label, None) for label in labels]
        raise ValueError(f"{name}: expected {_fmt(dims)} with every size >= 1, got {tuple(t.shape)} "
                         f"({', '.join(empty)} = 0)")


def check_channel_input(name: str, value: object) -> tuple[int, int, int]:
    """A ``(batch, dim, seqlen)`` activation of a floating dtype with every size ≥ 1; returns its sizes."""
    t = check_tensor(name, value)
    check_dtype(name, t, ACTIVATION_DTYPES)
    if t.dim() != 3:
        shape_error(name, t, [[("batch", None), ("dim", None), ("seqlen", None)]])
    batch, dim, seqlen = t.shape
    check_seqlen(name, seqlen)
    check_nonempty(name, t, ("batch", "dim", "seqlen"))
    return batch, dim, seqlen


def check_flag(name: str, value: object) -> bool:
    """Python bools only (a tensor here would need a host sync to read)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value  # type: ignore[return-value]


def check_cu_seqlens(cu_seqlens: object, batch: int, seqlen: int, ref_name: str, ref: torch.Tensor) -> int:
    """Validate packed-sequence boundaries and return the number of sequences.

    ``cu_seqlens``: 1-D int32/int64 ``(num_seqs + 1,)``, strictly increasing from 0 to
    ``seqlen``; the batch must be 1. The value checks need the data on the host and are
    skipped while ``torch.compile`` traces (shape, dtype and device are always checked).
    """
    cu = check_tensor("cu_seqlens", cu_seqlens)
    check_dtype("cu_seqlens", cu, (torch.int32, torch.int64))
    check_device("cu_seqlens", cu, ref_name, ref)
    if cu.dim() != 1 or cu.shape[0] < 2:
        raise ValueError(f"cu_seqlens: expected shape (num_seqs + 1,) with num_seqs >= 1, got {tuple(cu.shape)}")
    if batch != 1:
        raise ValueError(f"cu_seqlens: expected batch=1 (sequences packed along seqlen), got batch={batch}")
    if not torch.compiler.is_compiling():
        values = cu.tolist()
        if values[0] != 0 or values[-1] != seqlen:
            raise ValueError(f"cu_seqlens: expected to start at 0 and end at seqlen={seqlen}, "
                             f"got start {values[0]} and end {values[-1]}")
        steps = [b - a for a, b in zip(values[:-1], values[1:])]
        if min(steps) <= 0:
            at = steps.index(min(steps))
            raise ValueError(f"cu_seqlens: expected strictly increasing values (every sequence non-empty), "
                             f"got cu_seqlens[{at}]={values[at]} >= cu_seqlens[{at + 1}]={values[at + 1]}")
    return cu.shape[0] - 1


def check_state(
    name: str,
    state: object,
    dims: Sequence[Dim],
    dtype: torch.dtype,
    ref_name: str,
    ref: torch.Tensor,
) -> torch.Tensor:
    """An initial state: a tensor of exactly ``dims`` and ``dtype`` on ``ref``'s device."""
    t = check_tensor(name, state)
    check_dtype(name, t, (dtype,), " (states are kept in float32)" if dtype == torch.float32 else
                " (complex states are kept in complex64)")
    check_device(name, t, ref_name, ref)
    check_shape(name, t, dims)
    return t


def optional_tensor(name: str, t: object) -> Union[torch.Tensor, None]:
    """``None`` or a tensor."""
    return None if t is None else check_tensor(name, t)


def check_arg(
    name: str,
    t: object,
    dims: Sequence[Dim],
    ref_name: str,
    ref: torch.Tensor,
    dtypes: Optional[Sequence[torch.dtype]] = None,
    why: str = "",
) -> torch.Tensor:
    """A tensor on ``ref``'s device with shape ``dims`` and a dtype from ``dtypes``
    (``None``: exactly ``ref``'s dtype)."""
    t = check_tensor(name, t)
    if dtypes is None:
        check_same_dtype(name, t, ref_name, ref)
    else:
        check_dtype(name, t, dtypes, why)
    check_device(name, t, ref_name, ref)
    check_shape(name, t, dims)
    return t


# -- SSD (Mamba-2) arguments: scancc.ops.ssd -----------------------------------------------------
INDEX_DTYPES = (torch.int32, torch.int64)


def host_checks_allowed(t: torch.Tensor) -> bool:
    """Whether a value check may copy ``t`` to the host: not while ``torch.compile`` traces and
    not while the current CUDA stream captures a graph (a copy would fail there)."""
    if torch.compiler.is_compiling():
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def check_packed(cu_seqlens: object, batch: int, seqlen: int, ref_name: str, ref: torch.Tensor) -> int:
    """:func:`check_cu_seqlens`, whose value checks (a host copy) are skipped while a CUDA graph
    is captured as they are while ``torch.compile`` traces."""
    cu = check_tensor("cu_seqlens", cu_seqlens)
    if host_checks_allowed(cu):
        return check_cu_seqlens(cu, batch, seqlen, ref_name, ref)
    check_dtype("cu_seqlens", cu, INDEX_DTYPES)
    check_device("cu_seqlens", cu, ref_name, ref)
    if cu.dim() != 1 or cu.shape[0] < 2:
        raise ValueError(f"cu_seqlens: expected shape (num_seqs + 1,) with num_seqs >= 1, got {tuple(cu.shape)}")
    if batch != 1:
        raise ValueError(f"cu_seqlens: expected batch=1 (sequences packed along seqlen), got batch={batch}")
    return cu.shape[0] - 1


def check_power_of_two(name: str, value: object, lo: int, hi: int) -> int:
    """A Python int that is a power of two in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < lo or value > hi or value & (value - 1):
        raise ValueError(f"{name}: expected a power of two in [{lo}, {hi}], got {value}")
    return value


def check_limits(name: str, value: object) -> tuple[float, float]:
    """A pair ``(lo, hi)`` of numbers with ``0 <= lo <= hi`` (``hi`` may be ``inf``)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise TypeError(f"{name}: expected a pair of numbers (lo, hi), got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not 0.0 <= lo <= hi:  # also false for NaN
        raise ValueError(f"{name}: expected 0 <= lo <= hi, got ({lo}, {hi})")
    return lo, hi
