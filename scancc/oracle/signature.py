"""Binding a program's inputs: names, shapes and dtypes checked against ``Program.tensors()``.

Every oracle form starts here. :func:`bind` resolves the symbolic dimensions
(batch, seqlen, dim, dstate, groups, heads, headdim, rank, pairs) from the given
arrays, checks them, and converts the arrays to float64 / complex128 in their own
namespace (NumPy or torch). Segment handling (``cu_seqlens``, ``seq_idx``) and the
state's expected shapes also live here, so all forms agree on them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np

from ..ir import Program, TensorSpec
from .xp import is_torch, namespace_of, to_numpy

MAMBA3_STATE_KEYS = ("angle", "ssm", "k", "x")


@dataclass(frozen=True)
class Bound:
    """Validated inputs of one program call.

    ``arrays`` maps input names to float64/complex128 arrays (absent optional inputs are
    left out); ``dims`` gives every symbolic dimension's size; ``ops`` is the namespace.
    """

    program: Program
    ops: Any
    arrays: dict[str, Any]
    dims: dict[str, int]

    def get(self, name: str) -> Any:
        return self.arrays.get(name)

    def has(self, name: str) -> bool:
        return name in self.arrays

    @property
    def seqlen(self) -> int:
        return self.dims.get("seqlen", 1)

    @property
    def batch(self) -> int:
        return self.dims["batch"]

    def replace_arrays(self, arrays: dict[str, Any], **dims: int) -> "Bound":
        return dataclasses.replace(self, arrays=arrays, dims={**self.dims, **dims})


def _kind_of(value: Any) -> str:
    """'float', 'complex', 'int' or 'other' for an array or tensor."""
    if is_torch(value):
        if value.is_complex():
            return "complex"
        if value.is_floating_point():
            return "float"
        return "int" if value.dtype.is_signed or str(value.dtype) == "torch.uint8" else "other"
    kind = np.asarray(value).dtype.kind
    return {"f": "float", "c": "complex", "i": "int", "u": "int"}.get(kind, "other")


def _shape_str(dims: tuple[str, ...]) -> str:
    return "(" + ", ".join(dims) + ")"


def _expected_dims(program: Program, spec: TensorSpec, value: Any) -> tuple[str, ...]:
    # The head-layout skip D may be per head or per (head, headdim) element.
    if spec.name == "D" and program.layout == "head" and len(value.shape) == 2:
        return ("heads", "headdim")
    return spec.dims


def bind(program: Program, inputs: Mapping[str, Any]) -> Bound:
    """Check ``inputs`` against ``program.tensors()`` and convert them to float64/complex128.

    Raises ``ValueError`` for missing/unknown names and shape mismatches, ``TypeError``
    for wrong array types or dtypes (complex where a real tensor is expected, integers...).
    """
    if not isinstance(program, Program):
        raise TypeError(f"program must be a scancc.ir.Program, got {type(program).__name__}")
    if not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a mapping of name -> array, got {type(inputs).__name__}")
    _check_expressible(program)
    specs = program.tensors()
    known = {s.name for s in specs}
    unknown = sorted(set(inputs) - known)
    if unknown:
        raise ValueError(f"unknown inputs {unknown} for program {program.name!r}; expected names {sorted(known)}")
    ops = namespace_of(dict(inputs))
    dims: dict[str, int] = {}
    arrays: dict[str, Any] = {}
    for spec in specs:
        value = inputs.get(spec.name)
        if value is None:
            if not spec.optional:
                raise ValueError(f"missing input {spec.name!r} of shape {_shape_str(spec.dims)} for program {program.name!r}")
            continue
        if not (is_torch(value) or isinstance(value, np.ndarray)):
            raise TypeError(f"input {spec.name!r} must be a NumPy array or torch tensor, got {type(value).__name__}")
        kind = _kind_of(value)
        if kind == "complex" and spec.dtype != "complex":
            raise TypeError(f"input {spec.name!r} must be real for program {program.name!r}, got a complex array")
        if kind not in ("float", "complex"):
            raise TypeError(f"input {spec.name!r} must be a floating-point array, got dtype {value.dtype}")
        expected = _expected_dims(program, spec, value)
        shape = tuple(int(s) for s in value.shape)
        if len(shape) != len(expected):
            raise ValueError(f"input {spec.name!r} must have shape {_shape_str(expected)} ({len(expected)} axes), "
                             f"got shape {shape}")
        for axis, (name, size) in enumerate(zip(expected, shape)):
            if name in dims and dims[name] != size:
                raise ValueError(f"input {spec.name!r} axis {axis} ({name}) has size {size}, but {name} = {dims[name]} "
                                 f"from the other inputs (expected shape {_shape_str(expected)})")
            dims[name] = size
        arrays[spec.name] = ops.ascomplex(value) if spec.dtype == "complex" else ops.asfloat(value)
    _complete_dims(program, dims)
    return Bound(program, ops, arrays, dims)


def _check_expressible(program: Program) -> None:
    """Reject valid-IR programs whose call signature cannot carry their decay."""
    if program.layout == "channel" and program.decay.kind == "log_input":
        raise ValueError(f"program {program.name!r}: decay kind 'log_input' on the channel layout has no decay "
                         "tensor in Program.tensors(); the oracle cannot evaluate it")
    if program.layout == "head" and program.decay.kind == "exp" and program.decay.param != "head":
        raise ValueError(f"program {program.name!r}: decay 'exp' with param {program.decay.param!r} on a matrix "
                         "state has only A of shape (heads,) in Program.tensors(); the oracle cannot evaluate it")


def _complete_dims(program: Program, dims: dict[str, int]) -> None:
    """Fill the dimensions no tensor carries and check divisibility rules."""
    rank = program.input.rank
    dims.setdefault("rank", rank)
    if dims["rank"] != rank:
        raise ValueError(f"rank axis has size {dims['rank']} but program {program.name!r} has rank {rank}")
    dims.setdefault("groups", 1)
    dims.setdefault("pairs", 0)
    dims.setdefault("dstate", 1)
    if program.mode == "step":
        dims["seqlen"] = 1
    owner = "dim" if program.layout == "channel" else "heads"
    if owner in dims and dims[owner] % dims["groups"]:
        raise ValueError(f"groups = {dims['groups']} must divide {owner} = {dims[owner]}")
    if program.readout.kind == "state" and dims["dstate"] != 1:
        raise ValueError(f"readout 'state' (y = h) needs dstate = 1, got dstate = {dims['dstate']}")
    if program.rotary is not None:
        n, k = dims["dstate"], dims["pairs"]
        if 2 * k > n or (program.rotary.pairing == "halves" and n % 2):
            raise ValueError(f"rotary needs pairs <= dstate / 2 (and an even dstate for 'halves' pairing); "
                             f"got pairs = {k}, dstate = {n}")


# -- step mode ------------------------------------------------------------------------------


def sequence_form(program: Program, inputs: Mapping[str, Any]) -> tuple[Program, dict[str, Any]]:
    """The sequence-mode program and inputs (seqlen = 1) equivalent to a step-mode call."""
    bind(program, inputs)  # shape errors are reported against the step-mode signature
    seq_program = program.replace(mode="sequence")
    ops = namespace_of(dict(inputs))
    expanded: dict[str, Any] = {}
    for spec in seq_program.tensors():
        value = inputs.get(spec.name)
        if value is None:
            continue
        expanded[spec.name] = ops.expand_dims(value, spec.dims.index("seqlen")) if "seqlen" in spec.dims else value
    return seq_program, expanded


def seqlen_axes(program: Program) -> dict[str, int]:
    """Axis of ``seqlen`` in each sequence-mode input that has one."""
    return {s.name: s.dims.index("seqlen") for s in program.tensors() if "seqlen" in s.dims}


def slice_time(bound: Bound, start: int, stop: int) -> Bound:
    """The same inputs restricted to time steps ``[start, stop)``."""
    axes = seqlen_axes(bound.program)
    arrays = {}
    for name, value in bound.arrays.items():
        if name in axes:
            index = [slice(None)] * len(value.shape)
            index[axes[name]] = slice(start, stop)
            value = value[tuple(index)]
        arrays[name] = value
    return bound.replace_arrays(arrays, seqlen=stop - start)


def output_seqlen_axis(program: Program) -> int:
    """Axis of ``seqlen`` in the output: ``(batch, dim, seqlen)`` or ``(batch, seqlen, heads, headdim)``."""
    return 2 if program.layout == "channel" else 1


# -- state shapes -----------------------------------------------------------------------------


def state_shapes(bound: Bound, rows: int) -> dict[str, tuple[int, ...]]:
    """Expected state shapes with ``rows`` leading rows.

    Vector/matrix states: ``{"h": shape}``. Mamba-3: ``angle (rows, heads, pairs)``,
    ``ssm (rows, heads, headdim, dstate)``, ``k (rows, heads, dstate)`` (SISO) or
    ``(rows, rank, heads, dstate)`` (MIMO), ``x (rows, heads, headdim)``.
    """
    p, d = bound.program, bound.dims
    if p.input.kind == "trapezoid":
        k_shape = (rows, d["heads"], d["dstate"]) if p.input.rank == 1 else (rows, p.input.rank, d["heads"], d["dstate"])
        return {"angle": (rows, d["heads"], d["pairs"]), "ssm": (rows, d["heads"], d["headdim"], d["dstate"]),
                "k": k_shape, "x": (rows, d["heads"], d["headdim"])}
    if p.state.shape == "vector":
        return {"h": (rows, d["dim"], d["dstate"])}
    return {"h": (rows, d["heads"], d["headdim"], d["dstate"])}


def bind_state(bound: Bound, state: Any, rows: int) -> Optional[dict[str, Any]]:
    """Validate an initial state and return it as a dict of float64/complex128 arrays.

    Mamba-3 states are dicts with the keys of :data:`MAMBA3_STATE_KEYS` (``angle`` may be
    left out when the program has no rotary); a plain array is read as ``{"ssm": array}``
    with the other entries zero. Other programs take one array ``h``.
    """
    if state is None:
        return None
    ops, shapes = bound.ops, state_shapes(bound, rows)
    complex_state = bound.program.state.complex
    if "ssm" in shapes:
        if not isinstance(state, Mapping):
            state = {"ssm": state}
        unknown = sorted(set(state) - set(MAMBA3_STATE_KEYS))
        if unknown:
            raise ValueError(f"initial_state has unknown entries {unknown}; expected {list(MAMBA3_STATE_KEYS)}")
        if "ssm" not in state:
            raise ValueError("initial_state for a Mamba-3 program needs at least the 'ssm' entry")
        items = dict(state)
    else:
        if isinstance(state, Mapping):
            raise TypeError(f"initial_state for program {bound.program.name!r} must be one array of shape "
                            f"{shapes['h']}, got a mapping")
        items = {"h": state}
    out: dict[str, Any] = {}
    for key, shape in shapes.items():
        value = items.get(key)
        if value is None:
            out[key] = ops.zeros(shape, like=_any_array(bound))
            continue
        label = "initial_state" if key == "h" else f"initial_state[{key!r}]"
        if namespace_of(value) is not ops and (is_torch(value) or isinstance(value, np.ndarray)):
            raise TypeError(f"{label} must be a {ops.name} array like the inputs")
        if not (is_torch(value) or isinstance(value, np.ndarray)):
            raise TypeError(f"{label} must be an array, got {type(value).__name__}")
        if tuple(value.shape) != shape:
            raise ValueError(f"{label} must have shape {shape}, got {tuple(value.shape)}")
        kind = _kind_of(value)
        if kind == "complex" and not (complex_state and key == "h"):
            raise TypeError(f"{label} must be real, got a complex array")
        if kind not in ("float", "complex"):
            raise TypeError(f"{label} must be a floating-point array, got dtype {value.dtype}")
        out[key] = ops.ascomplex(value) if complex_state and key == "h" else ops.asfloat(value)
    return out


def _any_array(bound: Bound) -> Any:
    return next(iter(bound.arrays.values()))


def slice_state(state: Optional[dict[str, Any]], start: int, stop: int) -> Optional[dict[str, Any]]:
    return None if state is None else {k: v[start:stop] for k, v in state.items()}


def export_state(program: Program, state: dict[str, Any]) -> Any:
    """The public form of a state: one array, or the Mamba-3 dict."""
    return state["h"] if "h" in state else dict(state)


# -- segments -------------------------------------------------------------------------------


def resets_from_seq_idx(seq_idx: Any, batch: int, seqlen: int) -> np.ndarray:
    """Boolean ``(batch, seqlen)``: True where a token starts a new segment (never at t = 0)."""
    if not (is_torch(seq_idx) or isinstance(seq_idx, np.ndarray)):
        raise TypeError(f"seq_idx must be an integer array, got {type(seq_idx).__name__}")
    if _kind_of(seq_idx) != "int":
        raise TypeError(f"seq_idx must hold integers, got dtype {seq_idx.dtype}")
    idx = to_numpy(seq_idx)
    if idx.shape != (batch, seqlen):
        raise ValueError(f"seq_idx must have shape (batch, seqlen) = {(batch, seqlen)}, got {idx.shape}")
    resets = np.zeros((batch, seqlen), dtype=bool)
    resets[:, 1:] = idx[:, 1:] != idx[:, :-1]
    return resets


def check_cu_seqlens(cu_seqlens: Any, batch: int, seqlen: int) -> np.ndarray:
    """Validate ``cu_seqlens`` ((num_seqs + 1,) int, 0 ... seqlen, non-decreasing) and return it."""
    if not (is_torch(cu_seqlens) or isinstance(cu_seqlens, np.ndarray)):
        raise TypeError(f"cu_seqlens must be an integer array, got {type(cu_seqlens).__name__}")
    if _kind_of(cu_seqlens) != "int":
        raise TypeError(f"cu_seqlens must hold integers, got dtype {cu_seqlens.dtype}")
    cu = to_numpy(cu_seqlens).astype(np.int64)
    if cu.ndim != 1 or cu.size < 2:
        raise ValueError(f"cu_seqlens must have shape (num_seqs + 1,) with num_seqs >= 1, got shape {cu.shape}")
    if batch != 1:
        raise ValueError(f"with cu_seqlens the batch must be 1 (sequences packed along seqlen), got batch = {batch}")
    if cu[0] != 0 or cu[-1] != seqlen or np.any(np.diff(cu) < 0):
        raise ValueError(f"cu_seqlens must rise from 0 to seqlen = {seqlen} without decreasing, got {cu.tolist()}")
    return cu


Runner = Callable[[Bound, Optional[dict[str, Any]], Optional[np.ndarray]], tuple[Any, dict[str, Any]]]


def run_segments(
    run: Runner,
    bound: Bound,
    initial_state: Any,
    cu_seqlens: Any,
    seq_idx: Any,
    *,
    allow_seq_idx: bool = True,
) -> tuple[Any, Any]:
    """Apply ``run(bound, state, resets) -> (out, final_state)`` with the segment rules.

    ``cu_seqlens``: each packed sequence is run on its own with its own initial-state row;
    outputs are concatenated along seqlen and final states stacked ``(num_seqs, ...)``.
    ``seq_idx``: ``run`` receives a ``(batch, seqlen)`` boolean reset mask (state set to 0
    before a token that starts a new segment). Returns ``(out, public final state)``.
    """
    program, ops = bound.program, bound.ops
    if cu_seqlens is not None and seq_idx is not None:
        raise ValueError("give cu_seqlens or seq_idx, not both")
    if seq_idx is not None and not allow_seq_idx:
        raise ValueError("this form does not take seq_idx")
    if cu_seqlens is None:
        state = bind_state(bound, initial_state, bound.batch)
        resets = None if seq_idx is None else resets_from_seq_idx(seq_idx, bound.batch, bound.seqlen)
        out, final = run(bound, state, resets)
        return out, export_state(program, final)
    cu = check_cu_seqlens(cu_seqlens, bound.batch, bound.seqlen)
    num_seqs = cu.size - 1
    state = bind_state(bound, initial_state, num_seqs)
    axis = output_seqlen_axis(program)
    outs, finals = [], []
    for i in range(num_seqs):
        sub = slice_time(bound, int(cu[i]), int(cu[i + 1]))
        out, final = run(sub, slice_state(state, i, i + 1), None)
        outs.append(out)
        finals.append(final)
    out = ops.concat(outs, axis)
    final = {key: ops.concat([f[key] for f in finals], 0) for key in finals[0]}
    return out, export_state(program, final)
