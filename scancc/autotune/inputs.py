"""Inputs for timing a program at a shape: the oracle's random inputs, as torch tensors.

Values come from :func:`scancc.oracle.random_inputs` (decays in (0, 1), sensible step
sizes), so every schedule runs the arithmetic it would run in a model. Tensors with a
``batch`` axis are activations and take the problem's dtype; parameters (``A``, ``D``,
biases, fixed ``B``/``C``, MIMO weights) stay float32, as in mamba-ssm; complex inputs
are complex64.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..oracle import as_torch, random_inputs, random_state
from .problem import Problem


def make_inputs(
    problem: Problem, device: torch.device, *, seed: int = 0
) -> tuple[dict[str, torch.Tensor], Optional[torch.Tensor]]:
    """Every input of ``problem.program`` (optional ones included), and in ``step`` mode the state
    ``program.state_dims()`` the kernel updates in place (``None`` in ``sequence`` mode)."""
    program = problem.program
    rng = np.random.default_rng(seed)
    arrays = random_inputs(program, rng, dtype=np.float32, **problem.shape)
    inputs: dict[str, torch.Tensor] = {}
    for spec in program.tensors():
        value = as_torch(arrays[spec.name], device=device)
        if spec.dtype != "complex" and "batch" in spec.dims:
            value = value.to(problem.dtype)
        inputs[spec.name] = value
    if program.mode != "step":
        return inputs, None
    state = random_state(program, rng, inputs=arrays, dtype=np.float32)
    if isinstance(state, dict):  # Mamba-3 decode: the kernel's state tensor is the SSM state
        state = state["ssm"]
    return inputs, as_torch(state, device=device)
