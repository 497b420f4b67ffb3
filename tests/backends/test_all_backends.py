"""One oracle suite for every backend: forward and backward against the float64 oracle.

The cases come from the capability query (:mod:`scancc.backends.capabilities`): every
registered backend × every program of the feature matrix whose forward it lowers, with the
backend's default schedule. A backend runs here when its runtime can run on this machine:
Triton on a GPU or under its interpreter, TVM on the CPU (``llvm``), CUDA on a GPU only
(those cases are marked ``gpu``). Hypothesis draws the sizes (odd lengths, length 1, several
groups), an initial state or none, and the activations' dtype; every buffer a kernel should
write starts as NaN (``SCANCC_POISON`` and each backend module's ``_empty``), so unwritten
elements fail. Gradients of every float input and of the initial state are compared with
fp64 ``torch.autograd`` through the oracle.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from scancc import compiler
from scancc.backends.capabilities import feature_programs, query
from scancc.backends.registry import get_backend, known_backends
from scancc.ir import Program
from scancc.oracle import random_inputs, random_state, rel_l2, sequential, tolerance

HAS_CUDA = torch.cuda.is_available()
GPU_ONLY = {"cuda"}
LOW_PRECISION_FAMILIES = ("linear", "selective", "ssd")


def _device(backend: str) -> str:
    return "cuda" if HAS_CUDA and backend in ("triton", "cuda") else "cpu"


def _runs_here(backend: str) -> Optional[str]:
    """None when ``backend`` can run on this machine, else why not."""
    impl = get_backend(backend)
    if backend in GPU_ONLY and not HAS_CUDA:
        return "needs a CUDA GPU"
    if not impl.available():
        return f"the {backend} runtime is not installed"
    if backend == "triton" and not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton without a GPU needs TRITON_INTERPRET=1"
    return None


def _cases() -> list[Any]:
    cases = []
    for backend in known_backends():
        for label, program in feature_programs():
            impl = get_backend(backend)
            schedule = impl.default_schedule(program)
            cap = query(backend, program, schedule.algorithm, label)
            if not cap.forward:
                continue
            marks = [pytest.mark.gpu] if backend in GPU_ONLY else []
            cases.append(pytest.param(backend, label, program, cap.backward, marks=marks, id=f"{backend}-{label}"))
    return cases


CASES = _cases()


def _poison_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN-fill the buffers of every loaded backend module that allocates through ``_empty``."""
    def poisoned(shape: tuple[int, ...], *, device: Any, dtype: torch.dtype) -> torch.Tensor:
        return torch.full(shape, float("nan"), device=device, dtype=dtype)

    for name, module in list(sys.modules.items()):
        if name.startswith("scancc.backends.") and callable(getattr(module, "_empty", None)):
            monkeypatch.setattr(module, "_empty", poisoned)


def _torch(program: Program, arrays: dict[str, np.ndarray], dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    """Kernel inputs: complex64 / float32, the sequence tensors in ``dtype``."""
    seq = {s.name for s in program.tensors() if "seqlen" in s.dims}
    out = {}
    for name, value in arrays.items():
        t = torch.from_numpy(value)
        if t.is_complex():
            out[name] = t.to(device, torch.complex64)
        else:
            out[name] = t.to(device, dtype if name in seq else torch.float32)
    return out


def _state(value: Any, device: str) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: _state(v, device) for k, v in value.items()}
    t = torch.from_numpy(value)
    return t.to(device, torch.complex64 if t.is_complex() else torch.float32)


def _pieces(value: Any) -> dict[str, Any]:
    """A state as a dict of pieces (``{"": tensor}`` for a plain state)."""
    return dict(value) if isinstance(value, dict) else {"": value}


def _close(got: torch.Tensor, ref: torch.Tensor, tol: float) -> bool:
    """rel-L2 within ``tol``; an exactly zero reference (e.g. dA with L = 1 and no initial
    state) needs an absolute error below ``tol`` instead."""
    if not bool(ref.detach().abs().sum()):
        return float(got.detach().abs().max().cpu()) <= tol
    return rel_l2(got, ref) <= tol


def _sizes(data: st.DataObject, program: Program) -> dict[str, int]:
    groups = data.draw(st.sampled_from([1, 2]), "groups")
    return {"batch": data.draw(st.integers(1, 2), "batch"), "seqlen": data.draw(st.sampled_from([1, 5, 12, 19]), "L"),
            "dim": 4, "heads": 4, "headdim": 4, "dstate": 4, "groups": groups}


@pytest.mark.parametrize(("backend", "label", "program", "has_backward"), CASES)
@settings(max_examples=4, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(data=st.data())
def test_matches_the_oracle(backend: str, label: str, program: Program, has_backward: bool,
                            data: st.DataObject) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("SCANCC_POISON", "1")
        _check(backend, program, has_backward, data, monkeypatch)


def _check(backend: str, program: Program, has_backward: bool, data: st.DataObject,
           monkeypatch: pytest.MonkeyPatch) -> None:
    why_not = _runs_here(backend)
    if why_not:
        pytest.skip(why_not)
    device = _device(backend)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), "seed"))
    dtype = torch.float32
    if program.family in LOW_PRECISION_FAMILIES and not program.state.complex:
        dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16]), "dtype")
    arrays = random_inputs(program, rng, **_sizes(data, program))
    inputs = _torch(program, arrays, dtype, device)
    # the oracle sees exactly the (rounded) values the kernel sees
    arrays = {k: v.detach().cpu().to(torch.complex128 if v.is_complex() else torch.float64).numpy()
              for k, v in inputs.items()}
    # Mamba-3 states are dicts ({"ssm", "angle", "k", "x"}); the others one array
    h0 = random_state(program, rng, inputs=arrays) if data.draw(st.booleans(), "initial_state") else None

    kernel = compiler.compile(program, backend=backend)
    _poison_modules(monkeypatch)
    chunked = kernel.schedule.algorithm not in ("sequential", "step")
    tol = tolerance(str(dtype).removeprefix("torch."), chunked=chunked, tf32=device == "cuda" and chunked)

    leaves = {k: torch.from_numpy(v).requires_grad_(True) for k, v in arrays.items()}
    h0_leaf = None
    if h0 is not None:
        h0_leaf = {k: torch.from_numpy(v).requires_grad_(True) for k, v in _pieces(h0).items()}
        h0_leaf = h0_leaf if isinstance(h0, dict) else h0_leaf[""]
    ref, ref_final = sequential(program, leaves, initial_state=h0_leaf, return_final_state=True)

    h0_t = _state(h0, device)
    fwd = kernel.forward(inputs, initial_state=h0_t, return_final_state=True, save_for_backward=has_backward)
    assert fwd.out.shape == tuple(ref.shape) and fwd.out.dtype == (torch.complex64 if ref.is_complex() else dtype)
    assert rel_l2(fwd.out, ref.detach()) <= tol, "out"
    got_final = _pieces(fwd.final_state)
    for key, value in _pieces(ref_final).items():
        if key != "angle":  # angles compare modulo 2π; they reach the outputs and gradients
            assert rel_l2(got_final[key], value.detach()) <= max(tol, 1e-4), f"final state {key!r}"
    if not has_backward:
        return

    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    g_final = {k: torch.randn(v.shape, dtype=v.dtype, generator=gen) for k, v in _pieces(ref_final).items()
               if k != "angle"}
    g_out = torch.randn(ref.shape, dtype=ref.dtype, generator=gen)
    torch.autograd.backward([ref, *(_pieces(ref_final)[k] for k in g_final)], [g_out, *g_final.values()])
    g_final_t = {k: v.to(device, got_final[k].dtype) for k, v in g_final.items()}
    grads = kernel.backward(fwd, inputs, g_out.to(device, fwd.out.dtype),
                            g_final_t[""] if "" in g_final_t else g_final_t, initial_state=h0_t)
    grad_tol = 10 * tol if dtype == torch.float32 else 3 * tol
    for name, leaf in leaves.items():
        got = grads.get(name)
        assert got is not None, f"no gradient for {name!r}"
        assert got.shape == leaf.shape, name
        assert _close(got, leaf.grad, grad_tol), f"gradient of {name!r}"
    if h0_leaf is not None:
        got_state = _pieces(grads["initial_state"])
        for key, leaf in _pieces(h0_leaf).items():
            assert _close(got_state[key], leaf.grad, grad_tol), f"gradient of the initial state {key!r}"


def test_every_runnable_backend_has_cases() -> None:
    backends = {p.values[0] for p in CASES}
    for name in known_backends():
        if _runs_here(name) is None:
            assert name in backends, f"backend {name!r} runs here but lowers no program of the feature matrix"


def _emit_cases() -> list[Any]:
    from scancc.ir import PRESETS

    cases = []
    for backend in known_backends():
        impl = get_backend(backend)
        for name, factory in PRESETS.items():
            program = factory()
            if query(backend, program, impl.default_schedule(program).algorithm).forward:
                cases.append(pytest.param(backend, name, id=f"{backend}-{name}"))
    return cases


@pytest.mark.parametrize(("backend", "preset"), _emit_cases())
def test_emit_works_where_the_forward_is_supported(backend: str, preset: str, capsys: Any) -> None:
    """``scancc emit PRESET --backend B`` prints the generated source (no runtime or GPU needed)."""
    from scancc.cli import main

    assert main(["emit", preset, "--backend", backend]) == 0
    source = capsys.readouterr().out
    assert len(source.splitlines()) > 10
