"""The Triton backend: Jinja templates → a Python module of ``@triton.jit`` kernels.

:class:`TritonBackend` implements :class:`scancc.backends.base.Backend`. ``lower`` renders
``scancc/templates/triton/diagonal.py.j2`` for a program of the diagonal family (vector
state, channel layout: linear/HGRN/RG-LRU, LTI/LRU, Mamba-1 selective); ``build`` imports
the rendered module from a cache file and wraps its kernels in a :class:`TritonScan`,
which computes launch sizes and launches them; the argument checks, buffers and the
reduction of partial gradients are shared with the CUDA backend
(:mod:`scancc.backends.diagonal_host`).

Kernels run compiled on CUDA tensors, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1`` set before ``triton`` is imported).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..ir import Program, Schedule
from .diagonal import DiagonalPlan, Operand, unsupported_reason
from .diagonal_host import BackwardBuffers, Binding, DiagonalScanHost, ForwardBuffers, operand_strides, real_view
from .modules import load_source
from .templating import render
from .triton_layout import tile_order

TEMPLATE = "triton/diagonal.py.j2"

# Defaults measured on an H100 (Triton 3.6), see default_schedule and tile_sizes. A state
# tile holds BLOCK_D · BLOCK_N · BLOCK_L values (twice that for complex states) in registers.
DEFAULT_BLOCK_L_SCALAR = 2048  # plain scans (one value of state per channel)
DEFAULT_BLOCK_D_VECTOR = 8     # channels per program when the state has an n axis (chunked_scan)
DEFAULT_BLOCK_D_SEQUENTIAL = 32  # ... (sequential)
DEFAULT_BLOCK_L_SEQUENTIAL = 16  # steps whose inputs the sequential forward loads at once
DEFAULT_BLOCK_D_UNROLLED = 32   # ... (unrolled_scan: one warp's lanes along channels)
DEFAULT_BLOCK_L_UNROLLED = 32   # steps per unrolled_scan tile: each thread scans this many
DEFAULT_UNROLL = 16            # state entries unrolled_scan unrolls unless the schedule's block_n says more
MAX_UNROLL = 64
DEFAULT_WARPS_SCALAR = 4
DEFAULT_WARPS_VECTOR = 2
BWD_WARPS_VECTOR = 1           # the backward of programs with a state axis
FWD_TILE_ELEMENTS = 512        # forward tiles of programs with a state axis (8 × 16 × 4 for N = 16)
BWD_TILE_ELEMENTS = 1024       # backward tiles keep about ten tiles live: smaller
CHECKPOINT_STEPS = 64          # the forward saves the state at least every this many steps
UNROLLED_CHECKPOINT_STEPS = 32  # ... unrolled_scan's backward: its tiles are one interval, in registers
MIN_WARPS = 512                # default block_d halves while num_seqs·dim/block_d·num_warps is below this


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _is_interpreted(kernel: Any) -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - older Triton layouts
        return False
    return isinstance(kernel, InterpretedFunction)


def _step(program: Program) -> Any:
    """The decode half of this backend (:mod:`scancc.backends.triton_step`) for single-token
    programs (``mode == "step"``), else ``None``."""
    if program.mode != "step":
        return None
    from . import triton_step

    return triton_step


def _ssd(program: Program) -> Any:
    """The SSD half of this backend (:mod:`scancc.backends.triton_ssd`) for programs with a
    matrix state (SSD / Mamba-2), else ``None``."""
    if program.state.shape != "matrix":
        return None
    from . import triton_mamba3, triton_ssd

    return triton_mamba3 if program.input.kind == "trapezoid" else triton_ssd


class TritonBackend:
    """Lowers diagonal-family programs to Triton (see the module docstring); programs with a
    matrix state go to :mod:`scancc.backends.triton_ssd`."""

    name = "triton"

    def available(self) -> bool:
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True

    def unsupported_reason(self, program: Program, schedule: Schedule) -> Optional[str]:
        """Why ``program`` with ``schedule`` cannot be lowered, or ``None``."""
        if _step(program):
            return _step(program).unsupported_reason(program, schedule)
        if _ssd(program):
            return _ssd(program).unsupported_reason(program, schedule)
        reason = unsupported_reason(program)
        if reason is not None:
            return reason
        if schedule.algorithm not in ("chunked_scan", "sequential", "unrolled_scan"):
            return ("the Triton diagonal kernels implement algorithms 'chunked_scan', 'sequential' and "
                    f"'unrolled_scan', not {schedule.algorithm!r}")
        if schedule.algorithm == "unrolled_scan":
            plan = DiagonalPlan.of(program)
            if not plan.has_dstate:
                return "unrolled_scan unrolls a state axis; a plain scan (no dstate) runs chunked_scan"
            if program.readout.kind == "state":
                return "unrolled_scan sums the readout over the state; a state read whole runs sequential"
            if schedule.block_n is not None and schedule.block_n > MAX_UNROLL:
                return f"unrolled_scan unrolls at most {MAX_UNROLL} state entries, got block_n={schedule.block_n}"
        elif schedule.block_n is not None:
            return ("the chunked_scan and sequential kernels keep the whole state of a channel in one program: "
                    "leave block_n unset")
        return None

    def supports(self, program: Program, schedule: Schedule) -> bool:
        return self.unsupported_reason(program, schedule) is None

    def default_schedule(self, program: Program) -> Schedule:
        """Plain scans (no ``dstate``): ``chunked_scan`` over tiles of 2048 steps, one channel
        per program, 4 warps (fp32 B8 D1536 L4096 on an H100: 98 % of copy bandwidth).
        Programs with a state axis: ``sequential`` (the forward advances the state one step
        at a time over tiles of 32 channels × 16 steps; the backward is the chunked scan) with
        two warps per program, ``block_d`` and ``block_l`` left to :func:`tile_sizes`. On an
        H100, Mamba-1 (bf16 B4 D5120 N16 L4096) ran its forward in 1.55 ms this way and in
        2.7 ms with the best ``chunked_scan`` tiles (8 × 16 × 4, one warp), whose log-depth
        scans cost far more instructions per step than the state update itself; its backward
        took 11.4 ms. Single-token programs: :func:`scancc.backends.triton_step.default_schedule`."""
        if _step(program):
            return _step(program).default_schedule(program)
        if _ssd(program):
            return _ssd(program).default_schedule(program)
        if unsupported_reason(program) is None and not DiagonalPlan.of(program).has_dstate:
            return Schedule(algorithm="chunked_scan", block_l=DEFAULT_BLOCK_L_SCALAR, block_d=1,
                            num_warps=DEFAULT_WARPS_SCALAR)
        # Not unrolled_scan, which issues fewer instructions per state element but measured slower on
        # an H100 with Triton 3.6 (2026-12-07, Mamba-1 bf16, B4 D5120 N16 L4096): forward 3.21 ms
        # against 1.55 ms, forward+backward 46.8 ms against 14.5 ms (one-warp programs hide little
        # latency). It stays available by name; complex exp decays take minutes to compile there.
        return Schedule(algorithm="sequential", num_warps=DEFAULT_WARPS_VECTOR)

    def lower(self, program: Program, schedule: Schedule) -> str:
        reason = self.unsupported_reason(program, schedule)
        if reason is not None:
            raise ValueError(f"triton backend cannot lower {program.name!r}: {reason}")
        if _step(program):
            return _step(program).lower(program, schedule)
        if _ssd(program):
            return _ssd(program).lower(program, schedule)
        return render(TEMPLATE, **template_context(DiagonalPlan.of(program), schedule))

    def build(self, program: Program, schedule: Schedule, source: str) -> Any:
        if _step(program):
            return _step(program).build(program, schedule, source)
        if _ssd(program):
            return _ssd(program).build(program, schedule, source)
        module = load_source(source, "triton", program.name)
        return TritonScan(program, schedule, source, module)


def unrolled_backward(plan: DiagonalPlan) -> bool:
    """Whether unrolled_scan's backward covers ``plan``: real exp decays with an Euler input
    (Mamba-1's selective scan). Others keep the chunked backward, which reads the same
    checkpoints: LTI's fixed decay (its gradient needs h_(t−1) itself) and complex states (the
    unrolled complex backward took 6 minutes to compile)."""
    p = plan.program
    return (plan.has_dstate and not plan.complex and plan.decay == "exp" and p.input.kind == "euler"
            and p.readout.kind == "contract")


def unroll_count(schedule: Schedule) -> int:
    """State entries an ``unrolled_scan`` forward unrolls: the schedule's ``block_n``, else 16."""
    return schedule.block_n or DEFAULT_UNROLL


def template_context(plan: DiagonalPlan, schedule: Schedule) -> dict[str, Any]:
    """The variables ``diagonal.py.j2`` branches on, and its broadcasting suffixes."""
    p = plan.program
    nd = plan.has_dstate
    cplx = plan.complex
    # Suffixes that broadcast a value indexed by (d, t), (d, n), (n, t) or (d,) into the state
    # tile [BLOCK_D, BLOCK_N, BLOCK_L] (plain scans: [BLOCK_D, BLOCK_L]) ...
    tile_bc = dict(DL="[:, None, :]" if nd else "", DN="[:, :, None]", NL="[None, :, :]",
                   D1="[:, None, None]" if nd else "[:, None]",
                   TILE="(BLOCK_D, BLOCK_N, BLOCK_L)" if nd else "(BLOCK_D, BLOCK_L)")
    # ... and into the state of one step [BLOCK_D, BLOCK_N] ([BLOCK_D]), for the sequential forward.
    step_bc = dict(DL="[:, None]" if nd else "", DN="", NL="[None, :]", D1="[:, None]" if nd else "",
                   TILE="(BLOCK_D, BLOCK_N)" if nd else "(BLOCK_D,)")
    # ... and into one state entry's tile of steps × channels (unrolled_scan), where a
    # (d, n) value is entry n's [BLOCK_D] column and an (n, t) value its [BLOCK_L] row.
    # Its orientation follows the installed Triton (scancc.backends.triton_layout); LAX and DAX
    # are its time and channel axes, CKPT_TILE the backward's tile of one checkpoint interval.
    if schedule.algorithm != "unrolled_scan":
        lane_bc = None
    elif tile_order() == "channel_major":
        lane_bc = dict(DL="", DN="[:, None]", NL="[None, :]", D1="[:, None]", TILE="(BLOCK_D, BLOCK_L)",
                       CKPT_TILE="(BLOCK_D, BLOCK_L * CKPT_EVERY)", LAX=1, DAX=0)
    else:
        lane_bc = dict(DL="", DN="[None, :]", NL="[:, None]", D1="[None, :]", TILE="(BLOCK_L, BLOCK_D)",
                       CKPT_TILE="(BLOCK_L * CKPT_EVERY, BLOCK_D)", LAX=0, DAX=1)
    return dict(
        p=p, plan=plan, name=p.name, layout_doc=_layout_doc(plan), cplx=cplx, nd=nd, x=plan.x, step=plan.step,
        decay=plan.decay, exp_param=p.decay.param,
        ik=p.input.kind, scale=p.input.scale, bsrc=p.input.b, Bop="B_bar" if p.input.kind == "discretized" else "B",
        rk=p.readout.kind, csrc=p.readout.c, rscale=p.readout.scale,
        rscale_prefix="2.0 * " if p.readout.scale == 2.0 else "",
        skip=p.readout.skip, gate=p.readout.gate != "none", grouped=plan.grouped,
        out_complex=cplx and p.readout.kind == "state",
        grads=[f"d{op.name}" for op in plan.operands],
        sequential=schedule.algorithm == "sequential",
        unrolled=schedule.algorithm == "unrolled_scan", unroll=unroll_count(schedule),
        unrolled_bwd=schedule.algorithm == "unrolled_scan" and unrolled_backward(plan),
        tile_bc=tile_bc, step_bc=step_bc, lane_bc=lane_bc, **tile_bc,
        STATE_SHAPE="[BLOCK_D, BLOCK_N]" if nd else "[BLOCK_D]",
        T="[None, None, :]" if nd else "[None, :]",   # a (t,) mask into the tile
        ST="[:, :, None]" if nd else "[:, None]",     # the carried state into the tile
        LAX=2 if nd else 1,                           # the tile's time axis
        cparts=lambda v: [f"{v}_re", f"{v}_im"] if cplx else [v],
        op_complex=lambda name: bool(plan.operand(name) and plan.operand(name).complex),
        zip=zip, inf=math.inf,
    )


def _layout_doc(plan: DiagonalPlan) -> str:
    """The generated module's sentence on tensor layouts, for this program's operands."""
    dims = {"seq": "(batch, dim, seqlen)", "bc": "(batch, groups, dstate, seqlen)", "dn": "(dim, dstate)",
            "d": "(dim,)"}
    groups: dict[str, list[str]] = {}
    for op in plan.operands:
        groups.setdefault(op.layout, []).append(op.name)
    groups["seq"] = groups.get("seq", []) + ["out"]
    lines = [f"    {', '.join(names)}: {dims[layout]}" for layout, names in groups.items()]
    lines.append("    initial/final states, checkpoints: (num_seqs, dim, dstate)")
    if plan.decay == "fixed":
        lines.append("    A_bar, B_bar: the discretized Ā, B̄, computed on the host from A (λ), B and delta")
    if plan.grouped:
        lines.append("    channel d reads group d // chans_per_group of B/C")
    if any(op.complex for op in plan.operands) or plan.complex:
        lines.append("    complex tensors arrive as their float32 views (a trailing re/im axis)")
    return "Layout:\n" + "\n".join(lines)


class TritonScan(DiagonalScanHost):
    """A diagonal-family program compiled to Triton (implements ``CompiledScan``)."""

    backend = "triton"

    def __init__(self, program: Program, schedule: Schedule, source: str, module: Any) -> None:
        super().__init__(program, schedule, source)
        self._fwd = getattr(module, f"{program.name}_fwd_kernel")
        # unrolled_scan's forward for states wider than it unrolls (the sequential one)
        self._fwd_wide = getattr(module, f"{program.name}_fwd_wide_kernel", None)
        self._bwd = getattr(module, f"{program.name}_bwd_kernel")
        self._bwd_unrolled = getattr(module, f"{program.name}_bwd_unrolled_kernel", None)

    # -- binding (see DiagonalScanHost) ---------------------------------------------------------
    def _check_device(self, device: torch.device) -> None:
        if device.type == "cuda":
            if _is_interpreted(self._fwd):
                raise RuntimeError("Triton runs in interpreter mode (TRITON_INTERPRET=1), which takes CPU tensors; "
                                   f"got tensors on {device}")
            return
        if device.type == "cpu" and _is_interpreted(self._fwd):
            return
        raise RuntimeError(f"the Triton backend runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), "
                           f"got tensors on {device}")

    def _kernel_tensor(self, op: Operand, t: torch.Tensor) -> torch.Tensor:
        """The operand itself (float32 pairs if complex); its last axis must have unit stride."""
        if op.complex:
            t = real_view(t)
            unit = t.stride(-2) == 2
        else:
            unit = t.stride(-1) == 1 or t.shape[-1] == 1
        if not unit:
            raise ValueError(f"{self.program.name}: {op.name} must be contiguous along its last axis "
                             f"(strides {tuple(t.stride())})")
        return t

    def _geometry(self, b: Binding) -> tuple[Tiles, int]:
        tiles = tile_sizes(self.plan, self.schedule, b.dim, b.dstate, b.chans_per_group, b.num_seqs)
        return tiles, tiles.bwd_block_l

    # -- launching ------------------------------------------------------------------------------
    def _operand_args(self, b: Binding) -> list[Any]:
        args: list[Any] = []
        for op in self.plan.operands:
            t = b.tensors[op.name]
            args.append(t)
            args.extend(operand_strides(op, t))
        return args

    def _flags(self, b: Binding) -> list[bool]:
        return [b.tensors[op.name] is not None for op in self.plan.optional_operands]

    def _sizes(self, b: Binding) -> list[int]:
        return [b.seqlen, b.dim, b.chans_per_group, b.n_ckpt, b.dstate]

    def _launch(self, kernel: Any, b: Binding, args: list[Any], block_d: int, block_l: int, ckpt_every: int,
                num_warps: int) -> None:
        grid = (b.num_seqs * (b.dim // block_d),)
        meta = dict(BLOCK_D=block_d, BLOCK_N=b.geometry.block_n, BLOCK_L=block_l, CKPT_EVERY=ckpt_every,
                    num_warps=num_warps, num_stages=self.schedule.num_stages)
        if b.device.type == "cuda":
            with torch.cuda.device(b.device):
                kernel[grid](*args, **meta)
        else:
            kernel[grid](*args, **meta)

    def _launch_forward(self, b: Binding, io: ForwardBuffers) -> None:
        args = self._operand_args(b)
        args += [io.out_arg, io.h0, io.ht, io.ckpt, b.cu_seqlens, 1] + self._sizes(b)  # 1: stride_t
        args += self._flags(b)
        args += [io.h0 is not None, io.ht is not None, io.ckpt is not None, b.cu_seqlens is not None]
        t: Tiles = b.geometry
        kernel = self._fwd if t.unrolled or self._fwd_wide is None else self._fwd_wide
        self._launch(kernel, b, args, t.block_d, t.block_l, t.ckpt_every, self.schedule.num_warps)

    def _launch_backward(self, b: Binding, ckpt: torch.Tensor, io: BackwardBuffers) -> None:
        args = self._operand_args(b)
        args += [io.dout, io.dout.stride(0), io.dout.stride(1), ckpt, io.dht, b.cu_seqlens, 1]  # 1: stride_t
        args += [io.grads[op.name] for op in self.plan.operands] + [io.dh0]
        args += self._sizes(b)
        args += self._flags(b)
        t: Tiles = b.geometry
        atomic = self.plan.grouped and b.chans_per_group > t.bwd_block_d
        args += [io.dht is not None, io.dh0 is not None, b.cu_seqlens is not None, atomic]
        if t.bwd_unrolled:
            self._launch(self._bwd_unrolled, b, args, t.bwd_block_d, t.block_l, t.ckpt_every, t.bwd_num_warps)
        else:
            self._launch(self._bwd, b, args, t.bwd_block_d, t.bwd_block_l, 1, t.bwd_num_warps)


@dataclass(frozen=True)
class Tiles:
    """Block sizes of one launch. The forward walks tiles of ``block_l`` steps and saves the
    state every ``ckpt_every`` tiles; the backward walks tiles of ``block_l·ckpt_every`` steps
    (one per checkpoint) with ``bwd_block_d`` channels and ``bwd_num_warps`` warps per program."""

    block_d: int
    block_n: int
    block_l: int
    ckpt_every: int
    bwd_block_d: int
    bwd_num_warps: int
    unrolled: bool = False  # the forward is unrolled_scan's (else chunked_scan's or the sequential one)
    bwd_unrolled: bool = False  # ... and so is the backward (see unrolled_backward)

    @property
    def bwd_block_l(self) -> int:
        return self.block_l * self.ckpt_every


def tile_sizes(plan: DiagonalPlan, schedule: Schedule, dim: int, dstate: int, chans_per_group: int,
               num_seqs: int) -> Tiles:
    """Block sizes for a launch.

    BLOCK_N covers the whole state (next power of two ≥ dstate). ``unrolled_scan`` with a
    state wider than it unrolls runs the sequential forward, with that one's tiles. BLOCK_D is
    the largest power of two ≤ the schedule's dividing the channels of a group, so that one
    program's channels share their B/C tile; by default 1 for plain scans, else 32 (sequential,
    unrolled_scan) or 8 (chunked_scan), halved while the launch would have fewer than
    ``MIN_WARPS`` warps (long single sequences). BLOCK_L is the schedule's, else 2048 for plain
    scans, 16 for the sequential forward, 32 for unrolled_scan and about ``FWD_TILE_ELEMENTS``
    values per chunked_scan tile.
    Checkpoints are at least the schedule's ``chunk`` (default ``CHECKPOINT_STEPS``) steps
    apart, and one tile at least (their memory is ``num_seqs·dim·dstate·seqlen /
    (BLOCK_L·ckpt_every)`` floats); the backward's tiles span one checkpoint interval with
    about ``BWD_TILE_ELEMENTS`` values, on one warp when the state has an n axis: a shorter
    interval gives them more channels, whose sums over channels of varying ``dB``/``dC`` then
    stay in the program instead of going to memory as atomic adds. The unrolled backward (:func:`unrolled_backward`) instead keeps
    the forward's channels and warps and holds a whole interval in registers: its checkpoints
    are ``UNROLLED_CHECKPOINT_STEPS`` (or one tile) apart, as many floats as a bf16 ``u``
    holds bytes when ``dstate`` is 16.
    """
    cplx = 2 if plan.complex else 1
    unrolled = schedule.algorithm == "unrolled_scan" and dstate <= unroll_count(schedule)
    sequential = schedule.algorithm == "sequential" or (schedule.algorithm == "unrolled_scan" and not unrolled)
    block_n = _next_pow2(dstate) if plan.has_dstate else 1
    if not plan.has_dstate:
        default_d = 1
    elif unrolled:
        default_d = DEFAULT_BLOCK_D_UNROLLED
    else:
        default_d = DEFAULT_BLOCK_D_SEQUENTIAL if sequential else DEFAULT_BLOCK_D_VECTOR
    want_d = schedule.block_d or default_d
    block_d = 1
    while block_d * 2 <= want_d and chans_per_group % (block_d * 2) == 0:
        block_d *= 2
    if schedule.block_d is None:
        while block_d > 1 and num_seqs * dim // block_d * schedule.num_warps < MIN_WARPS:
            block_d //= 2
    if schedule.block_l is not None:
        block_l = schedule.block_l
    elif not plan.has_dstate:
        block_l = DEFAULT_BLOCK_L_SCALAR
    elif unrolled:
        block_l = DEFAULT_BLOCK_L_UNROLLED
    elif sequential:
        block_l = DEFAULT_BLOCK_L_SEQUENTIAL
    else:
        block_l = max(4, _next_pow2(FWD_TILE_ELEMENTS // (block_d * block_n * cplx) or 1))
    if unrolled and unrolled_backward(plan):
        # the unrolled backward: the forward's channels and warps, one checkpoint interval per tile
        ckpt_every = max(1, UNROLLED_CHECKPOINT_STEPS // block_l)
        return Tiles(block_d, block_n, block_l, ckpt_every, block_d, schedule.num_warps, True, True)
    ckpt_every = max(1, (schedule.chunk or CHECKPOINT_STEPS) // block_l)
    bwd_block_d = block_d
    while bwd_block_d > 1 and bwd_block_d * block_n * block_l * ckpt_every * cplx > BWD_TILE_ELEMENTS:
        bwd_block_d //= 2
    # the backward's tiles of a state axis (about BWD_TILE_ELEMENTS values) ran fastest on one warp
    bwd_num_warps = BWD_WARPS_VECTOR if plan.has_dstate else schedule.num_warps
    return Tiles(block_d, block_n, block_l, ckpt_every, bwd_block_d, bwd_num_warps, unrolled)
