"""The diagonal family on the CUDA backend: launch geometry, template context, the compiled scan.

``scancc/templates/cuda/diagonal.cu.j2`` holds one forward and one backward kernel per
program (see its header for the schedule). What varies per call and is compiled in: the
state size ``DSTATE``, the block geometry (:class:`DiagConfig`) and the element type of each
activation (``SCANCC_T_<name>``), all passed as ``-D`` macros, so one rendered source serves
every shape and dtype and each combination is one cached module.

The geometry is a pure function (:func:`choose_config`) of the plan, the schedule and the
sizes, so it is unit-tested without a GPU; :func:`smem_bytes` mirrors the template's shared
arrays and keeps every block within the 48 KiB of static shared memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..ir import Program, Schedule
from .base import ScanForward
from .cuda_runtime import launch, load_kernels, pack_args
from .diagonal import DiagonalPlan, discretize

TEMPLATE = "cuda/diagonal.cu.j2"
STATIC_SMEM_LIMIT = 48 * 1024   # bytes of static __shared__ per block
MAX_THREADS = 1024
CHECKPOINT_STEPS = 64           # the forward saves the state at most this many steps apart
DEFAULT_TL = 32                 # forward tile (time steps staged in shared memory)
DEFAULT_BWD_TL_STATE = 16       # backward tile when the state has an n axis (register history)
DEFAULT_BWD_TL_SCALAR = 32
FWD_ENTRIES_PER_THREAD = 8      # state entries one forward thread keeps (halved for complex)
BWD_ENTRIES_PER_THREAD = 4      # ... one backward thread (its history is TL × entries)
BWD_THREADS = 64
HISTORY_REGS = 64               # fp32 registers for the backward's per-tile state history
SEGMENT_REGS = 32               # ... for the tile-start states of a segment

CTYPES = {torch.float32: "float", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class DiagConfig:
    """Launch geometry of the diagonal kernels for one (program, schedule, sizes).

    Forward: blocks of ``cb`` channels × ``nsplit`` threads per channel, tiles of ``tl``
    steps; backward likewise (``bwd_*``); checkpoints every ``ckpt`` steps (a multiple of
    both tiles).
    """

    dstate: int
    nsplit: int
    cb: int
    tl: int
    bwd_nsplit: int
    bwd_cb: int
    bwd_tl: int
    ckpt: int

    @property
    def fwd_threads(self) -> int:
        return self.cb * self.nsplit

    @property
    def bwd_threads(self) -> int:
        return self.bwd_cb * self.bwd_nsplit

    def macros(self) -> dict[str, int]:
        return dict(DSTATE=self.dstate, NSPLIT=self.nsplit, CB=self.cb, TL=self.tl, CKPT=self.ckpt,
                    BWD_NSPLIT=self.bwd_nsplit, BWD_CB=self.bwd_cb, BWD_TL=self.bwd_tl)

    def defines(self) -> list[str]:
        return [f"-DSCANCC_{k}={v}" for k, v in self.macros().items()]

    def grid(self, num_seqs: int, dim: int, backward: bool = False) -> tuple[int]:
        cb = self.bwd_cb if backward else self.cb
        return (num_seqs * _cdiv(dim, cb),)

    def n_ckpt(self, seqlen: int) -> int:
        return _cdiv(seqlen, self.ckpt)


def smem_bytes(plan: DiagonalPlan, cfg: DiagConfig, backward: bool) -> int:
    """Static shared memory of one block, as declared in the template."""
    p = plan.program
    cplx = 2 if plan.complex else 1
    ycplx = 2 if plan.complex and p.readout.kind == "state" else 1
    step = plan.step is not None
    cb, tl = (cfg.bwd_cb, cfg.bwd_tl) if backward else (cfg.cb, cfg.tl)
    row = cb * (tl + 1)
    varying = sum(src == "varying" for src in (plan.b_source, plan.c_source))
    words = row  # s_x
    if not backward:
        words += row * step + row * cplx * (plan.decay == "input")
        words += varying * cfg.dstate * tl * cplx + row * ycplx
    else:
        keep_v = step and (p.step.softplus or p.step.clamp is not None)  # type: ignore[union-attr]
        words += row * (2 * step + keep_v) + 2 * row * cplx * (plan.decay == "input")
        words += 2 * varying * cfg.dstate * tl * cplx + row * ycplx + row * (p.readout.gate != "none") + row
        words += (cfg.ckpt // tl) * _cdiv(cfg.dstate, cfg.bwd_nsplit) * cfg.bwd_threads * cplx  # s_hseg
    return 4 * words


def _fit_block(want: int, nsplit: int, chans_per_group: int, grouped: bool) -> int:
    """Channels per block: a power of two ≤ ``want`` (and ≤ MAX_THREADS / nsplit) dividing
    the channels of a group when channels share B/C."""
    cb = max(1, min(_next_pow2(want) if want & (want - 1) else want, MAX_THREADS // nsplit))
    if grouped:
        while cb > 1 and chans_per_group % cb:
            cb //= 2
    return cb


def choose_config(plan: DiagonalPlan, schedule: Schedule, dim: int, dstate: int, chans_per_group: int) -> DiagConfig:
    """The geometry for these sizes.

    ``schedule.block_n``: state entries per forward thread (default 8, 4 for complex states);
    ``schedule.block_d``: channels per forward block (default ``32·num_warps / nsplit``);
    ``schedule.block_l``: forward tile (default 32). The backward keeps at most 4 (2) entries
    per thread and a history of about ``HISTORY_REGS`` values; everything is shrunk until the
    shared arrays fit ``STATIC_SMEM_LIMIT``.
    """
    cplx = 2 if plan.complex else 1
    grouped = plan.grouped
    if plan.has_dstate:
        spt = schedule.block_n or max(1, FWD_ENTRIES_PER_THREAD // cplx)
        nsplit = min(32, _next_pow2(_cdiv(dstate, spt)))
        spt_b = max(1, min(_cdiv(dstate, nsplit), BWD_ENTRIES_PER_THREAD // cplx))
        bwd_nsplit = min(32, _next_pow2(_cdiv(dstate, spt_b)))
    else:
        nsplit = bwd_nsplit = 1
    threads = 32 * schedule.num_warps
    cb = _fit_block(schedule.block_d or max(1, threads // nsplit), nsplit, chans_per_group, grouped)
    bwd_cb = _fit_block(max(1, BWD_THREADS // bwd_nsplit), bwd_nsplit, chans_per_group, grouped)
    # the backward's registers: a tile's history and a segment's tile starts
    spt_b = _cdiv(dstate, bwd_nsplit)
    bwd_tl = DEFAULT_BWD_TL_STATE if plan.has_dstate else DEFAULT_BWD_TL_SCALAR
    while bwd_tl > 1 and bwd_tl * spt_b * cplx > HISTORY_REGS:
        bwd_tl //= 2
    seg_tiles = max(1, min(CHECKPOINT_STEPS // bwd_tl, SEGMENT_REGS // (spt_b * cplx)))
    ckpt = bwd_tl * (1 << (seg_tiles.bit_length() - 1))  # tiles per segment: a power of two
    tl = min(schedule.block_l or DEFAULT_TL, ckpt)
    cfg = DiagConfig(dstate, nsplit, cb, tl, bwd_nsplit, bwd_cb, bwd_tl, ckpt)
    while smem_bytes(plan, cfg, False) > STATIC_SMEM_LIMIT and (cfg.tl > 1 or cfg.cb > 1):
        cfg = (DiagConfig(dstate, nsplit, cfg.cb, cfg.tl // 2, bwd_nsplit, cfg.bwd_cb, cfg.bwd_tl, ckpt)
               if cfg.tl > 1 else DiagConfig(dstate, nsplit, cfg.cb // 2, cfg.tl, bwd_nsplit, cfg.bwd_cb, cfg.bwd_tl, ckpt))
    while smem_bytes(plan, cfg, True) > STATIC_SMEM_LIMIT and (cfg.bwd_tl > 1 or cfg.bwd_cb > 1):
        if cfg.bwd_tl > 1:
            # a smaller backward tile keeps the checkpoint interval: more tiles per segment
            cfg = DiagConfig(dstate, nsplit, cfg.cb, cfg.tl, bwd_nsplit, cfg.bwd_cb, cfg.bwd_tl // 2, cfg.ckpt)
        else:
            cfg = DiagConfig(dstate, nsplit, cfg.cb, cfg.tl, bwd_nsplit, cfg.bwd_cb // 2, cfg.bwd_tl, cfg.ckpt)
    if smem_bytes(plan, cfg, False) > STATIC_SMEM_LIMIT or smem_bytes(plan, cfg, True) > STATIC_SMEM_LIMIT:
        raise ValueError(f"{plan.program.name}: dstate = {dstate} needs more shared memory than a block has "
                         f"({STATIC_SMEM_LIMIT} bytes) even with one channel and one step per tile")
    return cfg


# -- kernel parameters (one list drives the template's signature and the host's arguments) --------
def _op_ctype(op: Any, const: bool) -> str:
    elem = "float" if op.complex or op.layout in ("dn", "d") else f"SCANCC_T_{op.name}"
    return f"{'const ' if const else ''}{elem}*"


def operand_params(plan: DiagonalPlan) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for op in plan.operands:
        params.append((_op_ctype(op, True), op.name))
        params.extend(("long long", s) for s in op.strides)
    return params


SIZES = [("long long", "seqlen"), ("long long", "dim"), ("long long", "chans_per_group"), ("long long", "n_ckpt")]


def fwd_params(plan: DiagonalPlan) -> list[tuple[str, str]]:
    out_t = "float*" if _out_complex(plan) else "SCANCC_T_out*"
    return operand_params(plan) + [(out_t, "out"), ("const float*", "h0"), ("float*", "ht"), ("float*", "ckpt"),
                                   ("const long long*", "cu_seqlens")] + SIZES


def bwd_params(plan: DiagonalPlan) -> list[tuple[str, str]]:
    dout_t = "const float*" if _out_complex(plan) else "const SCANCC_T_out*"
    grads = []
    for op in plan.operands:
        elem = "float" if op.complex or op.layout != "seq" else f"SCANCC_T_{op.name}"
        grads.append((f"{elem}*", f"d{op.name}"))
    return (operand_params(plan) + [(dout_t, "dout"), ("long long", "stride_dout_b"), ("long long", "stride_dout_d"),
                                    ("const float*", "ckpt"), ("const float*", "dht"),
                                    ("const long long*", "cu_seqlens")]
            + grads + [("float*", "dh0")] + SIZES)


def _out_complex(plan: DiagonalPlan) -> bool:
    return plan.complex and plan.program.readout.kind == "state"


def type_macros(plan: DiagonalPlan) -> list[str]:
    names = [op.name for op in plan.operands if op.layout in ("seq", "bc") and not op.complex]
    return [f"SCANCC_T_{n}" for n in names] + ["SCANCC_T_out"]


def _cfloat(v: float) -> str:
    text = repr(float(v))
    return text + "f" if ("e" in text or "." in text) else text + ".0f"


def _comment(text: str) -> str:
    return "\n".join(("// " + line).rstrip() for line in text.splitlines())


def template_context(plan: DiagonalPlan) -> dict[str, Any]:
    p = plan.program
    cplx = plan.complex
    step = plan.step
    step_doc = None
    if step is not None:
        step_doc = "delta" + (" + delta_bias" if step.bias else "")
        if step.softplus:
            step_doc = f"softplus({step_doc})"
        if step.clamp is not None:
            step_doc = f"clamp({step_doc}, {step.clamp[0]}, {step.clamp[1]})"
    layout = {"seq": "(batch, dim, seqlen)", "bc": "(batch, groups, dstate, seqlen)", "dn": "(dim, dstate)", "d": "(dim,)"}
    lines = [f"{op.name}: {layout[op.layout]}{' complex (float pairs)' if op.complex else ''}" for op in plan.operands]
    lines += ["out: (batch, dim, seqlen) contiguous; states, checkpoints: (num_seqs, dim, dstate) float32"]
    if plan.decay == "fixed":
        lines.append("A_bar, B_bar: the discretized Ā, B̄, computed on the host from A (λ), B and delta")
    header = _comment(p.describe() + "\n\nLayout (last axes contiguous; strides in elements):\n"
                      + "\n".join(f"  {line}" for line in lines))

    def signature(params: list[tuple[str, str]]) -> str:
        return ",\n".join(f"    {ctype} __restrict__ {name}" if ctype.endswith("*") else f"    {ctype} {name}"
                          for ctype, name in params)

    return dict(
        p=p, plan=plan, name=p.name, header_comment=header, cplx=cplx, nd=plan.has_dstate, x=plan.x,
        step=step, step_doc=step_doc, decay=plan.decay, exp_param=p.decay.param, ik=p.input.kind,
        scale=p.input.scale, bsrc=p.input.b, csrc=p.readout.c, Bop="B_bar" if p.input.kind == "discretized" else "B",
        rk=p.readout.kind, rscale_mul="2.0f * " if p.readout.scale == 2.0 else "", skip=p.readout.skip,
        gate=p.readout.gate != "none", grouped=plan.grouped, out_complex=_out_complex(plan),
        keep_v=bool(step and (step.softplus or step.clamp is not None)),
        S="cf" if cplx else "float", Y="cf" if _out_complex(plan) else "float",
        defaults=default_config(plan).macros(), type_macros=type_macros(plan),
        fwd_params=fwd_params(plan), bwd_params=bwd_params(plan), signature=signature,
        op_complex=lambda name: bool(plan.operand(name) and plan.operand(name).complex),
        cfloat=_cfloat, inf=math.inf,
    )


def default_config(plan: DiagonalPlan, dstate: int = 16) -> DiagConfig:
    """The geometry compiled in when no ``-D`` overrides it: the default schedule's for
    ``dstate`` (1 for plain scans) and many channels per group."""
    return choose_config(plan, Schedule(algorithm="sequential", num_warps=4), 4096, dstate if plan.has_dstate else 1,
                         4096)


def render(program: Program) -> str:
    from .templating import render as render_template

    return render_template(TEMPLATE, **template_context(DiagonalPlan.of(program)))


# -- the compiled scan -----------------------------------------------------------------------------
def _empty(shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Every buffer a kernel fully overwrites is allocated here (tests fill them with NaN)."""
    return torch.empty(shape, device=device, dtype=dtype)


def _activation(t: torch.Tensor) -> torch.Tensor:
    """fp32/fp16/bf16 tensors as they are; other float dtypes computed in fp32."""
    return t if t.dtype in CTYPES else t.to(torch.float32)


@dataclass
class _Bound:
    tensors: dict[str, torch.Tensor | None]
    batch: int
    dim: int
    seqlen: int
    dstate: int
    groups: int
    num_seqs: int
    device: torch.device
    out_dtype: torch.dtype
    cfg: DiagConfig
    n_ckpt: int
    n_slots: int
    cu_seqlens: torch.Tensor | None


class CUDADiagScan:
    """A diagonal-family program compiled to CUDA (implements ``CompiledScan``)."""

    backend = "cuda"

    def __init__(self, program: Program, schedule: Schedule, source: str) -> None:
        self.program = program
        self.schedule = schedule
        self.source = source
        self.plan = DiagonalPlan.of(program)
        self._fwd_params = fwd_params(self.plan)
        self._bwd_params = bwd_params(self.plan)

    def __repr__(self) -> str:
        return f"CUDADiagScan({self.program.name!r}, {self.schedule.to_json()})"

    def __call__(self, inputs: Mapping[str, torch.Tensor | None], **kwargs: Any):
        fwd = self.forward(inputs, **kwargs)
        return (fwd.out, fwd.final_state) if kwargs.get("return_final_state") else fwd.out

    # -- binding --------------------------------------------------------------------------------
    def _kernel_operands(self, inputs: Mapping[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
        ops: dict[str, torch.Tensor | None] = {name: inputs.get(name) for name in inputs}
        if self.plan.decay == "fixed":
            if inputs.get("A") is None:
                raise ValueError(f"{self.program.name}: input 'A' is required")
            with torch.no_grad():
                ops["A_bar"], ops["B_bar"] = discretize(self.program, inputs["A"], inputs.get("B"),
                                                        inputs.get("delta"), inputs.get("delta_bias"))
        return ops

    def _bind(self, inputs: Mapping[str, torch.Tensor | None], cu_seqlens: torch.Tensor | None) -> _Bound:
        plan, name = self.plan, self.program.name
        if not isinstance(inputs, Mapping):
            raise TypeError(f"{name}: inputs must be a mapping of name -> tensor, got {type(inputs).__name__}")
        x = inputs.get(plan.x)
        if x is None:
            raise ValueError(f"{name}: input {plan.x!r} is required")
        if x.dim() != 3:
            raise ValueError(f"{name}: {plan.x} must be (batch, dim, seqlen), got shape {tuple(x.shape)}")
        batch, dim, seqlen = x.shape
        if min(batch, dim, seqlen) < 1:
            raise ValueError(f"{name}: {plan.x} has an empty axis, shape {tuple(x.shape)}")
        if x.device.type != "cuda":
            raise RuntimeError(f"the CUDA backend runs on CUDA tensors, got {plan.x} on {x.device}")
        ops = self._kernel_operands(inputs)
        dstate, groups = 1, 1
        for op in plan.operands:
            t = ops.get(op.name)
            if t is None:
                if not op.optional:
                    raise ValueError(f"{name}: input {op.name!r} is required")
                continue
            if t.device != x.device:
                raise ValueError(f"{name}: {op.name} is on {t.device}, {plan.x} on {x.device}")
            want_dims = {"seq": 3, "bc": 4, "dn": 2, "d": 1}[op.layout]
            if t.dim() != want_dims:
                raise ValueError(f"{name}: {op.name} must have {want_dims} dims, got shape {tuple(t.shape)}")
            if op.complex != t.is_complex():
                raise TypeError(f"{name}: {op.name} must be {'complex' if op.complex else 'real'}, got {t.dtype}")
            if op.layout == "dn":
                dstate = t.shape[1]
            elif op.layout == "bc":
                groups, dstate = t.shape[1], t.shape[2]
        if dim % groups:
            raise ValueError(f"{name}: groups ({groups}) must divide dim ({dim})")
        tensors: dict[str, torch.Tensor | None] = {}
        for op in plan.operands:
            t = ops.get(op.name)
            if t is not None:
                want = {"seq": (batch, dim, seqlen), "bc": (batch, groups, dstate, seqlen), "dn": (dim, dstate),
                        "d": (dim,)}[op.layout]
                if tuple(t.shape) != want:
                    raise ValueError(f"{name}: {op.name} must be {want}, got {tuple(t.shape)}")
                if op.complex:
                    t = torch.view_as_real(t.to(torch.complex64).resolve_conj())
                    if t.stride(-2) != 2:
                        t = t.contiguous()
                elif op.layout in ("dn", "d"):
                    t = t.to(torch.float32).contiguous()
                else:
                    t = _activation(t)
                    if t.stride(-1) != 1 and t.shape[-1] > 1:
                        t = t.contiguous()  # the kernels read the time axis with unit stride
            tensors[op.name] = t
        num_seqs = batch
        if cu_seqlens is not None:
            if batch != 1:
                raise ValueError(f"{name}: cu_seqlens needs batch 1, got batch {batch}")
            if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
                raise ValueError("cu_seqlens must be (num_seqs + 1,) with num_seqs >= 1")
            num_seqs = cu_seqlens.shape[0] - 1
            cu_seqlens = cu_seqlens.to(device=x.device, dtype=torch.int64).contiguous()
        cfg = choose_config(plan, self.schedule, dim, dstate, dim // groups)
        n_ckpt = cfg.n_ckpt(seqlen)
        n_slots = num_seqs * n_ckpt if cu_seqlens is None else num_seqs + n_ckpt
        out_dtype = torch.complex64 if _out_complex(plan) else _activation(x).dtype
        return _Bound(tensors, batch, dim, seqlen, dstate, groups, num_seqs, x.device, out_dtype, cfg, n_ckpt,
                      n_slots, cu_seqlens)

    def _state(self, b: _Bound, state: torch.Tensor | None, what: str) -> torch.Tensor | None:
        if state is None:
            return None
        want = (b.num_seqs, b.dim, b.dstate)
        if tuple(state.shape) != want:
            raise ValueError(f"{self.program.name}: {what} must be {want} (num_seqs, dim, dstate), "
                             f"got {tuple(state.shape)}")
        if self.plan.complex:
            return torch.view_as_real(state.to(b.device, torch.complex64).resolve_conj().contiguous())
        return state.to(b.device, torch.float32).contiguous()

    def _state_buffer(self, b: _Bound, rows: int) -> torch.Tensor:
        shape = (rows, b.dim, b.dstate) + ((2,) if self.plan.complex else ())
        return _empty(shape, device=b.device, dtype=torch.float32)

    def type_options(self, b: _Bound) -> list[str]:
        """``-DSCANCC_T_<name>=<ctype>`` for every real activation of this call and the output."""
        types = {"SCANCC_T_out": CTYPES.get(b.out_dtype, "float")}
        for op in self.plan.operands:
            t = b.tensors[op.name]
            if op.layout in ("seq", "bc") and not op.complex:
                types[f"SCANCC_T_{op.name}"] = CTYPES[t.dtype] if t is not None else "float"
        return [f"-D{k}={v}" for k, v in sorted(types.items())]

    def _kernels(self, b: _Bound) -> dict[str, Any]:
        options = b.cfg.defines() + self.type_options(b)
        index = b.device.index if b.device.index is not None else torch.cuda.current_device()
        names = [f"{self.program.name}_fwd", f"{self.program.name}_bwd"]
        return load_kernels(self.source, names, options, index)

    def _operand_values(self, b: _Bound) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for op in self.plan.operands:
            t = b.tensors[op.name]
            values[op.name] = t
            for axis, stride in zip(_stride_axes(op.layout, t), op.strides):
                values[stride] = axis
        values.update(seqlen=b.seqlen, dim=b.dim, chans_per_group=b.dim // b.groups, n_ckpt=b.n_ckpt,
                      cu_seqlens=b.cu_seqlens)
        return values

    # -- forward --------------------------------------------------------------------------------
    def forward(
        self,
        inputs: Mapping[str, torch.Tensor | None],
        *,
        initial_state: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        return_final_state: bool = False,
        save_for_backward: bool = False,
    ) -> ScanForward:
        b = self._bind(inputs, cu_seqlens)
        h0 = self._state(b, initial_state, "initial_state")
        out = _empty((b.batch, b.dim, b.seqlen), device=b.device, dtype=b.out_dtype)
        ht = self._state_buffer(b, b.num_seqs) if return_final_state else None
        ckpt = self._state_buffer(b, b.n_slots) if save_for_backward else None
        values = self._operand_values(b)
        values.update(out=torch.view_as_real(out) if out.is_complex() else out, h0=h0, ht=ht, ckpt=ckpt)
        kernel = self._kernels(b)[f"{self.program.name}_fwd"]
        launch(kernel, b.cfg.grid(b.num_seqs, b.dim), (b.cfg.fwd_threads,), pack_args(self._fwd_params, values),
               b.device)
        final = None
        if ht is not None:
            final = torch.view_as_complex(ht) if self.plan.complex else ht
        return ScanForward(out=out, final_state=final, saved={} if ckpt is None else {"ckpt": ckpt})

    # -- backward -------------------------------------------------------------------------------
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
        ckpt = fwd.saved.get("ckpt")
        if ckpt is None:
            raise ValueError("backward needs the ScanForward of forward(..., save_for_backward=True)")
        b = self._bind(inputs, cu_seqlens)
        if ckpt.shape[0] != b.n_slots or ckpt.shape[1] != b.dim:
            raise ValueError(f"{self.program.name}: the checkpoints {tuple(ckpt.shape)} do not belong to these inputs")
        seq_shape = (b.batch, b.dim, b.seqlen)
        if grad_out is None:
            grad_out = torch.zeros(seq_shape, device=b.device, dtype=b.out_dtype)
        if tuple(grad_out.shape) != seq_shape:
            raise ValueError(f"{self.program.name}: grad_out must be {seq_shape}, got {tuple(grad_out.shape)}")
        if b.out_dtype.is_complex:
            dout = torch.view_as_real(grad_out.to(torch.complex64).resolve_conj())
            if dout.stride(-2) != 2:
                dout = dout.contiguous()
        else:
            dout = grad_out.to(b.out_dtype)
            if dout.stride(-1) != 1 and b.seqlen > 1:
                dout = dout.contiguous()
        dht = self._state(b, grad_final_state, "grad_final_state")

        raw: dict[str, torch.Tensor | None] = {}
        alloc = torch.zeros if b.cu_seqlens is not None else _empty  # steps outside every sequence
        for op in self.plan.operands:
            t = b.tensors[op.name]
            if t is None:
                raw[op.name] = None
                continue
            trailing = (2,) if op.complex else ()
            if op.layout == "seq":
                raw[op.name] = alloc(seq_shape + trailing, device=b.device, dtype=torch.float32 if op.complex else t.dtype)
            elif op.layout == "bc":
                raw[op.name] = torch.zeros((b.batch, b.groups, b.dstate, b.seqlen) + trailing, device=b.device,
                                           dtype=torch.float32)
            elif op.layout == "dn":
                raw[op.name] = _empty((b.num_seqs, b.dim, b.dstate) + trailing, device=b.device, dtype=torch.float32)
            else:
                raw[op.name] = _empty((b.num_seqs, b.dim) + trailing, device=b.device, dtype=torch.float32)
        dh0 = self._state_buffer(b, b.num_seqs) if initial_state is not None else None

        values = self._operand_values(b)
        values.update(dout=dout, stride_dout_b=dout.stride(0), stride_dout_d=dout.stride(1), ckpt=ckpt, dht=dht,
                      dh0=dh0)
        values.update({f"d{name}": g for name, g in raw.items()})
        kernel = self._kernels(b)[f"{self.program.name}_bwd"]
        launch(kernel, b.cfg.grid(b.num_seqs, b.dim, backward=True), (b.cfg.bwd_threads,),
               pack_args(self._bwd_params, values), b.device)

        grads: dict[str, torch.Tensor | None] = {}
        for op in self.plan.operands:
            g = raw[op.name]
            if g is not None and op.layout in ("dn", "d"):
                g = g.sum(0)
            if g is not None and op.complex:
                g = torch.view_as_complex(g.contiguous())
            grads[op.name] = g
        if self.plan.decay == "fixed":
            grads.update(self._lti_grads(inputs, grads.pop("A_bar"), grads.pop("B_bar", None)))
        result: dict[str, torch.Tensor | None] = {}
        for spec in self.program.tensors():
            t = inputs.get(spec.name)
            g = grads.get(spec.name)
            result[spec.name] = None if t is None or g is None else g.to(t.dtype).reshape(t.shape)
        if dh0 is not None and initial_state is not None:
            g0 = torch.view_as_complex(dh0) if self.plan.complex else dh0
            result["initial_state"] = g0.to(initial_state.dtype)
        else:
            result["initial_state"] = None
        return result

    def _lti_grads(self, inputs: Mapping[str, torch.Tensor | None], d_abar: torch.Tensor,
                   d_bbar: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
        """Chain dĀ, dB̄ through the host discretization to A (λ), B, delta, delta_bias."""
        names = [n for n in ("A", "B", "delta", "delta_bias") if inputs.get(n) is not None]
        with torch.enable_grad():
            leaves = {n: inputs[n].detach().requires_grad_(True) for n in names}  # type: ignore[union-attr]
            abar, bbar = discretize(self.program, leaves["A"], leaves.get("B"), leaves.get("delta"),
                                    leaves.get("delta_bias"))
            outs = [abar] + ([bbar] if bbar is not None and d_bbar is not None else [])
            gouts = [d_abar] + ([d_bbar] if bbar is not None and d_bbar is not None else [])
            got = torch.autograd.grad(outs, [leaves[n] for n in names], gouts, allow_unused=True)
        return {n: (g if g is not None else torch.zeros_like(leaves[n])) for n, g in zip(names, got)}


def _stride_axes(layout: str, t: torch.Tensor | None) -> tuple[int, ...]:
    """The strides a kernel takes for an operand (zeros for an absent one)."""
    count = {"seq": 2, "bc": 3, "dn": 1, "d": 0}[layout]
    if t is None:
        return (0,) * count
    return tuple(t.stride()[:count])
