"""The CUDA backend's schedule spaces (imported by the autotuner on first use).

- chunked first-order scans (:mod:`scancc.backends.cuda_linear`): ``block_l`` steps per tile,
  ``num_warps`` warps per (sequence, channel) row;
- chunked selective scans (:mod:`scancc.backends.cuda_selective`): ``block_l`` steps per tile
  (32 lanes × items), ``num_warps`` channels per block;
- diagonal family, sequential (:mod:`scancc.backends.cuda_diag`): ``block_n`` state entries per thread,
  ``block_d`` channels per block, ``block_l`` steps per staged tile, ``num_warps`` (the
  default ``block_d`` is ``32·num_warps / threads per channel``);
- decode steps (:mod:`scancc.backends.cuda_step`): ``block_n``, ``num_warps``;
- matrix states (:mod:`scancc.backends.cuda_matrix`): ``block_n`` entries per thread.

Constraints use the launcher's own geometry (:func:`scancc.backends.cuda_diag.choose_config`
resolves a schedule's ``None`` fields exactly as a launch does): at most 1024 threads per
block, block_l no longer than the padded sequence, and a block_d that divides the channels
of a group (it would silently shrink otherwise).
"""

from __future__ import annotations

from ..autotune.device import DeviceLimits
from ..autotune.problem import Problem
from ..autotune.space import Constraint, SearchSpace, register_space
from ..ir import Program, Schedule
from . import cuda_diag, cuda_linear, cuda_matrix, cuda_selective, cuda_step
from .diagonal import DiagonalPlan, unsupported_reason


def _diag_threads(s: Schedule, p: Problem, d: DeviceLimits) -> bool:
    plan = DiagonalPlan.of(p.program)
    dim, groups = p.get("dim", 1), p.get("groups", 1)
    dstate = p.get("dstate", 1) if plan.has_dstate else 1
    cfg = cuda_diag.choose_config(plan, s, dim, dstate, max(1, dim // groups))
    return max(cfg.fwd_threads, cfg.bwd_threads) <= d.max_threads_per_block


def _diag_block_d_fits(s: Schedule, p: Problem, d: DeviceLimits) -> bool:
    plan = DiagonalPlan.of(p.program)
    if s.block_d is None or not plan.grouped:
        return True
    return (p.get("dim", 1) // p.get("groups", 1)) % s.block_d == 0


DIAG_CONSTRAINTS = (
    Constraint("threads_per_block", _diag_threads),
    Constraint("block_d_divides_group", _diag_block_d_fits),
    Constraint("block_l_within_seqlen", lambda s, p, d: (s.block_l or 1) <= max(16, 1 << max(0, (p.seqlen - 1).bit_length()))),
)


def _matrix_threads(s: Schedule, p: Problem, d: DeviceLimits) -> bool:
    cfg = cuda_matrix.choose_config(s, p.get("headdim", 64), p.get("dstate", 64))
    return cfg.threads <= d.max_threads_per_block


def _linear_items_fit(s: Schedule, p: Problem, d: DeviceLimits) -> bool:
    """block_l is exactly threads × items (no silent cap at MAX_ITEMS, at least one step per thread)."""
    block_l = s.block_l or cuda_linear.DEFAULT_BLOCK_L
    return 32 * s.num_warps <= min(block_l, d.max_threads_per_block) and block_l <= 32 * s.num_warps * cuda_linear.MAX_ITEMS


def _selective_fits(s: Schedule, p: Problem, d: DeviceLimits) -> bool:
    """The block's channels share a B/C group and the staged tile fits the shared memory."""
    dim, groups = p.get("dim", 1), p.get("groups", 1)
    if (dim // groups) % s.num_warps or 32 * s.num_warps > d.max_threads_per_block:
        return False
    # fp32 B/C (the larger staging) and the sequential backward's usual 64-step checkpoints
    return cuda_selective.choose_config(s, dim, p.get("dstate", 16), dim // groups, p.seqlen, 64) is not None


LINEAR_CONSTRAINTS = (Constraint("items_per_thread", _linear_items_fit),)
SELECTIVE_CONSTRAINTS = (Constraint("selective_tile_fits", _selective_fits),)


@register_space("cuda")
def cuda_space(program: Program, default: Schedule) -> SearchSpace | None:
    if program.mode == "step":
        return SearchSpace(default, {"block_n": (4, 8, 16), "num_warps": (2, 4, 8)}, (
            Constraint("threads_per_block", lambda s, p, d: 32 * s.num_warps <= d.max_threads_per_block),))
    if program.state.shape == "matrix":
        return SearchSpace(default, {"block_n": (4, 8, 16, 32)}, (Constraint("threads_per_block", _matrix_threads),))
    if unsupported_reason(program) is not None:
        return None
    if default.algorithm == "chunked_scan":
        if cuda_linear.unsupported_reason(program) is None:
            return SearchSpace(default, {"block_l": (512, 1024, 2048, 4096), "num_warps": (4, 8, 16)},
                               LINEAR_CONSTRAINTS)
        if cuda_selective.unsupported_reason(program) is None:
            return SearchSpace(default, {"block_l": (256, 512, 1024), "num_warps": (2, 4, 8)}, SELECTIVE_CONSTRAINTS)
        return None
    if DiagonalPlan.of(program).has_dstate:
        params = {"block_n": (2, 4, 8, 16), "block_l": (16, 32, 64), "num_warps": (2, 4, 8)}
    else:
        params = {"block_d": (32, 64, 128, 256), "block_l": (16, 32, 64)}
    return SearchSpace(default, params, DIAG_CONSTRAINTS)


__all__ = ["cuda_space", "cuda_step"]
