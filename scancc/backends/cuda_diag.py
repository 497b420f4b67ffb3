"""The diagonal family on the CUDA backend: launch geometry, template context, the compiled scans.

``scancc/templates/cuda/diagonal.cu.j2`` holds one forward and one backward kernel per
program (see its header for the schedule). What varies per call and is compiled in: the
state size ``DSTATE``, the block geometry (:class:`DiagConfig`) and the element type of each
activation (``SCANCC_T_<name>``), all passed as ``-D`` macros, so one rendered source serves
every shape and dtype and each combination is one cached module.

The geometry is a pure function (:func:`choose_config`) of the plan, the schedule and the
sizes, so it is unit-tested without a GPU; :func:`smem_bytes` mirrors the template's shared
arrays and keeps every block within the 48 KiB of static shared memory.

:class:`CUDADiagonalHost` is what the sequential scan here and the chunked ones
(:mod:`scancc.backends.cuda_linear`, :mod:`scancc.backends.cuda_selective`) add to the shared
host code of :mod:`scancc.backends.diagonal_host`: operand dtypes, type macros, named arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..ir import Program, Schedule
from .cuda_runtime import launch, load_kernels, pack_args
from .diagonal import DiagonalPlan, Operand
from .diagonal_host import BackwardBuffers, Binding, DiagonalScanHost, ForwardBuffers, operand_strides, real_view

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


# -- the compiled scans -----------------------------------------------------------------------------
def _activation(t: torch.Tensor) -> torch.Tensor:
    """fp32/fp16/bf16 tensors as they are; other float dtypes computed in fp32."""
    return t if t.dtype in CTYPES else t.to(torch.float32)


class CUDADiagonalHost(DiagonalScanHost):
    """What the CUDA scans of the diagonal family share: CUDA tensors, the element types the
    kernels are compiled for, and the operands as named kernel arguments."""

    backend = "cuda"

    def _check_device(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise RuntimeError(f"the CUDA backend runs on CUDA tensors, got {self.plan.x} on {device}")

    def _kernel_tensor(self, op: Operand, t: torch.Tensor) -> torch.Tensor:
        """Complex: float32 pairs; ``dn``/``d``: float32, contiguous; activations in fp32/fp16/bf16
        (:func:`_activation`) with a unit stride along time."""
        if op.complex:
            t = real_view(t)
            return t if t.stride(-2) == 2 else t.contiguous()
        if op.layout in ("dn", "d"):
            return t.to(torch.float32).contiguous()
        t = _activation(t)
        return t.contiguous() if t.stride(-1) != 1 and t.shape[-1] > 1 else t

    def _kernel_cu_seqlens(self, cu_seqlens: torch.Tensor, device: torch.device) -> torch.Tensor:
        return cu_seqlens.to(device=device, dtype=torch.int64).contiguous()

    def _activation_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return dtype if dtype in CTYPES else torch.float32

    def _real_grad_out(self, b: Binding, grad_out: torch.Tensor) -> torch.Tensor:
        return grad_out.to(b.out_dtype)  # the kernels read dout as SCANCC_T_out

    def type_options(self, b: Binding) -> list[str]:
        """``-DSCANCC_T_<name>=<ctype>`` for every real activation of this call and the output."""
        types = {"SCANCC_T_out": CTYPES.get(b.out_dtype, "float")}
        for op in self.plan.operands:
            t = b.tensors[op.name]
            if op.layout in ("seq", "bc") and not op.complex:
                types[f"SCANCC_T_{op.name}"] = CTYPES[t.dtype] if t is not None else "float"
        return [f"-D{k}={v}" for k, v in sorted(types.items())]

    def _load(self, b: Binding, names: list[str], options: list[str]) -> dict[str, Any]:
        index = b.device.index if b.device.index is not None else torch.cuda.current_device()
        return load_kernels(self.source, names, options, index)

    def _operand_values(self, b: Binding) -> dict[str, Any]:
        """The operands, their strides, the sizes and ``cu_seqlens`` by kernel parameter name."""
        values: dict[str, Any] = {}
        for op in self.plan.operands:
            t = b.tensors[op.name]
            values[op.name] = t
            values.update(zip(op.strides, operand_strides(op, t)))
        values.update(seqlen=b.seqlen, dim=b.dim, chans_per_group=b.chans_per_group, n_ckpt=b.n_ckpt,
                      cu_seqlens=b.cu_seqlens)
        return values

    def _forward_values(self, b: Binding, io: ForwardBuffers) -> dict[str, Any]:
        """:meth:`_operand_values` and the forward's buffers (``out``, ``h0``, ``ht``, ``ckpt``)."""
        values = self._operand_values(b)
        values.update(out=io.out_arg, h0=io.h0, ht=io.ht, ckpt=io.ckpt)
        return values

    def _backward_values(self, b: Binding, io: BackwardBuffers) -> dict[str, Any]:
        """:meth:`_operand_values` and the backward's buffers (``dout`` and its strides, ``dht``,
        ``d<operand>``, ``dh0``)."""
        values = self._operand_values(b)
        values.update(dout=io.dout, stride_dout_b=io.dout.stride(0), stride_dout_d=io.dout.stride(1), dht=io.dht,
                      dh0=io.dh0)
        values.update({f"d{name}": g for name, g in io.grads.items()})
        return values


class CUDADiagScan(CUDADiagonalHost):
    """A diagonal-family program compiled to the sequential CUDA kernels (implements ``CompiledScan``)."""

    def __init__(self, program: Program, schedule: Schedule, source: str) -> None:
        super().__init__(program, schedule, source)
        self._fwd_params = fwd_params(self.plan)
        self._bwd_params = bwd_params(self.plan)

    def _geometry(self, b: Binding) -> tuple[DiagConfig, int]:
        cfg = choose_config(self.plan, self.schedule, b.dim, b.dstate, b.chans_per_group)
        return cfg, cfg.ckpt

    def _kernels(self, b: Binding) -> dict[str, Any]:
        names = [f"{self.program.name}_fwd", f"{self.program.name}_bwd"]
        return self._load(b, names, b.geometry.defines() + self.type_options(b))

    def _launch_forward(self, b: Binding, io: ForwardBuffers) -> None:
        cfg: DiagConfig = b.geometry
        kernel = self._kernels(b)[f"{self.program.name}_fwd"]
        launch(kernel, cfg.grid(b.num_seqs, b.dim), (cfg.fwd_threads,),
               pack_args(self._fwd_params, self._forward_values(b, io)), b.device)

    def _launch_backward(self, b: Binding, ckpt: torch.Tensor, io: BackwardBuffers) -> None:
        values = self._backward_values(b, io)
        values.update(ckpt=ckpt)
        cfg: DiagConfig = b.geometry
        kernel = self._kernels(b)[f"{self.program.name}_bwd"]
        launch(kernel, cfg.grid(b.num_seqs, b.dim, backward=True), (cfg.bwd_threads,),
               pack_args(self._bwd_params, values), b.device)
