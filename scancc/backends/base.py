"""The contract between the compiler, a backend and the torch ops.

A backend turns ``(Program, Schedule)`` into source (``lower``) and the source into a
:class:`CompiledScan` (``build``). A :class:`CompiledScan` works on torch tensors named as
in :meth:`scancc.ir.Program.tensors`; complex quantities are complex64 tensors in their
natural shape (e.g. ``B: (batch, groups, dstate, seqlen)`` complex64).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Protocol, runtime_checkable

import torch

from ..ir import Program, Schedule


@dataclass
class ScanForward:
    """Result of a forward pass.

    ``out``: the readout, shaped like the program's input ``x``/``u`` and in its dtype
    (complex64 for complex first-order scans). ``final_state``: ``(num_seqs, dim, dstate)``
    (vector state) or ``(num_seqs, heads, headdim, dstate)`` (matrix state), float32 or
    complex64, when asked for. ``saved``: whatever the backward of the same kernel needs
    (e.g. per-tile state checkpoints); opaque to callers.
    """

    out: torch.Tensor
    final_state: Optional[torch.Tensor] = None
    saved: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class CompiledScan(Protocol):
    """A program compiled for one backend and schedule."""

    program: Program
    schedule: Schedule
    backend: str
    source: str

    def forward(
        self,
        inputs: Mapping[str, Optional[torch.Tensor]],
        *,
        initial_state: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        return_final_state: bool = False,
        save_for_backward: bool = False,
    ) -> ScanForward:
        """Run the recurrence. ``inputs`` maps names from ``program.tensors()`` to tensors
        (optional ones may be missing or ``None``). With ``cu_seqlens`` (int32/int64,
        ``(num_seqs + 1,)``) the batch is 1 and the sequences are packed along ``seqlen``;
        ``initial_state``/``final_state`` then have ``num_seqs`` rows."""
        ...

    def backward(
        self,
        fwd: ScanForward,
        inputs: Mapping[str, Optional[torch.Tensor]],
        grad_out: Optional[torch.Tensor],
        grad_final_state: Optional[torch.Tensor] = None,
        *,
        initial_state: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
    ) -> dict[str, Optional[torch.Tensor]]:
        """Gradients of every float input by name, plus ``"initial_state"``; each in its
        input's shape and dtype (``None`` for absent inputs). ``fwd`` must come from
        ``forward(..., save_for_backward=True)`` on the same inputs.

        A kernel whose backward needs less than the whole forward may also define
        ``prepare_backward(inputs, *, initial_state, cu_seqlens, return_final_state) ->
        ScanForward``, whose result ``backward`` accepts as ``fwd`` (its ``out`` may be empty);
        the torch ops call it in place of the forward before the backward."""
        ...


class Backend(Protocol):
    """One code generator + runtime."""

    name: str

    def available(self) -> bool:
        """Whether this backend's runtime is importable here."""
        ...

    def supports(self, program: Program, schedule: Schedule) -> bool:
        """Whether this backend can lower ``program`` with ``schedule``."""
        ...

    def default_schedule(self, program: Program) -> Schedule:
        ...

    def lower(self, program: Program, schedule: Schedule) -> str:
        """Render the kernel source (forward and backward) for ``program``."""
        ...

    def build(self, program: Program, schedule: Schedule, source: str) -> CompiledScan:
        ...
