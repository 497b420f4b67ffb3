"""SSD on a CUDA GPU: the benchmark shape (bf16 B4 L4096 H80 P64 N128 G1, chunks of 256) and
medium shapes against the float64 oracle (run on the GPU), determinism, CUDA-graph capture,
torch.compile. Skipped without a GPU."""

from __future__ import annotations

import math
from typing import Any, Optional

import pytest
import torch

from scancc import oracle
from scancc.backends import triton_ssd
from scancc.ir import ssd
from scancc.ops import mamba_chunk_scan_combined

pytestmark = pytest.mark.gpu

ANCHOR = dict(batch=4, seqlen=4096, heads=80, headdim=64, dstate=128, groups=1)
BF16 = oracle.TOLERANCES["bf16"]
FP32 = oracle.TOLERANCES["fp32_chunked"]
NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")


def gpu_inputs(batch: int, seqlen: int, heads: int, headdim: int, dstate: int, groups: int,
               dtype: torch.dtype = torch.bfloat16, seed: int = 0, z: bool = True) -> dict[str, torch.Tensor]:
    """Inputs as a Mamba2 layer sees them (A in [−16, −1], softplus(dt + dt_bias) near [0.001, 0.1])."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, device="cuda", generator=gen)).to(dtype)

    lo, hi = math.log(1e-3), math.log(0.1)
    dt_init = torch.exp(lo + (hi - lo) * torch.rand(heads, device="cuda", generator=gen))
    inputs = {
        "x": randn(batch, seqlen, heads, headdim), "dt": randn(batch, seqlen, heads, scale=0.5),
        "A": -(1.0 + 15.0 * torch.rand(heads, device="cuda", generator=gen)),
        "B": randn(batch, seqlen, groups, dstate), "C": randn(batch, seqlen, groups, dstate),
        "D": torch.randn(heads, device="cuda", generator=gen),
        "dt_bias": dt_init + torch.log(-torch.expm1(-dt_init)),
    }
    if z:
        inputs["z"] = randn(batch, seqlen, heads, headdim)
    return inputs


def run(inputs: dict[str, torch.Tensor], chunk: int = 256, **kwargs: Any) -> Any:
    return mamba_chunk_scan_combined(inputs["x"], inputs["dt"], inputs["A"], inputs["B"], inputs["C"], chunk,
                                     D=inputs["D"], z=inputs.get("z"), dt_bias=inputs["dt_bias"], dt_softplus=True,
                                     **kwargs)


def reference(inputs: dict[str, torch.Tensor], *, leaves: Optional[dict[str, torch.Tensor]] = None,
              initial_state: Optional[torch.Tensor] = None, seq_idx: Optional[torch.Tensor] = None) -> Any:
    program = ssd(gate="z" in inputs)
    values = leaves if leaves is not None else {k: v.detach().to(torch.float64) for k, v in inputs.items()}
    return oracle.sequential(program, values, initial_state=initial_state, seq_idx=seq_idx, return_final_state=True)


def test_anchor_shape_forward_matches_the_oracle() -> None:
    inputs = gpu_inputs(**ANCHOR)
    with torch.no_grad():
        out, final = run(inputs, return_final_states=True)
        # the float64 oracle on batch rows 0 and 3
        for row in (0, 3):
            sliced = {k: (v[row:row + 1] if v.dim() > 1 else v) for k, v in inputs.items()}
            want, want_final = reference(sliced)
            assert oracle.rel_l2(out[row:row + 1], want) <= BF16
            assert oracle.rel_l2(final[row:row + 1], want_final) <= BF16


@pytest.mark.peer
def test_anchor_shape_against_mamba_ssm() -> None:
    peer = pytest.importorskip("mamba_ssm.ops.triton.ssd_combined")
    inputs = gpu_inputs(**ANCHOR)
    leaves = [inputs[k].requires_grad_(True) for k in NAMES]
    out = run(inputs)
    theirs = peer.mamba_chunk_scan_combined(inputs["x"], inputs["dt"], inputs["A"], inputs["B"], inputs["C"], 256,
                                            D=inputs["D"], z=inputs["z"], dt_bias=inputs["dt_bias"], dt_softplus=True)
    assert oracle.rel_l2(out, theirs) <= BF16
    grad = torch.randn_like(out)
    ours_g = torch.autograd.grad(out, leaves, grad)
    theirs_g = torch.autograd.grad(theirs, leaves, grad)
    errors = {k: oracle.rel_l2(a, b) for k, a, b in zip(NAMES, ours_g, theirs_g)}
    assert max(errors.values()) <= 2 * BF16, errors


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, BF16), (torch.float16, BF16), (torch.float32, FP32)],
                         ids=["bf16", "fp16", "fp32"])
def test_gradients_match_autograd_of_the_oracle(dtype: torch.dtype, tol: float) -> None:
    inputs = gpu_inputs(batch=2, seqlen=1000, heads=8, headdim=64, dstate=128, groups=2, dtype=dtype, seed=1)
    h0 = torch.randn(2, 8, 64, 128, device="cuda")
    seq_idx = torch.zeros(2, 1000, dtype=torch.int32, device="cuda")
    seq_idx[0, 300:], seq_idx[0, 777:], seq_idx[1, 512:] = 1, 2, 1
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    h0_leaf = h0.clone().requires_grad_(True)
    out, final = run(leaves, initial_states=h0_leaf, seq_idx=seq_idx, return_final_states=True)
    ref_leaves = {k: v.detach().to(torch.float64).requires_grad_(True) for k, v in inputs.items()}
    ref_h0 = h0.to(torch.float64).requires_grad_(True)
    want, want_final = reference(inputs, leaves=ref_leaves, initial_state=ref_h0, seq_idx=seq_idx)
    assert oracle.rel_l2(out, want) <= tol and oracle.rel_l2(final, want_final) <= tol
    g_out, g_final = torch.randn_like(want), torch.randn_like(want_final)
    got = torch.autograd.grad([out, final], [*leaves.values(), h0_leaf], [g_out.to(dtype), g_final.float()])
    exp = torch.autograd.grad([want, want_final], [*ref_leaves.values(), ref_h0], [g_out.to(dtype).double(), g_final])
    errors = {k: oracle.rel_l2(a, b) for k, a, b in zip([*leaves, "initial_states"], got, exp)}
    assert max(errors.values()) <= tol, errors


def _grads(inputs: dict[str, torch.Tensor], grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    return (run(leaves).detach(), *torch.autograd.grad(run(leaves), list(leaves.values()), grad))


def test_backward_is_deterministic_and_both_passings_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = gpu_inputs(**ANCHOR, seed=2)
    grad = torch.randn(inputs["x"].shape, device="cuda").to(torch.bfloat16)
    first, second = _grads(inputs, grad), _grads(inputs, grad)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    monkeypatch.setattr(triton_ssd, "FUSED_MIN_PROGRAMS", 1 << 40)  # the split variant
    split = _grads(inputs, grad)
    errors = [oracle.rel_l2(a, b) for a, b in zip(split, first)]
    assert max(errors) <= 1e-3, errors


def test_packed_sequences_match_separate_runs() -> None:
    lens = [1, 255, 256, 257, 700, 3, 1000]
    cu = torch.tensor([0] + lens, device="cuda").cumsum(0).to(torch.int32)
    total = int(cu[-1])
    inputs = gpu_inputs(batch=1, seqlen=total, heads=8, headdim=64, dstate=64, groups=1, seed=3)
    h0 = torch.randn(len(lens), 8, 64, 64, device="cuda")
    out, states = run(inputs, cu_seqlens=cu, initial_states=h0, return_varlen_states=True)
    for i in range(len(lens)):
        lo, hi = int(cu[i]), int(cu[i + 1])
        sliced = {k: (v[:, lo:hi] if v.dim() > 1 else v) for k, v in inputs.items()}
        o, s = run(sliced, initial_states=h0[i:i + 1], return_final_states=True)
        assert oracle.rel_l2(out[:, lo:hi], o) <= 1e-2 and oracle.rel_l2(states[i:i + 1], s) <= 1e-2


def test_cuda_graph_capture_of_forward_and_backward() -> None:
    """No host synchronisation: the op (packed sequences and seq_idx included) and its backward
    are captured in a CUDA graph and replayed on new values."""
    cu = torch.tensor([0, 100, 612, 1024], device="cuda", dtype=torch.int32)
    seq_idx = torch.repeat_interleave(torch.arange(3, device="cuda", dtype=torch.int32),
                                      (cu[1:] - cu[:-1]).long())[None]
    inputs = gpu_inputs(batch=1, seqlen=1024, heads=8, headdim=64, dstate=128, groups=1, seed=4)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    grad = torch.randn(1, 1024, 8, 64, device="cuda").to(torch.bfloat16)

    def step() -> tuple[torch.Tensor, ...]:
        out, states = run(leaves, cu_seqlens=cu, seq_idx=seq_idx, return_varlen_states=True)
        grads = torch.autograd.grad([out, states], list(leaves.values()), [grad, torch.ones_like(states)])
        return (out, states, *grads)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # compile the kernels outside the capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    fresh = gpu_inputs(batch=1, seqlen=1024, heads=8, headdim=64, dstate=128, groups=1, seed=5)
    with torch.no_grad():
        for k, v in leaves.items():
            v.copy_(fresh[k])
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    assert all(torch.equal(a, b) for a, b in zip(captured, eager))


@pytest.mark.slow
def test_torch_compile_fullgraph_with_inductor() -> None:
    inputs = gpu_inputs(batch=2, seqlen=512, heads=8, headdim=64, dstate=128, groups=1, seed=6)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}

    def loss(x, dt, A, B, C, D, z, dt_bias):
        out = mamba_chunk_scan_combined(x, dt, A, B, C, 256, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
        return (out.float() ** 2).mean()

    args = [leaves[k] for k in NAMES]
    compiled = torch.compile(loss, fullgraph=True)
    got = torch.autograd.grad(compiled(*args), args)
    want = torch.autograd.grad(loss(*args), args)
    errors = [oracle.rel_l2(a, b) for a, b in zip(got, want)]
    assert max(errors) <= 1e-3, errors
