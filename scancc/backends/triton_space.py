"""The Triton backend's schedule spaces, declared beside its templates.

Importing this module registers one provider for ``"triton"`` with
:func:`scancc.autotune.register_space`; the autotuner imports it the first time it needs a
Triton space. The provider answers for each half of the backend:

- diagonal family (:mod:`scancc.backends.triton`): with a state axis (``dstate``, Mamba-1)
  the forward's algorithm (``sequential`` / ``chunked_scan``), ``block_d`` channels per
  program, ``block_l`` steps per tile and ``num_warps``; plain scans: ``block_l``,
  ``block_d``, ``num_warps``, ``num_stages`` of the chunked scan;
- SSD (:mod:`scancc.backends.triton_ssd`): ``chunk``, ``block_l`` (row tile), ``block_d``
  (headdim tile), ``num_warps``, ``num_stages`` (Mamba-3 programs, lowered by
  :mod:`scancc.backends.triton_mamba3`, are left to a provider of their own);
- decode steps (:mod:`scancc.backends.triton_step`): ``block_d`` (rows per program),
  ``num_warps``.

Constraints see the tiles the launch would really use (the same ``tile_sizes`` functions
the kernels call, so a schedule's ``None`` fields resolve as at launch) and prune, before
anything compiles: tiles that do not divide the channels of a group (they would silently
shrink to a smaller point), tiles longer than the padded sequence, register tiles that
would spill far past the per-thread limit, pipelined loads that overflow shared memory,
and blocks of more threads than the device allows. Register and shared-memory figures
are estimates from the tiles each kernel keeps live; a point they let through that still
fails to compile is recorded as a compile error by the search, never launched.
"""

from __future__ import annotations

from typing import Optional

from ..autotune.device import DeviceLimits
from ..autotune.problem import Problem
from ..autotune.space import Constraint, SearchSpace, register_space
from ..ir import Program, Schedule
from . import triton_ssd, triton_step
from .diagonal import DiagonalPlan, unsupported_reason
from .triton import tile_sizes

SPILL_FACTOR = 1.5
"""A tile may want up to this many times the per-thread register limit before it is pruned:
Triton spills the excess to local memory (slower, still correct), and the estimates below
ignore the compiler's reuse of registers; beyond it the point is hopeless."""
ADDRESS_REGS = 32
"""Registers per thread for addresses, offsets, masks and loop counters."""


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _threads(s: Schedule) -> int:
    return 32 * s.num_warps


def _fits_regs(values: float, s: Schedule, d: DeviceLimits) -> bool:
    """``values`` 32-bit values live per program, spread over its threads."""
    per_thread = values / _threads(s) + ADDRESS_REGS
    return per_thread <= SPILL_FACTOR * d.regs_per_thread


THREADS_PER_BLOCK = Constraint("threads_per_block", lambda s, p, d: _threads(s) <= d.max_threads_per_block)


# -- diagonal family -----------------------------------------------------------------------------
def _diag_tiles(s: Schedule, p: Problem):  # type: ignore[no-untyped-def]
    plan = DiagonalPlan.of(p.program)
    dim, groups = p["dim"], p.get("groups", 1)
    return tile_sizes(plan, s, dim, p.get("dstate", 1), dim // groups, p["batch"])


def _diag_values(s: Schedule, p: Problem) -> float:
    """fp32 values one forward program keeps live: the sequential forward carries the state
    ``[BLOCK_D, BLOCK_N]`` (and its decay) and holds ``BLOCK_L`` steps of four per-channel
    inputs/outputs; the chunked scan holds its ``[BLOCK_D, BLOCK_N, BLOCK_L]`` tile three
    times (decays, inputs, scanned states). Twice that for complex states."""
    t = _diag_tiles(s, p)
    cplx = 2 if p.program.state.complex else 1
    if t.unrolled:
        # one entry at a time: its decay, input and scanned tiles, Δ, x, Δ·x and y [BLOCK_L, BLOCK_D];
        # every entry's carried state and parameter [BLOCK_D]
        return cplx * (6 * t.block_l * t.block_d + 2 * t.block_n * t.block_d)
    if s.algorithm != "chunked_scan":
        return cplx * (2 * t.block_d * t.block_n + 4 * t.block_d * t.block_l)
    return cplx * 3 * t.block_d * t.block_n * t.block_l


def _diag_smem(s: Schedule, p: Problem) -> int:
    """Bytes of the input tiles a pipelined loop stages per extra stage: the (batch, dim,
    seqlen) inputs' ``[BLOCK_D, BLOCK_L]`` tiles and B/C's ``[BLOCK_N, BLOCK_L]``."""
    t = _diag_tiles(s, p)
    seq = sum(1 for spec in p.program.tensors() if spec.dims[:1] == ("batch",) and "dim" in spec.dims)
    bc = sum(1 for spec in p.program.tensors() if "groups" in spec.dims)
    return (s.num_stages - 1) * t.block_l * (seq * t.block_d + bc * t.block_n) * p.itemsize


def _diag_work(s: Schedule, p: Problem) -> int:
    """Values per forward tile that threads can split: the sequential forward's state, the
    steps × channels tile of unrolled_scan, the whole [BLOCK_D, BLOCK_N, BLOCK_L] tile of chunked_scan."""
    t = _diag_tiles(s, p)
    if t.unrolled:
        return t.block_d * t.block_l
    return t.block_d * t.block_n * (1 if s.algorithm != "chunked_scan" else t.block_l)


DIAGONAL_CONSTRAINTS = (
    Constraint("block_d_divides_channels",
               lambda s, p, d: s.block_d is None or (p["dim"] // p.get("groups", 1)) % s.block_d == 0),
    Constraint("block_l_within_seqlen",
               lambda s, p, d: s.block_l is None or s.block_l <= max(16, _next_pow2(p.seqlen))),
    Constraint("stages_need_several_tiles",
               lambda s, p, d: s.num_stages == 1 or p.seqlen > _diag_tiles(s, p).block_l),
    Constraint("threads_have_work", lambda s, p, d: _threads(s) <= max(32, _diag_work(s, p))),
    Constraint("fits_registers", lambda s, p, d: _fits_regs(_diag_values(s, p), s, d)),
    Constraint("fits_shared_memory", lambda s, p, d: _diag_smem(s, p) <= d.smem_per_block),
    THREADS_PER_BLOCK,
)


def diagonal_space(program: Program, default: Schedule) -> Optional[SearchSpace]:
    """The diagonal family's forward schedules (see the module docstring), ``None`` for
    programs the diagonal kernels do not lower."""
    if unsupported_reason(program) is not None:
        return None
    if DiagonalPlan.of(program).has_dstate:
        params = {
            # unrolled_scan is left out: slower than sequential on the H100 and slow to compile
            # (see TritonBackend.default_schedule); a schedule may still name it
            "algorithm": ("sequential", "chunked_scan"),
            "block_d": (1, 2, 4, 8, 16, 32, 64, 128),
            "block_l": (4, 8, 16, 32, 64),
            "num_warps": (1, 2, 4, 8),
        }
    else:
        params = {
            "block_l": (128, 256, 512, 1024, 2048, 4096),
            "block_d": (1, 2, 4),
            "num_warps": (1, 2, 4, 8, 16),
            "num_stages": (1, 2),
        }
    return SearchSpace(default, params, DIAGONAL_CONSTRAINTS)


# -- SSD -----------------------------------------------------------------------------------------
def _ssd_tiles(s: Schedule, p: Problem) -> tuple[int, int, int, int]:
    """``(chunk, BLOCK_T, BLOCK_P, BLOCK_N)`` as :class:`~scancc.backends.triton_ssd.SSDScan` binds them."""
    chunk = s.chunk or triton_ssd.DEFAULT_CHUNK
    block_t = min(chunk, s.block_l or triton_ssd.DEFAULT_BLOCK_T)
    block_p, block_n = triton_ssd.tile_sizes(s, p["headdim"], p["dstate"])
    return chunk, block_t, block_p, block_n


def _ssd_values(s: Schedule, p: Problem) -> float:
    """fp32 values chunk_scan (the largest forward kernel) keeps live per program: the state
    ``[BLOCK_P, BLOCK_N]``, the output ``[BLOCK_T, BLOCK_P]``, a C tile ``[BLOCK_T, BLOCK_N]``,
    a score tile ``[BLOCK_T, BLOCK_T]`` and an x tile ``[BLOCK_T, BLOCK_P]``."""
    _, t, pp, n = _ssd_tiles(s, p)
    return pp * n + 2 * t * pp + t * n + t * t


def _ssd_smem(s: Schedule, p: Problem) -> int:
    """Bytes of the operand tiles chunk_scan's inner loop stages per pipeline stage (C, x and a
    CB tile), in the dot's operand dtype."""
    _, t, pp, n = _ssd_tiles(s, p)
    return max(1, s.num_stages) * (t * n + t * pp + t * t) * p.itemsize


SSD_CONSTRAINTS = (
    Constraint("chunk_within_seqlen",
               lambda s, p, d: _ssd_tiles(s, p)[0] <= max(triton_ssd.MIN_DOT, _next_pow2(p.seqlen))),
    Constraint("block_l_within_chunk", lambda s, p, d: s.block_l is None or s.block_l <= _ssd_tiles(s, p)[0]),
    Constraint("block_l_is_a_dot_tile", lambda s, p, d: s.block_l is None or s.block_l >= triton_ssd.MIN_DOT),
    Constraint("block_d_within_headdim", lambda s, p, d: s.block_d is None
               or s.block_d <= max(triton_ssd.MIN_DOT, _next_pow2(p["headdim"]))),
    Constraint("block_d_is_a_dot_tile", lambda s, p, d: s.block_d is None or s.block_d >= triton_ssd.MIN_DOT),
    Constraint("fits_registers", lambda s, p, d: _fits_regs(_ssd_values(s, p), s, d)),
    Constraint("fits_shared_memory", lambda s, p, d: _ssd_smem(s, p) <= d.smem_per_block),
    THREADS_PER_BLOCK,
)


def ssd_space(program: Program, default: Schedule) -> Optional[SearchSpace]:
    """The SSD kernels' schedules, ``None`` for programs they do not lower."""
    if triton_ssd.unsupported_reason(program, default) is not None:
        return None
    return SearchSpace(default, {
        "chunk": (64, 128, 256),
        "block_l": (16, 32, 64, 128),
        "block_d": (16, 32, 64),
        "num_warps": (2, 4, 8),
        "num_stages": (1, 2, 3),
    }, SSD_CONSTRAINTS)


# -- decode steps --------------------------------------------------------------------------------
def _step_rows(s: Schedule, p: Problem) -> tuple[int, int]:
    """``(BLOCK_M, BLOCK_N)`` as :meth:`~scancc.backends.triton_step.TritonStep.update` sizes them:
    rows of the per-head ``dim`` (``headdim`` in the head layout) and the whole ``dstate``."""
    rows = p["headdim"] if p.program.layout == "head" else p["dim"] // p.get("groups", 1)
    block_n = _next_pow2(p["dstate"])
    want = s.block_d or max(1, triton_step.STATE_TILE // block_n)
    return max(1, min(_next_pow2(rows), _next_pow2(want))), block_n


STEP_CONSTRAINTS = (
    Constraint("block_d_within_rows", lambda s, p, d: s.block_d is None or s.block_d <= _next_pow2(
        p["headdim"] if p.program.layout == "head" else p["dim"] // p.get("groups", 1))),
    Constraint("threads_have_work", lambda s, p, d: _threads(s) <= max(32, _step_rows(s, p)[0] * _step_rows(s, p)[1])),
    # the state tile, its decay and input terms: three [BLOCK_M, BLOCK_N] fp32 tiles
    Constraint("fits_registers", lambda s, p, d: _fits_regs(3 * _step_rows(s, p)[0] * _step_rows(s, p)[1], s, d)),
    THREADS_PER_BLOCK,
)


def step_space(program: Program, default: Schedule) -> Optional[SearchSpace]:
    """The decode kernel's schedules, ``None`` for programs it does not lower."""
    if triton_step.unsupported_reason(program, default) is not None:
        return None
    return SearchSpace(default, {
        "block_d": (1, 2, 4, 8, 16, 32, 64, 128),
        "num_warps": (1, 2, 4, 8),
    }, STEP_CONSTRAINTS)


@register_space("triton")
def triton_space(program: Program, default: Schedule) -> Optional[SearchSpace]:
    """The space of whichever half of the Triton backend lowers ``program``."""
    if program.mode == "step":
        return step_space(program, default)
    if program.input.kind == "trapezoid":
        return None  # Mamba-3 (triton_mamba3.py) keeps other tiles: its own provider, or the generic space
    if program.state.shape == "matrix":
        return ssd_space(program, default)
    return diagonal_space(program, default)
