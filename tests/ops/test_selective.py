"""selective_scan_fn against the float64 oracle and against mamba-ssm's layout conventions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_reference import DEVICE, FWD_TOL, assert_close, compare, crandn, randn, reference

from scancc.backends.registry import get_backend
from scancc.ir import selective
from scancc.ops import selective_scan_fn
from scancc.ops.selective import _as_complex

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@dataclass
class Case:
    batch: int
    dim: int
    dstate: int
    seqlen: int
    groups: int
    b_form: str  # fixed | 3d | 4d
    c_form: str
    complex: bool
    has_D: bool
    has_z: bool
    has_bias: bool
    softplus: bool
    want_state: bool
    has_state: bool
    dtype: torch.dtype
    seed: int


@st.composite
def cases(draw: st.DrawFn) -> Case:
    dim = draw(st.integers(1, 8))
    forms = st.sampled_from(["fixed", "3d", "4d"])
    b_form, c_form = draw(forms), draw(forms)
    # B and C share their group count; a (batch, dstate, seqlen) B/C has one group.
    groups = 1 if "3d" in (b_form, c_form) else draw(st.sampled_from([g for g in (1, 2, 4) if dim % g == 0]))
    return Case(
        batch=draw(st.integers(1, 2)), dim=dim, dstate=draw(st.integers(1, 8)), seqlen=draw(st.integers(1, 40)),
        groups=groups, b_form=b_form, c_form=c_form, complex=draw(st.booleans()),
        has_D=draw(st.booleans()), has_z=draw(st.booleans()), has_bias=draw(st.booleans()),
        softplus=draw(st.booleans()), want_state=draw(st.booleans()), has_state=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.float32, torch.bfloat16])), seed=draw(st.integers(0, 2**16)),
    )


def make_inputs(c: Case) -> list[Optional[torch.Tensor]]:
    """Inputs in mamba-ssm's layout (complex varying B/C interleaved along the last axis)."""
    gen = torch.Generator().manual_seed(c.seed)
    b, d, n, length = c.batch, c.dim, c.dstate, c.seqlen
    u = randn(b, d, length, gen=gen, dtype=c.dtype)
    delta = randn(b, d, length, gen=gen, scale=0.5) if c.softplus else torch.rand(b, d, length, generator=gen) * 0.5
    delta = delta.to(c.dtype)
    A = -torch.exp(randn(d, n, gen=gen, scale=0.5))
    if c.complex:
        A = torch.complex(A, randn(d, n, gen=gen, scale=3.0))

    def bc(form: str) -> torch.Tensor:
        if form == "fixed":
            return crandn(d, n, gen=gen) if c.complex else randn(d, n, gen=gen)
        last = 2 * length if c.complex else length
        shape = (b, n, last) if form == "3d" else (b, c.groups, n, last)
        return randn(*shape, gen=gen, dtype=c.dtype)

    B, C = bc(c.b_form), bc(c.c_form)
    D = randn(d, gen=gen) if c.has_D else None
    z = randn(b, d, length, gen=gen, dtype=c.dtype) if c.has_z else None
    bias = randn(d, gen=gen, scale=0.5) if c.has_bias else None
    h0 = None
    if c.has_state:
        h0 = crandn(b, d, n, gen=gen) if c.complex else randn(b, d, n, gen=gen)
    return [u, delta, A, B, C, D, z, bias, h0]


def to_program_form(name: str, t: Optional[torch.Tensor], complex_: bool, seqlen: int) -> Optional[torch.Tensor]:
    """mamba-ssm layout → the IR's natural form: (B, N, L) gains a group axis; interleaved
    re/im pairs become complex numbers."""
    if t is None or name not in ("B", "C") or t.dim() == 2:
        return t
    if complex_ and not t.is_complex():
        t = torch.view_as_complex(t.unflatten(-1, (seqlen, 2)))
    return t.unsqueeze(1) if t.dim() == 3 else t


def run_reference(c: Case, args, *, cu_seqlens=None) -> list[torch.Tensor]:
    program = selective(complex=c.complex, varying_B=c.b_form != "fixed", varying_C=c.c_form != "fixed",
                        skip=c.has_D, gate=c.has_z, delta_bias=c.has_bias, delta_softplus=c.softplus)
    inputs = {name: to_program_form(name, t, c.complex, c.seqlen) for name, t in zip(NAMES[:-1], args[:-1])}
    out, last = reference(program, inputs, initial_state=args[-1], cu_seqlens=cu_seqlens)
    return [out, last] if c.want_state else [out]


def run_op(c: Case, args, *, cu_seqlens=None) -> list[torch.Tensor]:
    u, delta, A, B, C, D, z, bias, h0 = args
    res = selective_scan_fn(u, delta, A, B, C, D, z, bias, c.softplus, c.want_state, initial_state=h0,
                            cu_seqlens=cu_seqlens)
    if not c.want_state:
        assert isinstance(res, torch.Tensor)
        return [res]
    out, last = res
    assert last.dtype == (torch.complex64 if c.complex else torch.float32)
    return [out, last]


@settings(max_examples=12, deadline=None)
@given(c=cases())
def test_matches_oracle(c: Case) -> None:
    got = compare(lambda a: run_op(c, a), lambda a: run_reference(c, a), make_inputs(c), NAMES, dtype=c.dtype,
                  grads=c.dtype == torch.float32, seed=c.seed)
    assert got[0].dtype == c.dtype and got[0].shape == (c.batch, c.dim, c.seqlen)


@pytest.mark.parametrize("complex_", [False, True])
def test_varlen_matches_oracle(complex_: bool) -> None:
    c = Case(batch=1, dim=4, dstate=3, seqlen=23, groups=2, b_form="4d", c_form="4d", complex=complex_, has_D=True,
             has_z=True, has_bias=True, softplus=True, want_state=True, has_state=True, dtype=torch.float32, seed=3)
    args = make_inputs(c)
    cu = torch.tensor([0, 5, 6, 17, 23], dtype=torch.int32)
    gen = torch.Generator().manual_seed(1)
    args[-1] = crandn(4, 4, 3, gen=gen) if complex_ else randn(4, 4, 3, gen=gen)  # one state row per sequence
    compare(lambda a: run_op(c, a, cu_seqlens=cu.to(DEVICE)), lambda a: run_reference(c, a, cu_seqlens=cu),
            args, NAMES, dtype=c.dtype)


def test_varlen_equals_separate_calls() -> None:
    """Packed sequences never interact: each equals its own unpacked call."""
    gen = torch.Generator().manual_seed(0)
    d, n, lengths = 3, 4, (7, 1, 12)
    total = sum(lengths)
    u, delta = randn(1, d, total, gen=gen), randn(1, d, total, gen=gen)
    A, B, C = -torch.rand(d, n, generator=gen) - 0.1, randn(1, n, total, gen=gen), randn(1, n, total, gen=gen)
    h0 = randn(len(lengths), d, n, gen=gen)
    cu = torch.tensor([0, 7, 8, 20], dtype=torch.int64, device=DEVICE)
    args = [t.to(DEVICE) for t in (u, delta, A, B, C)]
    out, last = selective_scan_fn(*args, delta_softplus=True, return_last_state=True, initial_state=h0.to(DEVICE),
                                  cu_seqlens=cu)
    start = 0
    for i, length in enumerate(lengths):
        sl = slice(start, start + length)
        o, s = selective_scan_fn(args[0][..., sl], args[1][..., sl], args[2], args[3][..., sl], args[4][..., sl],
                                 delta_softplus=True, return_last_state=True, initial_state=h0[i:i + 1].to(DEVICE))
        assert_close(f"sequence {i}", out[..., sl], o, 1e-5)
        assert_close(f"state {i}", last[i:i + 1], s, 1e-5)
        start += length


# -- mamba-ssm conventions ---------------------------------------------------------------------
def mamba_style_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba-ssm's documented semantics, written directly in float64 (independent of the IR)."""
    u, delta = u.double(), delta.double()
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(torch.complex128 if A.is_complex() else torch.float64)
    batch, dim, seqlen = u.shape

    def prep(M: torch.Tensor) -> torch.Tensor:  # → (batch, dim, N, L) or (dim, N)
        if M.dim() == 2:
            return M.to(A.dtype)
        M = M.double()
        if A.is_complex():
            M = torch.view_as_complex(M.unflatten(-1, (seqlen, 2)).contiguous())
        if M.dim() == 3:
            M = M[:, None]
        return M.repeat_interleave(dim // M.shape[1], dim=1)

    B, C = prep(B), prep(C)
    h = torch.zeros(batch, dim, A.shape[1], dtype=A.dtype)
    ys = []
    for t in range(seqlen):
        Bt = B if B.dim() == 2 else B[..., t]
        Ct = C if C.dim() == 2 else C[..., t]
        h = torch.exp(delta[..., t, None] * A) * h + delta[..., t, None] * Bt * u[..., t, None]
        y = (h * Ct).sum(-1)
        ys.append(2 * y.real if y.is_complex() else y)
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


@pytest.mark.parametrize("layout", ["bnl", "bgnl", "dn"])
@pytest.mark.parametrize("complex_", [False, True])
def test_mamba_layouts(layout: str, complex_: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    b, d, n, length, g = 2, 4, 3, 9, 2
    u, delta, z = randn(b, d, length, gen=gen), randn(b, d, length, gen=gen), randn(b, d, length, gen=gen)
    A = -torch.rand(d, n, generator=gen) - 0.2
    if complex_:
        A = torch.complex(A, randn(d, n, gen=gen))
    last = 2 * length if complex_ else length
    shape = {"bnl": (b, n, last), "bgnl": (b, g, n, last), "dn": (d, n)}[layout]
    B = (crandn if complex_ and layout == "dn" else randn)(*shape, gen=gen)
    C = (crandn if complex_ and layout == "dn" else randn)(*shape, gen=gen)
    D, bias = randn(d, gen=gen), randn(d, gen=gen)
    out, state = selective_scan_fn(*(t.to(DEVICE) for t in (u, delta, A, B, C, D, z, bias)), True, True)
    ref, ref_state = mamba_style_reference(u, delta, A, B, C, D, z, bias, True)
    assert_close("out", out, ref, FWD_TOL[torch.float32])
    assert_close("last_state", state, ref_state, FWD_TOL[torch.float32])


def test_interleaved_b_is_viewed_without_copy() -> None:
    B = torch.randn(2, 3, 2 * 5)
    view = _as_complex(B)
    assert view.shape == (2, 3, 5) and view.dtype == torch.complex64
    assert view.untyped_storage().data_ptr() == B.untyped_storage().data_ptr()
    assert torch.equal(view.real, B[..., 0::2]) and torch.equal(view.imag, B[..., 1::2])


def test_complex_b_given_directly_equals_interleaved() -> None:
    gen = torch.Generator().manual_seed(2)
    b, d, n, length = 1, 2, 2, 6
    u, delta = randn(b, d, length, gen=gen), randn(b, d, length, gen=gen)
    A = torch.complex(-torch.rand(d, n, generator=gen), randn(d, n, gen=gen))
    Bi, Ci = randn(b, 1, n, 2 * length, gen=gen), randn(b, 1, n, 2 * length, gen=gen)
    dev = [t.to(DEVICE) for t in (u, delta, A)]
    out1 = selective_scan_fn(*dev, Bi.to(DEVICE), Ci.to(DEVICE), delta_softplus=True)
    out2 = selective_scan_fn(*dev, _as_complex(Bi).to(DEVICE), _as_complex(Ci).to(DEVICE), delta_softplus=True)
    assert torch.equal(out1, out2)


def test_non_contiguous_inputs() -> None:
    """Transposed or strided inputs give the same result as contiguous ones."""
    gen = torch.Generator().manual_seed(4)
    b, d, n, length = 2, 3, 4, 8
    u = randn(b, length, d, gen=gen).transpose(1, 2)
    delta = randn(b, d, 2 * length, gen=gen)[..., ::2]
    A = -torch.rand(d, n, generator=gen)
    B, C = randn(b, length, n, gen=gen).transpose(1, 2), randn(b, n, length, gen=gen)
    dev = [t.to(DEVICE) for t in (u, delta, A, B, C)]
    out = selective_scan_fn(*dev, delta_softplus=True)
    ref = selective_scan_fn(*(t.contiguous() for t in dev), delta_softplus=True)
    assert torch.equal(out, ref)


BACKENDS_HERE = ["triton"] + (["tvm"] if DEVICE == "cpu" and get_backend("tvm").available() else [])


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("poison, where, first_step", [("u", (1, 2, 5), 5), ("delta", (1, 2, 5), 5),
                                                       ("A", (2, 1), 0)])
def test_nan_propagates(backend: str, poison: str, where: tuple[int, ...], first_step: int) -> None:
    """A NaN in the input, the step or the decay poisons its channel from that step on, and
    nothing else (the TVM kernels' clamped exp keeps NaN too)."""
    gen = torch.Generator().manual_seed(5)
    b, d, n, length = 2, 3, 4, 16
    tensors = {"u": randn(b, d, length, gen=gen), "delta": randn(b, d, length, gen=gen),
               "A": -torch.rand(d, n, generator=gen), "B": randn(b, n, length, gen=gen),
               "C": randn(b, n, length, gen=gen)}
    tensors[poison][where] = float("nan")
    out, last = selective_scan_fn(*(tensors[k].to(DEVICE) for k in ("u", "delta", "A", "B", "C")),
                                  delta_softplus=True, return_last_state=True, backend=backend)
    out, last = out.cpu(), last.cpu()
    poisoned = torch.zeros_like(out, dtype=torch.bool)
    batches = slice(None) if poison == "A" else where[0]
    poisoned[batches, 2, first_step:] = True
    assert torch.isnan(out[poisoned]).all()
    state = last[batches, 2, where[1]] if poison == "A" else last[batches, 2]  # A[d, n]: one state entry
    assert torch.isnan(state).all()
    assert torch.isfinite(out[~poisoned]).all()
