"""Mamba-3 decode on the Triton backend: ``mamba3(...).as_step()`` programs.

:mod:`scancc.backends.triton_step` hands step-mode programs with the trapezoid input here.
``lower`` renders ``scancc/templates/triton/mamba3_step.py.j2``: one kernel that advances the
four decode states (angle, ssm, k, x; recurrences.md §4) by one token in place and reads out
``y``, SISO or MIMO of rank R. ``build`` wraps it in a :class:`Mamba3Step`.

The kernel is memory-bound on the ``ssm`` state: each program reads its ``[BLOCK_P, N]`` tile
once and writes it once; everything else it touches is O(P + R·N) per head.

Schedule: ``algorithm="step"``; ``block_d`` the headdim rows per program (default: the whole
headdim while the tile holds at most :data:`STATE_TILE` values), ``num_warps`` (default 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from ..ir import Program, Schedule
from .base import ScanForward
from .modules import load_source
from .templating import render

TEMPLATE = "triton/mamba3_step.py.j2"
STATE_TILE = 16384
"""State values of one program's tile at most, by default (64 KiB of fp32)."""
DEFAULT_WARPS = 8
"""With the default tile (headdim 64 × dstate 128, fp32) ptxas for sm_90 gives SISO 255 registers
and no spills at 8 warps (MIMO rank 4: 244 bytes spilled); block_d 32 takes 160 registers but two
headdim tiles, hence the k̃/φ buffers and two small copies after the kernel."""
STATE_NAMES = ("angle", "ssm", "k", "x")


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def is_mamba3_step(program: Program) -> bool:
    return program.mode == "step" and program.input.kind == "trapezoid"


def unsupported_reason(program: Program, schedule: Schedule) -> Optional[str]:
    """Why the Mamba-3 step kernel cannot run ``program`` with ``schedule``, or ``None``."""
    if not is_mamba3_step(program):
        return "the Mamba-3 step kernel lowers single-token trapezoid programs only"
    if program.decay.kind != "log_input" or program.decay.param != "head":
        return "the Mamba-3 step kernel needs a scalar log-decay per head"
    if program.input.rank not in (1, 2, 4, 8):
        return f"the Mamba-3 step kernel takes MIMO rank 1, 2, 4 or 8, got {program.input.rank}"
    if schedule.algorithm != "step":
        return f"the step kernel implements algorithm 'step', not {schedule.algorithm!r}"
    if schedule.block_n is not None:
        return "the step kernel keeps the whole dstate in a tile: leave block_n unset"
    return None


def default_schedule(program: Program) -> Schedule:
    """``step``: tiles sized at launch, 8 warps (a 64 × 128 fp32 tile: 32 values a thread)."""
    return Schedule(algorithm="step", num_warps=DEFAULT_WARPS)


def template_context(program: Program) -> dict[str, Any]:
    rot = program.rotary
    return dict(name=program.name, rank=program.input.rank, rotary=rot is not None,
                pairing=None if rot is None else rot.pairing, bias=bool(rot and rot.bias),
                skip=program.readout.skip, gate=program.readout.gate != "none")


def lower(program: Program, schedule: Schedule) -> str:
    return render(TEMPLATE, **template_context(program))


def build(program: Program, schedule: Schedule, source: str) -> "Mamba3Step":
    return Mamba3Step(program, schedule, source, load_source(source, "triton", program.name))


def tiles(schedule: Schedule, headdim: int, dstate: int) -> tuple[int, int]:
    """``(BLOCK_P, BLOCK_N)`` for a head of ``headdim × dstate``."""
    block_n = _next_pow2(dstate)
    want_p = schedule.block_d or max(1, STATE_TILE // block_n)
    return max(1, min(_next_pow2(headdim), _next_pow2(want_p))), block_n


@dataclass
class StepInputs:
    """One token in the kernel's layout (contiguous): ``x, z (batch, heads, P)``; ``dt, adt, trap
    (batch, heads)``; ``angles (batch, heads, K)``; ``q, k (batch, R, groups, N)``; ``q_bias,
    k_bias (heads, R, N)``; ``D (heads,)``; ``W_x, W_z, W_o (heads, R, P)``."""

    x: torch.Tensor
    dt: torch.Tensor
    adt: torch.Tensor
    trap: torch.Tensor
    angles: Optional[torch.Tensor]
    q: torch.Tensor
    k: torch.Tensor
    q_bias: Optional[torch.Tensor] = None
    k_bias: Optional[torch.Tensor] = None
    D: Optional[torch.Tensor] = None
    z: Optional[torch.Tensor] = None
    W_x: Optional[torch.Tensor] = None
    W_z: Optional[torch.Tensor] = None
    W_o: Optional[torch.Tensor] = None


class Mamba3Step:
    """A Mamba-3 step-mode program compiled to Triton."""

    backend = "triton"

    def __init__(self, program: Program, schedule: Schedule, source: str, module: Any) -> None:
        self.program = program
        self.schedule = schedule
        self.source = source
        self.rank = program.input.rank
        self._kernel = getattr(module, f"{program.name}_kernel")

    def __repr__(self) -> str:
        return f"Mamba3Step({self.program.name!r}, {self.schedule.to_json()})"

    def update(self, angle: torch.Tensor, ssm: torch.Tensor, k_state: torch.Tensor, x_state: torch.Tensor,
               t: StepInputs, out: torch.Tensor) -> None:
        """One token; the states are advanced in place (any strides and float dtypes).

        ``angle (batch, heads, K)``, ``ssm (batch, heads, P, N)``, ``k_state (batch, R, heads, N)``,
        ``x_state (batch, heads, P)``; ``out (batch, heads, P)`` is written. Shapes are the
        caller's to check.
        """
        batch, heads, headdim = t.x.shape
        R, groups, dstate = t.q.shape[1], t.q.shape[2], t.q.shape[3]
        pairs = angle.shape[2]
        block_p, block_n = tiles(self.schedule, headdim, dstate)
        p_tiles = -(-headdim // block_p)
        # with several headdim tiles, k̃ and φ go to buffers first (module docstring of the template)
        k_out = k_state if p_tiles == 1 else torch.empty(k_state.shape, dtype=k_state.dtype, device=k_state.device)
        a_out = angle if p_tiles == 1 else torch.empty(angle.shape, dtype=angle.dtype, device=angle.device)
        grid = (p_tiles, batch, heads)
        args = [ssm, *ssm.stride(), k_state, *k_state.stride(), x_state, *x_state.stride(), angle, *angle.stride(),
                k_out, *k_out.stride(), a_out, *a_out.stride(),
                t.x, t.dt, t.adt, t.trap, t.angles, t.q, t.k, t.q_bias, t.k_bias, t.D, t.z, t.W_x, t.W_z, t.W_o, out,
                heads, headdim, dstate, pairs, groups, heads // groups]
        meta = dict(R=R, HAS_W=t.W_x is not None, HAS_BIAS=t.k_bias is not None, HAS_D=t.D is not None, HAS_Z=t.z is not None,
                    BLOCK_P=block_p, BLOCK_N=block_n, num_warps=self.schedule.num_warps)
        if t.x.device.type == "cuda":
            with torch.cuda.device(t.x.device):
                self._kernel[grid](*args, **meta)
        else:
            self._kernel[grid](*args, **meta)
        if p_tiles > 1:
            k_state.copy_(k_out)
            angle.copy_(a_out)

    # -- CompiledScan-style entry point: program.tensors() names ------------------------------------
    def step_inputs(self, inputs: Mapping[str, Optional[torch.Tensor]]) -> StepInputs:
        """The program's inputs (``x (batch, heads, P)``, ``B``/``C (batch, [R,] groups, N)``, ...)
        in the kernel layout."""
        get = inputs.get

        def c(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.contiguous()

        B, C = get("B"), get("C")
        kb, qb = get("B_bias"), get("C_bias")
        if self.rank == 1:
            B, C = B[:, None], C[:, None]
            kb = None if kb is None else kb[:, None]
            qb = None if qb is None else qb[:, None]
        return StepInputs(x=c(get("x")), dt=c(get("dt")), adt=c(get("adt")), trap=c(get("trap")),
                          angles=c(get("angles")), q=c(C), k=c(B), q_bias=c(qb), k_bias=c(kb), D=c(get("D")),
                          z=c(get("z")), W_x=c(get("W_x")), W_z=c(get("W_z")), W_o=c(get("W_o")))

    def state_shapes(self, t: StepInputs) -> dict[str, tuple[int, ...]]:
        """The four states' shapes (``k``: ``(batch, heads, N)`` for rank 1)."""
        batch, heads, headdim = t.x.shape
        N = t.q.shape[3]
        pairs = 0 if t.angles is None else t.angles.shape[2]
        k = (batch, heads, N) if self.rank == 1 else (batch, self.rank, heads, N)
        return {"angle": (batch, heads, pairs), "ssm": (batch, heads, headdim, N), "k": k, "x": (batch, heads, headdim)}

    def forward(
        self,
        inputs: Mapping[str, Optional[torch.Tensor]],
        *,
        initial_state: Optional[Mapping[str, Optional[torch.Tensor]]] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        return_final_state: bool = False,
        save_for_backward: bool = False,
    ) -> ScanForward:
        """One token from ``initial_state`` (a mapping with any of angle, ssm, k, x; missing ones
        zero); the given states are not modified (float32 copies are advanced). ``final_state``
        is the dict of the four advanced states."""
        if cu_seqlens is not None:
            raise ValueError(f"{self.program.name}: a step-mode program takes no cu_seqlens")
        if save_for_backward:
            raise ValueError(f"{self.program.name}: step-mode programs have no backward")
        t = self.step_inputs(inputs)
        given = dict(initial_state or {})
        states = {}
        for key, shape in self.state_shapes(t).items():
            s = torch.zeros(shape, dtype=torch.float32, device=t.x.device)
            if given.get(key) is not None:
                s.copy_(given[key])
            states[key] = s
        out = torch.empty(tuple(t.x.shape), dtype=t.x.dtype, device=t.x.device)
        k4 = states["k"][:, None] if self.rank == 1 else states["k"]
        self.update(states["angle"], states["ssm"], k4, states["x"], t, out)
        return ScanForward(out=out, final_state=states if return_final_state else None)

    def backward(self, *args: Any, **kwargs: Any) -> dict[str, Optional[torch.Tensor]]:
        raise ValueError(f"{self.program.name}: step-mode programs have no backward (decode only)")
