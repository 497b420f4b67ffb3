"""``torch.library`` custom ops behind the Mamba-3 ops: the chunked core and the decode step.

The Mamba-3 sequence ops (:mod:`scancc.ops.mamba3`) are torch preparation (sigmoid(trap), γ,
w, rotary angles and rotation, biases, GQA, MIMO slots, augmented initial state: plain,
differentiable torch code that ``torch.compile`` traces) around one opaque op pair:

    mamba3_core(program, schedule, names, inputs, initial_state, cu_seqlens, return_final_state)
        -> (Tensor out, Tensor final_state)
    mamba3_core_backward(..., grad_out, grad_final_state) -> Tensor[]

``inputs`` are the present core inputs of :data:`scancc.backends.triton_ssd.CORE_INPUTS`
(``x (batch, slots, heads, headdim)``, ``dt`` (the column weight w), ``A`` (the log-decay),
``gam``, ``B, C (batch, slots, heads or groups, dstate)``, ``D``, ``z``) listed by name in
``names``; ``program``/``schedule`` are the Mamba-3 program's and schedule's JSON. As with
``scancc::scan`` (:mod:`scancc.ops.registry`), the backward op recomputes what it needs of the
forward (chunk sums and passed states, no output) rather than returning kernel checkpoints
of backend-specific shape, so both ops have fake kernels computed from shapes alone.

``mamba3_step`` advances the four decode states ``(angle, ssm, k, x)`` in place by one token
(:mod:`scancc.backends.triton_mamba3_step`); it declares them mutated, so compiled graphs and
CUDA graphs keep the update.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Optional, Sequence

import torch

from ..ir import Program, Schedule


@functools.lru_cache(maxsize=None)
def compiled(program_json: str, schedule_json: str) -> Any:
    """The :class:`~scancc.backends.triton_mamba3.Mamba3Scan` of a Mamba-3 program, built once."""
    from .. import compiler

    program = Program.from_json(program_json)
    schedule = Schedule.from_dict(json.loads(schedule_json))
    return compiler.compile(program, backend="triton", schedule=schedule)


def _empty(shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The decode output, which the kernel fully overwrites (tests fill it with NaN)."""
    return torch.empty(shape, device=device, dtype=dtype)


def _named(names: str, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = names.split(",") if names else []
    if len(keys) != len(inputs):
        raise ValueError(f"names lists {len(keys)} inputs but {len(inputs)} tensors were given")
    return {k: t.contiguous() for k, t in zip(keys, inputs)}


def _state_shape(named: dict[str, Any], cu_seqlens: Optional[torch.Tensor]) -> tuple[int, int, int, int]:
    x, B = named["x"], named["B"]
    rows = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return (rows, x.shape[2], x.shape[3], B.shape[3])


# -- the chunked core ------------------------------------------------------------------------------
@torch.library.custom_op("scancc::mamba3_core", mutates_args=())
def core(
    program: str,
    schedule: str,
    names: str,
    inputs: Sequence[torch.Tensor],
    initial_state: Optional[torch.Tensor],
    cu_seqlens: Optional[torch.Tensor],
    return_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out`` like ``x``, and the final state ``(num_seqs, heads, headdim, dstate)`` fp32 (an
    empty ``(0,)`` tensor unless ``return_final_state``)."""
    named = _named(names, inputs)
    fwd = compiled(program, schedule).core.forward(
        named, initial_state=None if initial_state is None else initial_state.contiguous(),
        cu_seqlens=cu_seqlens, return_final_state=return_final_state)
    x = named["x"]
    final = fwd.final_state.contiguous() if return_final_state else x.new_empty((0,), dtype=torch.float32)
    return fwd.out.contiguous(), final


@core.register_fake
def _core_fake(program, schedule, names, inputs, initial_state, cu_seqlens, return_final_state):  # noqa: ANN001, ANN202
    named = dict(zip(names.split(","), inputs))
    x = named["x"]
    out = x.new_empty(x.shape)
    if not return_final_state:
        return out, x.new_empty((0,), dtype=torch.float32)
    return out, x.new_empty(_state_shape(named, cu_seqlens), dtype=torch.float32)


@torch.library.custom_op("scancc::mamba3_core_backward", mutates_args=())
def core_backward(
    program: str,
    schedule: str,
    names: str,
    inputs: Sequence[torch.Tensor],
    initial_state: Optional[torch.Tensor],
    cu_seqlens: Optional[torch.Tensor],
    grad_out: torch.Tensor,
    grad_final_state: Optional[torch.Tensor],
) -> list[torch.Tensor]:
    """Gradients of every input (``names`` order), then of ``initial_state`` if given."""
    named = _named(names, inputs)
    scan = compiled(program, schedule).core
    h0 = None if initial_state is None else initial_state.contiguous()
    fwd = scan.prepare_backward(named, initial_state=h0, cu_seqlens=cu_seqlens,
                                return_final_state=grad_final_state is not None)
    grads = scan.backward(fwd, named, grad_out.contiguous(),
                          None if grad_final_state is None else grad_final_state.contiguous(),
                          initial_state=h0, cu_seqlens=cu_seqlens)
    result = []
    for key, t in named.items():
        g = grads.get(key)
        result.append(torch.zeros_like(t) if g is None else g.reshape(t.shape).contiguous())
    if h0 is not None:
        g = grads.get("initial_state")
        result.append(torch.zeros_like(h0) if g is None else g.contiguous())
    return result


@core_backward.register_fake
def _core_backward_fake(program, schedule, names, inputs, initial_state, cu_seqlens, grad_out,  # noqa: ANN001, ANN202
                        grad_final_state):
    grads = [t.new_empty(t.shape) for t in inputs]
    if initial_state is not None:
        grads.append(initial_state.new_empty(initial_state.shape))
    return grads


def _setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
    program, schedule, names, tensors, initial_state, cu_seqlens, return_final_state = inputs
    ctx.config = (program, schedule, names, return_final_state)
    ctx.count = len(tensors)
    ctx.has_state = initial_state is not None
    ctx.has_cu = cu_seqlens is not None
    ctx.save_for_backward(*tensors, *([initial_state] if ctx.has_state else []),
                          *([cu_seqlens] if ctx.has_cu else []))


def _backward(ctx: Any, grad_out: torch.Tensor, grad_final_state: Optional[torch.Tensor]) -> tuple:
    program, schedule, names, return_final_state = ctx.config
    saved = ctx.saved_tensors
    tensors = list(saved[:ctx.count])
    initial_state = saved[ctx.count] if ctx.has_state else None
    cu_seqlens = saved[-1] if ctx.has_cu else None
    grads = core_backward(program, schedule, names, tensors, initial_state, cu_seqlens, grad_out,
                          grad_final_state if return_final_state else None)
    state_grad = grads[ctx.count] if ctx.has_state else None
    return None, None, None, list(grads[:ctx.count]), state_grad, None, None


core.register_autograd(_backward, setup_context=_setup_context)


def run_core(program_json: str, schedule_json: str, inputs: dict[str, Optional[torch.Tensor]],
             initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
             return_final_state: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The core op on the present ``inputs`` (core names); ``(out, final ssm state or None)``."""
    from ..backends.triton_ssd import CORE_INPUTS

    present = [(k, inputs[k]) for k, _ in CORE_INPUTS if inputs.get(k) is not None]
    out, final = core(program_json, schedule_json, ",".join(k for k, _ in present), [t for _, t in present],
                      initial_state, cu_seqlens, return_final_state)
    return out, (final if return_final_state else None)


# -- the decode step -------------------------------------------------------------------------------
@torch.library.custom_op("scancc::mamba3_step", mutates_args=("angle", "ssm", "k_state", "x_state"))
def step(
    program: str,
    schedule: str,
    angle: torch.Tensor,
    ssm: torch.Tensor,
    k_state: torch.Tensor,
    x_state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    adt: torch.Tensor,
    trap: torch.Tensor,
    angles: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    q_bias: Optional[torch.Tensor],
    k_bias: Optional[torch.Tensor],
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    W_x: Optional[torch.Tensor],
    W_z: Optional[torch.Tensor],
    W_o: Optional[torch.Tensor],
) -> torch.Tensor:
    """One token in the kernel layout of :class:`~scancc.backends.triton_mamba3_step.StepInputs`;
    ``k_state`` is ``(batch, R, heads, N)``. Returns ``out (batch, heads, P)`` in x's dtype."""
    from ..backends.triton_mamba3_step import StepInputs

    def c(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.contiguous()

    inputs = StepInputs(x=c(x), dt=c(dt), adt=c(adt), trap=c(trap), angles=c(angles), q=c(q), k=c(k),
                        q_bias=c(q_bias), k_bias=c(k_bias), D=c(D), z=c(z), W_x=c(W_x), W_z=c(W_z), W_o=c(W_o))
    out = _empty(tuple(x.shape), device=x.device, dtype=x.dtype)
    compiled(program, schedule).update(angle, ssm, k_state, x_state, inputs, out)
    return out


@step.register_fake
def _step_fake(program, schedule, angle, ssm, k_state, x_state, x, *rest):  # noqa: ANN001, ANN002, ANN202
    return torch.empty(tuple(x.shape), dtype=x.dtype, device=x.device)


# -- the rotary prologue ---------------------------------------------------------------------------
@torch.library.custom_op("scancc::mamba3_rotary", mutates_args=())
def rotary(
    pairing: str,
    k: torch.Tensor,
    q: torch.Tensor,
    k_bias: Optional[torch.Tensor],
    q_bias: Optional[torch.Tensor],
    angles: torch.Tensor,
    dt: torch.Tensor,
    phi0: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`scancc.backends.triton_mamba3.rotary_prologue`: ``(k̃, q̃, φ_last)``."""
    from ..backends.triton_mamba3 import rotary_prologue

    return rotary_prologue(pairing, k, q, k_bias, q_bias, angles, dt, phi0)


@rotary.register_fake
def _rotary_fake(pairing, k, q, k_bias, q_bias, angles, dt, phi0):  # noqa: ANN001, ANN202
    Bsz, L, _, N = k.shape
    H, K = angles.shape[2], angles.shape[3]
    out = k.new_empty((Bsz, L, H, N))
    return out, k.new_empty((Bsz, L, H, N)), k.new_empty((Bsz, H, K), dtype=torch.float32)


@torch.library.custom_op("scancc::mamba3_rotary_backward", mutates_args=())
def rotary_backward(
    pairing: str,
    k: torch.Tensor,
    q: torch.Tensor,
    k_bias: Optional[torch.Tensor],
    q_bias: Optional[torch.Tensor],
    angles: torch.Tensor,
    dt: torch.Tensor,
    phi0: Optional[torch.Tensor],
    grad_k: torch.Tensor,
    grad_q: torch.Tensor,
    grad_phi: torch.Tensor,
) -> list[torch.Tensor]:
    """Gradients of ``k, q, [k_bias], [q_bias], angles, dt, [phi0]`` (those given):
    :func:`scancc.backends.triton_mamba3.rotary_prologue_backward`."""
    from ..backends.triton_mamba3 import rotary_prologue_backward

    grads = rotary_prologue_backward(pairing, k, q, k_bias, q_bias, angles, dt, phi0, grad_k, grad_q, grad_phi)
    named = dict(k=k, q=q, k_bias=k_bias, q_bias=q_bias, angles=angles, dt=dt, phi0=phi0)
    return [grads[name].reshape(t.shape).contiguous() for name, t in named.items() if t is not None]


@rotary_backward.register_fake
def _rotary_backward_fake(pairing, k, q, k_bias, q_bias, angles, dt, phi0, grad_k, grad_q, grad_phi):  # noqa: ANN001, ANN202
    return [t.new_empty(t.shape) for t in (k, q, k_bias, q_bias, angles, dt, phi0) if t is not None]


def _rotary_setup(ctx: Any, inputs: tuple, output: Any) -> None:
    pairing, *tensors = inputs
    ctx.pairing = pairing
    ctx.present = [t is not None for t in tensors]
    ctx.save_for_backward(*[t for t in tensors if t is not None])


def _rotary_grad(ctx: Any, grad_k: Optional[torch.Tensor], grad_q: Optional[torch.Tensor],
                 grad_phi: Optional[torch.Tensor]) -> tuple:
    saved = iter(ctx.saved_tensors)
    tensors = [next(saved) if p else None for p in ctx.present]
    k, _, _, _, angles = tensors[:5]
    Bsz, L, _, N = k.shape
    H, K = angles.shape[2], angles.shape[3]
    grad_k = k.new_zeros((Bsz, L, H, N)) if grad_k is None else grad_k
    grad_q = k.new_zeros((Bsz, L, H, N)) if grad_q is None else grad_q
    grad_phi = k.new_zeros((Bsz, H, K), dtype=torch.float32) if grad_phi is None else grad_phi
    grads = iter(rotary_backward(ctx.pairing, *tensors, grad_k, grad_q, grad_phi))
    return (None, *[next(grads) if p else None for p in ctx.present])


rotary.register_autograd(_rotary_grad, setup_context=_rotary_setup)
