"""Shared pieces of the op tests: float64 references, tolerances and comparisons.

Every op test runs the op on float32/bf16 leaves and the float64 oracle on float64
copies of the same leaves (same layout), then compares outputs, final states and the
gradients of one random linear functional of both.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from scancc import oracle
from scancc.ir import Program

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Relative L2 against float64 (recurrences.md): the kernels may use chunked schedules.
# Gradients run a reverse scan plus reductions over time: a few times looser.
FWD_TOL = {dt: oracle.tolerance(dt, chunked=True) for dt in (torch.float32, torch.bfloat16, torch.float16)}
GRAD_TOL = {torch.float32: 5e-4, torch.bfloat16: 5e-2, torch.float16: 5e-2}


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    """The oracle's relative L2 error (NaN gives inf), with a shape check that says which."""
    if x.shape != ref.shape:
        raise AssertionError(f"shape {tuple(x.shape)} != reference shape {tuple(ref.shape)}")
    return oracle.rel_l2(x.detach().cpu(), ref.detach().cpu())


# A reference that is exactly zero (e.g. dA at seqlen 1 from a zero state) has no relative
# error; float32 rounding (exp computed as exp2) may leave values this small instead.
ZERO_ATOL = 1e-6


def assert_close(name: str, x: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    if not bool(ref.detach().any()):
        finite = bool(torch.isfinite(torch.view_as_real(x) if x.is_complex() else x).all())
        size = x.detach().abs().max().item() if x.numel() else 0.0
        assert finite and size <= ZERO_ATOL, f"{name}: reference is zero, got max |x| = {size:.3g}"
        return
    err = rel_l2(x, ref)
    assert err <= tol, f"{name}: relative L2 error {err:.3g} > {tol:g}"


def reference(
    program: Program,
    inputs: Mapping[str, Optional[torch.Tensor]],
    *,
    initial_state: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 oracle on torch tensors (differentiable): ``(out, final_state)``."""
    present = {k: v for k, v in inputs.items() if v is not None}
    return oracle.sequential(program, present, initial_state=initial_state, cu_seqlens=cu_seqlens,
                             return_final_state=True)


def f64_leaf(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A float64 (complex128) copy of ``t`` on the CPU that requires grad."""
    if t is None:
        return None
    wide = torch.complex128 if t.is_complex() else torch.float64
    return t.detach().to("cpu", wide).requires_grad_()


def leaf(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().to(DEVICE).requires_grad_()


def functional(out: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A real scalar ``Σ w·out`` (complex ``out``: over its real and imaginary parts)."""
    view = torch.view_as_real(out) if out.is_complex() else out
    return (view.to(weights.dtype) * weights.to(view.device)).sum()


def weights_like(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    shape = t.shape + ((2,) if t.is_complex() else ())
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def compare(
    run_op: Callable[[Sequence[Optional[torch.Tensor]]], Sequence[torch.Tensor]],
    run_ref: Callable[[Sequence[Optional[torch.Tensor]]], Sequence[torch.Tensor]],
    args: Sequence[Optional[torch.Tensor]],
    names: Sequence[str],
    *,
    dtype: torch.dtype,
    grads: bool = True,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Run ``run_op`` on device leaves of ``args`` and ``run_ref`` on float64 leaves; compare
    every result and (with ``grads``) every leaf's gradient of a random functional.
    Returns the op's results."""
    gen = torch.Generator().manual_seed(seed)
    ours = [leaf(a) if grads and a is not None and (a.is_floating_point() or a.is_complex()) else
            (None if a is None else a.to(DEVICE)) for a in args]
    refs = [f64_leaf(a) if a is not None and (a.is_floating_point() or a.is_complex()) else a for a in args]
    got = run_op(ours)
    want = run_ref(refs)
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.isfinite(torch.view_as_real(w) if w.is_complex() else w).all(), "reference is not finite"
        assert_close(f"result {i}", g, w, FWD_TOL[dtype])
    if not grads:
        return list(got)
    ws = [weights_like(w, gen) for w in want]
    sum(functional(g, w) for g, w in zip(got, ws)).backward()
    sum(functional(w_, w) for w_, w in zip(want, ws)).backward()
    for name, o, r in zip(names, ours, refs):
        if o is None or not o.requires_grad:
            continue
        assert o.grad is not None, f"no gradient reached {name}"
        assert r.grad is not None, f"the reference gives no gradient for {name}"
        assert o.grad.dtype == o.dtype and o.grad.shape == o.shape, f"grad of {name}: wrong dtype/shape"
        assert_close(f"grad {name}", o.grad, r.grad, GRAD_TOL[dtype])
    return list(got)


def randn(*shape: int, gen: torch.Generator, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


def crandn(*shape: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)) * scale


def as_dict(names: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(names, values))
