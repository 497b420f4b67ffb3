"""Matrix-state programs (SSD, GLA, Mamba-3) on the CUDA backend: the recurrent schedule, forward.

``scancc/templates/cuda/matrix.cu.j2``: one block per (sequence, head), time sequential,
the ``P × N`` state in registers (see the template's header). ``HEADDIM``, ``DSTATE`` and the
block geometry are compiled in (``-D``); element types per input as in the diagonal kernels.

Inputs, states and outputs are those of :mod:`scancc.backends.tvm_matrix` (and the oracle):
SSD/GLA states ``(num_seqs, heads, headdim, dstate)``; Mamba-3 takes that or a dict
``{"ssm", "angle", "k", "x"}`` and returns the dict. Inputs are made contiguous on the host.
There is no backward for these programs on this backend (``backward`` raises ``ValueError``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..ir import Program, Schedule
from .base import ScanForward
from .cuda_diag import CTYPES, _cfloat, _comment
from .cuda_runtime import launch, load_kernels, pack_args
from .matrix_states import MAMBA3_KEYS, state_entries

TEMPLATE = "cuda/matrix.cu.j2"
ENTRIES_PER_THREAD = 8
MAX_THREADS = 1024


def unsupported_reason(program: Program, schedule: Schedule) -> str | None:
    if program.state.shape != "matrix" or program.family not in ("ssd", "gla", "mamba3"):
        return f"matrix family {program.family!r} is not lowered"
    if schedule.algorithm != "sequential":
        return ("the CUDA matrix-state kernels implement the recurrent schedule 'sequential', "
                f"not {schedule.algorithm!r}")
    return None


def default_schedule(program: Program) -> Schedule:
    return Schedule(algorithm="sequential", num_warps=4)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclass(frozen=True)
class MatrixConfig:
    headdim: int
    dstate: int
    nsplit: int

    @property
    def ppad(self) -> int:
        return _next_pow2(self.headdim)

    @property
    def threads(self) -> int:
        return self.ppad * self.nsplit

    def macros(self) -> dict[str, int]:
        return dict(HEADDIM=self.headdim, DSTATE=self.dstate, NSPLIT=self.nsplit, PPAD=self.ppad)


def choose_config(schedule: Schedule, headdim: int, dstate: int) -> MatrixConfig:
    """``nsplit`` threads per state row: about ``block_n`` (default 8) entries each, at most
    ``MAX_THREADS`` threads per block."""
    ppad = _next_pow2(headdim)
    if ppad > MAX_THREADS:
        raise ValueError(f"headdim = {headdim} is more than a block's {MAX_THREADS} threads")
    spt = schedule.block_n or ENTRIES_PER_THREAD
    nsplit = max(1, min(32, _next_pow2(-(-dstate // spt)), MAX_THREADS // ppad))
    return MatrixConfig(headdim, dstate, nsplit)


def _kind(program: Program) -> str:
    return program.family


def params(program: Program) -> list[tuple[str, str]]:
    kind, R = _kind(program), program.input.rank
    ps = [("const SCANCC_T_x*", "x"), ("const SCANCC_T_dt*", "dt")]
    ps.append(("const float*", "A") if kind == "ssd" else ("const SCANCC_T_adt*", "adt"))
    if kind == "mamba3":
        ps.append(("const SCANCC_T_trap*", "trap"))
    ps += [("const SCANCC_T_B*", "B"), ("const SCANCC_T_C*", "C")]
    if program.rotary is not None and program.rotary.bias:
        ps += [("const float*", "B_bias"), ("const float*", "C_bias")]
    if program.rotary is not None:
        ps.append(("const SCANCC_T_angles*", "angles"))
    if R > 1:
        ps += [("const float*", "W_x"), ("const float*", "W_z"), ("const float*", "W_o")]
    if program.readout.skip:
        ps.append(("const float*", "D"))
    if program.readout.gate != "none":
        ps.append(("const SCANCC_T_z*", "z"))
    if program.step is not None and program.step.bias:
        ps.append(("const float*", "dt_bias"))
    ps += [("const long long*", "cu_seqlens"), ("const float*", "h0")]
    if kind == "mamba3":
        ps += [("const float*", "phi0"), ("const float*", "k0"), ("const float*", "x0")]
    ps += [("SCANCC_T_x*", "out"), ("float*", "hT")]
    if kind == "mamba3":
        ps += [("float*", "phiT"), ("float*", "kT"), ("float*", "xT")]
    return ps + [("long long", "seqlen"), ("long long", "heads"), ("long long", "groups"), ("int", "pairs")]


TYPED = ("x", "dt", "adt", "trap", "B", "C", "angles", "z")


def template_context(program: Program) -> dict[str, Any]:
    step = program.step
    rot = program.rotary

    def signature(ps: list[tuple[str, str]]) -> str:
        return ",\n".join(f"    {c} __restrict__ {n}" if c.endswith("*") else f"    {c} {n}" for c, n in ps)

    kind = _kind(program)
    return dict(
        name=program.name, header_comment=_comment(program.describe()), kind=kind, m3=kind == "mamba3",
        gla=kind == "gla", rank=program.input.rank, rotary=None if rot is None else rot.pairing,
        qk_bias=bool(rot and rot.bias), skip=program.readout.skip, gate=program.readout.gate != "none",
        step_bias=bool(step and step.bias), softplus=bool(step and step.softplus),
        clamp=step.clamp if step else None, inf=math.inf, cfloat=_cfloat,
        defaults=MatrixConfig(64, 64, 8).macros(), params=params(program), signature=signature,
        type_macros=[f"SCANCC_T_{n}" for n in TYPED],
    )


def render(program: Program) -> str:
    from .templating import render as render_template

    return render_template(TEMPLATE, **template_context(program))


def _need(inputs: Mapping[str, torch.Tensor | None], name: str) -> torch.Tensor:
    t = inputs.get(name)
    if t is None:
        raise ValueError(f"input {name!r} is required")
    return t


def _check(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")


def _act(t: torch.Tensor) -> torch.Tensor:
    return (t if t.dtype in CTYPES else t.to(torch.float32)).contiguous()


class CUDAMatrixScan:
    """A matrix-state program compiled to CUDA (recurrent forward; implements ``CompiledScan``)."""

    backend = "cuda"

    def __init__(self, program: Program, schedule: Schedule, source: str) -> None:
        self.program = program
        self.schedule = schedule
        self.source = source
        self._params = params(program)

    def __repr__(self) -> str:
        return f"CUDAMatrixScan({self.program.name!r}, {self.schedule.to_json()})"

    def __call__(self, inputs: Mapping[str, torch.Tensor | None], **kwargs: Any):
        fwd = self.forward(inputs, **kwargs)
        return (fwd.out, fwd.final_state) if kwargs.get("return_final_state") else fwd.out

    def forward(
        self,
        inputs: Mapping[str, torch.Tensor | None],
        *,
        initial_state: Any = None,
        cu_seqlens: torch.Tensor | None = None,
        return_final_state: bool = False,
        save_for_backward: bool = False,
    ) -> ScanForward:
        p = self.program
        kind, R = _kind(p), p.input.rank
        x = _need(inputs, "x")
        if x.dim() != 4:
            raise ValueError(f"input 'x' must be (batch, seqlen, heads, headdim), got shape {tuple(x.shape)}")
        if x.device.type != "cuda":
            raise RuntimeError(f"the CUDA backend runs on CUDA tensors, got x on {x.device}")
        dev = x.device
        batch, seqlen, heads, headdim = x.shape
        B = _need(inputs, "B")
        if B.dim() != (5 if R > 1 else 4):
            raise ValueError(f"input 'B' must be (batch, seqlen, {'rank, ' if R > 1 else ''}groups, dstate), "
                             f"got shape {tuple(B.shape)}")
        groups, dstate = B.shape[-2], B.shape[-1]
        if heads % groups:
            raise ValueError(f"groups = {groups} must divide heads = {heads}")
        seq3 = (batch, seqlen, heads)
        bc = (batch, seqlen) + ((R,) if R > 1 else ()) + (groups, dstate)
        values: dict[str, Any] = {}
        types: dict[str, str] = {f"SCANCC_T_{n}": "float" for n in TYPED}

        def act(name: str, shape: tuple[int, ...], optional: bool = False) -> None:
            t = inputs.get(name) if optional else _need(inputs, name)
            if t is not None:
                _check(name, t, shape)
                t = _act(t.to(dev))
                types[f"SCANCC_T_{name}"] = CTYPES[t.dtype]
            values[name] = t

        def param(name: str, shape: tuple[int, ...], optional: bool = False) -> None:
            t = inputs.get(name) if optional else _need(inputs, name)
            if t is not None:
                _check(name, t, shape)
                t = t.to(dev, torch.float32).contiguous()
            values[name] = t

        act("x", tuple(x.shape))
        act("dt", seq3)
        if kind == "ssd":
            param("A", (heads,))
        else:
            act("adt", seq3 + ((dstate,) if kind == "gla" else ()))
        if kind == "mamba3":
            act("trap", seq3)
        act("B", bc)
        act("C", bc)
        pairs = 0
        if p.rotary is not None:
            if p.rotary.bias:
                param("B_bias", (heads,) + ((R,) if R > 1 else ()) + (dstate,), optional=True)
                param("C_bias", (heads,) + ((R,) if R > 1 else ()) + (dstate,), optional=True)
            angles = _need(inputs, "angles")
            if angles.dim() != 4 or tuple(angles.shape[:3]) != seq3:
                raise ValueError(f"input 'angles' must be (batch, seqlen, heads, pairs), got {tuple(angles.shape)}")
            pairs = angles.shape[3]
            if 2 * pairs > dstate or (p.rotary.pairing == "halves" and dstate % 2):
                raise ValueError(f"angles has {pairs} pairs; dstate = {dstate} allows at most {dstate // 2}")
            act("angles", tuple(angles.shape))
        if R > 1:
            for w in ("W_x", "W_z", "W_o"):
                param(w, (heads, R, headdim))
        if p.readout.skip:
            D = inputs.get("D")
            if D is not None and tuple(D.shape) == (heads,):
                D = D[:, None].expand(heads, headdim)
            values["D"] = None if D is None else D.to(dev, torch.float32).contiguous()
            if D is not None:
                _check("D", D, (heads, headdim))
        if p.readout.gate != "none":
            act("z", tuple(x.shape), optional=True)
        if p.step is not None and p.step.bias:
            param("dt_bias", (heads,), optional=True)

        nseq = batch
        if cu_seqlens is not None:
            if batch != 1:
                raise ValueError(f"{p.name}: cu_seqlens needs batch 1, got batch {batch}")
            if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
                raise ValueError("cu_seqlens must be (num_seqs + 1,) with num_seqs >= 1")
            nseq = cu_seqlens.shape[0] - 1
            cu_seqlens = cu_seqlens.to(dev, torch.int64).contiguous()
        values["cu_seqlens"] = cu_seqlens
        m3 = kind == "mamba3"
        state = self._states_in(initial_state, m3, nseq, heads, headdim, dstate, R, pairs, dev)
        values.update(h0=state.get("ssm"), phi0=state.get("angle"), k0=state.get("k"), x0=state.get("x"))
        out = (torch.empty if cu_seqlens is None else torch.zeros)(tuple(x.shape), device=dev,
                                                                   dtype=values["x"].dtype)
        f32 = dict(device=dev, dtype=torch.float32)
        final = {"ssm": torch.empty((nseq, heads, headdim, dstate), **f32)}
        if m3:
            final.update(angle=torch.empty((nseq, heads, max(pairs, 1)), **f32),
                         k=torch.empty((nseq, R, heads, dstate), **f32), x=torch.empty((nseq, heads, headdim), **f32))
        values.update(out=out, hT=final["ssm"], phiT=final.get("angle"), kT=final.get("k"), xT=final.get("x"),
                      seqlen=seqlen, heads=heads, groups=groups, pairs=pairs)
        cfg = choose_config(self.schedule, headdim, dstate)
        options = [f"-DSCANCC_{k}={v}" for k, v in cfg.macros().items()]
        options += [f"-D{k}={v}" for k, v in sorted(types.items())]
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        kernel = load_kernels(self.source, [f"{p.name}_fwd"], options, index)[f"{p.name}_fwd"]
        launch(kernel, (nseq * heads,), (cfg.threads,), pack_args(self._params, values), dev)
        result: Any = None
        if return_final_state:
            if m3:
                result = {"ssm": final["ssm"], "angle": final["angle"][..., :pairs], "x": final["x"],
                          "k": final["k"] if R > 1 else final["k"][:, 0]}
            else:
                result = final["ssm"]
        return ScanForward(out.to(x.dtype) if out.dtype != x.dtype else out, result)

    @staticmethod
    def _states_in(state: Any, m3: bool, nseq: int, heads: int, headdim: int, dstate: int, R: int, pairs: int,
                   dev: torch.device) -> dict[str, torch.Tensor | None]:
        """Initial states as float32 contiguous tensors (absent entries: ``None`` = zero)."""
        out: dict[str, torch.Tensor | None] = dict.fromkeys(MAMBA3_KEYS)
        for key, value in state_entries(state, m3, nseq, heads, headdim, dstate, R, pairs).items():
            out[key] = value.to(dev, torch.float32).contiguous()
        return out

    def backward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor | None]:
        raise ValueError(f"the CUDA backend has no backward for {self.program.family} programs (recurrent forward "
                         "only); use the triton backend for their gradients")
