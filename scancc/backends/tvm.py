"""The TVM backend: programs lowered to TVMScript (``tvm.script.tirx``) and ``tvm.compile``.

On this machine kernels are built for ``llvm`` (the host CPU): one task per (sequence,
channel) or (sequence, head) in a ``T.parallel`` loop, time sequential with the state in
registers/stack, vectorised over the state. The same sources, rendered for a GPU target,
compile to CUDA (``thread_binding`` instead of ``T.parallel``).

Source: ``lower()`` returns TVMScript text rendered from ``scancc/templates/tvm/``. The
free names ``DSTATE``/``ODD_DSTATE`` (diagonal) or ``HEADDIM``/``DSTATE``/... (matrix) are
bound when the text is parsed (:mod:`scancc.backends.tvm_runtime`), so each state size
gets its own, fully unrolled/vectorised module.

Gradients: diagonal programs have a fused adjoint kernel (``diag.py.j2``); matrix programs
(SSD, GLA, Mamba-3) differentiate their per-token host pieces with torch and run the
recurrence's adjoint as a TVM kernel (:mod:`scancc.backends.tvm_matrix_grad`). Both on
``llvm`` only.

Precision: the kernels compute in float32. fp16/bf16 inputs are converted to float32 on
entry and the output is cast back to the input's dtype; gradients come back in each
input's dtype. Complex quantities are complex64.

Ahead-of-time route (GPU machines without the TVM compiler): :func:`export` writes
``<path>.so`` (host code + the CUDA module TVM embeds, as source), ``<path>.cubin`` (that
source compiled here with nvcc) and ``<path>.json`` (program, schedule, target, bound sizes,
each function's parameters in call order). On the GPU machine only TVM's runtime is needed — the ``tvm_ffi`` package
and ``libtvm_runtime.so`` + ``libtvm_runtime_cuda.so`` (about 17 MB in all; no LLVM, no
``libtvm_compiler.so``, no ``import tvm``): :func:`scancc.backends.tvm_runtime.load_exported`
loads the two libraries with ``RTLD_GLOBAL`` and calls ``tvm_ffi.load_module``; the
module's ``["forward"]`` takes torch tensors directly (DLPack). Loading with ``tvm_ffi``
alone, without ``libtvm_runtime.so``, crashes: the kernels call its parallel runtime and
workspace allocator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..backends.templating import render
from ..ir import Program, Schedule
from .base import ScanForward
from .tvm_plan import DiagPlan, MatrixPlan, diag_unsupported, matrix_unsupported
from .tvm_runtime import TargetLike, compile_module, normalize_target, target_kind, tvm_available

_ALGORITHMS = ("sequential", "chunked_scan", "step")


def _unsupported(program: Program, schedule: Schedule) -> Optional[str]:
    if schedule.algorithm not in _ALGORITHMS:
        return f"algorithm {schedule.algorithm!r} is not lowered (TVM lowers {', '.join(_ALGORITHMS)})"
    if program.state.shape == "vector":
        return diag_unsupported(program)
    return matrix_unsupported(program)


def _odd_part(n: int) -> int:
    """``n`` divided by the powers of two the reduction tree folds (at most 2**8)."""
    for _ in range(8):
        if n % 2:
            break
        n //= 2
    return n


def diag_meta(plan: DiagPlan, dstate: int) -> dict[str, int]:
    """The names bound when a diagonal source is parsed, for state size ``dstate``."""
    return {"DSTATE": dstate, "ODD_DSTATE": _odd_part(dstate), "SCRATCH": max(plan.tile, dstate)}


def render_source(program: Program, schedule: Schedule, kind: str = "cpu") -> str:
    """TVMScript for ``program``: ``kind`` ``"cpu"`` (T.parallel) or ``"gpu"`` (thread_binding)."""
    reason = _unsupported(program, schedule)
    if reason is not None:
        raise ValueError(f"the TVM backend cannot lower {program.name!r}: {reason}")
    header = (f"# scancc TVM kernel for program {program.name!r} ({program.family}), {kind} flavour\n"
              f"# program hash {program.hash}; schedule {schedule.to_json()}\n")
    if program.state.shape == "vector":
        body = render("tvm/diag.py.j2", plan=DiagPlan.of(program, schedule), gpu=kind == "gpu")
    else:
        body = render("tvm/matrix.py.j2", plan=MatrixPlan.of(program, schedule), gpu=kind == "gpu")
    return header + body


class TVMBackend:
    """Implements :class:`scancc.backends.base.Backend` with Apache TVM (>= 0.27)."""

    name = "tvm"
    extra_inputs: tuple[str, ...] = ()  # inputs beyond program.tensors() it reads (none: no seq_idx)

    def available(self) -> bool:
        return tvm_available()

    def supports(self, program: Program, schedule: Schedule) -> bool:
        return _unsupported(program, schedule) is None

    def default_schedule(self, program: Program) -> Schedule:
        if program.mode == "step":
            return Schedule(algorithm="step", block_l=1, block_d=64)
        return Schedule(algorithm="sequential", block_l=16, block_d=64)

    def lower(self, program: Program, schedule: Schedule) -> str:
        return render_source(program, schedule, "cpu")

    def build(self, program: Program, schedule: Schedule, source: str) -> "TVMCompiledScan":
        if not self.available():
            raise ImportError("the TVM backend needs apache-tvm >= 0.27: pip install 'scancc[tvm]'")
        return TVMCompiledScan(program, schedule, source)


@dataclass
class TVMCompiledScan:
    """A program compiled with TVM for the host CPU; see :class:`scancc.backends.base.CompiledScan`.

    Modules are compiled lazily, one per state size, and cached (process + disk).
    ``mode="step"`` programs take one token: ``initial_state`` is updated in place with the
    new state (and returned as ``final_state`` when asked).
    """

    program: Program
    schedule: Schedule
    source: str
    backend: str = "tvm"
    target: dict[str, Any] = field(default_factory=lambda: normalize_target("llvm"))

    def __post_init__(self) -> None:
        self._seq_program = self.program.replace(mode="sequence") if self.program.mode == "step" else self.program
        if self.program.state.shape == "vector":
            self._plan: Union[DiagPlan, MatrixPlan] = DiagPlan.of(self.program, self.schedule)
        else:
            self._plan = MatrixPlan.of(self.program, self.schedule)

    # -- modules -------------------------------------------------------------------------
    def module(self, meta: Mapping[str, int], functions: Optional[tuple[str, ...]] = None) -> Any:
        """The compiled module for the sizes ``meta``; only ``functions`` of it when given."""
        return compile_module(self.source, meta, self.target, functions=functions)

    def _diag_module(self, dstate: int, function: str) -> Any:
        return self.module(diag_meta(self._plan, dstate), (function,))  # type: ignore[arg-type]

    # -- step mode ------------------------------------------------------------------------
    def _seq_inputs(self, inputs: Mapping[str, Optional[torch.Tensor]]) -> dict[str, Optional[torch.Tensor]]:
        """Step-mode inputs with a seqlen axis of 1 added where the sequence program has one."""
        if self.program.mode != "step":
            return dict(inputs)
        seq_dims = {s.name: s.dims for s in self._seq_program.tensors()}
        out: dict[str, Optional[torch.Tensor]] = {}
        for name, t in inputs.items():
            if t is None or name not in seq_dims or "seqlen" not in seq_dims[name]:
                out[name] = t
                continue
            axis = seq_dims[name].index("seqlen")
            if t.dim() == len(seq_dims[name]) - 1:
                t = t.unsqueeze(axis)
            elif name in ("B", "C") and self.program.layout == "channel" and t.dim() == 2:
                t = t.unsqueeze(-1)  # (batch, dstate) → (batch, dstate, 1)
            out[name] = t
        return out

    # -- forward / backward ------------------------------------------------------------------
    def forward(
        self,
        inputs: Mapping[str, Optional[torch.Tensor]],
        *,
        initial_state: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        return_final_state: bool = False,
        save_for_backward: bool = False,
    ) -> ScanForward:
        if not isinstance(inputs, Mapping):
            raise TypeError(f"inputs must be a mapping of name -> tensor, got {type(inputs).__name__}")
        _check_names(self.program, inputs)
        _check_device(inputs, "cpu", "the TVM llvm build")
        step = self.program.mode == "step"
        if step and cu_seqlens is not None:
            raise ValueError("a step-mode program takes no cu_seqlens")
        seq_inputs = self._seq_inputs(inputs)
        with torch.no_grad():
            if isinstance(self._plan, DiagPlan):
                from .tvm_diag import canonical_inputs, run_forward

                dstate = canonical_inputs(self._seq_program, self._plan, seq_inputs).dstate
                fwd = run_forward(self._diag_module(dstate, "forward"), self._plan, self._seq_program, seq_inputs,
                                  initial_state=initial_state, cu_seqlens=cu_seqlens,
                                  return_final_state=return_final_state or step, save_for_backward=save_for_backward)
            else:
                from .tvm_matrix import run_forward as run_matrix

                fwd = run_matrix(self, self._plan, self._seq_program, seq_inputs, initial_state=initial_state,
                                 cu_seqlens=cu_seqlens, return_final_state=return_final_state or step,
                                 save_for_backward=save_for_backward)
        if step:
            fwd.out = fwd.out.squeeze(2 if self.program.layout == "channel" else 1)
            _update_in_place(initial_state, fwd.final_state)
            if not return_final_state:
                fwd.final_state = None
        return fwd

    def backward(
        self,
        fwd: ScanForward,
        inputs: Mapping[str, Optional[torch.Tensor]],
        grad_out: Optional[torch.Tensor],
        grad_final_state: Optional[torch.Tensor] = None,
        *,
        initial_state: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
    ) -> dict[str, Optional[torch.Tensor]]:
        _check_names(self.program, inputs)
        _check_device(inputs, "cpu", "the TVM llvm build")
        step = self.program.mode == "step"
        seq_inputs = self._seq_inputs(inputs)
        if step and grad_out is not None:
            grad_out = grad_out.unsqueeze(2 if self.program.layout == "channel" else 1)
        with torch.no_grad():
            if isinstance(self._plan, DiagPlan):
                from .tvm_diag import canonical_inputs, run_backward

                dstate = canonical_inputs(self._seq_program, self._plan, seq_inputs).dstate
                grads = run_backward(self._diag_module(dstate, "backward"), self._plan, self._seq_program, fwd,
                                     seq_inputs, grad_out, grad_final_state, initial_state=initial_state,
                                     cu_seqlens=cu_seqlens)
            else:
                from .tvm_matrix_grad import run_backward as run_matrix_backward

                grads = run_matrix_backward(self, self._plan, self._seq_program, seq_inputs, grad_out,
                                            grad_final_state, initial_state=initial_state, cu_seqlens=cu_seqlens)
        if step:
            for name, g in grads.items():
                src = inputs.get(name)
                if isinstance(g, torch.Tensor) and src is not None and g.dim() != src.dim():
                    grads[name] = g.reshape(src.shape)
        return grads


def _check_device(inputs: Mapping[str, Optional[torch.Tensor]], device: str, what: str) -> None:
    for name, t in inputs.items():
        if isinstance(t, torch.Tensor) and t.device.type != device:
            raise ValueError(f"input {name!r} must be on {device} for {what}, got {t.device}")


def _check_names(program: Program, inputs: Mapping[str, Optional[torch.Tensor]]) -> None:
    """Refuse inputs the kernels would silently ignore (e.g. ``seq_idx``: use ``cu_seqlens``)."""
    known = {spec.name for spec in program.tensors()}
    extra = sorted(k for k, v in inputs.items() if v is not None and k not in known)
    if extra:
        raise ValueError(f"the TVM backend does not take input(s) {extra} for program {program.name!r}; "
                         f"its inputs are {sorted(known)} (packed sequences: cu_seqlens)")


def _update_in_place(state: Any, new: Any) -> None:
    """Write a decode step's new state into the caller's state (tensor or dict of tensors)."""
    if state is None or new is None:
        return
    if isinstance(state, torch.Tensor):
        state.copy_((new["ssm"] if isinstance(new, dict) else new).to(state.dtype))
        return
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and key in new:
            value.copy_(new[key].to(value.dtype))


def compile_for(program: Program, target: TargetLike, *, dstate: int = 16, headdim: int = 64,
                schedule: Optional[Schedule] = None) -> tuple[Any, str, dict[str, int]]:
    """``(executable, source, bound sizes)``: ``program`` compiled for ``target`` (any TVM
    target: ``"llvm"``, ``"cuda -arch=sm_90"``, a target dict) with the template flavour
    the target needs. Needs TVM's compiler; no device is needed to compile."""
    backend = TVMBackend()
    if not backend.available():
        raise ImportError("compiling for a target needs apache-tvm >= 0.27 (the compiler, not only the runtime)")
    schedule = schedule or backend.default_schedule(program)
    tgt = normalize_target(target)
    source = render_source(program, schedule, target_kind(tgt))
    if program.state.shape == "vector":
        meta = diag_meta(DiagPlan.of(program, schedule), dstate)
    else:
        from .tvm_matrix import matrix_meta

        meta = matrix_meta(program, dstate, headdim, max(1, dstate // 4) if program.rotary else 0)
    import tvm

    from .tvm_runtime import parse

    return tvm.compile(parse(source, meta), target=tgt), source, meta


def device_source(program: Program, target: TargetLike = "cuda -arch=sm_90", **sizes: int) -> str:
    """The device code (CUDA C for a CUDA target) TVM generates for ``program``."""
    executable, _, _ = compile_for(program, target, **sizes)
    imports = executable.mod.imports
    if not imports:
        raise ValueError(f"target {target!r} produced no device module")
    return imports[0].inspect_source()


def export(program: Program, target: TargetLike, path: Union[str, Path], *, dstate: int = 16,
           headdim: int = 64, schedule: Optional[Schedule] = None) -> Path:
    """Compile ``program`` ahead of time for ``target`` (e.g. ``"cuda -arch=sm_90"``) and write
    ``<path>.so`` + ``<path>.json``; returns the ``.so`` path.

    The kernels are specialised for ``dstate`` (and ``headdim`` for matrix states; Mamba-3's
    rotary uses ``dstate // 4`` angle pairs); the sizes are recorded in the metadata, with
    each function's parameter names in call order. See the module docstring for loading
    the library with TVM's runtime only.
    """
    import tvm

    from .tvm_runtime import parse

    executable, source, meta = compile_for(program, target, dstate=dstate, headdim=headdim, schedule=schedule)
    base = Path(path)
    lib = base.with_suffix(".so")
    lib.parent.mkdir(parents=True, exist_ok=True)
    executable.export_library(str(lib))
    mod = parse(source, meta)
    signature = {gv.name_hint: [p.name for p in func.params] for gv, func in mod.functions.items()}
    tgt = normalize_target(target)
    info = {"program": json.loads(program.to_json()), "schedule": (schedule or TVMBackend().default_schedule(program)).to_dict(),
            "target": tgt, "sizes": meta, "tvm": tvm.__version__, "functions": signature}
    if tgt["kind"] == "cuda":
        info["cuda_binary"] = _export_cubin(executable, tgt, base)
    base.with_suffix(".json").write_text(json.dumps(info, indent=2, sort_keys=True))
    return lib


def _export_cubin(executable: Any, target: Mapping[str, Any], base: Path) -> dict[str, str]:
    """Compile the CUDA module TVM embedded in ``executable`` to ``<base>.cubin`` with nvcc.

    TVM 0.27 embeds CUDA kernels as source and compiles them when the library is loaded,
    through a ``tvm_callback_cuda_compile`` that only the full TVM registers. The cubin
    compiled here is what :func:`scancc.backends.tvm_runtime.load_exported` hands to the
    runtime instead, matched by the source's SHA-256."""
    import hashlib

    import tvm
    from tvm.support.nvcc import compile_cuda

    code = executable.mod.imports[0].inspect_source()
    arch = str(target.get("arch") or "sm_90")
    with tvm.target.Target(dict(target)):  # compile_cuda reads the compute version from the current target
        cubin = compile_cuda(code, target_format="cubin", arch=arch, compiler="nvcc")
    base.with_suffix(".cubin").write_bytes(bytes(cubin))
    return {"file": base.with_suffix(".cubin").name, "arch": arch, "source_sha256": hashlib.sha256(code.encode()).hexdigest()}


class LoadedScan:
    """A library written by :func:`export`, loaded with TVM's runtime only (no ``import tvm``).

    Forward only, for the sizes it was exported with (``.json``'s ``sizes``); tensors on the
    device of its target (``cuda`` or ``cpu``), passed to the kernel by DLPack. Inputs and
    states as for :class:`TVMCompiledScan` (fp16/bf16 inputs are converted to float32 for
    the kernel and the output back). ``runtime_dir`` holds ``libtvm_runtime.so`` (and
    ``libtvm_runtime_cuda.so``); see :func:`scancc.backends.tvm_runtime.load_exported`.
    """

    backend = "tvm"

    def __init__(self, path: Union[str, Path], runtime_dir: Union[str, Path, None] = None) -> None:
        from .tvm_runtime import load_exported

        lib = Path(path).with_suffix(".so")
        info = json.loads(lib.with_suffix(".json").read_text())
        self.program = Program.from_dict(info["program"])
        self.schedule = Schedule.from_dict(info["schedule"])
        self.sizes: dict[str, int] = info["sizes"]
        self.target: dict[str, Any] = info["target"]
        self.device = "cuda" if self.target["kind"] == "cuda" else "cpu"
        self.source = ""
        self._module = load_exported(lib, runtime_dir, cuda=self.device == "cuda")
        if self.program.state.shape == "vector":
            self._plan: Union[DiagPlan, MatrixPlan] = DiagPlan.of(self.program, self.schedule)
        else:
            self._plan = MatrixPlan.of(self.program, self.schedule)

    def module(self, meta: Mapping[str, int], functions: Optional[tuple[str, ...]] = None) -> Any:
        """The loaded module, after checking that ``meta`` (this call's sizes) is what it was built for."""
        for key in ("DSTATE", "HEADDIM", "RANK", "PAIRS_OR_1"):
            if key in meta and key in self.sizes and meta[key] != self.sizes[key]:
                raise ValueError(f"this library was exported for {key} = {self.sizes[key]}, the inputs have "
                                 f"{meta[key]}; export one for these sizes")
        return self._module

    def forward(self, inputs: Mapping[str, Optional[torch.Tensor]], *, initial_state: Any = None,
                cu_seqlens: Optional[torch.Tensor] = None, return_final_state: bool = False) -> ScanForward:
        """As :meth:`TVMCompiledScan.forward` (sequence-mode programs)."""
        _check_names(self.program, inputs)
        _check_device(inputs, self.device, f"this {self.target['kind']} library")
        x = inputs.get("u") if inputs.get("u") is not None else inputs.get("x")
        with torch.no_grad(), torch.device(x.device if x is not None else self.device):
            if isinstance(self._plan, DiagPlan):
                from .tvm_diag import run_forward

                return run_forward(self.module({"DSTATE": self.sizes["DSTATE"]}), self._plan, self.program, inputs,
                                   initial_state=initial_state, cu_seqlens=cu_seqlens,
                                   return_final_state=return_final_state, save_for_backward=False)
            from .tvm_matrix import run_forward as run_matrix

            return run_matrix(self, self._plan, self.program, inputs, initial_state=initial_state,  # type: ignore[arg-type]
                              cu_seqlens=cu_seqlens, return_final_state=return_final_state, save_for_backward=False)
