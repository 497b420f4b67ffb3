"""``scancc.ops.selective_state_update`` against the float64 oracle (step mode)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scancc.ir import selective
from scancc.oracle import rel_l2, sequential, tolerance
from scancc.ops import selective_scan_fn, selective_state_update

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Case:
    """One call's arguments in either layout (``heads is None``: Mamba-1)."""

    state: torch.Tensor
    x: torch.Tensor
    dt: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: Optional[torch.Tensor]
    z: Optional[torch.Tensor]
    dt_bias: Optional[torch.Tensor]
    softplus: bool
    idx: Optional[torch.Tensor]

    def call(self) -> torch.Tensor:
        return selective_state_update(self.state, self.x, self.dt, self.A, self.B, self.C, D=self.D, z=self.z,
                                      dt_bias=self.dt_bias, dt_softplus=self.softplus,
                                      state_batch_indices=self.idx)


def make_case(seed: int, *, mamba2: bool, batch: int, heads: int, dim: int, dstate: int, groups: int,
              has_d: bool, has_z: bool, has_bias: bool, softplus: bool, tied: bool, indexed: bool,
              dtype: torch.dtype) -> Case:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0, dt: torch.dtype = dtype) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(dt)

    lead = (heads, dim) if mamba2 else (dim,)
    rows = batch + 2 if indexed else batch
    state = rnd(rows, *lead, dstate, dt=torch.float32)
    x = rnd(batch, *lead)
    if mamba2 and tied:
        A = (-torch.rand(heads, generator=g) - 0.1)[:, None, None].expand(heads, dim, dstate)
        dt = rnd(batch, heads, scale=0.5)[:, :, None].expand(batch, heads, dim)
        dt_bias = rnd(heads, scale=0.5, dt=torch.float32)[:, None].expand(heads, dim) if has_bias else None
    else:
        A = -torch.rand(*lead, dstate, generator=g) - 0.1
        dt = rnd(batch, *lead, scale=0.5)
        dt_bias = rnd(*lead, scale=0.5, dt=torch.float32) if has_bias else None
    if not softplus:
        dt = dt.abs()
        dt_bias = None if dt_bias is None else dt_bias.abs()
    bc = (batch, groups, dstate) if (mamba2 or groups > 1) else (batch, dstate)
    B, C = rnd(*bc), rnd(*bc)
    D = rnd(*lead, dt=torch.float32) if has_d else None
    z = rnd(batch, *lead) if has_z else None
    idx = None
    if indexed:
        perm = torch.randperm(rows, generator=g)[:batch]
        idx = torch.where(torch.rand(batch, generator=g) < 0.3, torch.full_like(perm, -1), perm)
    return Case(state, x, dt, A, B, C, D, z, dt_bias, softplus, idx)


def reference(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, new_state)`` from the oracle's step mode, in the case's layout (float64)."""
    batch = case.x.shape[0]
    dstate = case.state.shape[-1]
    flat = case.x.reshape(batch, -1)
    channels = flat.shape[1]
    B = case.B if case.B.dim() == 3 else case.B[:, None]
    C = case.C if case.C.dim() == 3 else case.C[:, None]
    program = selective(skip=case.D is not None, gate=case.z is not None, delta_bias=case.dt_bias is not None,
                        delta_softplus=case.softplus).as_step()
    idx = torch.arange(batch) if case.idx is None else case.idx.long()
    rows = idx.clamp(min=0)
    inputs = {"u": flat, "delta": case.dt.reshape(batch, channels), "A": case.A.reshape(channels, dstate),
              "B": B, "C": C, "D": None if case.D is None else case.D.reshape(channels),
              "z": None if case.z is None else case.z.reshape(batch, channels),
              "delta_bias": None if case.dt_bias is None else case.dt_bias.reshape(channels)}
    inputs = {k: v.double() for k, v in inputs.items() if v is not None}
    h0 = case.state[rows].reshape(batch, channels, dstate).double()
    out, h1 = sequential(program, inputs, initial_state=h0)
    keep = idx >= 0
    out = torch.where(keep[:, None], out, 0.0).reshape(case.x.shape)
    new_state = case.state.double().clone()
    new_state[rows[keep]] = h1[keep].reshape((-1,) + tuple(case.state.shape[1:]))
    return out, new_state


def check(case: Case) -> None:
    before = case.state.clone()
    ref_out, ref_state = reference(case)
    out = case.call()
    assert out.shape == case.x.shape and out.dtype == case.x.dtype
    assert not torch.isnan(out).any()
    tol = tolerance(case.x.dtype)
    assert rel_l2(out, ref_out) <= tol
    if case.idx is None:
        assert rel_l2(case.state, ref_state) <= tol
    else:
        touched = torch.zeros(case.state.shape[0], dtype=torch.bool)
        touched[case.idx[case.idx >= 0].long()] = True
        assert torch.equal(case.state[~touched], before[~touched])
        if touched.any():
            assert rel_l2(case.state[touched], ref_state[touched]) <= tol


@st.composite
def cases(draw: st.DrawFn) -> Case:
    mamba2 = draw(st.booleans())
    heads = draw(st.integers(1, 4)) if mamba2 else 1
    dim = draw(st.integers(1, 6))
    groups = draw(st.sampled_from([g for g in (1, 2, 4) if (heads if mamba2 else dim) % g == 0]))
    return make_case(draw(st.integers(0, 2**16)), mamba2=mamba2, batch=draw(st.integers(1, 3)), heads=heads,
                     dim=dim, dstate=draw(st.integers(1, 9)), groups=groups, has_d=draw(st.booleans()),
                     has_z=draw(st.booleans()), has_bias=draw(st.booleans()), softplus=draw(st.booleans()),
                     tied=mamba2 and draw(st.booleans()), indexed=draw(st.booleans()),
                     dtype=DTYPES[draw(st.sampled_from(sorted(DTYPES)))])


@settings(max_examples=15, deadline=None)
@given(cases())
def test_matches_oracle(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("mamba2, tied", [(False, False), (True, False), (True, True)])
def test_every_optional_argument(mamba2: bool, tied: bool) -> None:
    for flags in [(False, False, False, False), (True, True, True, True), (True, False, True, False),
                  (False, True, False, True)]:
        has_d, has_z, has_bias, softplus = flags
        check(make_case(7, mamba2=mamba2, batch=2, heads=2, dim=3, dstate=4, groups=2 if mamba2 else 1,
                        has_d=has_d, has_z=has_z, has_bias=has_bias, softplus=softplus, tied=tied, indexed=False,
                        dtype=torch.float32))


def test_tied_head_detected_from_strides() -> None:
    from scancc.backends.triton_step import tied_head

    case = make_case(1, mamba2=True, batch=2, heads=3, dim=4, dstate=5, groups=1, has_d=True, has_z=False,
                     has_bias=True, softplus=True, tied=True, indexed=False, dtype=torch.float32)
    assert tied_head(case.A, case.dt, case.dt_bias)
    assert not tied_head(case.A.contiguous(), case.dt, case.dt_bias)
    assert not tied_head(case.A, case.dt.contiguous(), case.dt_bias)
    check(case)


def test_padding_rows_are_skipped() -> None:
    case = make_case(3, mamba2=True, batch=3, heads=2, dim=3, dstate=4, groups=1, has_d=True, has_z=True,
                     has_bias=True, softplus=True, tied=False, indexed=True, dtype=torch.float32)
    case.idx = torch.tensor([4, -1, 0], dtype=torch.int32)
    check(case)
    out = make_case(3, mamba2=True, batch=3, heads=2, dim=3, dstate=4, groups=1, has_d=True, has_z=True,
                    has_bias=True, softplus=True, tied=False, indexed=True, dtype=torch.float32)
    out.idx = torch.tensor([4, -1, 0], dtype=torch.int32)
    assert torch.equal(out.call()[1], torch.zeros(2, 3))


def test_steps_equal_selective_scan() -> None:
    """L decode steps from a zero state equal one selective scan over L tokens (Mamba-1 layout)."""
    g = torch.Generator().manual_seed(0)
    batch, dim, dstate, groups, length = 2, 4, 3, 2, 5
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.randn(batch, dim, length, generator=g) * 0.5
    A = -torch.rand(dim, dstate, generator=g) - 0.1
    B = torch.randn(batch, groups, dstate, length, generator=g)
    C = torch.randn(batch, groups, dstate, length, generator=g)
    D = torch.randn(dim, generator=g)
    z = torch.randn(batch, dim, length, generator=g)
    bias = torch.randn(dim, generator=g) * 0.5
    ref, last = selective_scan_fn(u, delta, A, B, C, D, z, bias, delta_softplus=True, return_last_state=True)
    state = torch.zeros(batch, dim, dstate)
    outs = [selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D=D, z=z[..., t],
                                   dt_bias=bias, dt_softplus=True) for t in range(length)]
    assert rel_l2(torch.stack(outs, -1), ref) <= tolerance(torch.float32)
    assert rel_l2(state, last) <= tolerance(torch.float32)


def test_bf16_state_keeps_its_dtype() -> None:
    case = make_case(5, mamba2=True, batch=2, heads=2, dim=3, dstate=4, groups=1, has_d=True, has_z=True,
                     has_bias=True, softplus=True, tied=False, indexed=False, dtype=torch.bfloat16)
    case.state = case.state.to(torch.bfloat16)
    ref_out, ref_state = reference(case)
    out = case.call()
    assert case.state.dtype == torch.bfloat16
    assert rel_l2(out, ref_out) <= tolerance(torch.bfloat16)
    assert rel_l2(case.state, ref_state) <= tolerance(torch.bfloat16)


@pytest.mark.parametrize("mamba2", [False, True])
def test_torch_compile_traces_the_op(mamba2: bool) -> None:
    """fullgraph through AOT autograd's functionalization: the in-place update of ``state``
    (a view of it in the grouped Mamba-1 layout) reaches the caller's tensor."""
    case = make_case(4, mamba2=mamba2, batch=3, heads=2, dim=4, dstate=4, groups=2, has_d=True, has_z=True,
                     has_bias=True, softplus=True, tied=False, indexed=False, dtype=torch.float16)
    case.idx = torch.tensor([2, -1, 0])
    ref_out, ref_state = reference(case)
    fn = torch.compile(selective_state_update, fullgraph=True, backend="aot_eager")
    out = fn(case.state, case.x, case.dt, case.A, case.B, case.C, case.D, case.z, case.dt_bias, True, case.idx)
    assert rel_l2(out, ref_out) <= tolerance(torch.float16)
    assert rel_l2(case.state, ref_state) <= tolerance(torch.float16)


@pytest.mark.parametrize("preset", ["selective", "ssd", "ssd_clamped"])
def test_compiled_step_program_forward(preset: str) -> None:
    """``scancc.compile(program.as_step())`` on Triton: one token from a given state, as the oracle."""
    import scancc
    from scancc import ir
    from scancc.oracle import random_inputs, random_state

    program = ir.ssd(dt_limit=(0.2, 0.4)) if preset == "ssd_clamped" else getattr(ir, preset)()
    program = program.as_step()
    compiled = scancc.compile(program, "triton")
    import numpy as np

    rng = np.random.default_rng(0)
    sizes = dict(batch=2, dim=4, dstate=3, groups=2, heads=4, headdim=3)
    inputs = random_inputs(program, rng, **sizes)
    state = random_state(program, rng, inputs=inputs)
    torch_inputs = {k: torch.as_tensor(v) for k, v in inputs.items() if v is not None}
    fwd = compiled.forward({k: v.float() for k, v in torch_inputs.items()},
                           initial_state=torch.as_tensor(state).float(), return_final_state=True)
    ref_out, ref_state = sequential(program, torch_inputs, initial_state=torch.as_tensor(state))
    assert rel_l2(fwd.out, ref_out) <= tolerance(torch.float32)
    assert rel_l2(fwd.final_state, ref_state) <= tolerance(torch.float32)


def _good() -> dict:
    return dict(state=torch.zeros(2, 4, 3), x=torch.zeros(2, 4), dt=torch.zeros(2, 4), A=torch.zeros(4, 3),
                B=torch.zeros(2, 3), C=torch.zeros(2, 3))


@pytest.mark.parametrize("change, error, match", [
    (dict(x=torch.zeros(2, 4, dtype=torch.float64)), TypeError, "x: expected dtype"),
    (dict(x=torch.zeros(2)), ValueError, "x: expected"),
    (dict(state=torch.zeros(2, 5, 3)), ValueError, "state: expected"),
    (dict(state=torch.zeros(3, 4, 3)), ValueError, "state_batch_indices"),
    (dict(dt=torch.zeros(2, 5)), ValueError, "dt: expected"),
    (dict(A=torch.zeros(4, 2)), ValueError, "A: expected"),
    (dict(B=torch.zeros(2, 3, 3)), ValueError, "groups dividing dim"),
    (dict(C=torch.zeros(2, 2)), ValueError, "C: expected"),
    (dict(D=torch.zeros(3)), ValueError, "D: expected"),
    (dict(dt_bias=torch.zeros(4, 1)), ValueError, "dt_bias: expected"),
    (dict(z=torch.zeros(2, 4, dtype=torch.int32)), TypeError, "z: expected dtype"),
    (dict(state_batch_indices=torch.zeros(2)), TypeError, "state_batch_indices: expected dtype"),
    (dict(state_batch_indices=torch.zeros(3, dtype=torch.int32)), ValueError, "state_batch_indices: expected"),
    (dict(dt_softplus=1), TypeError, "dt_softplus: expected a bool"),
    (dict(A=[1.0]), TypeError, "A: expected a torch.Tensor"),
])
def test_bad_inputs(change: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        selective_state_update(**{**_good(), **change})


def test_bad_mamba2_groups() -> None:
    args = dict(state=torch.zeros(2, 3, 4, 5), x=torch.zeros(2, 3, 4), dt=torch.zeros(2, 3, 4),
                A=torch.zeros(3, 4, 5), B=torch.zeros(2, 2, 5), C=torch.zeros(2, 2, 5))
    with pytest.raises(ValueError, match="nheads % groups"):
        selective_state_update(**args)
    with pytest.raises(ValueError, match="B: expected"):
        selective_state_update(**{**args, "B": torch.zeros(2, 5)})


@pytest.mark.gpu
def test_mamba2_decode_size_on_gpu() -> None:
    batch, heads, headdim, dstate = 64, 80, 64, 128
    case = make_case(0, mamba2=True, batch=batch, heads=heads, dim=headdim, dstate=dstate, groups=1, has_d=True,
                     has_z=True, has_bias=True, softplus=True, tied=True, indexed=True, dtype=torch.bfloat16)
    for name in ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias", "idx"):
        setattr(case, name, getattr(case, name).cuda())
    ref_out, ref_state = reference(Case(**{k: (v.cpu() if isinstance(v, torch.Tensor) else v)
                                          for k, v in vars(case).items()}))
    before = case.state.clone()
    out = case.call()
    torch.cuda.synchronize()
    assert rel_l2(out.cpu(), ref_out) <= tolerance(torch.bfloat16)
    touched = torch.zeros(case.state.shape[0], dtype=torch.bool)
    touched[case.idx[case.idx >= 0].long().cpu()] = True
    assert rel_l2(case.state.cpu()[touched], ref_state[touched]) <= tolerance(torch.bfloat16)
    assert torch.equal(case.state.cpu()[~touched], before.cpu()[~touched])


def test_strided_state_is_updated_in_place() -> None:
    """A non-contiguous state (dstate-major cache, every other row) is read and written through
    its strides, and nothing outside the view changes."""
    case = make_case(6, mamba2=True, batch=2, heads=2, dim=3, dstate=5, groups=1, has_d=True, has_z=False,
                     has_bias=True, softplus=True, tied=False, indexed=False, dtype=torch.float32)
    cache = torch.randn(4, 2, 5, 3)
    view = cache[::2].transpose(-1, -2)
    view.copy_(case.state)
    case.state = view
    spare = cache[1::2].clone()
    check(case)
    assert case.state.data_ptr() == cache.data_ptr()
    assert torch.equal(cache[1::2], spare)


def _indexed_mamba2(rows: int = 3) -> dict:
    g = torch.Generator().manual_seed(7)
    return dict(state=torch.randn(rows, 2, 4, 4, generator=g), x=torch.randn(2, 2, 4, generator=g),
                dt=torch.rand(2, 2, 4, generator=g), A=-torch.rand(2, 4, 4, generator=g),
                B=torch.randn(2, 1, 4, generator=g), C=torch.randn(2, 1, 4, generator=g))


@pytest.mark.parametrize("bad", [3, 4, 10**6])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("mamba1", [False, True])
def test_out_of_range_state_batch_indices_are_padding(bad: int, dtype: torch.dtype, mamba1: bool) -> None:
    """An index >= state.shape[0] reads and writes no state (as a negative one), never outside it."""
    args = _indexed_mamba2()
    if mamba1:
        args = dict(state=args["state"][:, 0], x=args["x"][:, 0], dt=args["dt"][:, 0], A=args["A"][0],
                    B=args["B"][:, 0], C=args["C"][:, 0])
    state = args.pop("state")
    want_state, got_state = state.clone(), state.clone()
    want = selective_state_update(want_state, **args, state_batch_indices=torch.tensor([-1, 0], dtype=dtype))
    got = selective_state_update(got_state, **args, state_batch_indices=torch.tensor([bad, 0], dtype=dtype))
    assert torch.equal(got, want) and not got[0].any()
    assert torch.equal(got_state, want_state)


def test_strided_state_batch_indices() -> None:
    """A non-contiguous index tensor is read by its values, not by its storage."""
    args = _indexed_mamba2()
    state = args.pop("state")
    want_state, got_state = state.clone(), state.clone()
    want = selective_state_update(want_state, **args, state_batch_indices=torch.tensor([2, 0], dtype=torch.int32))
    strided = torch.tensor([2, 9, 0, 9], dtype=torch.int32)[::2]
    got = selective_state_update(got_state, **args, state_batch_indices=strided)
    assert torch.equal(got, want)
    assert torch.equal(got_state, want_state)
