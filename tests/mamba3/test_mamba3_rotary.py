"""The rotary prologue kernel (scancc/templates/triton/mamba3_rotary.py.j2) against its torch form,
over several blocks of tokens (the fp64 carry of φ across blocks), and its custom op's gradients."""

from __future__ import annotations

import math

import pytest
import torch

from scancc import oracle
from scancc.backends.triton_mamba3 import rotary_prologue, rotary_reference
from scancc.ops.mamba3_op import rotary


def inputs(seqlen: int, heads: int, groups: int, dstate: int, pairs: int, dtype: torch.dtype, bias: str,
           phi0: bool, requires_grad: bool = False) -> list:
    g = torch.Generator().manual_seed(seqlen + pairs)

    def rnd(*shape: int, scale: float = 1.0, dt: torch.dtype = torch.float32) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=g)).to(dt).requires_grad_(requires_grad)

    batch = 2
    DT = (0.02 + 0.5 * torch.rand(batch, heads, seqlen, generator=g)).requires_grad_(requires_grad)
    return [
        rnd(batch, seqlen, groups, dstate, dt=dtype), rnd(batch, seqlen, groups, dstate, dt=dtype),
        rnd(heads, dstate, scale=0.2) if bias in ("both", "k") else None,
        rnd(heads, dstate, scale=0.2) if bias in ("both", "q") else None,
        rnd(batch, seqlen, heads, pairs, scale=3.0), DT.transpose(1, 2),     # dt (batch, seqlen, heads), strided
        rnd(batch, heads, pairs, scale=3.0) if phi0 else None,
    ]


@pytest.mark.parametrize("pairing, seqlen, groups, pairs, dtype, bias, phi0", [
    ("interleaved", 200, 1, 3, torch.float32, "both", True),
    ("interleaved", 130, 2, 4, torch.bfloat16, "k", False),
    ("halves", 70, 2, 2, torch.float32, "q", True),
    ("interleaved", 65, 1, 0, torch.float32, "none", False),
])
def test_kernel_matches_torch_form(pairing: str, seqlen: int, groups: int, pairs: int, dtype: torch.dtype,
                                   bias: str, phi0: bool) -> None:
    args = inputs(seqlen, 4, groups, 8, pairs, dtype, bias, phi0)
    got = rotary_prologue(pairing, *args)
    want = rotary_reference(pairing, *[None if a is None else a.double() for a in args])   # float64 truth
    tol = oracle.tolerance(dtype, chunked=True)
    for name, a, b in zip(("k", "q"), got, want):
        assert a.dtype == dtype and oracle.rel_l2(a, b) <= tol, name
    if pairs:
        assert oracle.rel_l2(torch.exp(1j * got[2].double()), torch.exp(1j * want[2].double())) <= 1e-5
        assert float(got[2].min()) >= 0.0 and float(got[2].max()) < 2 * math.pi


@pytest.mark.parametrize("pairing, seqlen, heads, groups, pairs, bias, phi0", [
    ("interleaved", 150, 2, 1, 3, "both", True),      # three blocks, heads summed into one group
    ("interleaved", 40, 4, 4, 4, "k", False),         # a q/k head per head: no group sum
    ("halves", 100, 4, 2, 2, "none", True),
])
def test_op_gradients_match_torch_form(pairing: str, seqlen: int, heads: int, groups: int, pairs: int, bias: str,
                                       phi0: bool) -> None:
    """The backward kernel (∂ of keys, queries, biases, angles, Δ and φ_0 from ∂ of k̃, q̃, φ_last)
    against autograd through the torch form."""
    args = inputs(seqlen, heads, groups, 8, pairs, torch.float32, bias, phi0, requires_grad=True)
    gen = torch.Generator().manual_seed(3)
    outs = rotary(pairing, *args)
    args64 = [None if a is None else a.detach().double().requires_grad_(True) for a in args]
    ref = rotary_reference(pairing, *args64)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in ref]
    leaves = [a for a in args if a is not None]
    leaves64 = [a for a in args64 if a is not None]
    got = torch.autograd.grad(sum((o.double() * w).sum() for o, w in zip(outs, weights)), leaves)
    want = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ref, weights)), leaves64)
    for i, (a, b) in enumerate(zip(got, want)):
        assert oracle.rel_l2(a, b) <= 1e-4, f"input {i}"


@pytest.mark.gpu
def test_benchmark_shape_on_gpu() -> None:
    """B4 L4096 H32 (one q/k head) N128 K64 bf16 on the GPU: values and gradients of the kernels
    against the float64 torch form."""
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape: int, scale: float = 1.0, dt: torch.dtype = torch.float32) -> torch.Tensor:
        return (scale * torch.randn(*shape, device="cuda", generator=g)).to(dt).requires_grad_(True)

    B, L, H, N = 4, 4096, 32, 128
    DT = (0.001 + 0.1 * torch.rand(B, H, L, device="cuda", generator=g)).requires_grad_(True)
    args = [rnd(B, L, 1, N, scale=N ** -0.5, dt=torch.bfloat16), rnd(B, L, 1, N, scale=N ** -0.5, dt=torch.bfloat16),
            rnd(H, N, scale=0.1), rnd(H, N, scale=0.1), rnd(B, L, H, N // 2, dt=torch.bfloat16), DT.transpose(1, 2),
            rnd(B, H, N // 2)]
    outs = rotary("interleaved", *args)
    args64 = [a.detach().double().requires_grad_(True) for a in args]
    ref = rotary_reference("interleaved", *args64)
    for name, a, b in zip(("k", "q"), outs, ref):
        assert oracle.rel_l2(a, b) <= oracle.tolerance(torch.bfloat16), name
    weights = [torch.randn(o.shape, device="cuda", generator=g, dtype=torch.float64) for o in ref]
    got = torch.autograd.grad(sum((o.double() * w).sum() for o, w in zip(outs, weights)), args)
    want = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ref, weights)), args64)
    for i, (a, b) in enumerate(zip(got, want)):
        assert oracle.rel_l2(a, b) <= oracle.tolerance(torch.bfloat16), f"input {i}"
