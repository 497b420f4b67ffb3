"""Backend selection: explicit ``backend=``, ``$SCANCC_BACKEND``, the per-device default, the
notice and ImportError for missing runtimes, and TVM's zero-copy (DLPack) tensor passing."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch

from scancc import compiler, ir
from scancc.backends.registry import get_backend
from scancc.ops import linear_scan, mamba_chunk_scan_combined, run_program
from scancc.oracle import random_inputs, rel_l2, sequential

HAS_TVM = get_backend("tvm").available()
needs_tvm = pytest.mark.skipif(not HAS_TVM, reason="apache-tvm is not installed")


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(compiler.BACKEND_ENV, raising=False)


@pytest.fixture
def without_tvm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend TVM's runtime is missing (and forget an earlier notice)."""
    monkeypatch.setattr(type(get_backend("tvm")), "available", lambda self: False)
    monkeypatch.setattr(compiler, "_notified", set())


@needs_tvm
def test_default_is_per_device(no_env: None) -> None:
    assert compiler.default_backend("cpu") == "tvm"
    assert compiler.default_backend(torch.device("cpu")) == "tvm"
    assert compiler.default_backend("cuda:0") == "triton"
    assert compiler.default_backend(torch.device("cuda")) == "triton"
    assert compiler.default_backend(None) == "triton"


def test_environment_wins_over_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compiler.BACKEND_ENV, "triton")
    assert compiler.default_backend("cpu") == "triton"
    monkeypatch.setenv(compiler.BACKEND_ENV, "nope")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        compiler.compile(ir.linear(), device="cpu")


def test_cpu_without_tvm_falls_back_to_the_interpreter_once(no_env: None, without_tvm: None) -> None:
    with pytest.warns(compiler.InterpreterNotice, match=r"pip install 'scancc\[tvm\]'"):
        assert compiler.default_backend("cpu") == "triton"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compiler.default_backend("cpu") == "triton"  # the notice is given once


def test_missing_runtime_names_the_extra(without_tvm: None) -> None:
    compiler.clear_cache()
    with pytest.raises(ImportError, match=r"pip install 'scancc\[tvm\]'"):
        compiler.compile(ir.hgrn(), backend="tvm")


def test_bad_backend_arguments_of_the_ops() -> None:
    a, x = torch.rand(1, 2, 5), torch.randn(1, 2, 5)
    with pytest.raises(ValueError, match="backend: unknown backend 'cuda_nope'"):
        linear_scan(a, x, backend="cuda_nope")
    with pytest.raises(TypeError, match="backend must be a backend name"):
        linear_scan(a, x, backend=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="backend must be a backend name"):
        compiler.compile(ir.linear(), backend=3)  # type: ignore[arg-type]


@needs_tvm
@pytest.mark.parametrize("backend", [None, "tvm", "triton"])
def test_ops_run_on_the_chosen_backend(backend: Any, no_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every choice computes the same scan; the automatic one on CPU is TVM."""
    used: list[str] = []
    original = compiler.compile

    def spy(program: Any, backend: Any = None, schedule: Any = None, **kw: Any) -> Any:
        kernel = original(program, backend, schedule, **kw)
        used.append(kernel.backend)
        return kernel

    monkeypatch.setattr(compiler, "compile", spy)
    from scancc.ops import registry

    registry._compiled.cache_clear()
    program = ir.linear()
    inputs = random_inputs(program, np.random.default_rng(0), batch=1, seqlen=7, dim=3)
    a, x = (torch.from_numpy(inputs[k]).float() for k in ("a", "x"))
    out = linear_scan(a, x, backend=backend)
    assert rel_l2(out, sequential(program, inputs)) <= 1e-5
    assert used == [backend or "tvm"]
    registry._compiled.cache_clear()


@needs_tvm
def test_ssd_op_on_cpu_picks_tvm_and_keeps_triton_for_seq_idx(no_env: None) -> None:
    program = ir.ssd(skip=False, gate=False, dt_bias=False, dt_softplus=False)
    inputs = random_inputs(program, np.random.default_rng(1), batch=1, seqlen=20, heads=2, headdim=4, dstate=4)
    t = {k: torch.from_numpy(v).float() for k, v in inputs.items()}
    out = mamba_chunk_scan_combined(t["x"], t["dt"], t["A"], t["B"], t["C"], 16)
    assert rel_l2(out, sequential(program, inputs)) <= 1e-5
    seq_idx = torch.zeros(1, 20, dtype=torch.int32)
    seq_idx[:, 9:] = 1
    # seq_idx is read by the Triton SSD kernels only: the automatic choice takes Triton there
    split = mamba_chunk_scan_combined(t["x"], t["dt"], t["A"], t["B"], t["C"], 16, seq_idx=seq_idx)
    first = sequential(program, {k: (v[:, :9] if v.ndim > 1 else v) for k, v in inputs.items()})
    assert rel_l2(split[:, :9], first) <= 1e-4
    with pytest.raises(ValueError, match="does not take input"):
        mamba_chunk_scan_combined(t["x"], t["dt"], t["A"], t["B"], t["C"], 16, seq_idx=seq_idx, backend="tvm")


@needs_tvm
def test_tvm_reads_and_writes_torch_memory_without_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 contiguous inputs reach the kernel as the caller's tensors (DLPack), and the
    output the kernel writes is the tensor returned, with no copy in between."""
    from scancc.backends import tvm_matrix, tvm_runtime

    program = ir.ssd()
    kernel = compiler.compile(program, backend="tvm")
    inputs = {k: torch.from_numpy(v).float() for k, v in
              random_inputs(program, np.random.default_rng(2), batch=1, seqlen=5, heads=2, headdim=4, dstate=4).items()}
    allocated: list[torch.Tensor] = []
    original_empty = tvm_runtime.empty

    def tracked_empty(shape: tuple[int, ...]) -> torch.Tensor:
        allocated.append(original_empty(shape))
        return allocated[-1]

    monkeypatch.setattr(tvm_matrix, "empty", tracked_empty)
    seen: list[int] = []
    original_module = kernel.module

    def module(meta: Any, functions: Any = None) -> Any:
        compiled = original_module(meta, functions)

        class Spy:
            def __getitem__(self, name: str) -> Any:
                def call(*args: Any) -> Any:
                    seen.extend(a.data_ptr() for a in args if isinstance(a, torch.Tensor))
                    return compiled[name](*args)

                return call

        return Spy()

    monkeypatch.setattr(kernel, "module", module)
    fwd = kernel.forward(inputs, return_final_state=True)
    for name in ("x", "dt", "A", "B", "C", "z"):
        assert inputs[name].data_ptr() in seen, f"input {name!r} was copied before the call"
    assert fwd.out.data_ptr() == allocated[0].data_ptr() and fwd.out.data_ptr() in seen
    assert fwd.final_state.data_ptr() == allocated[1].data_ptr()
    assert torch.isfinite(fwd.out).all()


def test_run_program_passes_the_backend_through() -> None:
    program = ir.linear()
    a, x = torch.rand(1, 2, 6), torch.randn(1, 2, 6)
    out, _ = run_program(program.to_json(), {"a": a, "x": x}, backend="triton")
    ref = sequential(program, {"a": a.double().numpy(), "x": x.double().numpy()})
    assert rel_l2(out, ref) <= 1e-5
