"""Single-token (decode) programs on the Triton backend: ``program.mode == "step"``.

:class:`~scancc.backends.triton.TritonBackend` hands step-mode programs to this module.
``lower`` renders ``scancc/templates/triton/step.py.j2``: one kernel that advances the
state by one token in place and reads out ``y``. ``build`` wraps it in a :class:`TritonStep`.

Two programs are lowered: Mamba-1's selective scan (channel layout, ``A (dim, dstate)``)
and Mamba-2's SSD (head layout, ``A (heads,)``). Both run through the kernel's general
layout ``state (rows, heads, dim, dstate)``, ``x (batch, heads, dim)``, ``A (heads, dim,
dstate)``; :meth:`TritonStep.update` takes tensors in that layout (any strides: a stride-0
``A``/``dt``/``dt_bias`` along ``dim`` and ``dstate`` selects the one-scalar-per-head path).

Schedule: ``algorithm="step"``; ``block_d`` the rows of ``dim`` per program (default: about
``STATE_TILE`` state values per program), ``num_warps``.

Mamba-3 step programs (trapezoid input: four decode states, rotary, MIMO) have a template of
their own; the four functions below hand them to :mod:`scancc.backends.triton_mamba3_step`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch

from ..ir import Program, Schedule
from .base import ScanForward
from .modules import load_source
from .templating import render

TEMPLATE = "triton/step.py.j2"
STATE_TILE = 4096
"""State values one program keeps in registers (BLOCK_M · BLOCK_N) by default."""
DEFAULT_WARPS = 4


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _mamba3(program: Program) -> Any:
    """:mod:`scancc.backends.triton_mamba3_step` for Mamba-3 programs, else ``None``."""
    if program.input.kind != "trapezoid":
        return None
    from . import triton_mamba3_step

    return triton_mamba3_step


def unsupported_reason(program: Program, schedule: Schedule) -> Optional[str]:
    """Why the step kernel cannot run ``program`` with ``schedule``, or ``None``."""
    if _mamba3(program):
        return _mamba3(program).unsupported_reason(program, schedule)
    if program.mode != "step":
        return "the step kernel lowers single-token programs (mode 'step') only"
    if program.state.complex or program.rotary is not None:
        return "the step kernel takes real states without rotary (Mamba-1 / Mamba-2)"
    if program.decay.kind != "exp":
        return f"the step kernel needs the decay exp(Δ·A), not {program.decay.kind!r}"
    if program.input.kind != "euler" or program.input.b != "varying":
        return "the step kernel needs the Euler input Δ·B·x with a varying B"
    rd = program.readout
    if rd.kind != "contract" or rd.c != "varying":
        return "the step kernel reads y = Σ C h with a varying C"
    if program.state.shape == "vector" and program.decay.param != "state":
        return "on a vector state the step kernel needs A (dim, dstate)"
    if program.state.shape == "matrix" and program.decay.param != "head":
        return "on a matrix state the step kernel needs A (heads,)"
    if schedule.algorithm != "step":
        return f"the step kernel implements algorithm 'step', not {schedule.algorithm!r}"
    if schedule.block_n is not None:
        return "the step kernel keeps the whole dstate in a tile: leave block_n unset"
    return None


def default_schedule(program: Program) -> Schedule:
    """``step``: tiles sized at launch (about ``STATE_TILE`` state values), 4 warps."""
    if _mamba3(program):
        return _mamba3(program).default_schedule(program)
    return Schedule(algorithm="step", num_warps=DEFAULT_WARPS)


def template_context(program: Program) -> dict[str, Any]:
    step = program.step
    return dict(name=program.name, softplus=bool(step and step.softplus), clamp=step.clamp if step else None,
                skip=program.readout.skip, gate=program.readout.gate != "none", inf=math.inf)


def lower(program: Program, schedule: Schedule) -> str:
    """The kernel source; :meth:`TritonBackend.lower` has already refused what cannot be lowered."""
    if _mamba3(program):
        return _mamba3(program).lower(program, schedule)
    return render(TEMPLATE, **template_context(program))


def build(program: Program, schedule: Schedule, source: str) -> Any:
    if _mamba3(program):
        return _mamba3(program).build(program, schedule, source)
    return TritonStep(program, schedule, source, load_source(source, "triton", program.name))


def _strides(t: Optional[torch.Tensor], n: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * n


def tied_head(A: torch.Tensor, dt: torch.Tensor, dt_bias: Optional[torch.Tensor]) -> bool:
    """Whether ``A (heads, dim, dstate)``, ``dt (batch, heads, dim)`` and ``dt_bias (heads, dim)``
    are constant along ``dim``/``dstate`` by their strides (a broadcast scalar per head)."""
    def flat(t: torch.Tensor, axes: tuple[int, ...]) -> bool:
        return all(t.stride(a) == 0 or t.shape[a] == 1 for a in axes)

    return flat(A, (1, 2)) and flat(dt, (2,)) and (dt_bias is None or flat(dt_bias, (1,)))


class TritonStep:
    """A step-mode program compiled to Triton (implements ``CompiledScan``'s forward)."""

    backend = "triton"

    def __init__(self, program: Program, schedule: Schedule, source: str, module: Any) -> None:
        self.program = program
        self.schedule = schedule
        self.source = source
        self._kernel = getattr(module, f"{program.name}_kernel")

    def __repr__(self) -> str:
        return f"TritonStep({self.program.name!r}, {self.schedule.to_json()})"

    def update(
        self,
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
        out: torch.Tensor,
    ) -> None:
        """One token, in the kernel layout (shapes already validated by the caller).

        ``state (rows, heads, dim, dstate)`` updated in place; ``x, dt, z, out (batch, heads,
        dim)``; ``A (heads, dim, dstate)``; ``B, C (batch, groups, dstate)``; ``D, dt_bias
        (heads, dim)``; ``state_batch_indices (batch,)`` (negative: padding row).
        """
        batch, heads, dim = x.shape
        dstate = A.shape[2]
        groups = B.shape[1]
        block_n = _next_pow2(dstate)
        want_m = self.schedule.block_d or max(1, STATE_TILE // block_n)
        block_m = max(1, min(_next_pow2(dim), _next_pow2(want_m)))
        grid = (-(-dim // block_m), batch, heads)
        args = [state, *state.stride(), x, *x.stride(), dt, *dt.stride(), dt_bias, *_strides(dt_bias, 2),
                A, *A.stride(), B, *B.stride(), C, *C.stride(), D, *_strides(D, 2), z, *_strides(z, 3),
                out, *out.stride(), state_batch_indices, *_strides(state_batch_indices, 1), state.shape[0],
                dim, dstate, heads // groups]
        meta = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None,
                    HAS_STATE_IDX=state_batch_indices is not None, TIED_HEAD=tied_head(A, dt, dt_bias),
                    BLOCK_M=block_m, BLOCK_N=block_n, num_warps=self.schedule.num_warps)
        if x.device.type == "cuda":
            with torch.cuda.device(x.device):
                self._kernel[grid](*args, **meta)
        else:
            self._kernel[grid](*args, **meta)

    def forward(
        self,
        inputs: Mapping[str, Optional[torch.Tensor]],
        *,
        initial_state: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        return_final_state: bool = False,
        save_for_backward: bool = False,
    ) -> ScanForward:
        """One token of ``program.tensors()`` inputs (no seqlen axis) from ``initial_state``
        (zero when ``None``); the state is not modified (a float32 copy is advanced)."""
        if cu_seqlens is not None:
            raise ValueError(f"{self.program.name}: a step-mode program takes no cu_seqlens")
        if save_for_backward:
            raise ValueError(f"{self.program.name}: step-mode programs have no backward")
        x = inputs.get("u") if self.program.layout == "channel" else inputs.get("x")
        if x is None:
            raise ValueError(f"{self.program.name}: input {'u' if self.program.layout == 'channel' else 'x'!r} "
                             "is required")
        state = torch.zeros(self.state_shape(inputs), dtype=torch.float32, device=x.device)
        if initial_state is not None:
            state.copy_(initial_state)
        out = self.advance(inputs, state)
        return ScanForward(out=out, final_state=state if return_final_state else None)

    def state_shape(self, inputs: Mapping[str, Optional[torch.Tensor]]) -> tuple[int, ...]:
        """``program.state_dims()`` at these inputs: ``(batch, dim, dstate)`` in the channel layout,
        ``(batch, heads, headdim, dstate)`` in the head layout."""
        if self.program.layout == "channel":
            u, A = inputs["u"], inputs["A"]
            assert u is not None and A is not None
            return (u.shape[0], u.shape[1], A.shape[1])
        x, B = inputs["x"], inputs["B"]
        assert x is not None and B is not None
        return (*x.shape, B.shape[2])

    def advance(self, inputs: Mapping[str, Optional[torch.Tensor]], state: torch.Tensor) -> torch.Tensor:
        """One token of ``program.tensors()`` inputs; ``state`` (float32, contiguous,
        :meth:`state_shape`) is updated in place. Returns ``out`` (``u``'s or ``x``'s shape)."""
        get = inputs.get
        if self.program.layout == "channel":
            x = get("u")
            batch, dim = x.shape
            B, C = get("B"), get("C")
            groups = B.shape[1]
            split = (groups, dim // groups)
            x4, dt4 = x.unflatten(1, split), get("delta").unflatten(1, split)
            A4 = get("A").unflatten(0, split)
            vec = {k: (None if get(k) is None else get(k).unflatten(0, split)) for k in ("D", "delta_bias")}
            z4 = None if get("z") is None else get("z").unflatten(1, split)
            D4, bias4 = vec["D"], vec["delta_bias"]
        else:
            x4 = get("x")
            batch, heads, headdim = x4.shape
            B, C = get("B"), get("C")
            dstate = B.shape[2]
            dt4 = get("dt")[:, :, None].expand(batch, heads, headdim)
            A4 = get("A")[:, None, None].expand(heads, headdim, dstate)
            D = get("D")
            D4 = None if D is None else (D if D.dim() == 2 else D[:, None].expand(heads, headdim))
            bias = get("dt_bias")
            bias4 = None if bias is None else bias[:, None].expand(heads, headdim)
            z4 = get("z")
        want = self.state_shape(inputs)
        if tuple(state.shape) != want or state.dtype != torch.float32 or not state.is_contiguous():
            raise ValueError(f"{self.program.name}: state must be a contiguous float32 tensor of shape {want}, "
                             f"got {state.dtype} {tuple(state.shape)}")
        out = torch.empty(x4.shape, dtype=x4.dtype, device=x4.device)
        self.update(state.view(x4.shape + (want[-1],)), x4, dt4, A4, B, C, D4, z4, bias4, None, out)
        return out.reshape(want[:-1])

    def backward(self, *args: Any, **kwargs: Any) -> dict[str, Optional[torch.Tensor]]:
        raise ValueError(f"{self.program.name}: step-mode programs have no backward (decode only)")
