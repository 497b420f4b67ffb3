"""Initial states of the matrix-state programs (SSD, GLA, Mamba-3), as the recurrent kernels of
the CUDA and TVM backends take them.

``initial_state`` is a tensor (the SSM state) or, for Mamba-3, a dict with any of ``"ssm"``
``(num_seqs, heads, headdim, dstate)``, ``"angle"`` ``(num_seqs, heads, pairs)``, ``"k"``
``(num_seqs, R, heads, dstate)`` (``(num_seqs, heads, dstate)`` when R = 1) and ``"x"``
``(num_seqs, heads, headdim)``; absent or ``None`` entries start at zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

MAMBA3_KEYS = ("ssm", "angle", "k", "x")


def state_entries(state: Any, mamba3: bool, nseq: int, heads: int, headdim: int, dstate: int, rank: int,
                  pairs: int) -> dict[str, torch.Tensor]:
    """The given entries of ``initial_state``, shapes checked; ``"k"`` always with its rank axis
    ``(num_seqs, R, heads, dstate)``. Raises ``TypeError``/``ValueError`` naming the entry."""
    if state is None:
        return {}
    if isinstance(state, torch.Tensor):
        state = {"ssm": state}
    if not isinstance(state, Mapping):
        raise TypeError(f"initial_state must be a tensor{' or a dict' if mamba3 else ''}, got {type(state).__name__}")
    allowed = set(MAMBA3_KEYS) if mamba3 else {"ssm"}
    if set(state) - allowed:
        raise ValueError(f"initial_state keys must be among {sorted(allowed)}, got {sorted(state)}")
    shapes = {"ssm": (nseq, heads, headdim, dstate), "angle": (nseq, heads, pairs), "x": (nseq, heads, headdim),
              "k": (nseq, rank, heads, dstate) if rank > 1 else (nseq, heads, dstate)}
    entries = {}
    for key, value in state.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"initial_state[{key!r}] must be a tensor, got {type(value).__name__}")
        if tuple(value.shape) != shapes[key]:
            raise ValueError(f"initial_state[{key!r}] must have shape {shapes[key]}, got {tuple(value.shape)}")
        entries[key] = value[:, None] if key == "k" and rank == 1 else value
    return entries
