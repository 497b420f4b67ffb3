"""Shared pieces of the SSD tests: random cases, the float64 oracle reference, comparisons.

Inputs come from :func:`scancc.oracle.random_inputs` (decays in about (0.1, 0.99)); the
sequence tensors are rounded to the kernel's dtype first, so the float64 reference sees
exactly the values the kernels see. Gradients are compared with torch autograd through the
oracle's float64 torch path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from scancc import ir, oracle
from scancc.backends import triton_ssd
from scancc.ir import Program, Schedule

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SEQUENCE = ("x", "dt", "z", "B", "C")      # rounded to the case's dtype
GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")
FWD_TOL = {torch.float32: oracle.TOLERANCES["fp32_chunked"], torch.bfloat16: oracle.TOLERANCES["bf16"],
           torch.float16: oracle.TOLERANCES["fp16"]}


def poison_empty(shape: tuple[int, ...], *, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """Stands in for the backend's allocator in tests: every buffer starts as NaN."""
    return torch.full(shape, float("nan"), device=device, dtype=dtype)


@dataclass
class Case:
    """One SSD problem. ``D``: ``None``, ``"h"`` (heads,) or ``"hp"`` (heads, headdim)."""

    batch: int = 2
    seqlen: int = 40
    heads: int = 2
    headdim: int = 8
    dstate: int = 8
    groups: int = 1
    chunk: int = 16
    D: Optional[str] = "h"
    z: bool = True
    bias: bool = True
    softplus: bool = True
    limit: Optional[tuple[float, float]] = None
    h0: bool = True
    seq_idx: bool = False
    cu_seqlens: Optional[list[int]] = None
    dtype: torch.dtype = torch.float32
    seed: int = 0
    inputs: dict[str, torch.Tensor] = field(default_factory=dict, init=False)
    state: Optional[torch.Tensor] = field(default=None, init=False)
    seq: Optional[torch.Tensor] = field(default=None, init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        arrays = oracle.random_inputs(self.program, rng, batch=self.batch, seqlen=self.seqlen, heads=self.heads,
                                      headdim=self.headdim, dstate=self.dstate, groups=self.groups)
        if self.D == "hp":
            arrays["D"] = rng.standard_normal((self.heads, self.headdim))
        for name, value in arrays.items():
            t = torch.from_numpy(value)
            if name in SEQUENCE:
                t = t.to(self.dtype).to(torch.float64)
            self.inputs[name] = t
        if self.h0:
            self.state = torch.from_numpy(oracle.random_state(self.program, rng, inputs=arrays, rows=self.rows))
        if self.seq_idx:
            cuts = np.sort(rng.integers(0, 4, (self.batch, self.seqlen)), axis=1)
            self.seq = torch.from_numpy(cuts.astype(np.int32))

    @property
    def program(self) -> Program:
        return ir.ssd(skip=self.D is not None, gate=self.z, dt_bias=self.bias, dt_softplus=self.softplus,
                      dt_limit=self.limit)

    @property
    def rows(self) -> int:
        return self.batch if self.cu_seqlens is None else len(self.cu_seqlens) - 1

    @property
    def schedule(self) -> Schedule:
        return triton_ssd.default_schedule(self.program).replace(chunk=self.chunk)

    def cu(self, device: Any = DEVICE) -> Optional[torch.Tensor]:
        return None if self.cu_seqlens is None else torch.tensor(self.cu_seqlens, dtype=torch.int32, device=device)

    def kernel_inputs(self) -> dict[str, torch.Tensor]:
        """The inputs as the kernels take them: sequence tensors in ``dtype``, the rest fp32."""
        out = {k: v.to(DEVICE, self.dtype if k in SEQUENCE else torch.float32) for k, v in self.inputs.items()}
        if self.seq is not None:
            out["seq_idx"] = self.seq.to(DEVICE)
        return out

    def kernel_state(self) -> Optional[torch.Tensor]:
        return None if self.state is None else self.state.to(DEVICE, torch.float32)

    def compiled(self) -> triton_ssd.SSDScan:
        return triton_ssd.build(self.program, self.schedule, triton_ssd.lower(self.program, self.schedule))


def reference(case: Case, leaves: Optional[dict[str, torch.Tensor]] = None,
              state: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, final_state)`` of the float64 sequential oracle (differentiable torch path)."""
    return oracle.sequential(case.program, case.inputs if leaves is None else leaves,
                             initial_state=case.state if state is None else state, return_final_state=True,
                             cu_seqlens=case.cu("cpu"), seq_idx=case.seq)


def grad_error(got: Optional[torch.Tensor], want: torch.Tensor, scale: float) -> float:
    """rel-L2 of a gradient; where the exact gradient vanishes (e.g. ``dA`` of a one-token
    sequence with no initial state) the error is taken relative to ``scale`` instead."""
    assert got is not None
    assert not torch.isnan(got).any(), "NaN in gradient"
    got64 = got.detach().cpu().to(torch.float64)
    diff = float(torch.linalg.vector_norm(got64 - want))
    norm = float(torch.linalg.vector_norm(want))
    return diff / (norm if norm > 1e-12 * scale else scale)


def kernel_grads(case: Case, grad_out: torch.Tensor, grad_state: torch.Tensor) -> dict[str, Optional[torch.Tensor]]:
    """The backend's gradients for ``grad_out`` (float64, the output's shape) and ``grad_state``."""
    kernel = case.compiled()
    inputs = case.kernel_inputs()
    fwd = kernel.forward(inputs, initial_state=case.kernel_state(), cu_seqlens=case.cu(), return_final_state=True,
                         save_for_backward=True)
    return kernel.backward(fwd, inputs, grad_out.to(DEVICE, case.dtype), grad_state.to(DEVICE, torch.float32),
                           initial_state=case.kernel_state(), cu_seqlens=case.cu())


def reference_grads(case: Case, grad_out: torch.Tensor, grad_state: torch.Tensor) -> dict[str, torch.Tensor]:
    leaves = {k: v.clone().requires_grad_(True) for k, v in case.inputs.items()}
    state = None if case.state is None else case.state.clone().requires_grad_(True)
    out, final = reference(case, leaves, state)
    names = list(leaves) + (["initial_state"] if state is not None else [])
    tensors = list(leaves.values()) + ([state] if state is not None else [])
    grads = torch.autograd.grad([out, final], tensors, [grad_out, grad_state])
    return dict(zip(names, grads))


class passing:
    """Context manager choosing where the state passing runs: ``passing(split=True)`` in its
    own kernel (chunk_scan then takes one program per chunk), ``split=False`` fused into
    chunk_scan / chunk_dstate, whatever the problem size."""

    def __init__(self, split: bool) -> None:
        self.split = split

    def __enter__(self) -> "passing":
        self.saved = triton_ssd.FUSED_MIN_PROGRAMS
        triton_ssd.FUSED_MIN_PROGRAMS = 10**9 if self.split else 1
        return self

    def __exit__(self, *exc: object) -> None:
        triton_ssd.FUSED_MIN_PROGRAMS = self.saved
