"""Single-token (decode) programs on the CUDA backend: ``program.mode == "step"``.

The same two programs and the same kernel layout as :mod:`scancc.backends.triton_step`
(Mamba-1's selective scan, Mamba-2's SSD; ``state (rows, heads, dim, dstate)`` updated in
place), so :class:`CUDAStep` keeps that module's argument handling (``forward`` maps a
program's inputs to the kernel layout) and only launches a different kernel
(``scancc/templates/cuda/step.cu.j2``).

Schedule: ``algorithm="step"``; ``block_n`` state entries per thread (default 8),
``num_warps`` (default 4) → ``block_d`` rows of ``dim`` per block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..ir import Program, Schedule
from . import triton_step
from .cuda_diag import CTYPES, _cfloat, _comment
from .cuda_runtime import launch, load_kernels, pack_args
from .triton_step import TritonStep

TEMPLATE = "cuda/step.cu.j2"
ENTRIES_PER_THREAD = 8
TENSORS = (("state", 4, "hdn"), ("x", 3, "bhd"), ("dt", 3, "bhd"), ("dt_bias", 2, "hd"), ("A", 3, "hdn"),
           ("B", 3, "bgn"), ("C", 3, "bgn"), ("D", 2, "hd"), ("z", 3, "bhd"), ("out", 3, "bhd"))


def unsupported_reason(program: Program, schedule: Schedule) -> str | None:
    """The Triton step kernel's rules (the same programs and layout)."""
    return triton_step.unsupported_reason(program, schedule)


def default_schedule(program: Program) -> Schedule:
    return Schedule(algorithm="step", num_warps=4)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclass(frozen=True)
class StepConfig:
    """``nsplit`` threads per row of ``dim``, ``bm`` rows per block."""

    dstate: int
    nsplit: int
    bm: int

    def macros(self) -> dict[str, int]:
        return dict(DSTATE=self.dstate, NSPLIT=self.nsplit, BM=self.bm)

    def grid(self, dim: int, batch: int, heads: int) -> tuple[int, int, int]:
        return (-(-dim // self.bm), batch, heads)


def choose_config(schedule: Schedule, dstate: int, dim: int) -> StepConfig:
    spt = schedule.block_n or ENTRIES_PER_THREAD
    nsplit = min(32, _next_pow2(-(-dstate // spt)))
    threads = 32 * schedule.num_warps
    bm = max(1, min(threads // nsplit, _next_pow2(dim)))
    if schedule.block_d is not None:
        bm = max(1, min(schedule.block_d, 1024 // nsplit))
    return StepConfig(dstate, nsplit, bm)


def params() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, _, axes in TENSORS:
        const = "" if name in ("state", "out") else "const "
        out.append((f"{const}SCANCC_T_{name}*", name))
        out += [("long long", f"stride_{name}_{a}") for a in (("b",) if name in ("state",) else ()) + tuple(axes)]
    return out + [("const long long*", "state_idx"), ("long long", "state_rows"), ("long long", "dim"),
                  ("long long", "heads_per_group")]


def template_context(program: Program) -> dict[str, Any]:
    step = program.step

    def signature(ps: list[tuple[str, str]]) -> str:
        return ",\n".join(f"    {c} __restrict__ {n}" if c.endswith("*") else f"    {c} {n}" for c, n in ps)

    return dict(name=program.name, header_comment=_comment(program.describe()), softplus=bool(step and step.softplus),
                clamp=step.clamp if step else None, bias=bool(step and step.bias), skip=program.readout.skip,
                gate=program.readout.gate != "none", inf=math.inf, cfloat=_cfloat,
                defaults=StepConfig(16, 2, 64).macros(), params=params(), signature=signature,
                type_macros=[f"SCANCC_T_{name}" for name, _, _ in TENSORS])


def render(program: Program) -> str:
    from .templating import render as render_template

    return render_template(TEMPLATE, **template_context(program))


class CUDAStep(TritonStep):
    """A step-mode program compiled to CUDA (``forward`` as :class:`TritonStep`'s)."""

    backend = "cuda"

    def __init__(self, program: Program, schedule: Schedule, source: str) -> None:
        self.program = program
        self.schedule = schedule
        self.source = source
        self._params = params()

    def __repr__(self) -> str:
        return f"CUDAStep({self.program.name!r}, {self.schedule.to_json()})"

    def update(
        self,
        state: torch.Tensor,
        x: torch.Tensor,
        dt: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        z: torch.Tensor | None,
        dt_bias: torch.Tensor | None,
        state_batch_indices: torch.Tensor | None,
        out: torch.Tensor,
    ) -> None:
        """One token in the kernel layout (see :meth:`TritonStep.update`)."""
        if x.device.type != "cuda":
            raise RuntimeError(f"the CUDA backend runs on CUDA tensors, got x on {x.device}")
        batch, heads, dim = x.shape
        dstate = A.shape[2]
        groups = B.shape[1]
        if heads % groups:
            raise ValueError(f"{self.program.name}: groups ({groups}) must divide heads ({heads})")
        cfg = choose_config(self.schedule, dstate, dim)
        tensors = dict(state=state, x=x, dt=dt, dt_bias=dt_bias, A=A, B=B, C=C, D=D, z=z, out=out)
        values: dict[str, Any] = {}
        types: dict[str, str] = {}
        for name, ndim, axes in TENSORS:
            t = tensors[name]
            if t is not None and t.dtype not in CTYPES:
                raise TypeError(f"{self.program.name}: {name} must be float32, float16 or bfloat16, got {t.dtype}")
            values[name] = t
            types[f"SCANCC_T_{name}"] = CTYPES[t.dtype] if t is not None else "float"
            names = (("b",) if name == "state" else ()) + tuple(axes)
            strides = t.stride() if t is not None else (0,) * ndim
            values.update({f"stride_{name}_{a}": st for a, st in zip(names, strides)})
        idx = None if state_batch_indices is None else state_batch_indices.to(x.device, torch.int64).contiguous()
        values.update(state_idx=idx, state_rows=state.shape[0], dim=dim, heads_per_group=heads // groups)
        options = [f"-DSCANCC_{k}={v}" for k, v in cfg.macros().items()]
        options += [f"-D{k}={v}" for k, v in sorted(types.items())]
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        kernel = load_kernels(self.source, [f"{self.program.name}_kernel"], options, index)[f"{self.program.name}_kernel"]
        launch(kernel, cfg.grid(dim, batch, heads), (cfg.bm * cfg.nsplit,), pack_args(self._params, values), x.device)
