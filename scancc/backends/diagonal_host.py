"""Host code shared by the compiled scans of the diagonal family (Triton and CUDA).

Every diagonal kernel takes the same named operands, states and gradient buffers, so the
argument checks (:func:`check_inputs`), the states, the buffers of a forward and a backward
and the reduction of raw gradients live here, in :class:`DiagonalScanHost`. A backend
subclasses it and supplies the kernel form of an operand, its launch geometry and the
launches themselves.

Shapes: ``seq`` operands and the output ``(batch, dim, seqlen)``, ``bc`` operands
``(batch, groups, dstate, seqlen)``, ``dn`` ``(dim, dstate)``, ``d`` ``(dim,)``; states and
checkpoints ``(rows, dim, dstate)`` float32, with a trailing re/im axis of 2 for complex states.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch

from ..ir import Program, Schedule
from ..fastpath import Memo, signature
from .base import ScanForward
from .diagonal import DiagonalPlan, Operand, discretize

Inputs = Mapping[str, Optional[torch.Tensor]]


def _empty(shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Every buffer a kernel fully overwrites is allocated here (tests fill them with NaN)."""
    return torch.empty(shape, device=device, dtype=dtype)


def real_view(t: torch.Tensor) -> torch.Tensor:
    """A complex tensor as the float32 pairs a kernel reads: complex64, ``(..., 2)``."""
    return torch.view_as_real(t.to(torch.complex64).resolve_conj())


def operand_strides(op: Operand, t: Optional[torch.Tensor]) -> tuple[int, ...]:
    """The strides a kernel takes for an operand in kernel form (zeros for an absent one)."""
    count = len(op.strides)
    return (0,) * count if t is None else tuple(t.stride()[:count])


@dataclass(frozen=True)
class Binding:
    """One call's operands, sizes and launch geometry.

    ``tensors``: the kernel operands by name (``None`` for absent optional ones); as given by
    :func:`check_inputs`, in the backend's kernel form after :meth:`DiagonalScanHost._bind`.
    ``geometry``: the backend's block sizes for these sizes; ``ckpt_steps``: steps between the
    states the forward saves for the backward (0: it saves none).
    """

    tensors: dict[str, Optional[torch.Tensor]]
    batch: int
    dim: int
    seqlen: int
    dstate: int
    groups: int
    num_seqs: int
    device: torch.device
    out_dtype: torch.dtype
    cu_seqlens: Optional[torch.Tensor]
    geometry: Any = None
    ckpt_steps: int = 0

    def with_tensors(self, tensors: dict[str, Optional[torch.Tensor]], cu_seqlens: Optional[torch.Tensor]) -> Binding:
        """This binding for another call with the same argument signature (cheaper than ``replace``)."""
        b = object.__new__(Binding)
        b.__dict__.update(self.__dict__, tensors=tensors, cu_seqlens=cu_seqlens)
        return b

    @property
    def chans_per_group(self) -> int:
        return self.dim // self.groups

    @property
    def seq_shape(self) -> tuple[int, int, int]:
        return (self.batch, self.dim, self.seqlen)

    @property
    def state_shape(self) -> tuple[int, int, int]:
        return (self.num_seqs, self.dim, self.dstate)

    @property
    def n_ckpt(self) -> int:
        """Saved states per sequence (of a sequence of ``seqlen`` steps)."""
        return -(-self.seqlen // self.ckpt_steps) if self.ckpt_steps else 0

    @property
    def n_slots(self) -> int:
        """Rows of the checkpoint buffer."""
        # with cu_seqlens, sequence s's k-th saved state goes to row s + start_s // ckpt_steps + k
        return self.num_seqs * self.n_ckpt if self.cu_seqlens is None else self.num_seqs + self.n_ckpt


def _kernel_operands(plan: DiagonalPlan, inputs: Inputs) -> dict[str, Optional[torch.Tensor]]:
    """The kernel's operands of checked inputs; an LTI program's ``Ā, B̄ (dim, dstate)`` are discretized here."""
    ops: dict[str, Optional[torch.Tensor]] = {name: inputs.get(name) for name in inputs}
    A = inputs.get("A")
    if plan.decay == "fixed" and A is not None:  # A is a required input of LTI programs
        with torch.no_grad():
            ops["A_bar"], ops["B_bar"] = discretize(plan.program, A, inputs.get("B"), inputs.get("delta"),
                                                    inputs.get("delta_bias"))
    return ops


def check_inputs(plan: DiagonalPlan, inputs: Inputs, cu_seqlens: Optional[torch.Tensor]) -> Binding:
    """Check one call's inputs against the program and size it.

    Every tensor of ``plan.program.tensors()`` that is given must be a tensor on ``x``'s device,
    complex exactly when the program says so, and shaped as its dims with ``batch, dim,
    seqlen`` from ``x`` and ``groups, dstate`` from the tensors that have them; ``groups``
    must divide ``dim``. With ``cu_seqlens`` (int32/int64, ``(num_seqs + 1,)``) the batch is 1.
    Raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (the rest), naming
    the input. The result's tensors are the kernel operands as given (LTI: ``Ā, B̄`` computed).
    """
    name = plan.program.name
    if not isinstance(inputs, Mapping):
        raise TypeError(f"{name}: inputs must be a mapping of name -> tensor, got {type(inputs).__name__}")
    specs = plan.program.tensors()
    for spec in specs:
        t = inputs.get(spec.name)
        if t is None:
            if not spec.optional:
                raise ValueError(f"{name}: input {spec.name!r} is required")
        elif not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {spec.name} must be a torch.Tensor, got {type(t).__name__}")
    x = inputs[plan.x]
    assert x is not None  # a required input
    if x.dim() != 3:
        raise ValueError(f"{name}: {plan.x} must be (batch, dim, seqlen), got shape {tuple(x.shape)}")
    batch, dim, seqlen = x.shape
    if min(batch, dim, seqlen) < 1:
        raise ValueError(f"{name}: {plan.x} has an empty axis, shape {tuple(x.shape)}")

    sizes = {"batch": batch, "dim": dim, "seqlen": seqlen, "groups": 1, "dstate": 1}
    found: dict[str, int] = {}
    given = [(spec, inputs[spec.name]) for spec in specs if inputs.get(spec.name) is not None]
    for spec, t in given:
        if t.device != x.device:
            raise ValueError(f"{name}: {spec.name} is on {t.device}, {plan.x} on {x.device}")
        if t.dim() != len(spec.dims):
            raise ValueError(f"{name}: {spec.name} must have {len(spec.dims)} dims ({', '.join(spec.dims)}), "
                             f"got shape {tuple(t.shape)}")
        want_complex = spec.dtype == "complex"
        if t.is_complex() != want_complex:
            raise TypeError(f"{name}: {spec.name} must be {'complex' if want_complex else 'real'}, got {t.dtype}")
        for axis in ("groups", "dstate"):
            if axis in spec.dims and axis not in found:
                found[axis] = t.shape[spec.dims.index(axis)]  # the first tensor that has it sets it
    sizes.update(found)
    if dim % sizes["groups"]:
        raise ValueError(f"{name}: groups ({sizes['groups']}) must divide dim ({dim})")
    for spec, t in given:
        want = tuple(sizes[axis] for axis in spec.dims)
        if tuple(t.shape) != want:
            raise ValueError(f"{name}: {spec.name} must be ({', '.join(spec.dims)}) = {want}, got {tuple(t.shape)}")

    num_seqs = batch
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
            got = cu_seqlens.dtype if isinstance(cu_seqlens, torch.Tensor) else type(cu_seqlens).__name__
            raise TypeError(f"{name}: cu_seqlens must be an int32 or int64 tensor, got {got}")
        if batch != 1:
            raise ValueError(f"{name}: cu_seqlens needs batch 1, got batch {batch}")
        if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
            raise ValueError(f"{name}: cu_seqlens must be (num_seqs + 1,) with num_seqs >= 1, "
                             f"got shape {tuple(cu_seqlens.shape)}")
        num_seqs = cu_seqlens.shape[0] - 1

    ops = _kernel_operands(plan, inputs)
    out_complex = plan.complex and plan.program.readout.kind == "state"
    return Binding({op.name: ops.get(op.name) for op in plan.operands}, batch, dim, seqlen, sizes["dstate"],
                   sizes["groups"], num_seqs, x.device, torch.complex64 if out_complex else x.dtype, cu_seqlens)


@dataclass
class ForwardBuffers:
    """What a forward kernel reads and writes besides its operands (float32 states, see the module)."""

    h0: Optional[torch.Tensor]    # the initial state, as the kernel reads it
    out: torch.Tensor             # (batch, dim, seqlen) in the binding's out_dtype
    ht: Optional[torch.Tensor]    # the final state, when asked for
    ckpt: Optional[torch.Tensor]  # (n_slots, dim, dstate) saved states, with save_for_backward

    @property
    def out_arg(self) -> torch.Tensor:
        """``out`` as the kernel writes it (float pairs when complex)."""
        return torch.view_as_real(self.out) if self.out.is_complex() else self.out


@dataclass
class BackwardBuffers:
    """What a backward kernel reads and writes besides its operands and checkpoints."""

    dout: torch.Tensor                           # grad_out as the kernel reads it (unit time stride)
    dht: Optional[torch.Tensor]                  # the final state's gradient, as the kernel reads it
    grads: dict[str, Optional[torch.Tensor]]     # raw gradient per operand, see _grad_buffers
    dh0: Optional[torch.Tensor]                  # the initial state's gradient, when one was given


class DiagonalScanHost(abc.ABC):
    """The host side of a compiled diagonal scan (implements ``CompiledScan``).

    A backend subclasses it, sets ``backend``, implements :meth:`_kernel_tensor`,
    :meth:`_launch_forward` and :meth:`_launch_backward`, and overrides the other hooks where
    its kernels need it (``_check_device``, ``_kernel_cu_seqlens``, ``_activation_dtype``,
    ``_real_grad_out``, ``_geometry``).
    """

    backend: str

    def __init__(self, program: Program, schedule: Schedule, source: str) -> None:
        self.program = program
        self.schedule = schedule
        self.source = source
        self.plan = DiagonalPlan.of(program)
        self._specs = program.tensors()
        self._bindings: Memo[tuple[Binding, list[Operand]]] = Memo()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.program.name!r}, {self.schedule.to_json()})"

    def __call__(self, inputs: Inputs, **kwargs: Any) -> Any:
        """``out``, or ``(out, final_state)`` with ``return_final_state=True``."""
        fwd = self.forward(inputs, **kwargs)
        return (fwd.out, fwd.final_state) if kwargs.get("return_final_state") else fwd.out

    # -- hooks --------------------------------------------------------------------------------
    @abc.abstractmethod
    def _kernel_tensor(self, op: Operand, t: torch.Tensor) -> torch.Tensor:
        """A checked operand as the kernel reads it."""

    @abc.abstractmethod
    def _launch_forward(self, b: Binding, io: ForwardBuffers) -> None:
        """Run the forward kernel: read the operands and ``io.h0``, write ``io.out``, ``io.ht``, ``io.ckpt``."""

    def _launch_backward(self, b: Binding, ckpt: torch.Tensor, io: BackwardBuffers) -> None:
        """Run the backward kernel: write ``io.grads`` and ``io.dh0`` (a scan that overrides
        :meth:`backward` itself need not)."""
        raise NotImplementedError(f"{type(self).__name__} has no backward kernel launch of the shared form")

    def _check_device(self, device: torch.device) -> None:
        """Raise if this backend's kernels cannot run on ``device``."""

    def _kernel_cu_seqlens(self, cu_seqlens: torch.Tensor, device: torch.device) -> torch.Tensor:
        return cu_seqlens.to(device=device)

    def _activation_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype the kernels read and write a real activation of ``dtype`` in."""
        return dtype

    def _real_grad_out(self, b: Binding, grad_out: torch.Tensor) -> torch.Tensor:
        """A real ``grad_out`` in the dtype the backward kernel reads."""
        return grad_out

    def _geometry(self, b: Binding) -> tuple[Any, int]:
        """The launch geometry for ``b``'s sizes and the steps between saved states (0: none)."""
        return None, 0

    # -- binding ------------------------------------------------------------------------------
    def _bind(self, inputs: Inputs, cu_seqlens: Optional[torch.Tensor]) -> Binding:
        """The call's Binding: checked, sized and laid out once per argument :func:`signature`
        (the checks read only metadata), with this call's tensors in kernel form."""
        given = [inputs.get(spec.name) for spec in self._specs] if isinstance(inputs, Mapping) else None
        if given is None or any(t is not None and not isinstance(t, torch.Tensor) for t in given):
            return self._bind_checked(inputs, cu_seqlens)  # check_inputs raises the error
        key = signature([*given, cu_seqlens])
        sized, converted = self._bindings.get_or_make(key, lambda: self._bind_first(inputs, cu_seqlens))
        tensors = _kernel_operands(self.plan, inputs) if self.plan.decay == "fixed" else dict(inputs)
        for op in converted:
            tensors[op.name] = self._kernel_tensor(op, tensors[op.name])
        cu = None if cu_seqlens is None else self._kernel_cu_seqlens(cu_seqlens, sized.device)
        return sized.with_tensors({op.name: tensors.get(op.name) for op in self.plan.operands}, cu)

    def _bind_first(self, inputs: Inputs, cu_seqlens: Optional[torch.Tensor]) -> tuple[Binding, list[Operand]]:
        """:meth:`_bind_checked`, and the operands whose kernel form is not the input itself
        (the same for every call of this signature: :meth:`_kernel_tensor` reads metadata)."""
        b = self._bind_checked(inputs, cu_seqlens)
        given = _kernel_operands(self.plan, inputs)
        converted = [op for op in self.plan.operands if b.tensors[op.name] is not given.get(op.name)]
        return b.with_tensors({}, None), converted  # the memo must not keep this call's tensors alive

    def _bind_checked(self, inputs: Inputs, cu_seqlens: Optional[torch.Tensor]) -> Binding:
        b = check_inputs(self.plan, inputs, cu_seqlens)
        self._check_device(b.device)
        tensors = {op.name: None if b.tensors[op.name] is None else self._kernel_tensor(op, b.tensors[op.name])
                   for op in self.plan.operands}
        cu = None if b.cu_seqlens is None else self._kernel_cu_seqlens(b.cu_seqlens, b.device)
        out_dtype = b.out_dtype if b.out_dtype.is_complex else self._activation_dtype(b.out_dtype)
        b = replace(b, tensors=tensors, cu_seqlens=cu, out_dtype=out_dtype)
        geometry, ckpt_steps = self._geometry(b)
        return replace(b, geometry=geometry, ckpt_steps=ckpt_steps)

    def _state(self, b: Binding, state: Optional[torch.Tensor], what: str) -> Optional[torch.Tensor]:
        """A state ``(num_seqs, dim, dstate)`` as the kernel reads it: float32 (pairs), contiguous."""
        if state is None:
            return None
        if tuple(state.shape) != b.state_shape:
            raise ValueError(f"{self.program.name}: {what} must be {b.state_shape} (num_seqs, dim, dstate), "
                             f"got {tuple(state.shape)}")
        if state.device != b.device:
            raise ValueError(f"{self.program.name}: {what} is on {state.device}, {self.plan.x} on {b.device}")
        if self.plan.complex:
            return real_view(state).contiguous()
        return state.to(torch.float32).contiguous()

    def _state_buffer(self, b: Binding, rows: int) -> torch.Tensor:
        shape = (rows, b.dim, b.dstate) + ((2,) if self.plan.complex else ())
        return _empty(shape, device=b.device, dtype=torch.float32)

    # -- forward and backward -----------------------------------------------------------------
    def forward(
        self,
        inputs: Inputs,
        *,
        initial_state: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        return_final_state: bool = False,
        save_for_backward: bool = False,
    ) -> ScanForward:
        """See ``CompiledScan.forward``; ``saved["ckpt"]``: the states the backward's tiles start
        from, saved only by kernels whose geometry has ``ckpt_steps``."""
        b = self._bind(inputs, cu_seqlens)
        io = ForwardBuffers(
            h0=self._state(b, initial_state, "initial_state"),
            out=_empty(b.seq_shape, device=b.device, dtype=b.out_dtype),
            ht=self._state_buffer(b, b.num_seqs) if return_final_state else None,
            ckpt=self._state_buffer(b, b.n_slots) if save_for_backward and b.ckpt_steps else None,
        )
        self._launch_forward(b, io)
        final = None
        if io.ht is not None:
            final = torch.view_as_complex(io.ht) if self.plan.complex else io.ht
        return ScanForward(out=io.out, final_state=final, saved={} if io.ckpt is None else {"ckpt": io.ckpt})

    def backward(
        self,
        fwd: ScanForward,
        inputs: Inputs,
        grad_out: Optional[torch.Tensor],
        grad_final_state: Optional[torch.Tensor] = None,
        *,
        initial_state: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
    ) -> dict[str, Optional[torch.Tensor]]:
        """See ``CompiledScan.backward``: from the checkpoints in ``fwd.saved["ckpt"]``."""
        ckpt = fwd.saved.get("ckpt")
        if ckpt is None:
            raise ValueError("backward needs the ScanForward of forward(..., save_for_backward=True)")
        b = self._bind(inputs, cu_seqlens)
        if ckpt.shape[0] != b.n_slots or ckpt.shape[1] != b.dim:
            raise ValueError(f"{self.program.name}: the checkpoints {tuple(ckpt.shape)} do not belong to these inputs")
        io = self._backward_buffers(b, grad_out, grad_final_state, initial_state)
        self._launch_backward(b, ckpt, io)
        return self._gradients(inputs, io, initial_state)

    def _grad_out(self, b: Binding, grad_out: Optional[torch.Tensor]) -> torch.Tensor:
        """``grad_out (batch, dim, seqlen)`` (zeros if ``None``) as the kernel reads it: float pairs
        when complex, else the dtype of :meth:`_real_grad_out`; unit stride along time."""
        if grad_out is None:
            grad_out = torch.zeros(b.seq_shape, device=b.device, dtype=b.out_dtype)
        if tuple(grad_out.shape) != b.seq_shape:
            raise ValueError(f"{self.program.name}: grad_out must be {b.seq_shape}, got {tuple(grad_out.shape)}")
        if grad_out.device != b.device:
            raise ValueError(f"{self.program.name}: grad_out is on {grad_out.device}, {self.plan.x} on {b.device}")
        if b.out_dtype.is_complex:
            dout = real_view(grad_out)
            return dout if dout.stride(-2) == 2 else dout.contiguous()
        dout = self._real_grad_out(b, grad_out)
        return dout.contiguous() if dout.stride(-1) != 1 and b.seqlen > 1 else dout

    def _grad_buffers(self, b: Binding) -> dict[str, Optional[torch.Tensor]]:
        """A raw gradient per present operand, as the backward kernel writes it.

        ``seq``: ``(batch, dim, seqlen)`` in the operand's kernel dtype (float32 pairs when
        complex); ``bc``: ``(batch, groups, dstate, seqlen)`` float32, accumulated, so zeroed;
        ``dn``/``d``: one ``(dim, dstate)``/``(dim,)`` partial per sequence, float32.
        """
        # with cu_seqlens, steps outside every sequence get no gradient from the kernel
        alloc = torch.zeros if b.cu_seqlens is not None else _empty
        raw: dict[str, Optional[torch.Tensor]] = {}
        for op in self.plan.operands:
            t = b.tensors[op.name]
            trailing = (2,) if op.complex else ()
            if t is None:
                raw[op.name] = None
            elif op.layout == "seq":
                raw[op.name] = alloc(b.seq_shape + trailing, device=b.device,
                                     dtype=torch.float32 if op.complex else t.dtype)
            elif op.layout == "bc":
                raw[op.name] = torch.zeros((b.batch, b.groups, b.dstate, b.seqlen) + trailing, device=b.device,
                                           dtype=torch.float32)
            elif op.layout == "dn":
                raw[op.name] = _empty(b.state_shape + trailing, device=b.device, dtype=torch.float32)
            else:
                raw[op.name] = _empty((b.num_seqs, b.dim) + trailing, device=b.device, dtype=torch.float32)
        return raw

    def _backward_buffers(self, b: Binding, grad_out: Optional[torch.Tensor],
                          grad_final_state: Optional[torch.Tensor],
                          initial_state: Optional[torch.Tensor]) -> BackwardBuffers:
        dout = self._grad_out(b, grad_out)
        dht = self._state(b, grad_final_state, "grad_final_state")
        raw = self._grad_buffers(b)
        dh0 = self._state_buffer(b, b.num_seqs) if initial_state is not None else None
        return BackwardBuffers(dout, dht, raw, dh0)

    def _gradients(self, inputs: Inputs, bufs: BackwardBuffers,
                   initial_state: Optional[torch.Tensor]) -> dict[str, Optional[torch.Tensor]]:
        """The raw buffers as ``CompiledScan.backward``'s result: per-sequence partials summed,
        complex ones as complex64, LTI's dĀ, dB̄ chained to A, B, delta, delta_bias; every
        gradient in its input's dtype and shape, ``None`` for absent inputs."""
        grads: dict[str, Optional[torch.Tensor]] = {}
        for op in self.plan.operands:
            g = bufs.grads[op.name]
            if g is not None and op.layout in ("dn", "d"):
                g = g.sum(0)
            if g is not None and op.complex:
                g = torch.view_as_complex(g.contiguous())
            grads[op.name] = g
        if self.plan.decay == "fixed":
            d_abar = grads.pop("A_bar")
            assert d_abar is not None  # a required operand
            grads.update(self._lti_grads(inputs, d_abar, grads.pop("B_bar", None)))
        result: dict[str, Optional[torch.Tensor]] = {}
        for spec in self.program.tensors():
            t = inputs.get(spec.name)
            g = grads.get(spec.name)
            result[spec.name] = None if t is None or g is None else g.to(t.dtype).reshape(t.shape)
        if bufs.dh0 is not None and initial_state is not None:
            g0 = torch.view_as_complex(bufs.dh0) if self.plan.complex else bufs.dh0
            result["initial_state"] = g0.to(initial_state.dtype)
        else:
            result["initial_state"] = None
        return result

    def _lti_grads(self, inputs: Inputs, d_abar: torch.Tensor,
                   d_bbar: Optional[torch.Tensor]) -> dict[str, Optional[torch.Tensor]]:
        """Chain dĀ, dB̄ through the host discretization to A (λ), B, delta, delta_bias."""
        names = [n for n in ("A", "B", "delta", "delta_bias") if inputs.get(n) is not None]
        with torch.enable_grad():
            leaves = {n: inputs[n].detach().requires_grad_(True) for n in names}  # type: ignore[union-attr]
            abar, bbar = discretize(self.program, leaves["A"], leaves.get("B"), leaves.get("delta"),
                                    leaves.get("delta_bias"))
            outs = [abar] + ([bbar] if bbar is not None and d_bbar is not None else [])
            grads_out = [d_abar] + ([d_bbar] if bbar is not None and d_bbar is not None else [])
            got = torch.autograd.grad(outs, [leaves[n] for n in names], grads_out, allow_unused=True)
        return {n: (g if g is not None else torch.zeros_like(leaves[n])) for n, g in zip(names, got)}
