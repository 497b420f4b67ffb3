"""Mamba-1's selective scan on the CUDA backend with schedule ``chunked_scan``: launch geometry,
template context, the compiled scan.

``scancc/templates/cuda/selective_chunked.cu.j2`` holds the forward (see its header): a block
of ``warps`` warps owns ``warps`` channels of one sequence (one warp per channel, the
channels of one B/C group), lane ``l`` owns ``items`` consecutive steps of every tile of
``32·items`` steps, and every state entry is scanned across the warp with shuffles. The
schedule gives ``num_warps`` (channels per block) and ``block_l`` (steps per tile);
:func:`choose_config` (pure, tested without a GPU) fits them to the sizes and to the dynamic
shared memory the staged B/C tile needs.

The gradients come from the sequential backward kernel of :mod:`scancc.backends.cuda_diag`:
with ``save_for_backward`` the chunked forward writes that kernel's checkpoints (the state
before every ``ckpt``-th step) in its layout. Sizes whose B/C tile cannot fit in shared
memory even at one step per lane (very large ``dstate``) run the sequential forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..ir import Program, Schedule
from . import cuda_diag
from .cuda_diag import _next_pow2
from .cuda_runtime import launch, pack_args
from .diagonal import DiagonalPlan
from .diagonal import unsupported_reason as diagonal_unsupported
from .diagonal_host import BackwardBuffers, Binding, ForwardBuffers

TEMPLATE = "cuda/selective_chunked.cu.j2"
DEFAULT_BLOCK_L = 512    # H100: 32 lanes × 16 steps
DEFAULT_WARPS = 4        # channels per block sharing one staged B/C tile
MAX_ITEMS = 32
SMEM_LIMIT = 100 * 1024  # dynamic shared memory per block: two blocks fit an H100/A100 SM
STATIC_SMEM = 48 * 1024  # above this a kernel must opt in to more dynamic shared memory
SEQUENTIAL = Schedule(algorithm="sequential", num_warps=4)


def unsupported_reason(program: Program) -> str | None:
    """Why the chunked selective scan cannot run ``program``, or ``None``."""
    reason = diagonal_unsupported(program)
    if reason is not None:
        return reason
    plan = DiagonalPlan.of(program)
    p = program
    if (plan.complex or plan.decay != "exp" or p.decay.param != "state" or p.input.kind != "euler"
            or plan.b_source != "varying" or plan.c_source != "varying" or p.readout.kind != "contract"
            or p.readout.scale != 1.0):
        return ("the chunked CUDA selective scan takes real A (dim, dstate) with B and C varying over time; "
                "other selective programs use algorithm 'sequential'")
    return None


def default_schedule() -> Schedule:
    return Schedule(algorithm="chunked_scan", block_l=DEFAULT_BLOCK_L, num_warps=DEFAULT_WARPS)


@dataclass(frozen=True)
class SelectiveConfig:
    """``warps`` channels per block, ``items`` steps per lane, checkpoints every ``ckpt`` steps."""

    dstate: int
    warps: int
    items: int
    ckpt: int
    bc_bytes: int = 4  # bytes of one staged B or C value (2: bf16/fp16 inputs)

    @property
    def tile(self) -> int:
        return 32 * self.items

    @property
    def threads(self) -> int:
        return 32 * self.warps

    @property
    def smem_bytes(self) -> int:
        """Dynamic shared memory, as laid out by the template: a (B, C) pair per entry and step
        (one pad pair per lane), then one fp32 carried state per (channel, entry)."""
        return self.dstate * 32 * (self.items + 1) * 2 * self.bc_bytes + self.warps * self.dstate * 4

    def macros(self) -> dict[str, int]:
        return {"DSTATE": self.dstate, "WARPS": self.warps, "ITEMS": self.items, "CKPT": self.ckpt}

    def defines(self) -> list[str]:
        return [f"-DSCANCC_{k}={v}" for k, v in self.macros().items()]

    def grid(self, num_seqs: int, dim: int) -> tuple[int]:
        return (num_seqs * -(-dim // self.warps),)


def choose_config(schedule: Schedule, dim: int, dstate: int, chans_per_group: int, seqlen: int,
                  ckpt: int, bc_bytes: int = 4) -> SelectiveConfig | None:
    """The geometry for these sizes, or ``None`` if no tile fits ``SMEM_LIMIT``.

    ``num_warps`` → channels per block: the largest power of two ≤ it that divides the
    channels of a group (a block's channels share B/C) and is ≤ ``dim`` rounded up to a power
    of two. ``block_l`` (default 512) → items = block_l / 32 in [1, MAX_ITEMS], cut to the
    sequence length (rounded up to a power of two), then halved until the shared memory fits.
    """
    warps = max(1, min(schedule.num_warps, 32, _next_pow2(dim)))
    while warps > 1 and chans_per_group % warps:
        warps //= 2
    items = max(1, min(MAX_ITEMS, (schedule.block_l or DEFAULT_BLOCK_L) // 32, _next_pow2(-(-max(1, seqlen) // 32))))
    cfg = SelectiveConfig(dstate, warps, items, ckpt, bc_bytes)
    while cfg.smem_bytes > SMEM_LIMIT and cfg.items > 1:
        cfg = SelectiveConfig(dstate, warps, cfg.items // 2, ckpt, bc_bytes)
    return cfg if cfg.smem_bytes <= SMEM_LIMIT else None


def default_config() -> SelectiveConfig:
    return SelectiveConfig(16, DEFAULT_WARPS, DEFAULT_BLOCK_L // 32, 64, 2)


def template_context(plan: DiagonalPlan) -> dict[str, Any]:
    ctx = cuda_diag.template_context(plan)
    ctx.update(defaults=default_config().macros())
    return ctx


def render(program: Program) -> str:
    from .templating import render as render_template

    return render_template(TEMPLATE, **template_context(DiagonalPlan.of(program)))


# -- the compiled scan -----------------------------------------------------------------------
class CUDASelectiveScan(cuda_diag.CUDADiagonalHost):
    """Selective scan: chunked CUDA forward, sequential CUDA backward (implements ``CompiledScan``)."""

    def __init__(self, program: Program, schedule: Schedule, source: str) -> None:
        reason = unsupported_reason(program)
        if reason is not None:
            raise ValueError(f"{program.name}: {reason}")
        super().__init__(program, schedule, source)
        self.sequential = cuda_diag.CUDADiagScan(program, SEQUENTIAL, cuda_diag.render(program))
        self._params = cuda_diag.fwd_params(self.plan)

    def _geometry(self, b: Binding) -> tuple[cuda_diag.DiagConfig, int]:
        """The sequential backward's: the chunked forward saves its checkpoints."""
        return self.sequential._geometry(b)

    @staticmethod
    def bc_ctype(b: Binding) -> str:
        """The staged B/C element: their dtype when they share a 16-bit one, else fp32."""
        dtypes = {b.tensors["B"].dtype, b.tensors["C"].dtype}  # type: ignore[union-attr]
        return cuda_diag.CTYPES[dtypes.pop()] if len(dtypes) == 1 and dtypes <= {torch.bfloat16, torch.float16} \
            else "float"

    def config(self, b: Binding) -> SelectiveConfig | None:
        bc_bytes = 4 if self.bc_ctype(b) == "float" else 2
        return choose_config(self.schedule, b.dim, b.dstate, b.chans_per_group, b.seqlen, b.geometry.ckpt, bc_bytes)

    def _kernel(self, b: Binding, cfg: SelectiveConfig, save: bool) -> Any:
        options = cfg.defines() + self.type_options(b) + [f"-DSCANCC_T_BC={self.bc_ctype(b)}"]
        names = [f"{self.program.name}_chunked_fwd", f"{self.program.name}_chunked_fwd_ckpt"]
        kernel = self._load(b, names, options)[names[int(save)]]
        if cfg.smem_bytes > STATIC_SMEM and kernel.max_dynamic_shared_size_bytes < cfg.smem_bytes:
            kernel.max_dynamic_shared_size_bytes = cfg.smem_bytes
        return kernel

    def _launch_forward(self, b: Binding, io: ForwardBuffers) -> None:
        """The chunked forward; sizes whose B/C tile does not fit in shared memory run the
        sequential one (same binding, buffers and checkpoints)."""
        cfg = self.config(b)
        if cfg is None:
            self.sequential._launch_forward(b, io)
            return
        launch(self._kernel(b, cfg, io.ckpt is not None), cfg.grid(b.num_seqs, b.dim), (cfg.threads,),
               pack_args(self._params, self._forward_values(b, io)), b.device, shared_mem=cfg.smem_bytes)

    def _launch_backward(self, b: Binding, ckpt: torch.Tensor, io: BackwardBuffers) -> None:
        """The sequential CUDA backward, from the checkpoints the chunked forward saved."""
        self.sequential._launch_backward(b, ckpt, io)
