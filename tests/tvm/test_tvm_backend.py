"""The TVM backend against the float64 oracle: forward, adjoint, varlen, decode, CUDA codegen.

Kernels are compiled once per (program, state size) in the session (the backend caches
modules in-process; the disk cache goes to a temporary ``SCANCC_CACHE_DIR``). Outputs are
allocated NaN-filled (``SCANCC_POISON``), so an element a kernel does not write fails.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

tvm = pytest.importorskip("tvm", reason="apache-tvm (>= 0.27) is not installed; the TVM backend is not tested")

from scancc import ir  # noqa: E402
from scancc.backends.tvm import TVMBackend, TVMCompiledScan, device_source, export  # noqa: E402
from scancc.backends.tvm_runtime import cache_dir, clear_memory_cache  # noqa: E402
from scancc.oracle import random_inputs, rel_l2, sequential  # noqa: E402

TOL = 1e-5  # fp32, sequential schedule (recurrences.md)
DSTATE = 4

DIAGONAL = {
    "selective": ir.selective(),
    "selective_complex": ir.selective(complex=True),
    "selective_fixed_bc": ir.selective(varying_B=False, varying_C=False, gate=False, delta_bias=False),
    "selective_plain": ir.selective(gate=False, skip=False, delta_softplus=False),
    "linear": ir.linear(),
    "linear_complex": ir.linear(complex=True),
    "hgrn": ir.hgrn(),
    "rglru_complex": ir.linear(complex=True, scale="sqrt_one_minus_a2", name="rglru_c"),
    "lti_zoh": ir.lti(),
    "lti_bilinear_real": ir.lti(discretization="bilinear", complex=False),
    "lru": ir.lru(),
}
MATRIX = {
    "ssd": ir.ssd(),
    "ssd_clamped": ir.ssd(dt_limit=(0.1, 0.6), gate=False),
    "gla": ir.gla(),
    "mamba3": ir.mamba3(),
    "mamba3_mimo": ir.mamba3(rank=2, pairing="halves"),
    "mamba3_plain": ir.mamba3(rotary=False, skip=False, gate=False),
}

_compiled: dict[str, TVMCompiledScan] = {}


@pytest.fixture(autouse=True)
def _poison_and_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("SCANCC_POISON", "1")
    monkeypatch.setenv("SCANCC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "scancc-cache"))


def compiled(program: ir.Program) -> TVMCompiledScan:
    key = program.to_json()
    if key not in _compiled:
        backend = TVMBackend()
        schedule = backend.default_schedule(program)
        _compiled[key] = backend.build(program, schedule, backend.lower(program, schedule))
    return _compiled[key]


def as32(inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in inputs.items():
        t = torch.from_numpy(value)
        out[name] = t.to(torch.complex64) if t.is_complex() else t.to(torch.float32)
    return out


def state32(state: Any) -> Any:
    if isinstance(state, dict):
        return {k: torch.from_numpy(v).float() for k, v in state.items()}
    t = torch.from_numpy(state)
    return t.to(torch.complex64) if t.is_complex() else t.float()


def sizes(program: ir.Program, draw: st.DataObject) -> dict[str, int]:
    layout_groups = [1, 2]
    return {
        "batch": draw.draw(st.integers(1, 2), "batch"),
        "seqlen": draw.draw(st.sampled_from([1, 7, 16, 37]), "seqlen"),
        "dim": 4, "heads": 4, "headdim": 4, "dstate": DSTATE,
        "groups": draw.draw(st.sampled_from(layout_groups), "groups"),
    }


@pytest.mark.parametrize("name", list(DIAGONAL) + list(MATRIX))
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_forward_matches_oracle(name: str, data: st.DataObject) -> None:
    program = {**DIAGONAL, **MATRIX}[name]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), "seed"))
    inputs = random_inputs(program, rng, **sizes(program, data))
    with_state = data.draw(st.booleans(), "initial_state")
    h0 = None
    if with_state:
        from scancc.oracle import random_state

        h0 = random_state(program, rng, inputs=inputs)
    ref, ref_final = sequential(program, inputs, initial_state=h0, return_final_state=True)
    got = compiled(program).forward(as32(inputs), initial_state=None if h0 is None else state32(h0),
                                    return_final_state=True)
    assert got.out.shape == tuple(ref.shape)
    assert rel_l2(got.out, ref) <= TOL
    assert rel_l2(got.final_state, ref_final) <= 10 * TOL if name.startswith("mamba3") else TOL


@pytest.mark.parametrize("name", list(DIAGONAL))
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_backward_matches_autograd(name: str, data: st.DataObject) -> None:
    program = DIAGONAL[name]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), "seed"))
    inputs = random_inputs(program, rng, **sizes(program, data))
    from scancc.oracle import random_state

    h0 = random_state(program, rng, inputs=inputs)
    leaves = {k: torch.from_numpy(v).requires_grad_(True) for k, v in inputs.items()}
    h0_leaf = torch.from_numpy(h0).requires_grad_(True)
    out, final = sequential(program, leaves, initial_state=h0_leaf, return_final_state=True)
    g_out = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    g_final = torch.randn(final.shape, dtype=final.dtype, generator=torch.Generator().manual_seed(2))
    torch.autograd.backward([out, final], [g_out, g_final])

    kernel = compiled(program)
    x32, h32 = as32(inputs), state32(h0)
    fwd = kernel.forward(x32, initial_state=h32, return_final_state=True, save_for_backward=True)
    cast = (lambda t: t.to(torch.complex64)) if out.is_complex() else (lambda t: t.float())
    grads = kernel.backward(fwd, x32, cast(g_out), state32(g_final.detach().numpy()), initial_state=h32)
    for key, leaf in leaves.items():
        assert grads[key] is not None, key
        assert grads[key].shape == leaf.shape, key
        assert rel_l2(grads[key], leaf.grad) <= 2 * TOL, key
    assert rel_l2(grads["initial_state"], h0_leaf.grad) <= 2 * TOL


@pytest.mark.parametrize("name", ["selective", "lti_zoh", "ssd", "mamba3"])
def test_cu_seqlens_runs_each_sequence_on_its_own(name: str) -> None:
    program = {**DIAGONAL, **MATRIX}[name]
    rng = np.random.default_rng(3)
    inputs = random_inputs(program, rng, batch=1, seqlen=40, dim=4, heads=4, headdim=4, dstate=DSTATE)
    cu = np.array([0, 5, 5, 23, 40])
    ref, ref_final = sequential(program, inputs, cu_seqlens=cu, return_final_state=True)
    got = compiled(program).forward(as32(inputs), cu_seqlens=torch.from_numpy(cu).int(), return_final_state=True)
    assert rel_l2(got.out, ref) <= TOL
    assert rel_l2(got.final_state, ref_final) <= 10 * TOL


def test_cu_seqlens_backward() -> None:
    program = DIAGONAL["selective"]
    rng = np.random.default_rng(4)
    inputs = random_inputs(program, rng, batch=1, seqlen=33, dim=4, dstate=DSTATE)
    cu = torch.tensor([0, 17, 33])
    leaves = {k: torch.from_numpy(v).requires_grad_(True) for k, v in inputs.items()}
    out = sequential(program, leaves, cu_seqlens=cu.numpy())
    g_out = torch.randn(out.shape, dtype=out.dtype)
    out.backward(g_out)
    kernel = compiled(program)
    x32 = as32(inputs)
    fwd = kernel.forward(x32, cu_seqlens=cu, save_for_backward=True)
    grads = kernel.backward(fwd, x32, g_out.float(), cu_seqlens=cu)
    for key, leaf in leaves.items():
        assert rel_l2(grads[key], leaf.grad) <= 2 * TOL, key


@pytest.mark.parametrize("name", ["selective", "linear_complex", "ssd", "mamba3"])
def test_step_mode_updates_the_state_in_place(name: str) -> None:
    program = {**DIAGONAL, **MATRIX}[name].as_step()
    rng = np.random.default_rng(5)
    inputs = random_inputs(program.replace(mode="sequence"), rng, batch=2, seqlen=1, dim=4, heads=4, headdim=4,
                           dstate=DSTATE)
    seq_dims = {s.name: s.dims for s in program.replace(mode="sequence").tensors()}
    step_inputs = {k: (np.take(v, 0, axis=seq_dims[k].index("seqlen")) if "seqlen" in seq_dims[k] else v)
                   for k, v in inputs.items()}
    from scancc.oracle import random_state

    h0 = random_state(program, rng, inputs=step_inputs)
    ref_out, ref_state = sequential(program, step_inputs, initial_state=h0)
    state = state32(h0)
    got = compiled(program).forward(as32(step_inputs), initial_state=state)
    assert rel_l2(got.out, ref_out) <= TOL
    assert rel_l2(state, ref_state) <= 10 * TOL


def test_fp16_inputs_come_back_in_fp16() -> None:
    program = DIAGONAL["selective"]
    inputs = random_inputs(program, np.random.default_rng(6), batch=1, seqlen=16, dim=4, dstate=DSTATE)
    half = {k: torch.from_numpy(v).half() for k, v in inputs.items()}
    got = compiled(program).forward(half)
    ref = sequential(program, {k: v.double().numpy() for k, v in half.items()})
    assert got.out.dtype == torch.float16
    assert rel_l2(got.out, ref) <= 2e-2


@pytest.mark.parametrize("name", ["selective", "linear_complex", "lti_zoh", "ssd", "mamba3_mimo"])
def test_generates_cuda(name: str) -> None:
    program = {**DIAGONAL, **MATRIX}[name]
    source = device_source(program, "cuda -arch=sm_90", dstate=16, headdim=16)
    assert "__global__" in source
    assert "extern \"C\"" in source


def test_export_and_runtime_load(tmp_path: Any) -> None:
    program = DIAGONAL["linear"]
    lib = export(program, "llvm", tmp_path / "linear", dstate=1)
    meta = json.loads(lib.with_suffix(".json").read_text())
    assert meta["program"]["name"] == "linear_scan" and meta["sizes"]["DSTATE"] == 1
    assert meta["functions"]["forward"][:2] == ["a", "x"]
    module = tvm.runtime.load_module(str(lib))
    a = torch.full((1, 1, 3), 0.5)
    x = torch.ones(1, 1, 3)
    out = torch.full((1, 1, 3), math.nan)
    states = torch.empty(1, 1, 1, 1)
    module["forward"](a, x, torch.tensor([0, 3], dtype=torch.int32), torch.zeros(1, 1, 1), out, states, 0, 0)
    assert torch.allclose(out, torch.tensor([[[1.0, 1.5, 1.75]]]))


def test_modules_are_cached_on_disk() -> None:
    program = DIAGONAL["hgrn"]
    inputs = as32(random_inputs(program, np.random.default_rng(7), batch=1, seqlen=5, dim=2))
    backend = TVMBackend()
    schedule = backend.default_schedule(program)
    source = backend.lower(program, schedule)
    # a module another test built in this process (under another cache dir) must not stand in
    clear_memory_cache()
    first = backend.build(program, schedule, source).forward(inputs).out
    clear_memory_cache()
    files = list(cache_dir().glob("*.so"))
    assert files, "compiled modules are written to $SCANCC_CACHE_DIR"
    fresh = backend.build(program, schedule, source)
    assert torch.equal(fresh.forward(inputs).out, first)


def test_source_is_tvmscript_and_inspectable() -> None:
    backend = TVMBackend()
    program = ir.selective()
    source = backend.lower(program, backend.default_schedule(program))
    assert "@T.prim_func" in source and "def forward" in source and "def backward" in source
    assert "T.parallel" in source


def test_registered_in_the_compiler() -> None:
    import scancc

    kernel = scancc.compile(ir.hgrn(), backend="tvm")
    assert kernel.backend == "tvm"


def test_bad_inputs_raise_clear_errors() -> None:
    program = DIAGONAL["selective"]
    inputs = as32(random_inputs(program, np.random.default_rng(8), batch=1, seqlen=8, dim=4, dstate=DSTATE))
    kernel = compiled(program)
    with pytest.raises(ValueError, match="'delta'"):
        kernel.forward({**inputs, "delta": inputs["delta"][..., :4]})
    with pytest.raises(ValueError, match="'A' is required"):
        kernel.forward({k: v for k, v in inputs.items() if k != "A"})
    with pytest.raises(ValueError, match="save_for_backward"):
        kernel.backward(kernel.forward(inputs), inputs, torch.ones(1, 4, 8))
    with pytest.raises(ValueError, match="cu_seqlens"):
        kernel.forward(inputs, cu_seqlens=torch.tensor([0, 9]))


def test_unsupported_schedules_are_refused() -> None:
    backend = TVMBackend()
    assert not backend.supports(ir.ssd(), ir.Schedule(algorithm="ssd_chunked", chunk=64))
    assert backend.supports(ir.ssd(), backend.default_schedule(ir.ssd()))


def _leaves(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: torch.from_numpy(v).requires_grad_(True) for k, v in value.items()}
    return torch.from_numpy(value).requires_grad_(True)


def _flat(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {"": value}


@pytest.mark.parametrize("name", list(MATRIX))
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_matrix_backward_matches_autograd(name: str, data: st.DataObject) -> None:
    """Gradients of every input and of every piece of the initial state (Mamba-3's dict
    included) against fp64 autograd of the oracle, with packed sequences half the time."""
    from scancc.oracle import random_state

    program = MATRIX[name]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), "seed"))
    packed = data.draw(st.booleans(), "packed")
    shape = sizes(program, data)
    cu = None
    if packed:
        shape.update(batch=1, seqlen=21)
        cu = np.array([0, 6, 6, 19, 21])
    inputs = random_inputs(program, rng, **shape)
    h0 = random_state(program, rng, inputs=inputs, rows=None if cu is None else len(cu) - 1)
    leaves, h0_leaf = _leaves(inputs), _leaves(h0)
    out, final = sequential(program, leaves, initial_state=h0_leaf, return_final_state=True, cu_seqlens=cu)
    gen = torch.Generator().manual_seed(1)
    g_out = torch.randn(out.shape, dtype=out.dtype, generator=gen)
    g_final = {k: torch.randn(v.shape, dtype=v.dtype, generator=gen) for k, v in _flat(final).items()}
    torch.autograd.backward([out, *_flat(final).values()], [g_out, *g_final.values()])

    kernel = compiled(program)
    x32, h32 = as32(inputs), state32(h0)
    g32 = {k: v.float() for k, v in g_final.items()}
    cu_t = None if cu is None else torch.from_numpy(cu).int()
    fwd = kernel.forward(x32, initial_state=h32, cu_seqlens=cu_t, return_final_state=True, save_for_backward=True)
    grads = kernel.backward(fwd, x32, g_out.float(), g32[""] if "" in g32 else g32, initial_state=h32,
                            cu_seqlens=cu_t)
    for key, leaf in leaves.items():
        assert grads[key] is not None and grads[key].shape == leaf.shape, key
        assert rel_l2(grads[key], leaf.grad) <= 2 * TOL, key
    for key, leaf in _flat(h0_leaf).items():
        got = _flat(grads["initial_state"])[key]
        assert got.shape == leaf.shape and rel_l2(got, leaf.grad) <= 2 * TOL, f"initial_state {key}"


def test_matrix_backward_through_the_op_trains_on_cpu() -> None:
    """``run_program`` with the TVM backend: autograd reaches x and the initial state."""
    from scancc.ops import run_program

    program = ir.ssd()
    inputs = as32(random_inputs(program, np.random.default_rng(9), batch=1, seqlen=9, heads=2, headdim=4, dstate=4))
    leaves = {k: v.requires_grad_(True) for k, v in inputs.items()}
    h0 = torch.randn(1, 2, 4, 4, requires_grad=True)
    out, final = run_program(program.to_json(), leaves, initial_state=h0, return_final_state=True, backend="tvm")
    (out.square().sum() + final.sum()).backward()
    ref_leaves = {k: torch.from_numpy(v.detach().double().numpy()).requires_grad_(True) for k, v in inputs.items()}
    h0_ref = h0.detach().double().requires_grad_(True)
    ref, ref_final = sequential(program, ref_leaves, initial_state=h0_ref, return_final_state=True)
    (ref.square().sum() + ref_final.sum()).backward()
    for key in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias"):
        assert rel_l2(leaves[key].grad, ref_leaves[key].grad) <= 1e-4, key
    assert rel_l2(h0.grad, h0_ref.grad) <= 1e-4


def test_exported_library_loads_with_the_runtime_only(tmp_path: Any) -> None:
    import subprocess
    import sys

    lib = export(DIAGONAL["linear"], "llvm", tmp_path / "linear", dstate=1)
    script = (
        "import sys, torch\n"
        "from scancc.backends.tvm_runtime import load_exported\n"
        f"m = load_exported({str(lib)!r})\n"
        "out = torch.zeros(1, 1, 3)\n"
        "m['forward'](torch.full((1, 1, 3), 0.5), torch.ones(1, 1, 3), torch.tensor([0, 3], dtype=torch.int32),"
        " torch.zeros(1, 1, 1), out, torch.empty(1, 1, 1, 1), 0, 0)\n"
        "assert 'tvm' not in sys.modules, 'the runtime-only route must not import tvm'\n"
        "print(out.flatten().tolist())\n"
    )
    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1.0, 1.5, 1.75]"


@pytest.mark.parametrize("name", ["selective", "ssd"])
def test_misaligned_views_are_accepted(name: str) -> None:
    """Contiguous views that do not start on a 64-byte boundary (slices, NumPy memory) are
    copied to aligned memory first: the kernels use aligned vector loads."""
    program = {**DIAGONAL, **MATRIX}[name]
    inputs = random_inputs(program, np.random.default_rng(10), batch=2, seqlen=9, dim=8, heads=4, headdim=4,
                           dstate=16, groups=2)
    shifted = {}
    for key, value in as32(inputs).items():
        flat = torch.cat([torch.zeros(1, dtype=value.dtype), value.flatten()])
        shifted[key] = flat[1:].view(value.shape)
        assert shifted[key].data_ptr() % 64 != 0
    got = compiled(program).forward(shifted)
    assert rel_l2(got.out, sequential(program, inputs)) <= TOL
