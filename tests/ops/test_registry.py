"""The generic custom-op pair: opcheck, gradcheck, fake kernels and torch.compile."""

from __future__ import annotations

import pytest
import torch
from ops_reference import DEVICE, assert_close

from scancc.ir import linear, lti, selective
from scancc.ops import linear_scan, lti_scan, selective_scan_fn
from scancc.ops.registry import scan, scan_backward


def gen_(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def selective_case(complex_: bool = False):
    """``(program_json, names, tensors, initial_state)`` for a small selective scan."""
    g = gen_(1)
    b, d, n, length = 1, 2, 3, 5
    u, delta, z = (torch.randn(b, d, length, generator=g) for _ in range(3))
    A = -torch.rand(d, n, generator=g) - 0.1
    B, C = torch.randn(b, 1, n, length, generator=g), torch.randn(b, 1, n, length, generator=g)
    h0 = torch.randn(b, d, n, generator=g)
    if complex_:
        A = torch.complex(A, torch.randn(d, n, generator=g))
        B, C, h0 = B.to(torch.complex64), C.to(torch.complex64), h0.to(torch.complex64)
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g)
    program = selective(complex=complex_).to_json()
    names = "u,delta,A,B,C,D,z,delta_bias"
    tensors = [t.to(DEVICE) for t in (u, delta, A, B, C, D, z, bias)]
    return program, names, tensors, h0.to(DEVICE)


@pytest.mark.parametrize("complex_, with_state", [(False, False), (False, True), (True, True)])
def test_opcheck_scan(complex_: bool, with_state: bool) -> None:
    """Schema, fake kernel, autograd registration and AOT dispatch; with a state the final
    state is returned too."""
    program, names, tensors, h0 = selective_case(complex_)
    tensors = [t.requires_grad_() for t in tensors]
    state = h0.requires_grad_() if with_state else None
    torch.library.opcheck(scan, (program, "", "", names, tensors, state, None, with_state))


def test_opcheck_scan_varlen_and_backward() -> None:
    program = linear().to_json()
    g = gen_(2)
    a, x = torch.rand(1, 2, 9, generator=g).to(DEVICE), torch.randn(1, 2, 9, generator=g).to(DEVICE)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32, device=DEVICE)
    h0 = torch.randn(2, 2, 1, generator=g).to(DEVICE)
    torch.library.opcheck(scan, (program, "", "", "a,x", [a, x], h0, cu, True))
    grad_out, grad_final = torch.randn(1, 2, 9, generator=g).to(DEVICE), torch.randn(2, 2, 1, generator=g).to(DEVICE)
    torch.library.opcheck(scan_backward, (program, "", "", "a,x", [a, x], h0, cu, grad_out, grad_final))


@pytest.mark.filterwarnings("ignore:Input #")
def test_gradcheck_selective() -> None:
    """Finite differences in float32 (the ops take no float64): loose, but independent of any reference."""
    program, names, tensors, h0 = selective_case()
    tensors = [t.requires_grad_() for t in tensors]

    def fn(*args):
        out, final = scan(program, "", "", names, list(args[:-1]), args[-1], None, True)
        return out, final

    # nondet_tol: gradients of group-shared B/C may be summed with atomics in any order.
    assert torch.autograd.gradcheck(fn, (*tensors, h0.requires_grad_()), eps=1e-2, atol=5e-3, rtol=5e-3,
                                    nondet_tol=1e-5, fast_mode=True)


@pytest.mark.filterwarnings("ignore:Input #")
def test_gradcheck_linear_complex() -> None:
    g = gen_(3)
    a = torch.polar(0.5 + 0.4 * torch.rand(1, 2, 6, generator=g), torch.rand(1, 2, 6, generator=g) * 6)
    x = torch.randn(1, 2, 6, generator=g, dtype=torch.complex64)
    h0 = torch.randn(1, 2, generator=g, dtype=torch.complex64)
    args = tuple(t.to(DEVICE).requires_grad_() for t in (a, x, h0))

    def fn(a, x, h0):
        return linear_scan(a, x, initial_state=h0, return_final_state=True)

    assert torch.autograd.gradcheck(fn, args, eps=1e-2, atol=5e-3, rtol=5e-3, fast_mode=True)


def fake_cases():
    g = gen_(4)
    u = torch.randn(1, 4, 7, generator=g, dtype=torch.bfloat16)
    A = torch.complex(-torch.rand(4, 3, generator=g), torch.randn(4, 3, generator=g))
    Bv = torch.randn(1, 2, 3, 7, generator=g, dtype=torch.complex64)
    cu = torch.tensor([0, 3, 7])
    yield selective(complex=True, varying_C=False, skip=False, gate=False, delta_bias=False), "u,delta,A,B,C", \
        [u, u, A, Bv, A], None, cu
    a, x = torch.polar(torch.rand(3, 2, 7, generator=g), torch.rand(3, 2, 7, generator=g)), torch.randn(3, 2, 7)
    yield linear(complex=True), "a,x", [a, x], torch.zeros(3, 2, 1, dtype=torch.complex64), None
    yield lti(discretization="bilinear", complex=False), "u,delta,A,B,C", \
        [u, torch.rand(4), -torch.rand(4, 5), torch.rand(4, 5), torch.rand(4, 5)], None, None


@pytest.mark.parametrize("want", [False, True])
def test_fake_kernels_match_eager(want: bool) -> None:
    """The fake kernels give the shapes and dtypes the real op gives."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for program, names, tensors, state, cu in fake_cases():
        args = (program.to_json(), "", "", names, [t.to(DEVICE) for t in tensors],
                None if state is None else state.to(DEVICE), None if cu is None else cu.to(DEVICE), want)
        real = scan(*args)
        mode = FakeTensorMode()
        fake_args = tuple([mode.from_tensor(t) for t in a] if isinstance(a, list) else
                          mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        with mode:
            fake = scan(*fake_args)
        assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real], program.name


class TinyMamba(torch.nn.Module):
    """A toy block: projections around a selective scan and a gated linear scan."""

    def __init__(self, dim: int = 4, dstate: int = 3) -> None:
        super().__init__()
        g = gen_(5)
        self.proj = torch.nn.Linear(dim, 2 * dim + 2 * dstate)
        self.A_log = torch.nn.Parameter(torch.randn(dim, dstate, generator=g) * 0.3)
        self.D = torch.nn.Parameter(torch.randn(dim, generator=g))
        self.bias = torch.nn.Parameter(torch.randn(dim, generator=g) * 0.1)
        self.dim, self.dstate = dim, dstate

    def forward(self, x: torch.Tensor, h0: torch.Tensor):
        d, n = self.dim, self.dstate
        p = self.proj(x).transpose(1, 2)  # (batch, 2d + 2n, seqlen)
        u, delta, B, C = torch.split(p, [d, d, n, n], dim=1)
        y, last = selective_scan_fn(u, delta, -torch.exp(self.A_log), B, C, self.D, u, self.bias, True, True,
                                    initial_state=h0)
        gated = linear_scan(torch.sigmoid(delta), y, scale="one_minus_a")
        return gated, last


def _check_compiled(backend: str) -> None:
    torch.manual_seed(0)
    model = TinyMamba().to(DEVICE)
    x = torch.randn(2, 6, 4, device=DEVICE)
    h0 = torch.randn(2, 4, 3, device=DEVICE, requires_grad=True)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    results = []
    for fn in (model, compiled):
        model.zero_grad()
        h0.grad = None
        out, last = fn(x, h0)
        (out.square().sum() + last.sum()).backward()
        results.append([out, last, h0.grad.clone()] + [p.grad.clone() for p in model.parameters()])
    for i, (e, c) in enumerate(zip(*results)):
        assert_close(f"result {i}", c, e, 1e-5)


def test_compile_fullgraph_traces_every_op() -> None:
    """fullgraph tracing (no graph breaks) of all three ops, real and complex, via aot_eager."""

    cu = torch.tensor([0, 2, 5], dtype=torch.int32, device=DEVICE)

    def fn(u, delta, A, Bi, Ci, a, x, lam, Bl):
        y1, s1 = selective_scan_fn(u, delta, A, Bi, Ci, delta_softplus=True, return_last_state=True)
        y2 = linear_scan(a, x)
        y3 = lti_scan(u, delta[0, :, 0].abs(), lam, Bl, Bl)
        y4, s4 = linear_scan(delta.sigmoid(), u, cu_seqlens=cu, return_final_state=True)  # no .tolist() traced
        return y1.sum() + s1.abs().sum() + y2.abs().sum() + y3.sum() + y4.sum() + s4.sum()

    g = gen_(6)
    u, delta = torch.randn(1, 2, 5, generator=g), torch.randn(1, 2, 5, generator=g)
    A = torch.complex(-torch.rand(2, 3, generator=g), torch.randn(2, 3, generator=g))
    Bi, Ci = torch.randn(1, 3, 10, generator=g), torch.randn(1, 3, 10, generator=g)
    a = torch.polar(torch.rand(2, 5, generator=g), torch.randn(2, 5, generator=g))
    x = torch.randn(2, 5, generator=g, dtype=torch.complex64)
    Bl = torch.randn(2, 3, generator=g, dtype=torch.complex64)
    args = [t.to(DEVICE).requires_grad_() for t in (u, delta, A, Bi, Ci, a, x, A, Bl)]
    eager = fn(*args)
    grads = torch.autograd.grad(eager, args)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)(*args)
    cgrads = torch.autograd.grad(compiled, args)
    assert_close("loss", compiled, eager, 1e-6)
    for i, (c, e) in enumerate(zip(cgrads, grads)):
        assert_close(f"grad {i}", c, e, 1e-6)


@pytest.mark.slow
def test_compile_inductor_matches_eager() -> None:
    """torch.compile(fullgraph=True) with inductor, forward and backward (first compile ~30 s)."""
    _check_compiled("inductor")


def test_gradient_through_final_state_only() -> None:
    """A loss on the final state alone still reaches every input (out's gradient is zero)."""
    g = gen_(8)
    a, x = torch.rand(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    h0 = torch.randn(2, 3, generator=g)
    ours = [t.to(DEVICE).requires_grad_() for t in (a, x, h0)]
    _, last = linear_scan(ours[0], ours[1], initial_state=ours[2], return_final_state=True)
    last.sum().backward()
    refs = [t.detach().double().requires_grad_() for t in (a, x, h0)]
    h = refs[2]
    for t in range(7):
        h = refs[0][..., t] * h + refs[1][..., t]
    h.sum().backward()
    for name, o, r in zip("a x h0".split(), ours, refs):
        assert_close(f"grad {name}", o.grad, r.grad, 1e-5)


# -- run_program's argument checks ---------------------------------------------------------------
def _run_args(**over: object) -> dict:
    g = gen_(2)
    inputs = dict(u=torch.randn(1, 2, 6, generator=g), delta=torch.randn(1, 2, 6, generator=g),
                  A=-torch.rand(2, 3, generator=g), B=torch.randn(1, 1, 3, 6, generator=g),
                  C=torch.randn(1, 1, 3, 6, generator=g))
    args: dict = dict(program_json=selective().to_json(), inputs=inputs)
    for key, value in over.items():
        if key in inputs or key == "Dx":
            args["inputs"] = {**args["inputs"], key: value}
        else:
            args[key] = value
    return args


RUN_PROGRAM_BAD = [
    ("program not a str", TypeError, r"program_json: expected a str", dict(program_json=None)),
    ("program not json", ValueError, r"program_json: expected Program.to_json\(\)", dict(program_json="{nope")),
    ("inputs a list", TypeError, r"inputs: expected a mapping", dict(inputs=[torch.zeros(1)])),
    ("unknown input", ValueError, r"inputs: expected names from .*unknown 'Dx'", dict(Dx=torch.zeros(2))),
    ("missing main input", ValueError, r"inputs\['u'\]: required by the program", dict(u=None)),
    ("input not a tensor", TypeError, r"inputs\['A'\]: expected a torch.Tensor, got list", dict(A=[[-1.0]])),
    ("integer input", TypeError, r"inputs\['delta'\]: expected dtype float32, float16 or bfloat16, got torch.int32",
     dict(delta=torch.ones(1, 2, 6, dtype=torch.int32))),
    ("float64 input", TypeError, r"inputs\['u'\]: expected dtype .*got torch.float64",
     dict(u=torch.zeros(1, 2, 6, dtype=torch.float64))),
    ("input on another device", ValueError, r"inputs\['B'\] is on meta but inputs\['u'\] is on cpu",
     dict(B=torch.zeros(1, 1, 3, 6, device="meta"))),
    ("empty state axis", ValueError, r"inputs\['A'\]: expected \(dim, dstate\) with every size >= 1",
     dict(A=torch.zeros(2, 0))),
    ("flag not a bool", TypeError, r"return_final_state: expected a bool", dict(return_final_state=1)),
    ("schedule not a str", TypeError, r"schedule: expected a str", dict(schedule=None)),
    ("cu_seqlens end", ValueError, r"cu_seqlens: expected to start at 0 and end at seqlen=6",
     dict(cu_seqlens=torch.tensor([0, 2, 5]))),
    ("cu_seqlens list", TypeError, r"cu_seqlens: expected a torch.Tensor", dict(cu_seqlens=[0, 6])),
    ("initial_state dtype", TypeError, r"initial_state: expected dtype float32",
     dict(initial_state=torch.zeros(1, 2, 3, dtype=torch.int32))),
    ("initial_state rows", ValueError, r"initial_state: expected \(num_seqs=2, dim=2, dstate=3\), got \(1, 2, 3\)",
     dict(cu_seqlens=torch.tensor([0, 2, 6]), initial_state=torch.zeros(1, 2, 3))),
]


@pytest.mark.parametrize("case", RUN_PROGRAM_BAD, ids=[c[0] for c in RUN_PROGRAM_BAD])
def test_run_program_bad_arguments(case: tuple) -> None:
    from scancc.ops import run_program

    _, exc, match, over = case
    args = _run_args(**over)
    with pytest.raises(exc, match=match):
        run_program(args.pop("program_json"), args.pop("inputs"), **args)
