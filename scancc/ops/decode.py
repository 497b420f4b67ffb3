"""``selective_state_update``: one decode step of Mamba-1/Mamba-2, the state updated in place.

mamba-ssm's signature and semantics, with every optional argument truly optional and
padding rows in ``state_batch_indices``. The work is one Triton kernel
(:mod:`scancc.backends.triton_step`) behind the ``torch.library`` op
``scancc::selective_state_update`` (it mutates ``state``, has a fake kernel, never syncs
with the host), so it runs inside ``torch.compile`` graphs and CUDA graph capture.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from ..fastpath import Memo, plain_eager, signature
from ..ir import selective
from . import checks as ck

PARAM_DTYPES = ck.ACTIVATION_DTYPES


def _empty(shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The output buffer, which the kernel fully overwrites (tests fill it with NaN)."""
    return torch.empty(shape, device=device, dtype=dtype)


@functools.lru_cache(maxsize=None)
def _compiled(skip: bool, gate: bool, bias: bool, softplus: bool):
    from ..backends.triton_step import default_schedule
    from ..compiler import compile as compile_program

    program = selective(skip=skip, gate=gate, delta_bias=bias, delta_softplus=softplus,
                        name="selective_state_update").as_step()
    return compile_program(program, "triton", default_schedule(program))


def _update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    dt_bias: Optional[torch.Tensor],
    state_batch_indices: Optional[torch.Tensor],
    dt_softplus: bool,
) -> torch.Tensor:
    """The kernel layout (see :meth:`scancc.backends.triton_step.TritonStep.update`)."""
    out = _empty(tuple(x.shape), device=x.device, dtype=x.dtype)
    kernel = _compiled(D is not None, z is not None, dt_bias is not None, dt_softplus)
    kernel.update(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, out)
    return out


_update_op = torch.library.custom_op("scancc::selective_state_update", _update, mutates_args=("state",))


@_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, dt_softplus):  # noqa: ANN001, ANN202
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _vector(name: str, t: object, dims: list[ck.Dim], x: torch.Tensor) -> torch.Tensor:
    return ck.check_arg(name, t, dims, "x", x, PARAM_DTYPES)


def _check(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices) -> Optional[tuple[int, int]]:
    """Every argument check of :func:`selective_state_update` (raises naming the argument);
    returns ``None`` for the Mamba-2 layout, else the Mamba-1 channels' split ``(groups, dim // groups)``."""
    state = ck.check_tensor("state", state)
    x = ck.check_tensor("x", x)
    ck.check_dtype("x", x, ck.ACTIVATION_DTYPES)
    ck.check_dtype("state", state, ck.ACTIVATION_DTYPES)
    ck.check_device("state", state, "x", x)
    mamba1 = x.dim() == 2
    if x.dim() not in (2, 3):
        ck.shape_error("x", x, [[("batch", None), ("dim", None)], [("batch", None), ("nheads", None), ("dim", None)]])
    batch, heads, dim = (x.shape[0], 1, x.shape[1]) if mamba1 else tuple(x.shape)
    head = [] if mamba1 else [("nheads", heads)]
    if state.dim() != x.dim() + 1 or tuple(state.shape[1:-1]) != tuple(x.shape[1:]) or state.shape[-1] < 1:
        ck.shape_error("state", state, [[("batch" if state_batch_indices is None else "rows", None), *head,
                                         ("dim", dim), ("dstate", None)]])
    dstate = state.shape[-1]
    if state_batch_indices is None and state.shape[0] != batch:
        ck.shape_error("state", state, [[("batch", batch), *head, ("dim", dim), ("dstate", dstate)]],
                       "(or pass state_batch_indices)")
    seq = [("batch", batch), *head, ("dim", dim)]
    ck.check_arg("dt", dt, seq, "x", x, ck.ACTIVATION_DTYPES)
    _vector("A", A, [*head, ("dim", dim), ("dstate", dstate)], x)
    B = ck.check_tensor("B", B)
    options = [[("batch", batch), ("dstate", dstate)], [("batch", batch), ("groups", None), ("dstate", dstate)]]
    if not mamba1:
        options = options[1:]
    ck.check_dtype("B", B, ck.ACTIVATION_DTYPES)
    ck.check_device("B", B, "x", x)
    if B.dim() not in (2, 3) or (not mamba1 and B.dim() != 3) or B.shape[0] != batch or B.shape[-1] != dstate:
        ck.shape_error("B", B, options)
    groups = B.shape[1] if B.dim() == 3 else 1
    split = dim if mamba1 else heads
    if groups < 1 or split % groups:
        label = "dim" if mamba1 else "nheads"
        raise ValueError(f"B: expected groups dividing {label} ({label} % groups == 0, {label}={split}), "
                         f"got groups={groups}")
    ck.check_arg("C", C, [(n, B.shape[i]) for i, (n, _) in enumerate(options[0 if B.dim() == 2 else -1])],
                 "x", x, ck.ACTIVATION_DTYPES)
    vec = [*head, ("dim", dim)]
    if D is not None:
        _vector("D", D, vec, x)
    if z is not None:
        ck.check_arg("z", z, seq, "x", x, ck.ACTIVATION_DTYPES)
    if dt_bias is not None:
        _vector("dt_bias", dt_bias, vec, x)
    ck.check_flag("dt_softplus", dt_softplus)
    if state_batch_indices is not None:
        ck.check_arg("state_batch_indices", state_batch_indices, [("batch", batch)], "x", x, ck.INDEX_DTYPES)
    return (groups, dim // groups) if mamba1 else None


_CHECKED: Memo[Optional[tuple[int, int]]] = Memo()


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    state_batch_indices: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One token of the selective recurrence; ``state`` is updated in place.

    ``Δ = softplus(dt + dt_bias)`` (softplus if ``dt_softplus``),
    ``state ← exp(Δ·A)·state + Δ·x·B``, ``out = Σ_n C·state + D·x``, times ``silu(z)``.
    Computed in float32; the state keeps its dtype.

    Mamba-1 layout: ``state (batch, dim, dstate)``, ``x, dt, z (batch, dim)``, ``A (dim,
    dstate)``, ``B, C (batch, dstate)`` or ``(batch, groups, dstate)`` with ``dim % groups
    == 0``, ``D, dt_bias (dim,)``.

    Mamba-2 layout: ``state (batch, nheads, dim, dstate)``, ``x, dt, z (batch, nheads, dim)``,
    ``A (nheads, dim, dstate)``, ``B, C (batch, ngroups, dstate)`` with ``nheads % ngroups
    == 0``, ``D, dt_bias (nheads, dim)``. ``A``, ``dt`` and ``dt_bias`` broadcast with stride
    0 along ``dim``/``dstate`` (e.g. ``A[:, None, None].expand(nheads, dim, dstate)``) take a
    faster path that reads one value per head.

    ``state_batch_indices (batch,)`` int32/int64: batch row ``b`` updates
    ``state[state_batch_indices[b]]`` (``state`` may then have any number of rows); a
    negative index marks a padding row, whose output is zero and which touches no state.
    Index values are not range-checked (that would need a host sync): an index
    ``>= state.shape[0]`` is treated as a padding row too (output zero, no state read or
    written), never as an access outside ``state``.

    Returns ``out``, shaped like ``x`` in x's dtype.
    """
    args = (state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
    if torch.compiler.is_compiling():
        cut = _check(*args)
    else:
        cut = _CHECKED.get_or_make(signature(args), lambda: _check(*args))
    op = _update if plain_eager(args[:9] + (state_batch_indices,)) else _update_op
    if cut is not None:
        # Mamba-1 with g groups is Mamba-2 with g heads of dim / g channels (views, no copies).
        if B.dim() == 2:
            B, C = B.unsqueeze(1), C.unsqueeze(1)
        out = op(state.unflatten(1, cut), x.unflatten(1, cut), dt.unflatten(1, cut), A.unflatten(0, cut),
                 B, C, None if D is None else D.unflatten(0, cut), None if z is None else z.unflatten(1, cut),
                 None if dt_bias is None else dt_bias.unflatten(0, cut), state_batch_indices, dt_softplus)
        return out.flatten(1)
    return op(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, dt_softplus)


__all__ = ["selective_state_update"]
