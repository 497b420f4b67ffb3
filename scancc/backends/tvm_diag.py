"""Host side of the TVM diagonal (vector-state) scans: linear, LTI, selective.

Inputs are brought to the kernel's canonical form (float32; complex tensors as
``(..., 2)`` float views; time-varying ``B``/``C`` transposed to ``(batch, groups, seqlen,
dstate)`` so the state axis is contiguous), the kernel runs, and gradients are mapped back
to the caller's names, shapes and dtypes. LTI programs are discretised here with
:func:`scancc.backends.diagonal.discretize` (differentiable), so the kernel sees a fixed
``Ā``/``B̄`` and the adjoint is chained through the discretisation by ``torch.autograd``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from ..ir import Program
from .base import ScanForward
from .diagonal import discretize
from .tvm_runtime import empty
from .tvm_plan import DiagPlan


ALIGNMENT = 64  # bytes: TVM's generated code assumes every buffer starts on this boundary


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` (contiguous), copied only when its data does not start on a 64-byte boundary (a
    view into a tensor, a NumPy array): TVM's kernels use aligned vector loads."""
    t = t.contiguous()
    return t if t.data_ptr() % ALIGNMENT == 0 else t.clone()


def _f32(t: torch.Tensor) -> torch.Tensor:
    """float32 (complex64 → ``(..., 2)`` float32 view), contiguous, 64-byte aligned."""
    if t.is_complex():
        return aligned(torch.view_as_real(t.to(torch.complex64).contiguous()))
    return aligned(t.to(torch.float32))


def _need(inputs: Mapping[str, Optional[torch.Tensor]], name: str) -> torch.Tensor:
    t = inputs.get(name)
    if t is None:
        raise ValueError(f"input {name!r} is required")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"input {name!r} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"input {name!r} must have shape {tuple(shape)}, got {tuple(t.shape)}")


@dataclass
class DiagCall:
    """One call's canonical kernel arguments and sizes."""

    args: dict[str, torch.Tensor]   # kernel buffer name -> tensor
    batch: int
    dim: int
    seqlen: int
    dstate: int
    groups: int
    x_name: str
    x_dtype: torch.dtype
    lti_params: Optional[tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]] = None


def canonical_inputs(program: Program, plan: DiagPlan, inputs: Mapping[str, Optional[torch.Tensor]],
                     *, grad_lti: bool = False) -> DiagCall:
    """Canonical kernel inputs of a (sequence-mode) diagonal program."""
    x_name = "x" if program.decay.kind == "input" else "u"
    x = _need(inputs, x_name)
    if x.dim() != 3:
        raise ValueError(f"input {x_name!r} must be (batch, dim, seqlen), got shape {tuple(x.shape)}")
    batch, dim, seqlen = x.shape
    args: dict[str, torch.Tensor] = {}
    lti_params = None
    if plan.decay == "input":
        a = _need(inputs, "a")
        _check_shape("a", a, (batch, dim, seqlen))
        args["a"] = _f32(a.to(torch.complex64) if plan.cplx else a)
        dstate = 1
    args["x"] = _f32(x.to(torch.complex64) if plan.x_complex else x)
    if plan.step is not None:
        delta = _need(inputs, "delta")
        _check_shape("delta", delta, (batch, dim, seqlen))
        args["delta"] = _f32(delta)
        bias = inputs.get("delta_bias")
        args["bias"] = torch.zeros(dim) if bias is None else _f32(bias)
        _check_shape("delta_bias", args["bias"], (dim,))
    groups = 1
    if plan.decay == "exp":
        A = _need(inputs, "A")
        if plan.channel_decay:
            _check_shape("A", A, (dim,))
            dstate = _dstate_from_bc(inputs, plan, batch, dim, seqlen)
            A = A[:, None].expand(dim, dstate)
        elif A.dim() != 2 or A.shape[0] != dim:
            raise ValueError(f"input 'A' must be (dim={dim}, dstate), got shape {tuple(A.shape)}")
        dstate = A.shape[1]
        args["A"] = _f32(A.to(torch.complex64) if plan.cplx else A)
    elif plan.decay == "fixed":
        A = _need(inputs, "A")
        if A.dim() != 2 or A.shape[0] != dim:
            raise ValueError(f"input 'A' must be (dim={dim}, dstate), got shape {tuple(A.shape)}")
        dstate = A.shape[1]
        B = _need(inputs, "B") if plan.b_src == "fixed" else None
        if B is not None:
            _check_shape("B", B, (dim, dstate))
        delta = inputs.get("delta")
        if program.step is not None:
            delta = _need(inputs, "delta")
            _check_shape("delta", delta, (dim,))
        leaves = [t.detach().requires_grad_(grad_lti) if t is not None else None for t in (A, B, delta)]
        with torch.enable_grad() if grad_lti else torch.no_grad():
            abar, bbar = discretize(program, leaves[0], leaves[1], leaves[2])
            abar = abar.to(torch.complex64) if plan.cplx else abar
            if bbar is not None:
                bbar = bbar.to(torch.complex64) if plan.cplx else bbar
        lti_params = (leaves, abar, bbar)  # type: ignore[assignment]
        args["A"] = _f32(abar.detach())
        if bbar is not None:
            args["B"] = _f32(bbar.detach())
    if plan.b_src == "varying":
        B, groups = _varying(inputs, "B", batch, dstate, seqlen, plan.cplx)
        args["B"] = B
    elif plan.b_src == "fixed" and plan.decay != "fixed":
        B = _need(inputs, "B")
        _check_shape("B", B, (dim, dstate))
        args["B"] = _f32(B.to(torch.complex64) if plan.cplx else B)
    if plan.c_src == "varying":
        C, c_groups = _varying(inputs, "C", batch, dstate, seqlen, plan.cplx)
        if plan.b_src == "varying" and c_groups != groups:
            raise ValueError(f"B and C must have the same number of groups, got {groups} and {c_groups}")
        groups = c_groups
        args["C"] = C
    elif plan.c_src == "fixed":
        C = _need(inputs, "C")
        _check_shape("C", C, (dim, dstate))
        args["C"] = _f32(C.to(torch.complex64) if plan.cplx else C)
    if dim % groups:
        raise ValueError(f"groups = {groups} must divide dim = {dim}")
    if plan.skip:
        D = inputs.get("D")
        args["D"] = torch.zeros(dim) if D is None else _f32(D)
        _check_shape("D", args["D"], (dim,))
    if plan.gate:
        z = inputs.get("z")
        if z is not None:
            _check_shape("z", z, (batch, dim, seqlen))
            args["z"] = _f32(z)
    return DiagCall(args, batch, dim, seqlen, dstate, groups, x_name, x.dtype, lti_params)  # type: ignore[arg-type]


def _dstate_from_bc(inputs: Mapping[str, Optional[torch.Tensor]], plan: DiagPlan, batch: int, dim: int,
                    seqlen: int) -> int:
    for name, src in (("B", plan.b_src), ("C", plan.c_src)):
        t = inputs.get(name)
        if t is not None and src != "none":
            return int(t.shape[-2] if src == "varying" else t.shape[-1])
    return 1


def _varying(inputs: Mapping[str, Optional[torch.Tensor]], name: str, batch: int, dstate: int, seqlen: int,
             cplx: bool) -> tuple[torch.Tensor, int]:
    """``(batch, groups, dstate, seqlen)`` (or ``(batch, dstate, seqlen)``) → ``(batch, groups, seqlen, dstate[, 2])``."""
    t = _need(inputs, name)
    if t.dim() == 3:
        t = t[:, None]
    if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != dstate or t.shape[3] != seqlen:
        raise ValueError(f"input {name!r} must be (batch={batch}, groups, dstate={dstate}, seqlen={seqlen}), "
                         f"got shape {tuple(inputs[name].shape)}")  # type: ignore[union-attr]
    t = t.transpose(-1, -2)
    return _f32(t.to(torch.complex64) if cplx else t), int(t.shape[1])


def sequences(call: DiagCall, cu_seqlens: Optional[torch.Tensor]) -> tuple[torch.Tensor, int, int, int]:
    """``(cu int32, varlen flag, number of sequences, longest length)``."""
    if cu_seqlens is None:
        cu = torch.arange(call.batch + 1, dtype=torch.int32) * call.seqlen
        return cu, 0, call.batch, call.seqlen
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError("cu_seqlens must be a 1-D tensor (num_seqs + 1,)")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    if call.batch != 1:
        raise ValueError(f"with cu_seqlens the batch must be 1, got {call.batch}")
    cu = aligned(cu_seqlens.to("cpu", torch.int32))
    lengths = cu[1:] - cu[:-1]
    if int(cu[0]) != 0 or bool((lengths < 0).any()) or int(cu[-1]) > call.seqlen:
        raise ValueError(f"cu_seqlens must start at 0, not decrease and end at most at seqlen = {call.seqlen}")
    return cu, 1, cu.numel() - 1, int(lengths.max())


def state_in(state: Optional[torch.Tensor], nseq: int, dim: int, dstate: int, cplx: bool,
             name: str = "initial_state") -> torch.Tensor:
    if state is None:
        return torch.zeros((nseq, dim, dstate, 2) if cplx else (nseq, dim, dstate))
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(state).__name__}")
    _check_shape(name, state, (nseq, dim, dstate))
    return _f32(state.to(torch.complex64) if cplx else state)


def run_forward(module: Any, plan: DiagPlan, program: Program, inputs: Mapping[str, Optional[torch.Tensor]], *,
                initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
                return_final_state: bool, save_for_backward: bool) -> ScanForward:
    call = canonical_inputs(program, plan, inputs)
    cu, varlen, nseq, longest = sequences(call, cu_seqlens)
    h0 = state_in(initial_state, nseq, call.dim, call.dstate, plan.cplx)
    nck = math.ceil(longest / plan.tile) + 1 if save_for_backward else 1
    shape = (nseq, call.dim, nck, call.dstate) + ((2,) if plan.cplx else ())
    states = empty(shape)
    out_shape = (call.batch, call.dim, call.seqlen) + ((2,) if plan.out_complex else ())
    out = torch.full(out_shape, math.nan) if cu_seqlens is not None else empty(out_shape)
    if cu_seqlens is not None and int(cu[-1]) < call.seqlen:
        out[:, :, int(cu[-1]):] = 0.0
    use_gate = int(plan.gate and "z" in call.args)
    args = _ordered(plan, call, cu, use_gate)
    module["forward"](*_on(args, x_device(call)), h0, out, states, varlen, use_gate)
    result = torch.view_as_complex(out) if plan.out_complex else out.to(call.x_dtype)
    final = states[:, :, -1]
    final = torch.view_as_complex(final.contiguous()) if plan.cplx else final.clone()
    saved = {"states": states} if save_for_backward else {}
    return ScanForward(result, final if return_final_state else None, saved)


def x_device(call: DiagCall) -> torch.device:
    return call.args["x"].device


def _on(args: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The kernel arguments on ``device`` (the offsets ``cu`` are built on the host)."""
    return [a if a.device == device else a.to(device) for a in args]


def _ordered(plan: DiagPlan, call: DiagCall, cu: torch.Tensor, use_gate: int) -> list[torch.Tensor]:
    a = call.args
    order = (["a"] if plan.decay == "input" else []) + ["x"] + (["delta", "bias"] if plan.step else [])
    order += (["A"] if plan.decay != "input" else []) + (["B"] if plan.b_src != "none" else [])
    order += (["C"] if plan.c_src != "none" else []) + (["D"] if plan.skip else [])
    out = [a[k] for k in order]
    if plan.gate:
        out.append(a["z"] if use_gate else torch.zeros(call.batch, call.dim, call.seqlen))
    out.append(cu)
    return out


def run_backward(module: Any, plan: DiagPlan, program: Program, fwd: ScanForward,
                 inputs: Mapping[str, Optional[torch.Tensor]], grad_out: Optional[torch.Tensor],
                 grad_final_state: Optional[torch.Tensor], *, initial_state: Optional[torch.Tensor],
                 cu_seqlens: Optional[torch.Tensor]) -> dict[str, Optional[torch.Tensor]]:
    states = fwd.saved.get("states")
    if states is None:
        raise ValueError("backward needs forward(..., save_for_backward=True)")
    call = canonical_inputs(program, plan, inputs, grad_lti=plan.decay == "fixed")
    cu, varlen, nseq, longest = sequences(call, cu_seqlens)
    if states.shape[2] < math.ceil(longest / plan.tile) + 1:
        raise ValueError("fwd.saved does not match these inputs (run forward with save_for_backward=True)")
    bsz, dim, L, N, G = call.batch, call.dim, call.seqlen, call.dstate, call.groups
    c2 = (2,) if plan.cplx else ()
    seq = (bsz, dim, L)
    if grad_out is None:
        dout = torch.zeros(seq + ((2,) if plan.out_complex else ()))
    else:
        if tuple(grad_out.shape) != seq:
            raise ValueError(f"grad_out must have shape {seq}, got {tuple(grad_out.shape)}")
        dout = _f32(grad_out.to(torch.complex64) if plan.out_complex else grad_out)
    gT = state_in(grad_final_state, nseq, dim, N, plan.cplx, "grad_final_state")
    nsplit = math.ceil((dim // G) / plan.block_d)
    use_gate = int(plan.gate and "z" in call.args)
    # Every element is written by the kernel unless sequences leave steps uncovered (varlen).
    alloc = empty if cu_seqlens is None else torch.zeros
    g: dict[str, torch.Tensor] = {"dx": alloc(seq + ((2,) if plan.x_complex else ()))}
    if plan.step:
        g["ddelta"] = alloc(seq)
        g["dbias"] = alloc((nseq, dim))
    if plan.decay != "input":
        g["dA"] = alloc((nseq, dim, N) + c2)
    else:
        g["da"] = alloc(seq + c2)
    for name, src in (("dB", plan.b_src), ("dC", plan.c_src)):
        if src == "varying":
            g[name] = alloc((bsz, G, nsplit, L, N) + c2)
        elif src == "fixed":
            g[name] = alloc((nseq, dim, N) + c2)
    if plan.skip:
        g["dD"] = alloc((nseq, dim))
    if plan.gate:
        g["dz"] = alloc(seq)
    g["dh0"] = empty((nseq, dim, N) + c2)
    args = _ordered(plan, call, cu, use_gate)
    module["backward"](*args, states, dout, gT, *g.values(), varlen, use_gate)
    return _named_grads(program, plan, call, g, inputs, initial_state, use_gate)


def _cplx(t: torch.Tensor, cplx: bool) -> torch.Tensor:
    return torch.view_as_complex(t.contiguous()) if cplx else t


def _named_grads(program: Program, plan: DiagPlan, call: DiagCall, g: dict[str, torch.Tensor],
                 inputs: Mapping[str, Optional[torch.Tensor]], initial_state: Optional[torch.Tensor],
                 use_gate: int) -> dict[str, Optional[torch.Tensor]]:
    cplx = plan.cplx
    grads: dict[str, Optional[torch.Tensor]] = {spec.name: None for spec in program.tensors()}
    grads[call.x_name] = _cplx(g["dx"], plan.x_complex)
    if "da" in g:
        grads["a"] = _cplx(g["da"], cplx)
    if plan.step:
        grads["delta"] = g["ddelta"]
        if inputs.get("delta_bias") is not None:
            grads["delta_bias"] = g["dbias"].sum(0)
    if plan.decay == "exp":
        dA = _cplx(g["dA"].sum(0), cplx)
        grads["A"] = dA.sum(-1) if plan.channel_decay else dA
    for name, src in (("B", plan.b_src), ("C", plan.c_src)):
        if src == "varying":
            d = _cplx(g["d" + name].sum(2), cplx).transpose(-1, -2)
            grads[name] = d[:, 0] if inputs[name].dim() == 3 else d  # type: ignore[union-attr]
        elif src == "fixed" and not (name == "B" and plan.decay == "fixed"):
            grads[name] = _cplx(g["d" + name].sum(0), cplx)
    if plan.decay == "fixed":
        (leaves, abar, bbar) = call.lti_params  # type: ignore[misc]
        outs = [abar] + ([bbar] if bbar is not None else [])
        gouts = [_cplx(g["dA"].sum(0), cplx)] + ([_cplx(g["dB"].sum(0), cplx)] if bbar is not None else [])
        wrt = [t for t in leaves if t is not None]
        got = torch.autograd.grad(outs, wrt, gouts, allow_unused=True)
        for name, leaf, value in zip(("A", "B", "delta"), leaves, _spread(leaves, got)):
            if leaf is not None:
                grads[name] = torch.zeros_like(leaf) if value is None else value
    if plan.skip and inputs.get("D") is not None:
        grads["D"] = g["dD"].sum(0)
    if plan.gate and use_gate:
        grads["z"] = g["dz"]
    grads["initial_state"] = _cplx(g["dh0"], cplx) if initial_state is not None else None
    for name, value in list(grads.items()):
        src = initial_state if name == "initial_state" else inputs.get(name)
        if value is not None and src is not None and value.is_complex() == src.is_complex():
            grads[name] = value.to(src.dtype)
    return grads


def _spread(leaves: list[Optional[torch.Tensor]], got: tuple[Optional[torch.Tensor], ...]) -> list[Optional[torch.Tensor]]:
    it = iter(got)
    return [next(it) if leaf is not None else None for leaf in leaves]
