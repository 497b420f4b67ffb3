"""First-order scans (linear / HGRN / RG-LRU, real or complex decay) on the CUDA backend with
schedule ``chunked_scan``: launch geometry, template context, the compiled scan.

``scancc/templates/cuda/linear_chunked.cu.j2`` holds the forward and the backward kernel (see
its header for the algorithm). One block of ``threads`` threads walks one (sequence, channel)
row in tiles of ``threads × items`` steps; both numbers are compiled in (``-DSCANCC_THREADS``,
``-DSCANCC_ITEMS``) and come from the schedule (:func:`choose_config`, a pure function tested
without a GPU): ``num_warps`` warps, ``block_l`` steps per tile.

The backward reads ``h_(t−1)`` from the forward's output (``y = h``), so the forward saves
nothing else. Inputs, outputs, states, ``cu_seqlens`` and gradients are those of
:class:`scancc.backends.cuda_diag.CUDADiagScan`; both build on
:class:`scancc.backends.cuda_diag.CUDADiagonalHost`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..ir import Program, Schedule
from . import cuda_diag
from .base import ScanForward
from .cuda_diag import _next_pow2
from .cuda_runtime import launch, pack_args
from .diagonal import DiagonalPlan
from .diagonal import unsupported_reason as diagonal_unsupported
from .diagonal_host import Binding, ForwardBuffers

TEMPLATE = "cuda/linear_chunked.cu.j2"
DEFAULT_BLOCK_L = 2048   # H100: 256 threads × 8 steps (two float4 / one bf16×8 vector per operand)
DEFAULT_WARPS = 8
MAX_ITEMS = 16           # steps one thread keeps in registers (×3 arrays, ×2 when complex)
MAX_THREADS = 1024


def unsupported_reason(program: Program) -> str | None:
    """Why the chunked first-order scan cannot run ``program``, or ``None``."""
    reason = diagonal_unsupported(program)
    if reason is not None:
        return reason
    plan = DiagonalPlan.of(program)
    if plan.decay != "input" or program.input.kind != "direct" or program.readout.kind != "state" or plan.has_dstate:
        return ("the chunked CUDA scan takes first-order scans h = a·h + s(a)·x, y = h (linear / HGRN / RG-LRU); "
                "other diagonal programs use algorithm 'sequential' or the chunked selective scan")
    return None


def default_schedule() -> Schedule:
    return Schedule(algorithm="chunked_scan", block_l=DEFAULT_BLOCK_L, num_warps=DEFAULT_WARPS)


@dataclass(frozen=True)
class LinearConfig:
    """``threads`` per block (whole warps), ``items`` consecutive steps per thread."""

    threads: int
    items: int

    @property
    def tile(self) -> int:
        return self.threads * self.items

    def macros(self) -> dict[str, int]:
        return {"THREADS": self.threads, "ITEMS": self.items}

    def defines(self) -> list[str]:
        return [f"-DSCANCC_{k}={v}" for k, v in self.macros().items()]

    @staticmethod
    def grid(num_seqs: int, dim: int) -> tuple[int]:
        """One block per (sequence, channel) row."""
        return (num_seqs * dim,)


def choose_config(schedule: Schedule, seqlen: int) -> LinearConfig:
    """The geometry for ``schedule`` at ``seqlen``.

    Tile = ``block_l`` (default 2048), cut to the sequence length rounded up to a power of
    two (at least one warp's 32 steps), so short sequences do not launch idle threads;
    threads = ``32·num_warps`` (fewer if the tile is shorter), items = tile / threads,
    at most ``MAX_ITEMS`` (the tile is then ``threads × MAX_ITEMS``).
    """
    tile = max(32, min(schedule.block_l or DEFAULT_BLOCK_L, _next_pow2(max(1, seqlen))))
    threads = min(MAX_THREADS, 32 * schedule.num_warps, tile)
    items = max(1, min(MAX_ITEMS, tile // threads))
    return LinearConfig(threads, items)


def default_config() -> LinearConfig:
    return choose_config(default_schedule(), 1 << 20)


# -- kernel parameters -------------------------------------------------------------------------
def _ctypes(plan: DiagonalPlan) -> tuple[str, str]:
    """(element type of a and da, of out/h/dout): float pairs when complex."""
    return ("float", "float") if plan.complex else ("SCANCC_T_a", "SCANCC_T_out")


def fwd_params(plan: DiagonalPlan) -> list[tuple[str, str]]:
    _, out_t = _ctypes(plan)
    return cuda_diag.operand_params(plan) + [
        (f"{out_t}*", "out"), ("const float*", "h0"), ("float*", "ht"), ("const long long*", "cu_seqlens"),
        ("long long", "seqlen"), ("long long", "dim")]


def bwd_params(plan: DiagonalPlan) -> list[tuple[str, str]]:
    a_t, out_t = _ctypes(plan)
    return cuda_diag.operand_params(plan) + [
        (f"const {out_t}*", "h"), (f"const {out_t}*", "dout"), ("long long", "stride_dout_b"),
        ("long long", "stride_dout_d"), ("const float*", "dht"), ("const float*", "h0"),
        ("const long long*", "cu_seqlens"), (f"{a_t}*", "da"), ("SCANCC_T_x*", "dx"), ("float*", "dh0"),
        ("long long", "seqlen"), ("long long", "dim")]


def template_context(plan: DiagonalPlan) -> dict[str, Any]:
    ctx = cuda_diag.template_context(plan)
    a_t, out_t = _ctypes(plan)
    ctx.update(fwd_params=fwd_params(plan), bwd_params=bwd_params(plan), a_ctype=a_t, out_ctype=out_t,
               defaults=default_config().macros())
    return ctx


def render(program: Program) -> str:
    from .templating import render as render_template

    return render_template(TEMPLATE, **template_context(DiagonalPlan.of(program)))


# -- the compiled scan -----------------------------------------------------------------------
class CUDALinearScan(cuda_diag.CUDADiagonalHost):
    """A first-order scan compiled to the chunked CUDA kernels (implements ``CompiledScan``)."""

    def __init__(self, program: Program, schedule: Schedule, source: str) -> None:
        reason = unsupported_reason(program)
        if reason is not None:
            raise ValueError(f"{program.name}: {reason}")
        super().__init__(program, schedule, source)
        self._fwd_params = fwd_params(self.plan)
        self._bwd_params = bwd_params(self.plan)

    def _geometry(self, b: Binding) -> tuple[LinearConfig, int]:
        return choose_config(self.schedule, b.seqlen), 0  # the forward saves no states

    def _kernels(self, b: Binding) -> dict[str, Any]:
        names = [f"{self.program.name}_chunked_fwd", f"{self.program.name}_chunked_bwd"]
        return self._load(b, names, b.geometry.defines() + self.type_options(b))

    def _launch_forward(self, b: Binding, io: ForwardBuffers) -> None:
        """``out`` holds every ``h_t`` (complex64 for a complex decay); the final state is ``(num_seqs, dim, 1)``.
        Nothing is saved for the backward beyond ``out`` itself."""
        cfg: LinearConfig = b.geometry
        kernel = self._kernels(b)[f"{self.program.name}_chunked_fwd"]
        launch(kernel, cfg.grid(b.num_seqs, b.dim), (cfg.threads,),
               pack_args(self._fwd_params, self._forward_values(b, io)), b.device)

    def backward(
        self,
        fwd: ScanForward,
        inputs: Mapping[str, torch.Tensor | None],
        grad_out: torch.Tensor | None,
        grad_final_state: torch.Tensor | None = None,
        *,
        initial_state: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Gradients of ``a``, ``x`` and the initial state; ``fwd`` is this scan's forward of the
        same inputs (its ``out`` holds every ``h_t``)."""
        b = self._bind(inputs, cu_seqlens)
        h = fwd.out
        if not isinstance(h, torch.Tensor) or h.shape != b.seq_shape or h.dtype != b.out_dtype:
            got = (tuple(h.shape), h.dtype) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"{self.program.name}: backward needs this scan's forward output {b.seq_shape} "
                             f"{b.out_dtype}, got {got}")
        h = torch.view_as_real(h.resolve_conj()).contiguous() if h.is_complex() else h.contiguous()
        io = self._backward_buffers(b, grad_out, grad_final_state, initial_state)
        cfg: LinearConfig = b.geometry
        values = self._backward_values(b, io)
        values.update(h=h, h0=self._state(b, initial_state, "initial_state"))
        kernel = self._kernels(b)[f"{self.program.name}_chunked_bwd"]
        launch(kernel, cfg.grid(b.num_seqs, b.dim), (cfg.threads,), pack_args(self._bwd_params, values), b.device)
        return self._gradients(inputs, io, initial_state)
