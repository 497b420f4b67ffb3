"""Pieces every family shares: the step size Δ and the group expansion of B/C."""

from __future__ import annotations

from typing import Any, Optional

from ..ir import Program
from .xp import Ops, softplus


def step_size(ops: Ops, program: Program, dt: Any, bias: Optional[Any], bias_axis_from_end: int) -> Any:
    """``Δ = clamp(softplus(dt + bias) if softplus else dt + bias, lo, hi)``.

    ``bias`` has one axis (dim or heads); ``bias_axis_from_end`` says where that axis sits
    in ``dt`` counted from the end (channel layout ``(batch, dim, seqlen)``: 2; head layout
    ``(batch, seqlen, heads)``: 1; the LTI ``delta (dim,)``: 1).
    """
    step = program.step
    if step is None:
        raise ValueError(f"program {program.name!r} has no step (Δ)")
    delta = dt
    if step.bias and bias is not None:
        delta = delta + bias.reshape(bias.shape + (1,) * (bias_axis_from_end - 1))
    if step.softplus:
        delta = softplus(ops, delta)
    if step.clamp is not None:
        delta = ops.clip(delta, step.clamp[0], step.clamp[1])
    return delta


def expand_groups(ops: Ops, value: Any, axis: int, owners: int) -> Any:
    """Expand a group axis of size G to ``owners`` (channels or heads): owner ``i`` uses group
    ``i // (owners / G)``."""
    groups = value.shape[axis]
    return value if groups == owners else ops.repeat(value, owners // groups, axis)
