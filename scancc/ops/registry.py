"""One pair of ``torch.library`` custom ops that runs any compiled program.

``scancc::scan`` (forward) and ``scancc::scan_backward`` take the program as its
canonical JSON string, so a single registration serves every preset: the public ops
(:mod:`scancc.ops.selective`, ...) only validate arguments, build a program and call
:func:`run_program`. torch.compile sees an opaque op with a fake kernel, so models
using scancc trace with ``fullgraph=True``.

Schema (tensors are passed in ``program.tensors()`` order, absent optional ones left
out and the present names listed in ``names``, because a ``None`` inside a tensor list
disables a custom op's autograd)::

    scan(str program, str backend, str schedule, str names, Tensor[] inputs,
         Tensor? initial_state, Tensor? cu_seqlens, bool return_final_state)
        -> (Tensor out, Tensor final_state)
    scan_backward(..., Tensor grad_out, Tensor? grad_final_state) -> Tensor[]

``final_state`` is an empty ``(0,)`` tensor when not asked for. The backward op
*recomputes* the forward with ``save_for_backward=True`` before running the backend's
backward: the forward op then returns only ``out``/``final_state`` (whose shapes the fake
kernel knows), instead of backend-specific checkpoints of unknown shape. The cost is one
extra forward pass per backward, paid only where the ops are traced: in eager mode
:func:`dispatch_scan` runs the implementation directly (no gradient recorded) or through
:class:`_EagerScan`, which keeps the forward's checkpoints for the backward
(:mod:`scancc.fastpath`). Double backward is not supported.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from typing import Iterator, Mapping, Optional, Sequence

import torch

from ..ir import Program, Schedule, TensorSpec
from ..backends.base import ScanForward
from ..fastpath import Memo, eager_mode
from . import checks as ck

DEFAULT_BACKEND = ""
"""The empty name means "choose by device" (:func:`scancc.compiler.default_backend`):
``$SCANCC_BACKEND``, else Triton for CUDA tensors and TVM for CPU tensors when installed."""


@functools.lru_cache(maxsize=None)
def _program(program_json: str) -> Program:
    return Program.from_json(program_json)


@functools.lru_cache(maxsize=None)
def _signature(program_json: str) -> tuple[TensorSpec, ...]:
    return _program(program_json).tensors()


@torch.compiler.assume_constant_result
def input_order(program_json: str) -> str:
    """The names of ``program.tensors()``, comma-separated (a constant under tracing)."""
    return ",".join(spec.name for spec in _signature(program_json))


@functools.lru_cache(maxsize=None)
def _input_names(order: str) -> tuple[str, ...]:
    return tuple(order.split(","))


@functools.lru_cache(maxsize=None)
def _schedule(schedule_json: str) -> Schedule:
    return Schedule.from_dict(json.loads(schedule_json))


@functools.lru_cache(maxsize=None)
def _compiled(program_json: str, backend: str, schedule: Optional[Schedule]):
    from .. import compiler

    return compiler.compile(_program(program_json), backend=backend or None, schedule=schedule)


def compiled(program_json: str, backend: str, schedule_json: str):
    """The :class:`~scancc.backends.base.CompiledScan` for a program, built once and cached
    (``backend`` ``""``: the compiler's default; ``schedule_json`` ``""``: the backend's default)."""
    return _compiled(program_json, backend, _schedule(schedule_json) if schedule_json else None)


def _kernel(program_json: str, backend: str, schedule_json: str, named: Mapping[str, torch.Tensor]):
    """The compiled scan for this call.

    ``backend`` ``""`` chooses by the inputs' device (:func:`auto_backend`). A schedule is
    used when the backend can run it; otherwise it was written for another backend (e.g.
    the chunked SSD schedule ``mamba_chunk_scan_combined`` passes) and, as without one,
    the autotuner's :func:`~scancc.autotune.best_schedule` picks one for these sizes, dtype
    and device (its cache, shipped defaults or the backend default; it tunes only with
    ``SCANCC_AUTOTUNE=1``)."""
    x = _main_input(named)
    # the choice depends on the program, the inputs' shapes, dtype and device, and the environment
    key = (program_json, backend, schedule_json, tuple((k, t.shape) for k, t in named.items()), x.dtype,
           x.device, os.environ.get("SCANCC_BACKEND"), os.environ.get("SCANCC_AUTOTUNE"))
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel, final = _choose_kernel(program_json, backend, schedule_json, named)
        if final:
            if not _KERNELS_REGISTERED:
                _register_kernel_memo()
            _KERNELS.put(key, kernel)
    return kernel


_KERNELS: Memo[object] = Memo(entries=1024)
""":func:`_kernel`'s memo, cleared with the autotuner's (:func:`scancc.autotune.clear_memo`)."""
_KERNELS_REGISTERED = False


def _register_kernel_memo() -> None:
    global _KERNELS_REGISTERED
    from ..autotune.select import register_dependent_memo

    register_dependent_memo(_KERNELS)
    _KERNELS_REGISTERED = True


def _choose_kernel(program_json: str, backend: str, schedule_json: str, named: Mapping[str, torch.Tensor]):
    """:func:`_kernel` without the memo; also whether the choice is final (may be memoised)."""
    x = _main_input(named)
    name = backend or auto_backend(program_json, schedule_json, x.device, tuple(named))
    if schedule_json and _runs(program_json, name, schedule_json):
        return compiled(program_json, name, schedule_json), True
    from .. import autotune

    program = _program(program_json)
    dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.float32
    schedule, final = autotune.choose_schedule(program, name, _bind_dims(program_json, named), device=x.device, dtype=dtype)
    return _compiled(program_json, name, schedule), final


def auto_backend(program_json: str, schedule_json: str, device: torch.device, names: Sequence[str]) -> str:
    """The backend for a call that names none: :func:`scancc.compiler.default_backend` of
    ``device`` when it can lower the program (and takes every input passed, e.g. ``seq_idx``),
    else Triton."""
    from ..compiler import DEFAULT_BACKEND, default_backend

    return _auto_backend(program_json, default_backend(device), DEFAULT_BACKEND, tuple(names))


@functools.lru_cache(maxsize=None)
def _auto_backend(program_json: str, preferred: str, fallback: str, names: tuple[str, ...]) -> str:
    from ..backends.registry import get_backend, known_backends

    if preferred not in known_backends():
        return preferred  # scancc.compile reports the unknown name
    program = _program(program_json)
    extras = set(names) - {spec.name for spec in _signature(program_json)}
    impl = get_backend(preferred)
    takes = set(getattr(impl, "extra_inputs", extras))  # a backend may list the extra inputs it reads
    if extras <= takes and impl.supports(program, impl.default_schedule(program)):
        return preferred
    return fallback


@functools.lru_cache(maxsize=None)
def _runs(program_json: str, backend: str, schedule_json: str) -> bool:
    from ..backends.registry import get_backend, known_backends

    if backend not in known_backends():
        return True  # let the compiler raise its error
    return bool(get_backend(backend).supports(_program(program_json), _schedule(schedule_json)))


def _named(names: str, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = names.split(",") if names else []
    if len(keys) != len(inputs):
        raise ValueError(f"names lists {len(keys)} inputs but {len(inputs)} tensors were given")
    return {k: t.contiguous() for k, t in zip(keys, inputs)}


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,), dtype=torch.float32)


# -- shapes, for the fake kernels -------------------------------------------------------------
def _bind_dims(program_json: str, named: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Sizes of the symbolic dimensions (batch, dim, seqlen, ...) read from the inputs."""
    sizes: dict[str, int] = {}
    for spec in _signature(program_json):
        t = named.get(spec.name)
        if t is None:
            continue
        for dim, size in zip(spec.dims, t.shape):
            sizes.setdefault(dim, size)
    return sizes


def _main_input(named: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return named["u"] if "u" in named else named["x"]


def out_meta(program: Program, named: Mapping[str, torch.Tensor]) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and dtype of ``out``: like ``u``/``x``; complex64 for a complex state read whole."""
    x = _main_input(named)
    complex_out = program.state.complex and program.readout.kind == "state"
    return tuple(x.shape), (torch.complex64 if complex_out else x.dtype)


def state_meta(
    program_json: str, named: Mapping[str, torch.Tensor], cu_seqlens: Optional[torch.Tensor]
) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and dtype of the initial/final state: ``program.state_dims()`` with
    ``batch`` replaced by ``num_seqs`` under ``cu_seqlens``; ``dstate`` is 1 when no
    input carries it (plain scans). float32, or complex64 for a complex state."""
    program = _program(program_json)
    sizes = _bind_dims(program_json, named)
    sizes.setdefault("dstate", 1)
    if cu_seqlens is not None:
        sizes["batch"] = cu_seqlens.shape[0] - 1
    shape = tuple(sizes[d] for d in program.state_dims())
    return shape, (torch.complex64 if program.state.complex else torch.float32)


# -- forward op ----------------------------------------------------------------------------------
def _scan(
    program: str,
    backend: str,
    schedule: str,
    names: str,
    inputs: Sequence[torch.Tensor],
    initial_state: Optional[torch.Tensor],
    cu_seqlens: Optional[torch.Tensor],
    return_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    fwd = _forward(program, backend, schedule, _named(names, inputs), initial_state, cu_seqlens, return_final_state)
    return _outputs(fwd, return_final_state)


def _forward(program: str, backend: str, schedule: str, named: Mapping[str, torch.Tensor],
             initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], return_final_state: bool,
             save_for_backward: bool = False) -> ScanForward:
    """The compiled kernel's forward for one call (``initial_state`` made contiguous)."""
    return _kernel(program, backend, schedule, named).forward(
        named,
        initial_state=None if initial_state is None else initial_state.contiguous(),
        cu_seqlens=cu_seqlens,
        return_final_state=return_final_state,
        save_for_backward=save_for_backward,
    )


def _outputs(fwd: ScanForward, return_final_state: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``scancc::scan``'s outputs: ``out`` and the final state (empty unless asked for), contiguous."""
    final = fwd.final_state if return_final_state else None
    return fwd.out.contiguous(), (_empty(fwd.out) if final is None else final.contiguous())


scan = torch.library.custom_op("scancc::scan", _scan, mutates_args=())


@scan.register_fake
def _scan_fake(program, backend, schedule, names, inputs, initial_state, cu_seqlens, return_final_state):
    prog = _program(program)
    named = dict(zip(names.split(","), inputs))
    shape, dtype = out_meta(prog, named)
    x = _main_input(named)
    out = x.new_empty(shape, dtype=dtype)
    if not return_final_state:
        return out, _empty(x)
    s_shape, s_dtype = state_meta(program, named, cu_seqlens)
    return out, x.new_empty(s_shape, dtype=s_dtype)


@contextlib.contextmanager
def _autograd_inside_op() -> Iterator[None]:
    """Re-enable autograd inside a custom op's implementation.

    torch runs a custom op's implementation below the autograd dispatch keys, so torch
    operations there record no graph even under ``enable_grad``. A backend's backward may
    chain host-side pieces (e.g. the LTI discretization ``Ā, B̄ = f(λ, Δ, B)``) through
    ``torch.autograd``; this un-excludes the autograd keys for the duration of the call.
    """
    keys = torch._C.DispatchKey
    with torch._C._SetExcludeDispatchKeyGuard(keys.AutogradFunctionality, False), \
            torch._C._SetExcludeDispatchKeyGuard(keys.ADInplaceOrView, False), torch.enable_grad():
        yield


# -- backward op ---------------------------------------------------------------------------------
@torch.library.custom_op("scancc::scan_backward", mutates_args=())
def scan_backward(
    program: str,
    backend: str,
    schedule: str,
    names: str,
    inputs: Sequence[torch.Tensor],
    initial_state: Optional[torch.Tensor],
    cu_seqlens: Optional[torch.Tensor],
    grad_out: torch.Tensor,
    grad_final_state: Optional[torch.Tensor],
) -> list[torch.Tensor]:
    """Gradients of every present input (in ``names`` order), then of ``initial_state`` if given."""
    named = _named(names, inputs)
    kernel = _kernel(program, backend, schedule, named)
    h0 = None if initial_state is None else initial_state.contiguous()
    with _autograd_inside_op():
        # a kernel whose backward needs less than the whole forward says so by prepare_backward
        prepare = getattr(kernel, "prepare_backward", None) or functools.partial(kernel.forward, save_for_backward=True)
        fwd = prepare(named, initial_state=h0, cu_seqlens=cu_seqlens, return_final_state=grad_final_state is not None)
    return _gradients(kernel, fwd, backend, named, h0, cu_seqlens, grad_out, grad_final_state)


def _gradients(kernel, fwd, backend: str, named: Mapping[str, torch.Tensor], h0: Optional[torch.Tensor],
               cu_seqlens: Optional[torch.Tensor], grad_out: torch.Tensor,
               grad_final_state: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """The kernel's backward from ``fwd`` (its forward's saved state): one gradient per input of
    ``named`` (zeros for integer inputs), then ``initial_state``'s if ``h0`` is given."""
    with _autograd_inside_op():
        grads = kernel.backward(
            fwd, named, grad_out.contiguous(),
            None if grad_final_state is None else grad_final_state.contiguous(),
            initial_state=h0, cu_seqlens=cu_seqlens,
        )
    grads = {k: (None if g is None else g.detach()) for k, g in grads.items()}
    keys = list(named) + (["initial_state"] if h0 is not None else [])
    tensors = list(named.values()) + ([h0] if h0 is not None else [])
    result = []
    for key, t in zip(keys, tensors):
        g = grads.get(key)
        if g is None:
            if t.dtype.is_floating_point or t.dtype.is_complex:
                raise RuntimeError(f"backend {backend!r} returned no gradient for {key!r}")
            g = torch.zeros_like(t)
        result.append(g.contiguous())
    return result


@scan_backward.register_fake
def _scan_backward_fake(program, backend, schedule, names, inputs, initial_state, cu_seqlens, grad_out,
                        grad_final_state):
    grads = [t.new_empty(t.shape) for t in inputs]  # contiguous, like the real op's
    if initial_state is not None:
        grads.append(initial_state.new_empty(initial_state.shape))
    return grads


# -- autograd ------------------------------------------------------------------------------------
def _setup_context(ctx, inputs, output) -> None:
    program, backend, schedule, names, tensors, initial_state, cu_seqlens, return_final_state = inputs
    ctx.config = (program, backend, schedule, names, return_final_state)
    ctx.count = len(tensors)
    ctx.has_state = initial_state is not None
    ctx.has_cu = cu_seqlens is not None
    saved = list(tensors) + ([initial_state] if ctx.has_state else []) + ([cu_seqlens] if ctx.has_cu else [])
    ctx.save_for_backward(*saved)


def _backward(ctx, grad_out: torch.Tensor, grad_final_state: torch.Tensor):
    program, backend, schedule, names, return_final_state = ctx.config
    saved = ctx.saved_tensors
    tensors = list(saved[: ctx.count])
    initial_state = saved[ctx.count] if ctx.has_state else None
    cu_seqlens = saved[-1] if ctx.has_cu else None
    grads = scan_backward(program, backend, schedule, names, tensors, initial_state, cu_seqlens, grad_out,
                          grad_final_state if return_final_state else None)
    state_grad = grads[ctx.count] if ctx.has_state else None
    return None, None, None, None, _input_grads(tensors, grads), state_grad, None, None


def _input_grads(inputs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> list[Optional[torch.Tensor]]:
    """The gradients autograd takes for ``inputs``: ``None`` for integer inputs (``seq_idx``)."""
    return [g if t.dtype.is_floating_point or t.dtype.is_complex else None for t, g in zip(inputs, grads)]


scan.register_autograd(_backward, setup_context=_setup_context)


def check_backend(backend: Optional[str]) -> str:
    """``backend`` of a public op: ``None`` or ``""`` (choose by device) or a known backend's
    name; returns the op-schema form (``""`` for automatic)."""
    if backend is None or backend == "":
        return ""
    if isinstance(backend, str) and backend in _KNOWN:
        return backend
    from ..backends.registry import known_backends

    if not isinstance(backend, str):
        raise TypeError(f"backend must be a backend name (str) or None, got {type(backend).__name__}")
    if backend not in known_backends():
        raise ValueError(f"backend: unknown backend {backend!r}; expected one of {', '.join(known_backends())} "
                         "or None (chosen by the inputs' device)")
    _KNOWN.add(backend)
    return backend


_KNOWN: set[str] = set()  # names check_backend accepted (backends are registered for good)


# -- Python entry point --------------------------------------------------------------------------
_SPEC_DTYPES = {"float": ck.ACTIVATION_DTYPES, "complex": (torch.complex64,), "int": ck.INDEX_DTYPES}


def check_program_arguments(
    program_json: object,
    inputs: object,
    initial_state: object,
    cu_seqlens: object,
    return_final_state: object,
    schedule: object,
) -> None:
    """The argument checks of :func:`run_program` (the typed ops check their own arguments):
    the program JSON, every input named by ``program.tensors()`` (required ones present, no
    unknown names, tensors of the spec's dtype kind on the main input's device), ``cu_seqlens``
    (:func:`~scancc.ops.checks.check_packed`) and the initial state's shape and dtype. Input
    shapes are checked by the backend against the program's symbolic dimensions."""
    if not isinstance(program_json, str):
        raise TypeError(f"program_json: expected a str (Program.to_json()), got {type(program_json).__name__}")
    try:
        specs = _signature(program_json)
    except ValueError as exc:
        raise ValueError(f"program_json: expected Program.to_json(), got an invalid program ({exc})") from exc
    if not isinstance(inputs, Mapping):
        raise TypeError(f"inputs: expected a mapping of input names to tensors, got {type(inputs).__name__}")
    names = [spec.name for spec in specs]
    unknown = [k for k in inputs if k not in names]
    if unknown:
        raise ValueError(f"inputs: expected names from {', '.join(names)}, got unknown {', '.join(map(repr, unknown))}")
    main_name = specs[0].name  # the first input (u, x or a) is required; the others are checked against it
    main = None
    for spec in specs:
        name = f"inputs[{spec.name!r}]"
        t = inputs.get(spec.name)
        if t is None:
            if not spec.optional:
                raise ValueError(f"{name}: required by the program ({', '.join(spec.dims)}), got None")
            continue
        t = ck.check_tensor(name, t)
        ck.check_dtype(name, t, _SPEC_DTYPES[spec.dtype])
        if main is None:
            main = t
            ck.check_shape(name, t, [(d, None) for d in spec.dims])
        else:
            ck.check_device(name, t, f"inputs[{main_name!r}]", main)
        if "pairs" not in spec.dims:  # zero rotary pairs is a valid program input
            ck.check_nonempty(name, t, spec.dims)
    assert main is not None
    ck.check_flag("return_final_state", return_final_state)
    if not isinstance(schedule, str):
        raise TypeError(f"schedule: expected a str (Schedule.to_json() or ''), got {type(schedule).__name__}")
    main_ref = f"inputs[{main_name!r}]"
    named = {k: v for k, v in inputs.items() if v is not None}
    sizes = _bind_dims(program_json, named)
    if cu_seqlens is not None:
        ck.check_packed(cu_seqlens, sizes.get("batch", 1), sizes.get("seqlen", 1), main_ref, main)
    if initial_state is not None:
        shape, dtype = state_meta(program_json, named, cu_seqlens)
        dims = [("num_seqs" if d == "batch" and cu_seqlens is not None else d, size)
                for d, size in zip(_program(program_json).state_dims(), shape)]
        ck.check_state("initial_state", initial_state, dims, dtype, main_ref, main)


def run_program(
    program_json: str,
    inputs: Mapping[str, Optional[torch.Tensor]],
    *,
    initial_state: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
    backend: Optional[str] = DEFAULT_BACKEND,
    schedule: str = "",
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Run a program through ``scancc::scan``; returns ``(out, final_state or None)``.

    ``inputs`` maps ``program.tensors()`` names to tensors (absent optional ones may be
    missing or ``None``) already in the backend's form (complex quantities complex64).
    ``program_json`` must be ``program.to_json()``, ``backend`` a backend name or
    ``""``/``None`` (chosen by the inputs' device, :func:`auto_backend`) and
    ``schedule`` ``Schedule.to_json()`` or ``""`` (the autotuner's choice for the call's sizes).
    Arguments are checked by :func:`check_program_arguments` (in eager mode; the typed ops
    check theirs and call :func:`run_checked`).
    """
    if not torch.compiler.is_compiling():
        check_program_arguments(program_json, inputs, initial_state, cu_seqlens, return_final_state, schedule)
    return run_checked(program_json, inputs, initial_state=initial_state, cu_seqlens=cu_seqlens,
                       return_final_state=return_final_state, backend=backend, schedule=schedule)


def run_checked(
    program_json: str,
    inputs: Mapping[str, Optional[torch.Tensor]],
    *,
    initial_state: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
    backend: Optional[str] = DEFAULT_BACKEND,
    schedule: str = "",
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """:func:`run_program` for arguments the caller has already validated (the public ops)."""
    backend = check_backend(backend)
    present = [k for k in _input_names(input_order(program_json)) if inputs.get(k) is not None]
    names = ",".join(present)
    out, final = dispatch_scan(program_json, backend, schedule, names, [inputs[k] for k in present], initial_state,
                               cu_seqlens, return_final_state)
    return out, (final if return_final_state else None)


class _EagerScan(torch.autograd.Function):
    """``scancc::scan`` with its gradient in eager mode: the forward keeps what the kernel's
    backward reads (e.g. the diagonal kernels' state checkpoints), so the backward does not
    run the forward again as ``scancc::scan_backward`` must (under tracing the fake kernels
    cannot know a backend's saved tensors). Kernels whose saved state is not a flat mapping
    of tensors recompute, as that op does."""

    @staticmethod
    def forward(ctx, program: str, backend: str, schedule: str, names: str, initial_state: Optional[torch.Tensor],
                cu_seqlens: Optional[torch.Tensor], return_final_state: bool, *inputs: torch.Tensor):
        fwd = _forward(program, backend, schedule, _named(names, inputs), initial_state, cu_seqlens,
                       return_final_state, save_for_backward=True)
        saved = fwd.saved if all(isinstance(v, torch.Tensor) for v in fwd.saved.values()) else None
        ctx.config = (program, backend, schedule, names, return_final_state, len(inputs), initial_state is not None,
                      cu_seqlens is not None, None if saved is None else tuple(saved))
        ctx.save_for_backward(*inputs, *([initial_state] if initial_state is not None else []),
                              *([cu_seqlens] if cu_seqlens is not None else []),
                              *(saved.values() if saved is not None else ()))
        return _outputs(fwd, return_final_state)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor, grad_final_state: torch.Tensor):
        program, backend, schedule, names, return_final_state, count, has_h0, has_cu, saved_keys = ctx.config
        tensors = list(ctx.saved_tensors)
        inputs, rest = tensors[:count], tensors[count:]
        h0 = rest.pop(0) if has_h0 else None
        cu_seqlens = rest.pop(0) if has_cu else None
        dfinal = grad_final_state if return_final_state else None
        if saved_keys is None:
            grads = scan_backward(program, backend, schedule, names, inputs, h0, cu_seqlens, grad_out, dfinal)
        else:
            named = _named(names, inputs)
            fwd = ScanForward(out=grad_out.new_empty((0,)), final_state=None, saved=dict(zip(saved_keys, rest)))
            grads = _gradients(_kernel(program, backend, schedule, named), fwd, backend, named,
                               None if h0 is None else h0.contiguous(), cu_seqlens, grad_out, dfinal)
        return (None, None, None, None, grads[count] if has_h0 else None, None, None, *_input_grads(inputs, grads))


def dispatch_scan(
    program: str,
    backend: str,
    schedule: str,
    names: str,
    inputs: Sequence[torch.Tensor],
    initial_state: Optional[torch.Tensor],
    cu_seqlens: Optional[torch.Tensor],
    return_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scancc::scan``, or in plain eager mode (:func:`~scancc.fastpath.eager_mode`) its
    implementation directly when no gradient is recorded, and :class:`_EagerScan` when one is:
    the dispatcher would add only host time, and its backward a second forward pass."""
    mode = eager_mode([*inputs, initial_state, cu_seqlens])
    if mode == "direct":
        return _scan(program, backend, schedule, names, inputs, initial_state, cu_seqlens, return_final_state)
    if mode == "autograd":
        return _EagerScan.apply(program, backend, schedule, names, initial_state, cu_seqlens, return_final_state,
                                *inputs)
    return scan(program, backend, schedule, names, inputs, initial_state, cu_seqlens, return_final_state)
