"""Random, well-conditioned inputs for timing a program at a shape.

Values follow the ranges real models produce (decays in (0, 1), step sizes around
0.001–0.1, log-decays ≤ 0), so every schedule runs the same arithmetic it would in a
model and no candidate is judged on overflow. Tensors with a ``batch`` axis are
activations and take the problem's dtype; parameters (``A``, ``D``, biases, fixed
``B``/``C``, MIMO weights) stay float32, as in mamba-ssm; complex inputs are complex64.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..ir import TensorSpec
from .problem import Problem


def _shape(spec: TensorSpec, problem: Problem) -> tuple[int, ...]:
    return tuple(problem[d] for d in spec.dims)


def _inv_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def _value(spec: TensorSpec, problem: Problem, g: torch.Generator) -> torch.Tensor:
    """One input in float32/complex64 on the CPU."""
    program = problem.program
    shape = _shape(spec, problem)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    def randn(scale: float = 1.0) -> torch.Tensor:
        return scale * torch.randn(shape, generator=g)

    def polar(radius: torch.Tensor) -> torch.Tensor:
        return torch.polar(radius, uniform(0.0, 2 * math.pi))

    name, is_complex = spec.name, spec.dtype == "complex"
    if name == "a":  # a given decay in (0.5, 1): long memory, never growing
        radius = uniform(0.5, 0.999)
        return polar(radius) if is_complex else radius
    if name in ("delta", "dt"):
        step = uniform(0.001, 0.1)
        softplus = program.step is not None and program.step.softplus
        return _inv_softplus(step) if softplus else step
    if name in ("delta_bias", "dt_bias"):
        return randn(0.1) if program.step is not None and program.step.softplus else uniform(0.0, 0.01)
    if name == "A":
        if program.decay.kind == "lti" and program.decay.discretization == "none":
            radius = uniform(0.5, 0.999)  # λ given directly: |λ| < 1
            return polar(radius) if is_complex else radius
        real = -torch.exp(randn(0.5))  # Re A < 0
        return torch.complex(real, uniform(0.0, math.pi)) if is_complex else real
    if name == "adt":
        return -uniform(0.001, 0.2)
    if name in ("B", "C"):
        scale = 1.0 / math.sqrt(problem.get("dstate", 1))
        return torch.complex(randn(scale), randn(scale)) if is_complex else randn(scale)
    if name in ("B_bias", "C_bias", "angles"):
        return randn(0.1 if name != "angles" else 1.0)
    if is_complex:
        return torch.complex(randn(), randn())
    return randn()


def make_inputs(
    problem: Problem, device: torch.device, *, seed: int = 0, with_optional: bool = True
) -> dict[str, torch.Tensor]:
    """Every input of ``problem.program`` (optional ones too unless ``with_optional=False``)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for spec in problem.program.tensors():
        if spec.optional and not with_optional:
            continue
        value = _value(spec, problem, g)
        if spec.dtype == "complex":
            value = value.to(torch.complex64)
        elif "batch" in spec.dims:
            value = value.to(problem.dtype)
        out[spec.name] = value.to(device)
    return out


def make_state(problem: Problem, device: torch.device, *, seed: int = 0) -> Optional[torch.Tensor]:
    """A random state ``program.state_dims()`` (float32, complex64 for complex states), or None
    in ``sequence`` mode, where kernels start from zero."""
    if problem.program.mode != "step":
        return None
    g = torch.Generator().manual_seed(seed + 7919)
    shape = tuple(problem[d] for d in problem.program.state_dims())
    state = torch.randn(shape, generator=g)
    if problem.program.state.complex:
        state = torch.complex(state, torch.randn(shape, generator=g))
    return state.to(device)
