"""The host code the diagonal-family scans share (:mod:`scancc.backends.diagonal_host`), without a GPU.

:func:`check_inputs` directly, then the same checks and buffers through every backend's
compiled scan: Triton (under the interpreter) and the CUDA scans (their device check
bypassed, so that the host code runs on CPU tensors; nothing is launched).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import numpy as np
import pytest
import torch

from scancc import ir, oracle
from scancc.backends import cuda_diag, cuda_linear, cuda_selective
from scancc.backends.base import ScanForward
from scancc.backends.diagonal import DiagonalPlan, discretize
from scancc.backends.diagonal_host import Binding, DiagonalScanHost, check_inputs
from scancc.backends.triton import TritonBackend
from scancc.ir import Program, Schedule

SELECTIVE = ir.selective()
LTI = ir.lti()
LINEAR_C = ir.linear(complex=True, name="linear_c")
SEQUENTIAL = Schedule(algorithm="sequential", num_warps=4)


def _inputs(program: Program, *, batch: int = 2, dim: int = 4, dstate: int = 3, groups: int = 2,
            seqlen: int = 7) -> dict[str, torch.Tensor]:
    arrays = oracle.random_inputs(program, np.random.default_rng(0), batch=batch, dim=dim, dstate=dstate,
                                  groups=groups, seqlen=seqlen)
    return {k: torch.from_numpy(v).to(torch.complex64 if np.iscomplexobj(v) else torch.float32)
            for k, v in arrays.items()}


def _triton(program: Program) -> DiagonalScanHost:
    backend = TritonBackend()
    return backend.build(program, SEQUENTIAL, backend.lower(program, SEQUENTIAL))


def _cuda(program: Program) -> DiagonalScanHost:
    return cuda_diag.CUDADiagScan(program, SEQUENTIAL, "")


def _cuda_chunked(program: Program) -> DiagonalScanHost:
    """The chunked CUDA scan where one applies, else the sequential one."""
    if cuda_selective.unsupported_reason(program) is None:
        return cuda_selective.CUDASelectiveScan(program, cuda_selective.default_schedule(), "")
    if cuda_linear.unsupported_reason(program) is None:
        return cuda_linear.CUDALinearScan(program, cuda_linear.default_schedule(), "")
    return _cuda(program)


BACKENDS: dict[str, Callable[[Program], DiagonalScanHost]] = {
    "triton": _triton, "cuda": _cuda, "cuda_chunked": _cuda_chunked}


def _scan(backend: str, program: Program, monkeypatch: pytest.MonkeyPatch) -> DiagonalScanHost:
    """The backend's compiled scan, taking CPU tensors."""
    scan = BACKENDS[backend](program)
    if backend != "triton":
        monkeypatch.setattr(scan, "_check_device", lambda device: None)
    return scan


# -- check_inputs -----------------------------------------------------------------------------------
def test_sizes_of_a_valid_call() -> None:
    plan = DiagonalPlan.of(SELECTIVE)
    inputs = _inputs(SELECTIVE, batch=1, dim=6, dstate=5, groups=3, seqlen=9)
    b = check_inputs(plan, inputs, torch.tensor([0, 4, 9], dtype=torch.int32))
    assert (b.batch, b.dim, b.seqlen, b.dstate, b.groups, b.num_seqs) == (1, 6, 9, 5, 3, 2)
    assert b.chans_per_group == 2 and b.seq_shape == (1, 6, 9) and b.state_shape == (2, 6, 5)
    assert b.out_dtype == torch.float32 and b.device == torch.device("cpu")
    assert set(b.tensors) == {op.name for op in plan.operands} and b.tensors["B"] is inputs["B"]
    assert b.n_ckpt == 0 and b.geometry is None  # a backend's _bind fills these


def test_lti_operands_are_discretized() -> None:
    plan = DiagonalPlan.of(LTI)
    inputs = _inputs(LTI, dim=4, dstate=3)
    b = check_inputs(plan, inputs, None)
    assert b.tensors["A_bar"].shape == (4, 3) and b.tensors["A_bar"].dtype == torch.complex64
    assert b.tensors["B_bar"].shape == (4, 3) and b.dstate == 3
    assert b.out_dtype == torch.float32  # a complex state read out through C
    assert check_inputs(DiagonalPlan.of(LINEAR_C), _inputs(LINEAR_C), None).out_dtype == torch.complex64


def test_checkpoint_rows() -> None:
    b = check_inputs(DiagonalPlan.of(SELECTIVE), _inputs(SELECTIVE, seqlen=130), None)
    assert replace(b, ckpt_steps=64).n_ckpt == 3 and replace(b, ckpt_steps=64).n_slots == 2 * 3
    packed = replace(b, ckpt_steps=64, batch=1, num_seqs=5, cu_seqlens=torch.zeros(6, dtype=torch.int64))
    assert packed.n_slots == 5 + 3


def _bad(program: Program, name: str, value: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = _inputs(program)
    inputs[name] = value
    return inputs


def _resized(t: torch.Tensor, axis: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[axis] += 1
    return torch.zeros(shape, dtype=t.dtype)


# (program, input, bad value, error type, message) for every kind of operand and mistake
BAD_INPUTS = [
    (SELECTIVE, "u", lambda t: t[0], ValueError, r"u must be \(batch, dim, seqlen\), got shape \(4, 7\)"),
    (SELECTIVE, "u", lambda t: t[:, :, :0], ValueError, "u has an empty axis"),
    (SELECTIVE, "delta", lambda t: _resized(t, 2), ValueError,
     r"delta must be \(batch, dim, seqlen\) = \(2, 4, 7\), got \(2, 4, 8\)"),
    (SELECTIVE, "z", lambda t: _resized(t, 0), ValueError, r"z must be \(batch, dim, seqlen\) = \(2, 4, 7\)"),
    (SELECTIVE, "B", lambda t: _resized(t, 3), ValueError,
     r"B must be \(batch, groups, dstate, seqlen\) = \(2, 2, 3, 7\), got \(2, 2, 3, 8\)"),
    (SELECTIVE, "C", lambda t: _resized(t, 2), ValueError,
     r"C must be \(batch, groups, dstate, seqlen\) = \(2, 2, 3, 7\), got \(2, 2, 4, 7\)"),
    (SELECTIVE, "B", lambda t: t[0], ValueError, r"B must have 4 dims \(batch, groups, dstate, seqlen\)"),
    (SELECTIVE, "A", lambda t: _resized(t, 0), ValueError, r"A must be \(dim, dstate\) = \(4, 3\), got \(5, 3\)"),
    (SELECTIVE, "D", lambda t: _resized(t, 0), ValueError, r"D must be \(dim\) = \(4,\), got \(5,\)"),
    (SELECTIVE, "delta_bias", lambda t: t[None], ValueError, r"delta_bias must have 1 dims \(dim\)"),
    (SELECTIVE, "A", lambda t: t.to(torch.complex64), TypeError, "A must be real, got torch.complex64"),
    (SELECTIVE, "A", lambda t: t.to("meta"), ValueError, "A is on meta, u on cpu"),
    (SELECTIVE, "z", lambda t: t.to("meta"), ValueError, "z is on meta, u on cpu"),
    (SELECTIVE, "B", lambda t: None, ValueError, "input 'B' is required"),
    (SELECTIVE, "u", lambda t: None, ValueError, "input 'u' is required"),
    (SELECTIVE, "A", lambda t: t.numpy(), TypeError, "A must be a torch.Tensor, got ndarray"),
    (SELECTIVE, "B", lambda t: torch.zeros(2, 3, 3, 7), ValueError, r"groups \(3\) must divide dim \(4\)"),
    (LINEAR_C, "a", lambda t: t.real.contiguous(), TypeError, "a must be complex, got torch.float32"),
    (LINEAR_C, "x", lambda t: t.to(torch.complex64), TypeError, "x must be real"),
    (LTI, "A", lambda t: None, ValueError, "input 'A' is required"),
    (LTI, "A", lambda t: t.real.contiguous(), TypeError, "A must be complex"),
    (LTI, "delta", lambda t: _resized(t, 0), ValueError, r"delta must be \(dim\) = \(4,\), got \(5,\)"),
    (LTI, "C", lambda t: _resized(t, 1), ValueError, r"C must be \(dim, dstate\) = \(4, 3\), got \(4, 4\)"),
    (LTI, "B", lambda t: t.to("meta"), ValueError, "B is on meta, u on cpu"),
]
BAD_IDS = [f"{p.name}-{name}-{i}" for i, (p, name, *_) in enumerate(BAD_INPUTS)]


@pytest.mark.parametrize("program,name,change,error,match", BAD_INPUTS, ids=BAD_IDS)
def test_check_inputs_rejects(program: Program, name: str, change: Callable[[torch.Tensor], Any],
                              error: type[Exception], match: str) -> None:
    inputs = _bad(program, name, change(_inputs(program)[name]))
    with pytest.raises(error, match=match):
        check_inputs(DiagonalPlan.of(program), inputs, None)


def test_check_inputs_rejects_non_mappings() -> None:
    with pytest.raises(TypeError, match="inputs must be a mapping"):
        check_inputs(DiagonalPlan.of(SELECTIVE), [torch.zeros(1, 1, 1)], None)  # type: ignore[arg-type]


def test_cu_seqlens_needs_batch_one() -> None:
    with pytest.raises(ValueError, match="cu_seqlens needs batch 1, got batch 2"):
        check_inputs(DiagonalPlan.of(SELECTIVE), _inputs(SELECTIVE, batch=2), torch.tensor([0, 3, 7]))


@pytest.mark.parametrize("cu,error,match", [
    (torch.tensor([7]), ValueError, r"cu_seqlens must be \(num_seqs \+ 1,\) with num_seqs >= 1, got shape \(1,\)"),
    (torch.tensor([[0, 7]]), ValueError, r"cu_seqlens must be \(num_seqs \+ 1,\)"),
    (torch.tensor([0.0, 7.0]), TypeError, "cu_seqlens must be an int32 or int64 tensor, got torch.float32"),
    ([0, 7], TypeError, "cu_seqlens must be an int32 or int64 tensor, got list"),
])
def test_cu_seqlens_shape_and_dtype(cu: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        check_inputs(DiagonalPlan.of(SELECTIVE), _inputs(SELECTIVE, batch=1), cu)


# -- the same checks and buffers through every backend --------------------------------------------
@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("program,name,change,error,match", BAD_INPUTS, ids=BAD_IDS)
def test_every_backend_rejects(backend: str, program: Program, name: str, change: Callable[[torch.Tensor], Any],
                               error: type[Exception], match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    scan = _scan(backend, program, monkeypatch)
    inputs = _bad(program, name, change(_inputs(program)[name]))
    with pytest.raises(error, match=match):
        scan.forward(inputs)


@pytest.mark.parametrize("backend", ["cuda", "cuda_chunked"])
def test_cuda_scans_refuse_cpu_tensors(backend: str) -> None:
    with pytest.raises(RuntimeError, match="CUDA backend runs on CUDA tensors, got u on cpu"):
        BACKENDS[backend](SELECTIVE).forward(_inputs(SELECTIVE))


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_cu_seqlens_through_every_backend(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    scan = _scan(backend, SELECTIVE, monkeypatch)
    with pytest.raises(ValueError, match="cu_seqlens needs batch 1, got batch 2"):
        scan.forward(_inputs(SELECTIVE), cu_seqlens=torch.tensor([0, 3, 7], dtype=torch.int32))
    b = scan._bind(_inputs(SELECTIVE, batch=1), torch.tensor([0, 3, 7], dtype=torch.int32))
    assert b.num_seqs == 2 and b.cu_seqlens is not None and b.n_slots == 2 + b.n_ckpt
    assert b.ckpt_steps > 0 and b.geometry is not None


def _bound(backend: str, program: Program, monkeypatch: pytest.MonkeyPatch, **sizes: int) -> tuple[Any, Binding]:
    scan = _scan(backend, program, monkeypatch)
    return scan, scan._bind(_inputs(program, **sizes), None)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("program", [SELECTIVE, LTI, LINEAR_C], ids=lambda p: p.name)
def test_states(backend: str, program: Program, monkeypatch: pytest.MonkeyPatch) -> None:
    scan, b = _bound(backend, program, monkeypatch)
    cplx = program.state.complex
    dtype = torch.complex64 if cplx else torch.float32
    state = torch.randn(b.state_shape, dtype=dtype)
    kernel = scan._state(b, state.transpose(1, 2).contiguous().transpose(1, 2), "initial_state")
    assert kernel.dtype == torch.float32 and kernel.is_contiguous()
    assert tuple(kernel.shape) == b.state_shape + ((2,) if cplx else ())
    assert torch.equal(torch.view_as_complex(kernel) if cplx else kernel, state)
    if cplx:  # a conjugate view is resolved, not misread
        assert torch.equal(torch.view_as_complex(scan._state(b, state.conj(), "h")), state.conj().resolve_conj())
    with pytest.raises(ValueError, match=r"initial_state must be \(2, 4, \d\) \(num_seqs, dim, dstate\), got"):
        scan._state(b, torch.zeros((3,) + b.state_shape[1:], dtype=dtype), "initial_state")
    with pytest.raises(ValueError, match="grad_final_state is on meta"):
        scan._state(b, state.to("meta"), "grad_final_state")
    assert scan._state(b, None, "initial_state") is None
    with pytest.raises(ValueError, match=r"initial_state must be"):
        scan.forward(_inputs(program), initial_state=torch.zeros(1, 1, 1, dtype=dtype))


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("program", [SELECTIVE, LINEAR_C], ids=lambda p: p.name)
def test_grad_out(backend: str, program: Program, monkeypatch: pytest.MonkeyPatch) -> None:
    scan, b = _bound(backend, program, monkeypatch)
    zeros = scan._grad_out(b, None)
    assert not zeros.any()
    if b.out_dtype.is_complex:
        assert zeros.shape == b.seq_shape + (2,) and zeros.dtype == torch.float32
        g = torch.randn(b.seq_shape, dtype=torch.complex64)
        dout = scan._grad_out(b, g.conj())
        assert dout.stride(-2) == 2 and torch.equal(torch.view_as_complex(dout), g.conj().resolve_conj())
    else:
        assert zeros.shape == b.seq_shape and zeros.dtype == b.out_dtype
        g = torch.randn(b.seq_shape).transpose(1, 2).contiguous().transpose(1, 2)  # time not the unit axis
        dout = scan._grad_out(b, g)
        assert dout.stride(-1) == 1 and torch.equal(dout, g)
    with pytest.raises(ValueError, match=r"grad_out must be \(2, 4, 7\), got \(2, 4, 6\)"):
        scan._grad_out(b, torch.zeros(2, 4, 6, dtype=b.out_dtype))
    with pytest.raises(ValueError, match="grad_out is on meta"):
        scan._grad_out(b, torch.zeros(b.seq_shape, dtype=b.out_dtype, device="meta"))


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backward_checks_the_checkpoints(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    scan = _scan(backend, SELECTIVE, monkeypatch)
    inputs = _inputs(SELECTIVE)
    out = torch.zeros(2, 4, 7)
    with pytest.raises(ValueError, match="save_for_backward"):
        scan.backward(ScanForward(out=out), inputs, None)
    with pytest.raises(ValueError, match=r"the checkpoints \(1, 4, 3\) do not belong to these inputs"):
        scan.backward(ScanForward(out=out, saved={"ckpt": torch.zeros(1, 4, 3)}), inputs, None)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("varlen", [False, True])
def test_gradient_buffers_and_their_reduction(backend: str, varlen: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    scan = _scan(backend, SELECTIVE, monkeypatch)
    inputs = _inputs(SELECTIVE, batch=1 if varlen else 2)
    del inputs["z"]
    b = scan._bind(inputs, torch.tensor([0, 3, 7]) if varlen else None)
    h0 = torch.zeros(b.state_shape, dtype=torch.float64)
    io = scan._backward_buffers(b, None, None, h0)
    shapes = {name: None if g is None else tuple(g.shape) for name, g in io.grads.items()}
    rows = b.num_seqs
    assert shapes == {"u": b.seq_shape, "delta": b.seq_shape, "A": (rows, 4, 3), "B": (b.batch, 2, 3, 7),
                      "C": (b.batch, 2, 3, 7), "D": (rows, 4), "z": None, "delta_bias": (rows, 4)}
    assert not io.grads["B"].any() and not io.grads["C"].any()  # accumulated into
    if varlen:  # steps outside every sequence keep zero gradients
        assert not io.grads["u"].any()
    assert io.dht is None and io.dh0 is not None and io.dh0.shape == b.state_shape
    for name, g in io.grads.items():
        if g is not None:
            g.copy_(torch.arange(g.numel()).reshape(g.shape))
    io.dh0.fill_(0.5)
    grads = scan._gradients(inputs, io, h0)
    assert grads["z"] is None and set(grads) == {s.name for s in SELECTIVE.tensors()} | {"initial_state"}
    assert torch.equal(grads["A"], io.grads["A"].sum(0)) and torch.equal(grads["D"], io.grads["D"].sum(0))
    assert torch.equal(grads["u"], io.grads["u"])
    for name, t in inputs.items():
        assert grads[name].shape == t.shape and grads[name].dtype == t.dtype
    assert grads["initial_state"].dtype == torch.float64 and (grads["initial_state"] == 0.5).all()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_complex_and_lti_gradients(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Complex raw gradients become complex64; LTI's dĀ, dB̄ reach A, B and delta through the discretization."""
    scan = _scan(backend, LTI, monkeypatch)
    inputs = _inputs(LTI)
    b = scan._bind(inputs, None)
    io = scan._backward_buffers(b, None, None, None)
    assert io.grads["A_bar"].shape == (2, 4, 3, 2) and io.grads["C"].shape == (2, 4, 3, 2)
    for g in io.grads.values():
        if g is not None:
            g.fill_(1.0)
    grads = scan._gradients(inputs, io, None)
    assert grads["initial_state"] is None
    assert torch.equal(grads["C"], torch.full((4, 3), 2 + 2j, dtype=torch.complex64))
    leaves = {n: inputs[n].detach().requires_grad_(True) for n in ("A", "B", "delta")}
    abar, bbar = discretize(LTI, leaves["A"], leaves["B"], leaves["delta"])
    ones = torch.full((4, 3), 2 + 2j, dtype=torch.complex64)
    want = torch.autograd.grad([abar, bbar], list(leaves.values()), [ones, ones])
    for name, w in zip(leaves, want):
        torch.testing.assert_close(grads[name], w)


def test_triton_refuses_a_non_unit_last_axis_where_cuda_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _inputs(SELECTIVE)
    inputs["B"] = inputs["B"].transpose(-1, -2).contiguous().transpose(-1, -2)
    with pytest.raises(ValueError, match="B must be contiguous along its last axis"):
        _scan("triton", SELECTIVE, monkeypatch)._bind(inputs, None)
    b = _scan("cuda", SELECTIVE, monkeypatch)._bind(inputs, None)
    assert b.tensors["B"].stride(-1) == 1 and torch.equal(b.tensors["B"], inputs["B"])


def test_cuda_operands_in_kernel_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """Activations stay fp32/fp16/bf16 (others become fp32), parameters become fp32, cu_seqlens int64."""
    inputs = _inputs(SELECTIVE, batch=1)
    inputs["u"] = inputs["u"].to(torch.bfloat16)
    inputs["delta"] = inputs["delta"].double()
    inputs["A"] = inputs["A"].double().t().contiguous().t()
    scan = _scan("cuda", SELECTIVE, monkeypatch)
    b = scan._bind(inputs, torch.tensor([0, 2, 7], dtype=torch.int32))
    assert b.tensors["u"].dtype == torch.bfloat16 and b.out_dtype == torch.bfloat16
    assert b.tensors["delta"].dtype == torch.float32
    assert b.tensors["A"].dtype == torch.float32 and b.tensors["A"].is_contiguous()
    assert b.cu_seqlens is not None and b.cu_seqlens.dtype == torch.int64
    assert "-DSCANCC_T_u=__nv_bfloat16" in scan.type_options(b)
    assert "-DSCANCC_T_out=__nv_bfloat16" in scan.type_options(b)
    # grad_out is read in out's dtype by the CUDA kernels, as given by Triton's
    assert scan._grad_out(b, torch.zeros(b.seq_shape)).dtype == torch.bfloat16


def test_linear_chunked_saves_no_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    scan = _scan("cuda_chunked", LINEAR_C, monkeypatch)
    assert isinstance(scan, cuda_linear.CUDALinearScan)
    b = scan._bind(_inputs(LINEAR_C), None)
    assert b.ckpt_steps == 0 and b.n_slots == 0
    launched: list[Any] = []
    monkeypatch.setattr(scan, "_launch_forward", lambda b, io: launched.append(io))
    fwd = scan.forward(_inputs(LINEAR_C), return_final_state=True, save_for_backward=True)
    (io,) = launched
    assert io.ckpt is None and fwd.saved == {} and fwd.out is io.out and fwd.out.dtype == torch.complex64
    assert fwd.final_state.shape == (2, 4, 1) and fwd.final_state.dtype == torch.complex64
