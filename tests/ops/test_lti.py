"""lti_scan against the float64 oracle (ZOH, bilinear, LRU-style direct Ā)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_reference import DEVICE, FWD_TOL, assert_close, compare, crandn, randn, reference

from scancc.ir import lti
from scancc.ops import lti_scan

NAMES = ("u", "delta", "A", "B", "C", "D", "initial_state")


@dataclass
class Case:
    batch: int
    dim: int
    dstate: int
    seqlen: int
    discretization: str
    complex: bool
    conj_pairs: bool
    real_bc: bool  # float32 B/C with a complex A (promoted by the op)
    has_D: bool
    want_state: bool
    has_state: bool
    dtype: torch.dtype
    seed: int


@st.composite
def cases(draw: st.DrawFn) -> Case:
    cplx = draw(st.booleans())
    return Case(draw(st.integers(1, 2)), draw(st.integers(1, 8)), draw(st.integers(1, 8)), draw(st.integers(1, 48)),
                draw(st.sampled_from(["zoh", "bilinear", "none"])), cplx, draw(st.booleans()),
                cplx and draw(st.booleans()), draw(st.booleans()), draw(st.booleans()), draw(st.booleans()),
                draw(st.sampled_from([torch.float32, torch.float32, torch.float16])), draw(st.integers(0, 2**16)))


def make_inputs(c: Case) -> list[Optional[torch.Tensor]]:
    gen = torch.Generator().manual_seed(c.seed)
    d, n = c.dim, c.dstate
    u = randn(c.batch, d, c.seqlen, gen=gen, dtype=c.dtype)
    delta = None if c.discretization == "none" else 0.01 + 0.2 * torch.rand(d, generator=gen)
    if c.discretization == "none":  # A is Ā itself: keep |Ā| < 1
        mag = 0.3 + 0.65 * torch.rand(d, n, generator=gen)
        A = torch.polar(mag, torch.rand(d, n, generator=gen) * 6.28) if c.complex else mag
    else:
        re = -0.5 - torch.rand(d, n, generator=gen)
        A = torch.complex(re, 3.14 * torch.arange(n).float().expand(d, n)) if c.complex else re
    wide = c.complex and not c.real_bc
    B = crandn(d, n, gen=gen) if wide else randn(d, n, gen=gen)
    C = crandn(d, n, gen=gen) if wide else randn(d, n, gen=gen)
    D = randn(d, gen=gen) if c.has_D else None
    h0 = (crandn if c.complex else randn)(c.batch, d, n, gen=gen) if c.has_state else None
    return [u, delta, A, B, C, D, h0]


def run_reference(c: Case, args) -> list[torch.Tensor]:
    u, delta, A, B, C, D, h0 = args
    program = lti(discretization=c.discretization, complex=c.complex, conj_pairs=c.conj_pairs and c.complex,
                  skip=c.has_D)
    if c.complex:
        B, C = B.to(torch.complex128), C.to(torch.complex128)
    out, last = reference(program, {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D}, initial_state=h0)
    return [out, last] if c.want_state else [out]


def run_op(c: Case, args) -> list[torch.Tensor]:
    u, delta, A, B, C, D, h0 = args
    res = lti_scan(u, delta, A, B, C, D, discretization=c.discretization, conj_pairs=c.conj_pairs, initial_state=h0,
                   return_final_state=c.want_state)
    return list(res) if c.want_state else [res]


@settings(max_examples=12, deadline=None)
@given(c=cases())
def test_matches_oracle(c: Case) -> None:
    got = compare(lambda a: run_op(c, a), lambda a: run_reference(c, a), make_inputs(c), NAMES, dtype=c.dtype,
                  grads=c.dtype == torch.float32, seed=c.seed)
    assert got[0].dtype == c.dtype and got[0].shape == (c.batch, c.dim, c.seqlen)


def test_s4d_convolution_form() -> None:
    """S4D's kernel K_l = 2·Re Σ_n C_n B̄_n Ā_n^l applied as a causal convolution gives the same y."""
    gen = torch.Generator().manual_seed(3)
    d, n, length = 3, 4, 30
    u = randn(1, d, length, gen=gen)
    delta = 0.05 + 0.1 * torch.rand(d, generator=gen)
    A = torch.complex(-0.5 * torch.ones(d, n), 3.14 * torch.arange(n).float().expand(d, n))
    B, C = crandn(d, n, gen=gen), crandn(d, n, gen=gen)
    y = lti_scan(*(t.to(DEVICE) for t in (u, delta, A, B, C)))
    dA = torch.exp(delta.double()[:, None] * A.to(torch.complex128))
    dB = (dA - 1) / A.to(torch.complex128) * B.to(torch.complex128)
    powers = dA[..., None] ** torch.arange(length)  # (d, n, L)
    K = 2 * (C.to(torch.complex128)[..., None] * dB[..., None] * powers).sum(1).real  # (d, L)
    want = torch.stack([(K[:, : t + 1].flip(-1) * u[0, :, : t + 1].double()).sum(-1) for t in range(length)], -1)
    assert_close("y", y[0], want, FWD_TOL[torch.float32])


def test_nan_propagates() -> None:
    gen = torch.Generator().manual_seed(4)
    u = randn(2, 3, 10, gen=gen)
    u[0, 0, 3] = float("nan")
    A = torch.complex(-torch.ones(3, 2), torch.ones(3, 2))
    out = lti_scan(u.to(DEVICE), torch.full((3,), 0.1, device=DEVICE), A.to(DEVICE), torch.ones(3, 2, device=DEVICE),
                   torch.ones(3, 2, device=DEVICE)).cpu()
    assert torch.isnan(out[0, 0, 3:]).all()
    mask = torch.ones_like(out, dtype=torch.bool)
    mask[0, 0, 3:] = False
    assert torch.isfinite(out[mask]).all()
