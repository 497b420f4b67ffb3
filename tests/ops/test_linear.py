"""linear_scan against the float64 oracle: real/complex, scales, 1-D/2-D/3-D, varlen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_reference import DEVICE, assert_close, compare, crandn, randn, reference

from scancc.ir import linear
from scancc.ops import linear_scan

NAMES = ("a", "x", "initial_state")


@dataclass
class Case:
    shape: tuple[int, ...]
    complex_a: bool
    complex_x: bool
    scale: str
    want_state: bool
    has_state: bool
    dtype: torch.dtype
    seed: int


@st.composite
def cases(draw: st.DrawFn) -> Case:
    seqlen = draw(st.integers(1, 64))
    lead = draw(st.sampled_from([(), (2,), (1, 3), (2, 5)]))
    complex_a, complex_x = draw(st.booleans()), draw(st.booleans())
    real = not (complex_a or complex_x)
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16])) if real else torch.float32
    return Case((*lead, seqlen), complex_a, complex_x,
                draw(st.sampled_from(["none", "one_minus_a", "sqrt_one_minus_a2"])), draw(st.booleans()),
                draw(st.booleans()), dtype, draw(st.integers(0, 2**16)))


def state_shape(c: Case) -> tuple[int, ...]:
    return c.shape[:-1]


def make_inputs(c: Case) -> list[Optional[torch.Tensor]]:
    gen = torch.Generator().manual_seed(c.seed)
    mag = 0.2 + 0.75 * torch.rand(c.shape, generator=gen)  # |a| < 1 keeps sqrt(1 − |a|²) real
    if c.complex_a:
        a = torch.polar(mag, torch.rand(c.shape, generator=gen) * 6.2832)
    else:
        a = mag.to(c.dtype)
    x = crandn(*c.shape, gen=gen) if c.complex_x else randn(*c.shape, gen=gen, dtype=c.dtype)
    h0 = None
    if c.has_state:
        h0 = crandn(*state_shape(c), gen=gen) if (c.complex_a or c.complex_x) else randn(*state_shape(c), gen=gen)
    return [a, x, h0]


def ref_scan(c: Case, a: torch.Tensor, x: torch.Tensor, h0: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """The oracle sees a real x (its contract); a complex x is linear: h(x) = h(Re x) + i·h(Im x)."""
    program = linear(complex=c.complex_a, scale=c.scale)
    to3d = {1: lambda t: t.reshape(1, 1, -1), 2: lambda t: t.unsqueeze(1), 3: lambda t: t}[a.dim()]
    a3, x3 = to3d(a), to3d(x)
    s0 = None if h0 is None else h0.reshape(a3.shape[0], a3.shape[1], 1)
    if not c.complex_x:
        out, last = reference(program, {"a": a3, "x": x3}, initial_state=s0)
    else:
        re_s0 = im_s0 = None
        if s0 is not None:
            re_s0, im_s0 = (s0, torch.zeros_like(s0)) if c.complex_a else (s0.real, s0.imag)
        o1, s1 = reference(program, {"a": a3, "x": x3.real}, initial_state=re_s0)
        o2, s2 = reference(program, {"a": a3, "x": x3.imag}, initial_state=im_s0)
        out, last = o1 + 1j * o2, s1 + 1j * s2
    out, last = out.reshape(x.shape), last.reshape(state_shape(c))
    return [out, last] if c.want_state else [out]


def run_op(c: Case, a, x, h0) -> list[torch.Tensor]:
    res = linear_scan(a, x, initial_state=h0, return_final_state=c.want_state, scale=c.scale)
    return list(res) if c.want_state else [res]


@settings(max_examples=15, deadline=None)
@given(c=cases())
def test_matches_oracle(c: Case) -> None:
    got = compare(lambda args: run_op(c, *args), lambda args: ref_scan(c, *args), make_inputs(c), NAMES,
                  dtype=c.dtype, grads=c.dtype == torch.float32, seed=c.seed)
    complex_out = c.complex_a or c.complex_x
    assert got[0].shape == c.shape
    assert got[0].dtype == (torch.complex64 if complex_out else c.dtype)
    if c.want_state:
        assert got[1].shape == state_shape(c)
        assert got[1].dtype == (torch.complex64 if complex_out else torch.float32)


@pytest.mark.parametrize("shape", [(1, 3, 20), (1, 20), (20,)])
def test_varlen(shape: tuple[int, ...]) -> None:
    """Packed sequences equal separate calls; their final states stack along num_seqs."""
    gen = torch.Generator().manual_seed(0)
    a, x = torch.rand(shape, generator=gen).to(DEVICE), randn(*shape, gen=gen).to(DEVICE)
    cu = torch.tensor([0, 4, 5, 20], device=DEVICE)
    lead = shape[1:-1] if len(shape) == 3 else ()
    h0 = randn(3, *lead, gen=gen).to(DEVICE)
    out, last = linear_scan(a, x, initial_state=h0, return_final_state=True, cu_seqlens=cu)
    assert last.shape == (3, *lead)
    for i, (s, e) in enumerate([(0, 4), (4, 5), (5, 20)]):
        sub_a, sub_x = a[..., s:e], x[..., s:e]
        if len(shape) == 1:
            o, f = linear_scan(sub_a, sub_x, initial_state=h0[i].reshape(()), return_final_state=True)
        else:
            o, f = linear_scan(sub_a, sub_x, initial_state=h0[i:i + 1], return_final_state=True)
        assert_close(f"sequence {i}", out[..., s:e], o, 1e-5)
        assert_close(f"state {i}", last[i].reshape(f.shape), f, 1e-5)


def test_accelerated_scan_convention() -> None:
    """``scan(gates, tokens)`` on (B, D, L): h_t = gates_t·h_{t−1} + tokens_t from h_{−1} = 0."""
    gen = torch.Generator().manual_seed(1)
    gates, tokens = torch.rand(2, 3, 17, generator=gen), randn(2, 3, 17, gen=gen)
    out = linear_scan(gates.to(DEVICE), tokens.to(DEVICE)).cpu().double()
    h, want = torch.zeros(2, 3, dtype=torch.float64), []
    for t in range(17):
        h = gates[..., t].double() * h + tokens[..., t].double()
        want.append(h)
    assert_close("out", out, torch.stack(want, -1), 1e-5)


def test_nan_propagates() -> None:
    a, x = torch.full((2, 3, 12), 0.5), torch.ones(2, 3, 12)
    a[0, 1, 4] = float("nan")
    out = linear_scan(a.to(DEVICE), x.to(DEVICE)).cpu()
    assert torch.isnan(out[0, 1, 4:]).all()
    mask = torch.ones_like(out, dtype=torch.bool)
    mask[0, 1, 4:] = False
    assert torch.isfinite(out[mask]).all()
