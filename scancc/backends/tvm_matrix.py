"""Host side of the TVM matrix-state scans (SSD, GLA, Mamba-3): recurrent schedule, forward.

Inputs keep the head layout ``(batch, seqlen, heads, headdim)``; everything is float32.
States: SSD/GLA take and return ``(num_seqs, heads, headdim, dstate)``. Mamba-3 takes
either that (the SSM state alone) or a dict ``{"ssm", "angle", "k", "x"}`` shaped as in
:func:`scancc.oracle.sequential` (missing entries are zero) and returns such a dict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

import torch

from ..ir import Program
from .base import ScanForward
from .tvm_diag import _check_shape, _f32, _need
from .matrix_states import state_entries
from .tvm_runtime import empty
from .tvm_plan import MatrixPlan

if TYPE_CHECKING:
    from .tvm import TVMCompiledScan


def _odd(n: int) -> int:
    for _ in range(8):
        if n % 2:
            break
        n //= 2
    return n


def matrix_meta(program: Program, dstate: int, headdim: int, pairs: int = 0) -> dict[str, int]:
    """The names bound when a matrix source is parsed."""
    return {"DSTATE": dstate, "ODD_DSTATE": _odd(dstate), "HEADDIM": headdim, "RANK": program.input.rank,
            "PAIRS_OR_1": max(pairs, 1)}


def run_forward(compiled: "TVMCompiledScan", plan: MatrixPlan, program: Program,
                inputs: Mapping[str, Optional[torch.Tensor]], *, initial_state: Any,
                cu_seqlens: Optional[torch.Tensor], return_final_state: bool,
                save_for_backward: bool) -> ScanForward:
    from .tvm_diag import DiagCall, sequences

    x = _need(inputs, "x")
    if x.dim() != 4:
        raise ValueError(f"input 'x' must be (batch, seqlen, heads, headdim), got shape {tuple(x.shape)}")
    batch, seqlen, heads, headdim = x.shape
    R = plan.rank
    B = _need(inputs, "B")
    bc_dims = 5 if R > 1 else 4
    if B.dim() != bc_dims:
        raise ValueError(f"input 'B' must have {bc_dims} dims (batch, seqlen, {'rank, ' if R > 1 else ''}groups, "
                         f"dstate), got shape {tuple(B.shape)}")
    dstate, groups = B.shape[-1], B.shape[-2]
    if heads % groups:
        raise ValueError(f"groups = {groups} must divide heads = {heads}")
    seq3 = (batch, seqlen, heads)
    args: list[torch.Tensor] = [_f32(x)]
    dt = _need(inputs, "dt")
    _check_shape("dt", dt, seq3)
    args.append(_f32(dt))
    if plan.kind == "ssd":
        A = _need(inputs, "A")
        _check_shape("A", A, (heads,))
        args.append(_f32(A))
    else:
        adt = _need(inputs, "adt")
        _check_shape("adt", adt, seq3 + ((dstate,) if plan.kind == "gla" else ()))
        args.append(_f32(adt))
    if plan.kind == "mamba3":
        trap = _need(inputs, "trap")
        _check_shape("trap", trap, seq3)
        args.append(_f32(trap))
    bc_shape = (batch, seqlen) + ((R,) if R > 1 else ()) + (groups, dstate)
    for name in ("B", "C"):
        t = _need(inputs, name)
        _check_shape(name, t, bc_shape)
        args.append(_f32(t))
    if plan.qk_bias:
        for name in ("B_bias", "C_bias"):
            t = inputs.get(name)
            shape = (heads,) + ((R,) if R > 1 else ()) + (dstate,)
            args.append(torch.zeros(shape) if t is None else _f32(t))
            _check_shape(name, args[-1], shape)
    pairs = 0
    if plan.rotary:
        angles = _need(inputs, "angles")
        if angles.dim() != 4 or tuple(angles.shape[:3]) != seq3:
            raise ValueError(f"input 'angles' must be (batch, seqlen, heads, pairs), got {tuple(angles.shape)}")
        pairs = angles.shape[3]
        if 2 * pairs > dstate:
            raise ValueError(f"angles has {pairs} pairs but dstate = {dstate} allows at most {dstate // 2}")
        args.append(_f32(angles))
    if R > 1:
        for name in ("W_x", "W_z", "W_o"):
            t = _need(inputs, name)
            _check_shape(name, t, (heads, R, headdim))
            args.append(_f32(t))
    if plan.skip:
        D = inputs.get("D")
        D = torch.zeros(heads, headdim) if D is None else _f32(D)
        if D.shape == (heads,):
            D = D[:, None].expand(heads, headdim).contiguous()
        _check_shape("D", D, (heads, headdim))
        args.append(D)
    use_gate = 0
    if plan.gate:
        z = inputs.get("z")
        use_gate = int(z is not None)
        if z is not None:
            _check_shape("z", z, x.shape)
        args.append(_f32(z) if z is not None else torch.zeros(x.shape))
    if plan.step:
        bias = inputs.get("dt_bias")
        args.append(torch.zeros(heads) if bias is None else _f32(bias))
        _check_shape("dt_bias", args[-1], (heads,))
    call = DiagCall({}, batch, heads, seqlen, dstate, groups, "x", x.dtype)
    cu, varlen, nseq, _ = sequences(call, cu_seqlens)
    args.append(cu)
    m3 = plan.kind == "mamba3"
    state = _states_in(initial_state, m3, nseq, heads, headdim, dstate, R, pairs)
    out = empty(tuple(x.shape)) if cu_seqlens is None else torch.zeros(x.shape)
    final = {"ssm": empty((nseq, heads, headdim, dstate))}
    if m3:
        final.update(angle=empty((nseq, heads, max(pairs, 1))), k=empty((nseq, R, heads, dstate)),
                     x=empty((nseq, heads, headdim)))
    module = compiled.module(matrix_meta(program, dstate, headdim, pairs), ("forward",))
    ins = [state["ssm"]] + ([state["angle"], state["k"], state["x"]] if m3 else [])
    outs = [out, final["ssm"]] + ([final["angle"], final["k"], final["x"]] if m3 else [])
    module["forward"](*[a.to(x.device) for a in args], *ins, *outs, varlen, use_gate)
    result_state: Union[torch.Tensor, dict[str, torch.Tensor], None] = None
    if return_final_state:
        if m3:
            result_state = {"ssm": final["ssm"], "angle": final["angle"][..., :pairs], "x": final["x"],
                            "k": final["k"] if R > 1 else final["k"][:, 0]}
        else:
            result_state = final["ssm"]
    return ScanForward(out.to(x.dtype), result_state)  # type: ignore[arg-type]


def _states_in(state: Any, m3: bool, nseq: int, heads: int, headdim: int, dstate: int, R: int,
               pairs: int) -> dict[str, torch.Tensor]:
    out = {"ssm": torch.zeros(nseq, heads, headdim, dstate)}
    if m3:
        out.update(angle=torch.zeros(nseq, heads, max(pairs, 1)), k=torch.zeros(nseq, R, heads, dstate),
                   x=torch.zeros(nseq, heads, headdim))
    for key, value in state_entries(state, m3, nseq, heads, headdim, dstate, R, pairs).items():
        value = _f32(value)
        if key == "angle":
            out["angle"][..., :pairs] = value
        else:
            out[key] = value
    return out
