"""Shared pieces of the Triton backend tests: inputs, the float64 reference, NaN poisoning.

Every kernel output buffer is filled with NaN before the kernel runs (by patching the
backend's allocator), and results are compared with the float64 oracle by relative L2
error, so unwritten elements and wrong values both fail.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional
from unittest import mock

import numpy as np
import torch

from scancc import compiler, ir, oracle
from scancc.backends import triton as triton_backend
from scancc.backends.triton import TritonBackend
from scancc.ir import Program, Schedule

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Activations (per time step) take the test's dtype; parameters stay float32.
ACTIVATIONS = ("a", "x", "u", "delta", "z")

# Forward tolerances: recurrences.md (fp32 sequential-scan math; bf16/fp16 inputs).
# Gradients go through one more scan and sums over batch and time: one step looser for fp32.
FWD_TOL = {torch.float32: oracle.TOLERANCES["fp32_sequential"], torch.bfloat16: oracle.TOLERANCES["bf16"],
           torch.float16: oracle.TOLERANCES["fp16"]}
BWD_TOL = {torch.float32: oracle.TOLERANCES["fp32_chunked"], torch.bfloat16: oracle.TOLERANCES["bf16"],
           torch.float16: oracle.TOLERANCES["fp16"]}


def poison_empty(shape: tuple[int, ...], *, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """Stands in for the backend's allocator in tests: every buffer starts as NaN."""
    return torch.full(shape, float("nan"), device=device, dtype=dtype)


# -- programs ------------------------------------------------------------------------------------
LINEAR = {
    "linear": ir.linear(), "hgrn": ir.hgrn(), "rglru": ir.rglru(),
    "linear_c": ir.linear(complex=True), "hgrn_c": ir.linear(complex=True, scale="one_minus_a"),
    "rglru_c": ir.linear(complex=True, scale="sqrt_one_minus_a2"),
}
LTI = {
    "s4d_zoh": ir.lti(), "s4d_bilinear": ir.lti(discretization="bilinear"), "lti_real": ir.lti(complex=False),
    "lti_real_bilinear": ir.lti(discretization="bilinear", complex=False, skip=False),
    "lti_noconj": ir.lti(conj_pairs=False), "lru": ir.lru(),
    "lti_none_real": ir.lti(discretization="none", complex=False),
}


def selective_program(flags: dict[str, bool]) -> Program:
    return ir.selective(**flags)


SELECTIVE_FLAGS = ("complex", "varying_B", "varying_C", "skip", "gate", "delta_bias", "delta_softplus")


# -- one test case ---------------------------------------------------------------------------------
@dataclass
class Case:
    program: Program
    batch: int = 2
    dim: int = 4
    dstate: int = 4
    seqlen: int = 20
    groups: int = 1
    dtype: torch.dtype = torch.float32
    block_l: Optional[int] = 16  # None (with block_d None): the backend's default schedule
    block_d: Optional[int] = None
    algorithm: Optional[str] = None  # None: the backend's default for the program
    block_n: Optional[int] = None  # unrolled_scan's unroll count (a smaller one than dstate: its wide forward)
    initial_state: bool = True
    final_state: bool = True
    cu_seqlens: Optional[list[int]] = None
    drop: tuple[str, ...] = ()   # optional inputs left out
    checkpoint_steps: Optional[int] = None  # the backend's CHECKPOINT_STEPS for this case
    chunk: Optional[int] = None  # the schedule's chunk: steps between checkpoints, overriding CHECKPOINT_STEPS
    seed: int = 0
    inputs: dict[str, torch.Tensor] = field(default_factory=dict, init=False)
    h0: Optional[torch.Tensor] = field(default=None, init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        arrays = oracle.random_inputs(self.program, rng, batch=self.batch, seqlen=self.seqlen, dim=self.dim,
                                      dstate=self.dstate, groups=self.groups)
        for name in self.drop:
            arrays.pop(name, None)
        # Round activations to the kernel's dtype, so the float64 reference sees the same values.
        for name, value in arrays.items():
            t = torch.from_numpy(value)
            if name in ACTIVATIONS or (name in ("B", "C") and t.dim() == 4):
                if not t.is_complex():
                    t = t.to(self.dtype).to(torch.float64)
            self.inputs[name] = t
        if self.initial_state:
            rows = self.batch if self.cu_seqlens is None else len(self.cu_seqlens) - 1
            self.h0 = torch.from_numpy(oracle.random_state(self.program, rng, inputs=arrays, rows=rows))

    @property
    def schedule(self) -> Schedule:
        schedule = TritonBackend().default_schedule(self.program)
        if self.algorithm is not None:
            schedule = schedule.replace(algorithm=self.algorithm)
        if schedule.algorithm == "unrolled_scan" and self.block_n is not None:
            schedule = schedule.replace(block_n=self.block_n)
        if self.chunk is not None:
            schedule = schedule.replace(chunk=self.chunk)
        if self.block_l is None and self.block_d is None:
            return schedule
        return schedule.replace(block_l=self.block_l, block_d=self.block_d)

    def kernel_inputs(self) -> dict[str, torch.Tensor]:
        """The inputs as the kernel takes them: activations in ``dtype``, complex as complex64."""
        out = {}
        for name, t in self.inputs.items():
            if t.is_complex():
                out[name] = t.to(DEVICE, torch.complex64)
            elif name in ACTIVATIONS or (name in ("B", "C") and t.dim() == 4):
                out[name] = t.to(DEVICE, self.dtype)
            else:
                out[name] = t.to(DEVICE, torch.float32)
        return out

    def kernel_state(self) -> Optional[torch.Tensor]:
        if self.h0 is None:
            return None
        return self.h0.to(DEVICE, torch.complex64 if self.h0.is_complex() else torch.float32)

    def cu(self, device: Any = DEVICE) -> Optional[torch.Tensor]:
        return None if self.cu_seqlens is None else torch.tensor(self.cu_seqlens, dtype=torch.int32, device=device)

    def compiled(self):
        return compiler.compile(self.program, backend="triton", schedule=self.schedule)

    @contextlib.contextmanager
    def checkpoint_interval(self) -> Iterator[None]:
        """Checkpoints every ``checkpoint_steps`` steps (so short tests cross backward tiles)."""
        if self.checkpoint_steps is None:
            yield
            return
        with mock.patch.object(triton_backend, "CHECKPOINT_STEPS", self.checkpoint_steps):
            yield


def reference(case: Case, leaves: Optional[dict[str, torch.Tensor]] = None,
              h0: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, final_state)`` from the float64 oracle (torch path: differentiable)."""
    inputs = case.inputs if leaves is None else leaves
    state = case.h0 if h0 is None else h0
    return oracle.sequential(case.program, inputs, initial_state=state, return_final_state=True,
                             cu_seqlens=case.cu(device="cpu"))


def assert_close(name: str, got: Optional[torch.Tensor], want: torch.Tensor, tol: float) -> None:
    assert got is not None, f"{name}: no result"
    assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert not torch.isnan(torch.view_as_real(got) if got.is_complex() else got).any(), f"{name}: NaN in result"
    err = oracle.rel_l2(got.detach().cpu(), want.detach())
    assert err <= tol, f"{name}: rel L2 error {err:.3e} > {tol:.1e}"


def check_forward(case: Case) -> None:
    ref_out, ref_final = reference(case)
    fwd = case.compiled().forward(case.kernel_inputs(), initial_state=case.kernel_state(), cu_seqlens=case.cu(),
                                  return_final_state=case.final_state)
    x = case.inputs["a" if "a" in case.inputs else "u"]
    want_dtype = torch.complex64 if ref_out.is_complex() else case.dtype
    assert fwd.out.dtype == want_dtype and tuple(fwd.out.shape) == tuple(x.shape)
    assert_close("out", fwd.out, ref_out, FWD_TOL[case.dtype])
    if case.final_state:
        assert fwd.final_state is not None
        assert fwd.final_state.dtype == (torch.complex64 if case.program.state.complex else torch.float32)
        assert_close("final_state", fwd.final_state, ref_final, FWD_TOL[case.dtype])
    else:
        assert fwd.final_state is None


def check_backward(case: Case, *, grad_out: bool = True, grad_final: bool = True) -> None:
    """Every gradient the kernel returns against torch.autograd through the float64 oracle."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in case.inputs.items()}
    h0 = None if case.h0 is None else case.h0.clone().requires_grad_(True)
    ref_out, ref_final = reference(case, leaves, h0)
    gen = torch.Generator().manual_seed(case.seed + 1)

    def rand_like(t: torch.Tensor) -> torch.Tensor:
        if t.is_complex():
            return torch.complex(torch.randn(t.shape, generator=gen, dtype=torch.float64),
                                 torch.randn(t.shape, generator=gen, dtype=torch.float64))
        return torch.randn(t.shape, generator=gen, dtype=torch.float64)

    dout = rand_like(ref_out) if grad_out else torch.zeros_like(ref_out)
    if not ref_out.is_complex():
        dout = dout.to(case.dtype).to(torch.float64)  # the kernel sees dout in out's dtype
    dfinal = rand_like(ref_final) if grad_final else None
    loss = (ref_out.conj() * dout).real.sum()
    if dfinal is not None:
        loss = loss + (ref_final.conj() * dfinal).real.sum()
    names = list(leaves) + (["initial_state"] if h0 is not None else [])
    tensors = list(leaves.values()) + ([h0] if h0 is not None else [])
    want = dict(zip(names, torch.autograd.grad(loss, tensors, allow_unused=True)))

    kernel = case.compiled()
    inputs = case.kernel_inputs()
    with case.checkpoint_interval():
        fwd = kernel.forward(inputs, initial_state=case.kernel_state(), cu_seqlens=case.cu(),
                             return_final_state=dfinal is not None, save_for_backward=True)
        k_dout = dout.to(DEVICE, fwd.out.dtype) if grad_out else None
        k_dfinal = None if dfinal is None else dfinal.to(DEVICE, fwd.final_state.dtype)
        got = kernel.backward(fwd, inputs, k_dout, k_dfinal, initial_state=case.kernel_state(),
                              cu_seqlens=case.cu())
    for name in names:
        g = got.get(name)
        ref = want[name]
        if ref is None:
            ref = torch.zeros_like(tensors[names.index(name)])
        if name != "initial_state":
            got_dtype = getattr(g, "dtype", None)
            assert got_dtype == inputs[name].dtype, f"{name}: gradient dtype {got_dtype}, input {inputs[name].dtype}"
        assert_close(f"grad {name}", g, ref, BWD_TOL[case.dtype])
