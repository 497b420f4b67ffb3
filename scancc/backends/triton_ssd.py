"""SSD (Mamba-2) programs on the Triton backend: the chunked matrix form, forward and backward.

:class:`~scancc.backends.triton.TritonBackend` hands programs with a matrix state to this
module. ``lower`` renders ``scancc/templates/triton/ssd.py.j2`` (its docstring gives the
kernel split and the algebra of the backward); ``build`` wraps the rendered kernels in an
:class:`SSDScan`, which allocates buffers, builds the chunk table of packed sequences and
the segment ids of ``seq_idx`` on the device (no host synchronisation), launches the
kernels and reduces per-chunk partial sums in a fixed order (deterministic: no float atomics).

Inputs (``program.tensors()`` names): ``x (batch, seqlen, heads, headdim)``, ``dt (batch,
seqlen, heads)``, ``A (heads,)``, ``B, C (batch, seqlen, groups, dstate)``, optional ``D``
``(heads,)``/``(heads, headdim)``, ``z`` like ``x``, ``dt_bias (heads,)``; besides them the
kernels take ``seq_idx (batch, seqlen)`` int32/int64 when present in the inputs mapping.

Schedule: ``algorithm="ssd_chunked"``; ``chunk`` the chunk length (default 256);
``block_l`` the row tile inside a chunk (default min(chunk, 64)); ``block_d`` the headdim tile
(default: at most 64 and ``8192 / dstate``, so a state tile holds about 8K fp32 values);
``block_n`` must stay unset (the kernels keep the whole ``dstate`` in a tile).

Mamba-3 programs (trapezoid input, log-decay per head) render the same kernels with the
two-tap weights (template variable ``trap``); :mod:`scancc.backends.triton_mamba3` prepares
their inputs and drives an :class:`SSDScan` of the rendered source on the *core* inputs
:data:`CORE_INPUTS` (``chunk`` then counts tokens; the kernels see ``chunk · rank`` slots).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from ..ir import Program, Schedule
from .base import ScanForward
from .modules import load_source
from .templating import render

TEMPLATE = "triton/ssd.py.j2"
DEFAULT_CHUNK = 256
DEFAULT_BLOCK_T = 64
DEFAULT_BLOCK_P = 64
MIN_DOT = 16           # tl.dot needs every side >= 16
STATE_TILE = 8192      # fp32 values of one [BLOCK_P, BLOCK_N] state tile kept in registers
DBC_MIN_PROGRAMS = 1024
"""chunk_dbc shares a group's heads out among programs until there are about this many."""
FUSED_MIN_PROGRAMS = 2048
"""The state passing runs inside chunk_scan (one program per row, head and headdim tile, the
chunks in order) when there are at least this many such programs: about sixteen per SM of an
H100. With fewer, a separate pass kernel lets chunk_scan take one program per chunk. Measured
on the H100 at B4 L4096 H80 P64 N128 (320 such programs): fused 1.45 ms, split 0.95 ms
(bench_ssd.py times the other passing variant next to the chosen one)."""


CORE_INPUTS = (("x", False), ("dt", False), ("A", False), ("gam", False), ("B", False), ("C", False),
               ("D", True), ("z", True))
"""The Mamba-3 core's inputs (name, optional): ``x, z (batch, slots, heads, headdim)``; ``dt`` the
column weight w, ``A`` the log-decay adt, ``gam`` γ, all ``(batch, slots, heads)`` fp32;
``B, C (batch, slots, heads, dstate)`` rotated keys and queries; ``D (heads,)``."""


def is_trapezoid(program: Program) -> bool:
    """Mamba-3 programs: the exponential-trapezoidal input with a log-decay per head."""
    return program.input.kind == "trapezoid"


def _empty(shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Every buffer a kernel fully overwrites is allocated here (tests fill them with NaN)."""
    return torch.empty(shape, device=device, dtype=dtype)


def _pow2_at_least(n: int, lo: int = MIN_DOT) -> int:
    return max(lo, 1 << max(0, (int(n) - 1).bit_length()))


# -- the Backend half --------------------------------------------------------------------------
def unsupported_reason(program: Program, schedule: Schedule) -> Optional[str]:
    """Why the SSD kernels cannot run ``program`` with ``schedule``, or ``None``."""
    if program.state.shape != "matrix" or program.layout != "head":
        return "the SSD kernels take matrix states in the head layout"
    if program.mode != "sequence":
        return "single-step (decode) programs are not lowered by the SSD chunked kernels"
    if is_trapezoid(program):
        if program.decay.param != "head":
            return "the Mamba-3 kernels need a scalar log-decay per head"
        if program.input.rank not in (1, 2, 4, 8):
            return f"the Mamba-3 kernels take MIMO rank 1, 2, 4 or 8, got {program.input.rank}"
    else:
        if program.decay.kind != "exp" or program.decay.param != "head":
            return (f"the SSD kernels need a scalar decay per head exp(Δ·A[h]), not "
                    f"{program.decay.kind!r}/{program.decay.param!r}")
        if program.input.kind != "euler" or program.input.b != "varying" or program.input.rank != 1:
            return f"the SSD kernels need the Euler input Δ·x Bᵀ with a varying B (got {program.input.kind!r})"
        if program.rotary is not None:
            return "rotary (Mamba-3) programs are not SSD"
    rd = program.readout
    if rd.kind != "contract" or rd.c != "varying" or rd.scale != 1.0:
        return "the SSD kernels read y = H C with a varying C"
    if schedule.algorithm != "ssd_chunked":
        return f"the Triton SSD kernels implement algorithm 'ssd_chunked', not {schedule.algorithm!r}"
    if schedule.block_n is not None:
        return "the SSD kernels keep the whole dstate in a tile: leave block_n unset"
    chunk = schedule.chunk or DEFAULT_CHUNK
    if schedule.block_l is not None and schedule.block_l > chunk:
        return f"block_l ({schedule.block_l}) must not exceed the chunk ({chunk})"
    if schedule.block_l is not None and schedule.block_l < MIN_DOT:
        return f"block_l must be at least {MIN_DOT} (tensor-core tiles), got {schedule.block_l}"
    return None


def default_schedule(program: Program) -> Schedule:
    """``ssd_chunked`` with chunks of 256 (mamba-ssm's default), tiles sized at launch, 4 warps."""
    return Schedule(algorithm="ssd_chunked", chunk=DEFAULT_CHUNK, num_warps=4, num_stages=2)


def template_context(program: Program) -> dict[str, Any]:
    """The variables ``ssd.py.j2`` branches on."""
    step = program.step
    return dict(
        p=program, name=program.name,
        has_bias=bool(step and step.bias), softplus=bool(step and step.softplus),
        clamp=step.clamp if step else None,
        skip=program.readout.skip, gate=program.readout.gate != "none", inf=math.inf,
        trap=is_trapezoid(program), rank=program.input.rank,
    )


def lower(program: Program, schedule: Schedule) -> str:
    """The kernel source; :meth:`TritonBackend.lower` has already refused what cannot be lowered."""
    return render(TEMPLATE, **template_context(program))


def build(program: Program, schedule: Schedule, source: str) -> "SSDScan":
    return SSDScan(program, schedule, source, load_source(source, "triton", program.name))


def tile_sizes(schedule: Schedule, headdim: int, dstate: int) -> tuple[int, int]:
    """``(BLOCK_P, BLOCK_N)``: the whole of ``dstate`` (a power of two >= 16) and the schedule's
    ``block_d``, by default at most 64 and ``8192 / BLOCK_N`` (about 8K fp32 values per state tile)."""
    block_n = _pow2_at_least(dstate)
    want_p = schedule.block_d or max(MIN_DOT, min(DEFAULT_BLOCK_P, STATE_TILE // block_n))
    return max(MIN_DOT, min(_pow2_at_least(headdim), want_p)), block_n


def head_splits(programs: int, heads_per_group: int) -> int:
    """Into how many programs chunk_dbc shares out the heads of a group: enough for about
    :data:`DBC_MIN_PROGRAMS` programs in all (Mamba-2 has one group of 80 heads or so), at most one
    head each."""
    return max(1, min(heads_per_group, DBC_MIN_PROGRAMS // max(1, programs)))


def fuses_passing(rows: int, heads: int, headdim: int, dstate: int, schedule: Schedule) -> bool:
    """Whether chunk_scan (and chunk_dstate) pass the states themselves, one program per (row,
    head, headdim tile) walking the chunks in order: when there are at least
    :data:`FUSED_MIN_PROGRAMS` such programs (``rows``: batch, or 1 for packed sequences)."""
    block_p, _ = tile_sizes(schedule, headdim, dstate)
    return rows * heads * -(-headdim // block_p) >= FUSED_MIN_PROGRAMS


# -- binding one call --------------------------------------------------------------------------
@dataclass
class _Bound:
    """One call's operands (contiguous) and sizes.

    ``n_chunks``: chunks per batch row; ``total``: chunks in the flat list (``batch·n_chunks``,
    or the chunk table's rows when packed); ``rows``/``per_row``: the fused kernels' rows and
    chunks per row; ``num_seqs``: rows of the states.
    """

    t: dict[str, Optional[torch.Tensor]]
    batch: int
    seqlen: int
    heads: int
    headdim: int
    groups: int
    dstate: int
    chunk: int
    n_chunks: int
    total: int
    rows: int
    per_row: int
    num_seqs: int
    seg: Optional[torch.Tensor]
    table: Optional[torch.Tensor]
    block_t: int
    block_p: int
    block_n: int
    fused: bool
    device: torch.device

    @property
    def p_blocks(self) -> int:
        return -(-self.headdim // self.block_p)

    @property
    def t_blocks(self) -> int:
        return self.chunk // self.block_t

    @property
    def state_shape(self) -> tuple[int, int, int, int]:
        return (self.total, self.heads, self.headdim, self.dstate)


def chunk_table(cu_seqlens: torch.Tensor, chunk: int, total: int, seqlen: int) -> torch.Tensor:
    """``(total, 4)`` int32 rows ``[sequence, t0, t1, first | last << 1]``, computed on the device.

    Sequence ``i`` (tokens ``[cu[i], cu[i+1])``) gets ``ceil(len_i / chunk)`` chunks, in order;
    rows past the last chunk are empty (``t0 = t1 = seqlen``, no flags). ``total`` must be at
    least ``Σ ceil(len_i / chunk)``; ``(seqlen + num_seqs·(chunk − 1)) // chunk`` always is.
    """
    cu = cu_seqlens.to(torch.int64)
    lens = cu[1:] - cu[:-1]
    per_seq = (lens + chunk - 1) // chunk
    ends = torch.cumsum(per_seq, 0)
    j = torch.arange(total, device=cu.device, dtype=torch.int64)
    seq = torch.searchsorted(ends, j, right=True)
    valid = seq < lens.shape[0]
    seq = seq.clamp(max=lens.shape[0] - 1)
    k = j - (ends - per_seq)[seq]
    t0 = cu[seq] + k * chunk
    t1 = torch.minimum(t0 + chunk, cu[seq + 1])
    t0 = torch.where(valid, t0, seqlen)
    t1 = torch.where(valid, t1, seqlen)
    flags = (valid & (k == 0)).to(torch.int64) + 2 * (valid & (k == per_seq[seq] - 1)).to(torch.int64)
    return torch.stack([seq, t0, t1, flags], 1).to(torch.int32).contiguous()


def segment_ids(seq_idx: torch.Tensor) -> torch.Tensor:
    """``(batch, seqlen)`` int32: 0 for the first segment of each row, +1 at every change of ``seq_idx``."""
    change = (seq_idx[:, 1:] != seq_idx[:, :-1]).to(torch.int32)
    first = torch.zeros_like(seq_idx[:, :1], dtype=torch.int32)
    return torch.cat([first, torch.cumsum(change, 1, dtype=torch.int32)], 1).contiguous()


def _is_interpreted(kernel: Any) -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - older Triton layouts
        return False
    return isinstance(kernel, InterpretedFunction)


class SSDScan:
    """An SSD program compiled to Triton (implements ``CompiledScan``)."""

    backend = "triton"
    KERNELS = ("bmm", "chunk_state", "state_pass", "chunk_scan", "chunk_dstate", "chunk_dcb", "chunk_dx",
               "chunk_ddt", "chunk_dbc")

    def __init__(self, program: Program, schedule: Schedule, source: str, module: Any) -> None:
        self.program = program
        self.schedule = schedule
        self.source = source
        self.k = {name: getattr(module, f"{program.name}_{name}_kernel") for name in self.KERNELS}
        self.trap = is_trapezoid(program)
        self.rank = program.input.rank

    def _inputs(self) -> list[tuple[str, bool]]:
        """``(name, optional)`` of the kernels' inputs: the program's, or the Mamba-3 core's."""
        if self.trap:
            return list(CORE_INPUTS)
        return [(spec.name, spec.optional) for spec in self.program.tensors()]

    def __repr__(self) -> str:
        return f"SSDScan({self.program.name!r}, {self.schedule.to_json()})"

    def __call__(self, inputs: Mapping[str, Optional[torch.Tensor]], **kwargs: Any):
        """``out``, or ``(out, final_state)`` with ``return_final_state=True``."""
        fwd = self.forward(inputs, **kwargs)
        return (fwd.out, fwd.final_state) if kwargs.get("return_final_state") else fwd.out

    # -- binding ----------------------------------------------------------------------------
    def _bind(self, inputs: Mapping[str, Optional[torch.Tensor]], cu_seqlens: Optional[torch.Tensor]) -> _Bound:
        name = self.program.name
        t: dict[str, Optional[torch.Tensor]] = {}
        for key, optional in self._inputs():
            v = inputs.get(key)
            if v is None and not optional:
                raise ValueError(f"{name}: input {key!r} is required")
            t[key] = None if v is None else v.contiguous()
        x = t["x"]
        assert x is not None
        if x.dim() != 4:
            raise ValueError(f"{name}: x must be (batch, seqlen, heads, headdim), got shape {tuple(x.shape)}")
        batch, seqlen, heads, headdim = x.shape
        if min(batch, seqlen, heads, headdim) < 1:
            raise ValueError(f"{name}: x has an empty axis, shape {tuple(x.shape)}")
        B = t["B"]
        assert B is not None
        if B.dim() != 4 or B.shape[:2] != x.shape[:2] or t["C"] is None or t["C"].shape != B.shape:
            raise ValueError(f"{name}: B and C must both be (batch, seqlen, groups, dstate) = "
                             f"({batch}, {seqlen}, groups, dstate), got {tuple(B.shape)} and "
                             f"{None if t['C'] is None else tuple(t['C'].shape)}")
        groups, dstate = B.shape[2], B.shape[3]
        if heads % groups:
            raise ValueError(f"{name}: groups ({groups}) must divide heads ({heads})")
        for key, v in t.items():
            if v is not None and v.device != x.device:
                raise ValueError(f"{name}: {key} is on {v.device}, x on {x.device}")
        for key in ("z", "B", "C"):
            v = t.get(key)
            if v is not None and v.dtype != x.dtype:
                raise ValueError(f"{name}: {key} must have x's dtype {x.dtype}, got {v.dtype}")
        self._check_device(x.device)

        chunk = (self.schedule.chunk or DEFAULT_CHUNK) * self.rank
        n_chunks = -(-seqlen // chunk)
        seq_idx = inputs.get("seq_idx")
        seg = None
        if seq_idx is not None:
            if tuple(seq_idx.shape) != (batch, seqlen):
                raise ValueError(f"{name}: seq_idx must be (batch, seqlen) = ({batch}, {seqlen}), "
                                 f"got {tuple(seq_idx.shape)}")
            seg = segment_ids(seq_idx.to(x.device))
        table = None
        if cu_seqlens is None:
            total, rows, per_row, num_seqs = batch * n_chunks, batch, n_chunks, batch
        else:
            if batch != 1:
                raise ValueError(f"{name}: cu_seqlens needs batch 1, got batch {batch}")
            if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
                raise ValueError(f"{name}: cu_seqlens must be (num_seqs + 1,) with num_seqs >= 1")
            num_seqs = cu_seqlens.shape[0] - 1
            total = (seqlen + num_seqs * (chunk - 1)) // chunk
            rows, per_row = 1, total
            table = chunk_table(cu_seqlens.to(x.device), chunk, total, seqlen)

        block_t = min(chunk, self.schedule.block_l or DEFAULT_BLOCK_T)
        block_p, block_n = tile_sizes(self.schedule, headdim, dstate)
        fused = fuses_passing(rows, heads, headdim, dstate, self.schedule)
        return _Bound(t, batch, seqlen, heads, headdim, groups, dstate, chunk, n_chunks, total, rows, per_row,
                      num_seqs, seg, table, block_t, block_p, block_n, fused, x.device)

    def _check_device(self, device: torch.device) -> None:
        interpreted = _is_interpreted(self.k["bmm"])
        if device.type == "cuda" and not interpreted:
            return
        if device.type == "cpu" and interpreted:
            return
        if device.type == "cuda":
            raise RuntimeError("Triton runs in interpreter mode (TRITON_INTERPRET=1), which takes CPU tensors; "
                               f"got tensors on {device}")
        raise RuntimeError(f"the Triton backend runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), "
                           f"got tensors on {device}")

    def _state(self, b: _Bound, state: Optional[torch.Tensor], what: str) -> Optional[torch.Tensor]:
        if state is None:
            return None
        want = (b.num_seqs, b.heads, b.headdim, b.dstate)
        if tuple(state.shape) != want:
            raise ValueError(f"{self.program.name}: {what} must be {want} (num_seqs, heads, headdim, dstate), "
                             f"got {tuple(state.shape)}")
        return state.to(device=b.device, dtype=torch.float32).contiguous()

    # -- launching --------------------------------------------------------------------------
    def _meta(self, b: _Bound, *names: str) -> dict[str, Any]:
        sizes = dict(CHUNK=b.chunk, BLOCK_T=b.block_t, BLOCK_P=b.block_p, BLOCK_N=b.block_n)
        meta = {k: sizes[k] for k in names}
        meta.update(num_warps=self.schedule.num_warps, num_stages=self.schedule.num_stages)
        return meta

    def _launch(self, b: _Bound, kernel: str, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
        fn = self.k[kernel]
        if b.device.type == "cuda":
            with torch.cuda.device(b.device):
                fn[grid](*args, **meta)
        else:
            fn[grid](*args, **meta)

    def _common(self, b: _Bound) -> dict[str, Any]:
        """Flags of the kernels that multiply tiles: fp32 inputs take exact fp32 dots (no
        tf32); 16-bit inputs take dots of operands in their dtype, except bf16 under the
        interpreter, whose dot cannot multiply bf16 (there the operands stay fp32)."""
        import triton.language as tl

        x = b.t["x"]
        assert x is not None
        io = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[x.dtype]
        dot = tl.float32 if io == tl.bfloat16 and _is_interpreted(self.k["bmm"]) else io
        return dict(HAS_SEG=b.seg is not None, VARLEN=b.table is not None,
                    PRECISION="ieee" if x.dtype == torch.float32 else "tf32", DOT=dot)

    def _trap_args(self, b: _Bound, **buffers: Optional[torch.Tensor]) -> dict[str, Optional[torch.Tensor]]:
        """The Mamba-3 kernels' extra operands (γ, and the given buffers) by name; none for SSD."""
        return dict(gam=b.t["gam"], **buffers) if self.trap else {}

    # -- forward -----------------------------------------------------------------------------
    def forward(
        self,
        inputs: Mapping[str, Optional[torch.Tensor]],
        *,
        initial_state: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        return_final_state: bool = False,
        save_for_backward: bool = False,
        output: bool = True,
    ) -> ScanForward:
        """``output=False`` (with ``save_for_backward``): only what the backward needs, the
        chunk states passed by state_pass and no chunk_scan; ``out`` is then empty."""
        b = self._bind(inputs, cu_seqlens)
        if not output:
            if not save_for_backward:
                raise ValueError("forward(output=False) is for save_for_backward=True")
            b = dataclasses.replace(b, fused=False)
        h0 = self._state(b, initial_state, "initial_state")
        t, dev, f32 = b.t, b.device, torch.float32
        x, D = t["x"], t.get("D")
        assert x is not None
        H, G, P, N, Q = b.heads, b.groups, b.headdim, b.dstate, b.chunk
        common = self._common(b)
        cs = _empty((b.total, H, Q), device=dev, dtype=f32)
        dl = _empty((b.total, H, Q), device=dev, dtype=f32)
        CB = _empty((b.total, G, Q, Q), device=dev, dtype=x.dtype)
        S = _empty(b.state_shape, device=dev, dtype=f32)
        out = _empty(tuple(x.shape), device=dev, dtype=x.dtype)
        states = _empty(b.state_shape, device=dev, dtype=f32) if save_for_backward or not b.fused else None
        ht = _empty((b.num_seqs, H, P, N), device=dev, dtype=f32) if return_final_state else None
        head_args = (b.seqlen, b.n_chunks)

        self._launch(b, "bmm", (b.total, G, b.t_blocks), t["B"], t["C"], b.table, CB, *head_args, G, N,
                     VARLEN=common["VARLEN"], PRECISION=common["PRECISION"], DOT=common["DOT"],
                     **self._meta(b, "CHUNK", "BLOCK_T", "BLOCK_N"))
        self._launch(b, "chunk_state", (b.total, H, b.p_blocks), x, t["dt"], t["A"], t.get("dt_bias"), t["B"], b.seg,
                     b.table, cs, dl, S, *head_args, H, G, P, N, H // G, HAS_DT_BIAS=t.get("dt_bias") is not None,
                     **common, **self._meta(b, "CHUNK", "BLOCK_T", "BLOCK_P", "BLOCK_N"))
        if not b.fused:
            self._launch(b, "state_pass", (b.rows, H, b.p_blocks), b.seg, b.table, cs, S, h0, states, ht,
                         *head_args, b.per_row, H, P, N, HAS_SEG=common["HAS_SEG"], VARLEN=common["VARLEN"],
                         HAS_INIT=h0 is not None, STORE_OUT=ht is not None, REVERSE=False,
                         **self._meta(b, "CHUNK", "BLOCK_T", "BLOCK_P", "BLOCK_N"))
        if not output:
            return ScanForward(out=x.new_empty(0), final_state=ht,
                               saved={"cs": cs, "dl": dl, "CB": CB, "states": states})
        grid = (b.rows, H, b.p_blocks) if b.fused else (b.total, H, b.p_blocks)
        self._launch(b, "chunk_scan", grid, x, t.get("z"), D, t["C"], b.seg, b.table, cs, dl, CB, S, h0, states,
                     ht, out, *head_args, b.per_row, H, G, P, N, H // G, **self._trap_args(b),
                     HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=t.get("z") is not None,
                     FUSED=b.fused, HAS_H0=h0 is not None, SAVE_STATES=states is not None and b.fused,
                     STORE_HT=ht is not None and b.fused, **common,
                     **self._meta(b, "CHUNK", "BLOCK_T", "BLOCK_P", "BLOCK_N"))
        saved = {}
        if save_for_backward:
            assert states is not None
            saved = {"cs": cs, "dl": dl, "CB": CB, "states": states}
        return ScanForward(out=out, final_state=ht, saved=saved)

    def prepare_backward(self, inputs: Mapping[str, Optional[torch.Tensor]], **kwargs: Any) -> ScanForward:
        """What :meth:`backward` needs, without the output (see :class:`~scancc.backends.base.CompiledScan`)."""
        return self.forward(inputs, save_for_backward=True, output=False, **kwargs)

    # -- backward ----------------------------------------------------------------------------
    def backward(
        self,
        fwd: ScanForward,
        inputs: Mapping[str, Optional[torch.Tensor]],
        grad_out: Optional[torch.Tensor],
        grad_final_state: Optional[torch.Tensor] = None,
        *,
        initial_state: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
    ) -> dict[str, Optional[torch.Tensor]]:
        if not all(k in fwd.saved for k in ("cs", "dl", "CB", "states")):
            raise ValueError("backward needs the ScanForward of forward(..., save_for_backward=True)")
        b = self._bind(inputs, cu_seqlens)
        cs, dl, CB, states = (fwd.saved[k] for k in ("cs", "dl", "CB", "states"))
        if tuple(states.shape) != b.state_shape or tuple(cs.shape) != (b.total, b.heads, b.chunk):
            raise ValueError(f"{self.program.name}: the saved forward {tuple(states.shape)} does not belong to "
                             "these inputs")
        t, dev, f32 = b.t, b.device, torch.float32
        x, dt, D, z = t["x"], t["dt"], t.get("D"), t.get("z")
        assert x is not None and dt is not None
        H, G, P, N, Q = b.heads, b.groups, b.headdim, b.dstate, b.chunk
        common = self._common(b)
        if grad_out is None:
            grad_out = torch.zeros_like(x)
        if tuple(grad_out.shape) != tuple(x.shape):
            raise ValueError(f"{self.program.name}: grad_out must be {tuple(x.shape)}, got {tuple(grad_out.shape)}")
        dout = grad_out.to(x.dtype).contiguous()
        dht = self._state(b, grad_final_state, "grad_final_state")
        h0 = initial_state
        head_args = (b.seqlen, b.n_chunks)
        sizes = self._meta(b, "CHUNK", "BLOCK_T", "BLOCK_P", "BLOCK_N")

        # 1. the adjoint state passing: Gs[j] is the gradient of the state leaving chunk j
        Gs = _empty(b.state_shape, device=dev, dtype=f32)
        dh0 = _empty((b.num_seqs, H, P, N), device=dev, dtype=f32) if h0 is not None else None
        E = None if b.fused else _empty(b.state_shape, device=dev, dtype=f32)
        grid = (b.rows, H, b.p_blocks) if b.fused else (b.total, H, b.p_blocks)
        self._launch(b, "chunk_dstate", grid, dout, z, t["C"], b.seg, b.table, cs, dht, Gs, dh0, E,
                     *head_args, b.per_row, H, G, P, N, H // G, HAS_Z=z is not None, HAS_SEG=common["HAS_SEG"],
                     VARLEN=common["VARLEN"], FUSED=b.fused, HAS_DHT=dht is not None,
                     STORE_DH0=dh0 is not None and b.fused, PRECISION=common["PRECISION"], DOT=common["DOT"],
                     **sizes)
        if not b.fused:
            self._launch(b, "state_pass", (b.rows, H, b.p_blocks), b.seg, b.table, cs, E, dht, Gs, dh0,
                         *head_args, b.per_row, H, P, N, HAS_SEG=common["HAS_SEG"], VARLEN=common["VARLEN"],
                         HAS_INIT=dht is not None, STORE_OUT=dh0 is not None, REVERSE=True, **sizes)

        # 2. dCB, summed over the heads of a group
        dCB = _empty((b.total, G, Q, Q), device=dev, dtype=f32)
        self._launch(b, "chunk_dcb", (b.total, G, b.t_blocks ** 2), x, z, dout, b.seg, b.table, cs, dl, dCB,
                     *head_args, H, G, P, H // G, **self._trap_args(b), HAS_Z=z is not None, **common,
                     **self._meta(b, "CHUNK", "BLOCK_T", "BLOCK_P"))

        # 3. dx, dz, D's partial sums, the pieces of dcs
        dx = _empty(tuple(x.shape), device=dev, dtype=x.dtype)
        dz = _empty(tuple(z.shape), device=dev, dtype=z.dtype) if z is not None else None
        parts = (b.total, H, b.p_blocks)
        r_part, u_part, dd_part = (_empty(parts + (Q,), device=dev, dtype=f32) for _ in range(3))
        k_part = _empty(parts, device=dev, dtype=f32)
        dD_part = _empty((b.total, H, P), device=dev, dtype=f32) if D is not None else None
        g_part = _empty(parts + (Q,), device=dev, dtype=f32) if self.trap else None
        self._launch(b, "chunk_dx", (b.total, H, b.p_blocks), x, z, dout, D, t["B"], t["C"], b.seg, b.table, cs, dl,
                     CB, states, Gs, dx, dz, r_part, u_part, dd_part, k_part, dD_part,
                     *head_args, H, G, P, N, H // G, b.p_blocks, **self._trap_args(b, g_part=g_part),
                     HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None, **common,
                     **sizes)

        # 4. the gradient of the log-decays: ddt, and partial sums of dA, ddt_bias
        ddt = _empty(tuple(dt.shape), device=dev, dtype=dt.dtype)
        # Mamba-3: ∂L/∂adt per token in place of dA's partial sums, and ∂L/∂γ
        dA_part = _empty(tuple(dt.shape) if self.trap else (b.total, H), device=dev, dtype=f32)
        dgam = _empty(tuple(dt.shape), device=dev, dtype=f32) if self.trap else None
        has_bias = t.get("dt_bias") is not None
        dbias_part = _empty((b.total, H), device=dev, dtype=f32) if has_bias else None
        trap_ddt = dict(g_part=g_part, dgam=dgam) if self.trap else {}
        self._launch(b, "chunk_ddt", (b.total, H), dt, t["A"], t.get("dt_bias"), b.table, dl, r_part, u_part, dd_part,
                     k_part, ddt, dA_part, dbias_part, *head_args, H, b.p_blocks, **trap_ddt, HAS_DT_BIAS=has_bias,
                     VARLEN=common["VARLEN"], **self._meta(b, "CHUNK", "BLOCK_T"))

        # 5. dB and dC, the heads of a group shared out among `splits` programs
        Bt = t["B"]
        assert Bt is not None
        splits = head_splits(b.total * G * b.t_blocks, H // G)
        part_dtype = Bt.dtype if splits == 1 else f32
        dB_parts = _empty((splits,) + tuple(Bt.shape), device=dev, dtype=part_dtype)
        dC_parts = _empty((splits,) + tuple(Bt.shape), device=dev, dtype=part_dtype)
        self._launch(b, "chunk_dbc", (b.total, G * splits, b.t_blocks), x, z, dout, Bt, t["C"], b.seg, b.table, cs,
                     dl, dCB, states, Gs, dB_parts, dC_parts, *head_args, H, G, P, N, H // G, splits, Bt.numel(),
                     HAS_Z=z is not None, **common, **sizes)
        dB = dB_parts[0] if splits == 1 else dB_parts.sum(0).to(Bt.dtype)
        dC = dC_parts[0] if splits == 1 else dC_parts.sum(0).to(Bt.dtype)

        A = t["A"]
        assert A is not None
        grads: dict[str, Optional[torch.Tensor]] = {
            "x": dx, "dt": ddt, "A": dA_part if self.trap else dA_part.sum(0).to(A.dtype), "B": dB, "C": dC,
            "z": dz, "D": None, "dt_bias": None, "gam": dgam,
        }
        if D is not None and dD_part is not None:
            dD = dD_part.sum(0)
            grads["D"] = (dD if D.dim() == 2 else dD.sum(1)).to(D.dtype)
        if has_bias and dbias_part is not None:
            grads["dt_bias"] = dbias_part.sum(0).to(t["dt_bias"].dtype)
        result: dict[str, Optional[torch.Tensor]] = {}
        for key, _ in self._inputs():
            v = inputs.get(key)
            g = grads.get(key)
            result[key] = None if v is None or g is None else g.reshape(v.shape)
        result["initial_state"] = None if dh0 is None or h0 is None else dh0.to(h0.dtype)
        return result
