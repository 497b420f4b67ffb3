"""Bad arguments raise TypeError/ValueError naming the argument, with expected vs actual."""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest
import torch

from scancc.ops import linear_scan, lti_scan, selective_scan_fn

# Validation happens before any kernel runs, so these tests never launch one.
B_, D_, N_, L_ = 2, 8, 16, 64


def sel_args(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        u=torch.randn(B_, D_, L_), delta=torch.randn(B_, D_, L_), A=-torch.rand(D_, N_),
        B=torch.randn(B_, N_, L_), C=torch.randn(B_, N_, L_),
    )
    args.update(over)
    return args


def raises(exc: type, pattern: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    with pytest.raises(exc, match=re.escape(pattern)):
        fn(*args, **kwargs)


CPLX_A = torch.complex(-torch.rand(D_, N_), torch.randn(D_, N_))

SELECTIVE_BAD = [
    ("u not a tensor", TypeError, "u: expected a torch.Tensor, got list", dict(u=[1.0])),
    ("integer u", TypeError, "u: expected dtype float32, float16 or bfloat16, got torch.int64",
     dict(u=torch.ones(B_, D_, L_, dtype=torch.int64))),
    ("bool u", TypeError, "integer and bool tensors are not accepted",
     dict(u=torch.ones(B_, D_, L_, dtype=torch.bool))),
    ("float64 u", TypeError, "got torch.float64 (kernels compute in float32", dict(u=torch.randn(B_, D_, L_).double())),
    ("u 2-D", ValueError, "u: expected (batch, dim, seqlen), got (2, 8)", dict(u=torch.randn(B_, D_))),
    ("empty sequence", ValueError, "u: expected seqlen >= 1, got seqlen=0",
     dict(u=torch.randn(B_, D_, 0), delta=torch.randn(B_, D_, 0), B=torch.randn(B_, N_, 0), C=torch.randn(B_, N_, 0))),
    ("mixed dtypes", TypeError, "delta: expected dtype torch.float32 (the dtype of u), got torch.bfloat16",
     dict(delta=torch.randn(B_, D_, L_, dtype=torch.bfloat16))),
    ("delta shape", ValueError, "delta: expected (batch=2, dim=8, seqlen=64), got (2, 8, 63)",
     dict(delta=torch.randn(B_, D_, L_ - 1))),
    ("A dtype", TypeError, "A: expected dtype float32 or complex64, got torch.float16",
     dict(A=torch.randn(D_, N_, dtype=torch.float16))),
    ("A shape", ValueError, "A: expected (dim=8, dstate), got (7, 16)", dict(A=torch.randn(7, N_))),
    ("groups not dividing dim", ValueError,
     "B: expected (batch=2, groups, dstate=16, seqlen=64) with dim % groups == 0, got (2, 3, 16, 64)",
     dict(B=torch.randn(B_, 3, N_, L_))),
    ("B seqlen", ValueError, "B: expected (batch=2, dstate=16, seqlen=64) or (batch=2, groups, dstate=16, seqlen=64) "
     "or (dim=8, dstate=16) with dim % groups == 0, got (2, 16, 32)", dict(B=torch.randn(B_, N_, 32))),
    ("B and C groups differ", ValueError, "C: expected groups=2 (the groups of B), got groups=4",
     dict(B=torch.randn(B_, 2, N_, L_), C=torch.randn(B_, 4, N_, L_))),
    ("complex A needs interleaved B", ValueError, "B: expected (batch=2, dstate=16, 2*seqlen=128)",
     dict(A=CPLX_A)),
    ("complex B with real A", TypeError, "B: expected a real dtype (torch.float32, the dtype of u) because A is real",
     dict(B=torch.randn(B_, N_, L_, dtype=torch.complex64))),
    ("fixed B dtype", TypeError, "B: expected dtype float32 (a time-invariant B/C has A's dtype), got torch.bfloat16",
     dict(B=torch.randn(D_, N_, dtype=torch.bfloat16))),
    ("D dtype", TypeError, "D: expected dtype float32, got torch.bfloat16",
     dict(D=torch.randn(D_, dtype=torch.bfloat16))),
    ("D shape", ValueError, "D: expected (dim=8), got (8, 1)", dict(D=torch.randn(D_, 1))),
    ("z dtype", TypeError, "z: expected dtype torch.float32 (the dtype of u), got torch.float16",
     dict(z=torch.randn(B_, D_, L_, dtype=torch.float16))),
    ("delta_bias shape", ValueError, "delta_bias: expected (dim=8), got (4,)", dict(delta_bias=torch.randn(4))),
    ("device mismatch", ValueError, "C is on meta but u is on cpu", dict(C=torch.randn(B_, N_, L_, device="meta"))),
    ("softplus flag", TypeError, "delta_softplus: expected a bool, got Tensor",
     dict(delta_softplus=torch.tensor(True))),
    ("state shape", ValueError, "initial_state: expected (batch=2, dim=8, dstate=16), got (2, 8, 15)",
     dict(initial_state=torch.zeros(B_, D_, N_ - 1))),
    ("state dtype", TypeError, "initial_state: expected dtype float32 (states are kept in float32), got torch.bfloat16",
     dict(initial_state=torch.zeros(B_, D_, N_, dtype=torch.bfloat16))),
    ("complex state", TypeError, "initial_state: expected dtype complex64", dict(
        A=CPLX_A, B=torch.randn(B_, N_, 2 * L_), C=torch.randn(B_, N_, 2 * L_), initial_state=torch.zeros(B_, D_, N_))),
    ("empty batch", ValueError, "u: expected (batch, dim, seqlen) with every size >= 1, got (0, 8, 64) (batch = 0)",
     dict(u=torch.randn(0, D_, L_), delta=torch.randn(0, D_, L_), B=torch.randn(0, N_, L_), C=torch.randn(0, N_, L_))),
    ("empty dim", ValueError, "u: expected (batch, dim, seqlen) with every size >= 1, got (2, 0, 64) (dim = 0)",
     dict(u=torch.randn(B_, 0, L_), delta=torch.randn(B_, 0, L_), A=torch.randn(0, N_))),
    ("empty dstate", ValueError, "A: expected (dim, dstate) with every size >= 1, got (8, 0) (dstate = 0)",
     dict(A=torch.randn(D_, 0), B=torch.randn(B_, 0, L_), C=torch.randn(B_, 0, L_))),
]


@pytest.mark.parametrize("case", SELECTIVE_BAD, ids=[c[0] for c in SELECTIVE_BAD])
def test_selective_bad_arguments(case: tuple) -> None:
    _, exc, pattern, over = case
    raises(exc, pattern, selective_scan_fn, **sel_args(**over))


def packed(**over: Any) -> dict[str, Any]:
    return sel_args(u=torch.randn(1, D_, L_), delta=torch.randn(1, D_, L_), B=torch.randn(1, N_, L_),
                    C=torch.randn(1, N_, L_), **over)


CU_BAD = [
    ("float", TypeError, "cu_seqlens: expected dtype int32 or int64, got torch.float32",
     packed(cu_seqlens=torch.tensor([0.0, 64.0]))),
    ("2-D", ValueError, "cu_seqlens: expected shape (num_seqs + 1,) with num_seqs >= 1, got (1, 2)",
     packed(cu_seqlens=torch.tensor([[0, 64]]))),
    ("too short", ValueError, "got (1,)", packed(cu_seqlens=torch.tensor([0]))),
    ("batch 2", ValueError, "cu_seqlens: expected batch=1 (sequences packed along seqlen), got batch=2",
     sel_args(cu_seqlens=torch.tensor([0, 64]))),
    ("not from 0", ValueError, "cu_seqlens: expected to start at 0 and end at seqlen=64, got start 1 and end 64",
     packed(cu_seqlens=torch.tensor([1, 64]))),
    ("not to L", ValueError, "got start 0 and end 60", packed(cu_seqlens=torch.tensor([0, 30, 60]))),
    ("not increasing", ValueError, "cu_seqlens: expected strictly increasing values (every sequence non-empty), "
     "got cu_seqlens[1]=40 >= cu_seqlens[2]=30", packed(cu_seqlens=torch.tensor([0, 40, 30, 64]))),
    ("empty sequence", ValueError, "got cu_seqlens[1]=10 >= cu_seqlens[2]=10",
     packed(cu_seqlens=torch.tensor([0, 10, 10, 64], dtype=torch.int32))),
    ("state rows", ValueError, "initial_state: expected (num_seqs=2, dim=8, dstate=16), got (1, 8, 16)",
     packed(cu_seqlens=torch.tensor([0, 10, 64]), initial_state=torch.zeros(1, D_, N_))),
]


@pytest.mark.parametrize("case", CU_BAD, ids=[c[0] for c in CU_BAD])
def test_cu_seqlens_bad(case: tuple) -> None:
    _, exc, pattern, args = case
    raises(exc, pattern, selective_scan_fn, **args)


LINEAR_BAD = [
    ("4-D", ValueError, "a: expected (batch, dim, seqlen) or (batch, seqlen) or (seqlen), got (1, 2, 3, 4)",
     (torch.rand(1, 2, 3, 4), torch.rand(1, 2, 3, 4)), {}),
    ("shape mismatch", ValueError, "x: expected (a.shape[0]=2, a.shape[1]=3, a.shape[2]=5), got (2, 3, 4)",
     (torch.rand(2, 3, 5), torch.rand(2, 3, 4)), {}),
    ("mixed dtypes", TypeError, "x: expected dtype torch.bfloat16 (the dtype of a), got torch.float32",
     (torch.rand(2, 5, dtype=torch.bfloat16), torch.rand(2, 5)), {}),
    ("integer a", TypeError, "a: expected dtype float32, float16 or bfloat16, got torch.int32",
     (torch.ones(2, 5, dtype=torch.int32), torch.ones(2, 5, dtype=torch.int32)), {}),
    ("complex x, bf16 a", TypeError, "a: expected dtype float32 (x is complex64), got torch.bfloat16",
     (torch.rand(5, dtype=torch.bfloat16), torch.randn(5, dtype=torch.complex64)), {}),
    ("complex a, bf16 x", TypeError, "x: expected dtype float32 or complex64 (a is complex64), got torch.bfloat16",
     (torch.randn(5, dtype=torch.complex64), torch.randn(5, dtype=torch.bfloat16)), {}),
    ("scale", ValueError, "scale: expected one of 'none', 'one_minus_a', 'sqrt_one_minus_a2', got 'hgrn'",
     (torch.rand(5), torch.rand(5)), dict(scale="hgrn")),
    ("empty", ValueError, "a: expected seqlen >= 1, got seqlen=0", (torch.rand(2, 0), torch.rand(2, 0)), {}),
    ("state shape", ValueError, "initial_state: expected (batch=2, dim=3), got (2, 3, 1)",
     (torch.rand(2, 3, 5), torch.rand(2, 3, 5)), dict(initial_state=torch.zeros(2, 3, 1))),
    ("complex state", TypeError, "initial_state: expected dtype complex64",
     (torch.rand(2, 3, 5), torch.randn(2, 3, 5, dtype=torch.complex64)), dict(initial_state=torch.zeros(2, 3))),
    ("device", ValueError, "x is on meta but a is on cpu", (torch.rand(5), torch.rand(5, device="meta")), {}),
    ("varlen batch", ValueError, "cu_seqlens: expected batch=1", (torch.rand(2, 5), torch.rand(2, 5)),
     dict(cu_seqlens=torch.tensor([0, 5]))),
    ("empty batch", ValueError, "a: expected (batch, seqlen) with every size >= 1, got (0, 5) (batch = 0)",
     (torch.rand(0, 5), torch.rand(0, 5)), {}),
    ("empty dim", ValueError, "a: expected (batch, dim, seqlen) with every size >= 1, got (2, 0, 5) (dim = 0)",
     (torch.rand(2, 0, 5), torch.rand(2, 0, 5)), {}),
]


@pytest.mark.parametrize("case", LINEAR_BAD, ids=[c[0] for c in LINEAR_BAD])
def test_linear_bad_arguments(case: tuple) -> None:
    _, exc, pattern, args, kwargs = case
    raises(exc, pattern, linear_scan, *args, **kwargs)


def lti_args(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(u=torch.randn(B_, D_, L_), delta=torch.rand(D_), A=CPLX_A,
                                B=torch.randn(D_, N_, dtype=torch.complex64),
                                C=torch.randn(D_, N_, dtype=torch.complex64))
    args.update(over)
    return args


LTI_BAD = [
    ("discretization", ValueError, "discretization: expected one of 'zoh', 'bilinear', 'none', got 'euler'",
     dict(discretization="euler")),
    ("delta with none", ValueError, "delta: expected None with discretization='none'", dict(discretization="none")),
    ("delta missing", TypeError, "delta: expected a torch.Tensor, got NoneType", dict(delta=None)),
    ("delta per step", ValueError, "delta: expected (dim=8), got (2, 8, 64)", dict(delta=torch.rand(B_, D_, L_))),
    ("B shape", ValueError, "B: expected (dim=8, dstate=16), got (8, 8)", dict(B=torch.randn(D_, 8))),
    ("C dtype", TypeError, "C: expected dtype float32 or complex64 (A's dtype), got torch.complex128",
     dict(C=torch.randn(D_, N_, dtype=torch.complex128))),
    ("real A, complex B", TypeError, "B: expected dtype float32 (A's dtype), got torch.complex64",
     dict(A=-torch.rand(D_, N_))),
    ("conj_pairs flag", TypeError, "conj_pairs: expected a bool, got int", dict(conj_pairs=1)),
    ("empty batch", ValueError, "u: expected (batch, dim, seqlen) with every size >= 1, got (0, 8, 64) (batch = 0)",
     dict(u=torch.randn(0, D_, L_))),
    ("empty dstate", ValueError, "A: expected (dim, dstate) with every size >= 1, got (8, 0) (dstate = 0)",
     dict(A=-torch.rand(D_, 0), B=torch.randn(D_, 0), C=torch.randn(D_, 0))),
]


@pytest.mark.parametrize("case", LTI_BAD, ids=[c[0] for c in LTI_BAD])
def test_lti_bad_arguments(case: tuple) -> None:
    _, exc, pattern, over = case
    args = lti_args(**over)
    u, delta, A, B, C = (args.pop(k) for k in ("u", "delta", "A", "B", "C"))
    raises(exc, pattern, lti_scan, u, delta, A, B, C, **args)
