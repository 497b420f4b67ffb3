"""Random, physically sensible inputs and states for any program.

Decays land in (0, 1) (``Re A < 0``, ``Δ > 0``, LRU ``|λ| < 1``), so every form of the
recurrence stays well conditioned and tests compare meaningful numbers.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from ..ir import Program, TensorSpec
from .common import step_size
from .signature import Bound, bind, state_shapes
from .xp import NumpyOps, TWO_PI

_COMPLEX_OF = {np.dtype(np.float32): np.complex64, np.dtype(np.float64): np.complex128}

# Ranges (Δ target and A) chosen so decays exp(Δ·A) spread over about (0.1, 0.99).
_DELTA = (0.05, 1.0)
_NEG_A = (0.2, 2.0)


def _inv_softplus(y: np.ndarray) -> np.ndarray:
    return np.log(np.expm1(y))


def _normal(rng: np.random.Generator, shape: tuple[int, ...], complex: bool) -> np.ndarray:
    if complex:
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2.0)
    return rng.standard_normal(shape)


def _inside_unit_disk(rng: np.random.Generator, shape: tuple[int, ...], complex: bool) -> np.ndarray:
    radius = rng.uniform(0.3, 0.99, shape)
    return radius * np.exp(1j * rng.uniform(-np.pi, np.pi, shape)) if complex else radius


def _continuous_decay(rng: np.random.Generator, shape: tuple[int, ...], complex: bool) -> np.ndarray:
    real = -rng.uniform(*_NEG_A, shape)
    return real + 1j * rng.uniform(-3.0, 3.0, shape) if complex else real


def _step_inputs(program: Program, rng: np.random.Generator, dt_shape: tuple[int, ...],
                 bias_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The pre-activation step input and its bias so that Δ falls in about ``_DELTA``."""
    step = program.step
    if step is None:
        raise ValueError(f"program {program.name!r} has no step (Δ) input")
    if step.softplus:
        if step.bias:
            bias = _inv_softplus(rng.uniform(0.1, 0.5, bias_shape))
            return rng.normal(0.0, 0.5, dt_shape), bias
        return _inv_softplus(rng.uniform(*_DELTA, dt_shape)), np.zeros(bias_shape)
    if step.bias:
        return rng.uniform(_DELTA[0], _DELTA[1] - 0.1, dt_shape), rng.uniform(0.0, 0.1, bias_shape)
    return rng.uniform(*_DELTA, dt_shape), np.zeros(bias_shape)


def _sizes(program: Program, batch: int, seqlen: int, dim: int, dstate: int, groups: int, heads: int,
           headdim: int, rank: Optional[int], pairs: Optional[int]) -> dict[str, int]:
    if rank is not None and rank != program.input.rank:
        raise ValueError(f"rank = {rank} does not match program {program.name!r} (rank {program.input.rank})")
    if program.readout.kind == "state":
        dstate = 1
    if pairs is None:
        pairs = max(1, dstate // 4) if program.rotary is not None else 0
    sizes = {"batch": batch, "seqlen": seqlen, "dim": dim, "dstate": dstate, "groups": groups, "heads": heads,
             "headdim": headdim, "rank": program.input.rank, "pairs": pairs}
    for name in ("batch", "dim", "dstate", "groups", "heads", "headdim"):
        if sizes[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {sizes[name]}")
    if seqlen < 0:
        raise ValueError(f"seqlen must be >= 0, got {seqlen}")
    owner = "dim" if program.layout == "channel" else "heads"
    if sizes[owner] % groups:
        raise ValueError(f"groups = {groups} must divide {owner} = {sizes[owner]}")
    if program.rotary is not None and (2 * pairs > dstate or (program.rotary.pairing == "halves" and dstate % 2)):
        raise ValueError(f"rotary needs pairs <= dstate / 2 (even dstate for 'halves'); got pairs = {pairs}, "
                         f"dstate = {dstate}")
    return sizes


def random_inputs(
    program: Program,
    rng: np.random.Generator,
    *,
    batch: int = 2,
    seqlen: int = 16,
    dim: int = 4,
    dstate: int = 4,
    groups: int = 1,
    heads: int = 2,
    headdim: int = 4,
    rank: Optional[int] = None,
    pairs: Optional[int] = None,
    dtype: Any = np.float64,
) -> dict[str, np.ndarray]:
    """Random inputs for every tensor of ``program.tensors()`` (optional ones included).

    Shapes follow the symbolic dims with the sizes given (``dstate`` is forced to 1 for
    ``y = h`` scans; ``rank`` defaults to the program's; ``pairs`` to ``max(1, dstate // 4)``
    with rotary, else 0). Real tensors come as ``dtype``, complex ones as its complex
    counterpart. Values: ``x``/``u``/``B``/``C``/``z``/``D``/``W_*`` standard normal; Δ in
    about (0.05, 1) after bias/softplus; ``A`` (and LTI ``λ``) with real part in (−2, −0.2);
    given decays (``a``, LRU ``λ``) of modulus in (0.3, 0.99); Mamba-3 ``adt = Δ·A_t`` with a
    data-dependent ``A_t`` in (−2, −0.2), GLA's per-key ``adt`` likewise.
    """
    dtype = np.dtype(dtype)
    if dtype not in _COMPLEX_OF:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    sizes = _sizes(program, batch, seqlen, dim, dstate, groups, heads, headdim, rank, pairs)
    specs = {s.name: s for s in program.tensors()}

    def shape(name: str) -> tuple[int, ...]:
        return tuple(sizes[d] for d in specs[name].dims)

    complex_state = program.state.complex
    out: dict[str, np.ndarray] = {}
    if program.step is not None:
        dt_name, bias_name = ("delta", "delta_bias") if program.layout == "channel" else ("dt", "dt_bias")
        bias_shape = (sizes["dim"],) if program.layout == "channel" else (sizes["heads"],)
        out[dt_name], bias = _step_inputs(program, rng, shape(dt_name), bias_shape)
        if bias_name in specs:
            out[bias_name] = bias
    for name, spec in specs.items():
        if name in out or name == "adt":
            continue
        out[name] = _sample(program, spec, shape(name), rng, complex_state)
    if "adt" in specs:
        delta = step_size(NumpyOps, program, out["dt"], out.get("dt_bias"), 1)  # (batch, seqlen, heads)
        rate = -rng.uniform(*_NEG_A, shape("adt"))
        out["adt"] = rate * (delta if rate.ndim == delta.ndim else delta[..., None])
    return {name: _cast(value, dtype) for name, value in out.items() if name in specs}


def _sample(program: Program, spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator,
            complex_state: bool) -> np.ndarray:
    name, dec = spec.name, program.decay
    is_complex = spec.dtype == "complex"
    if name == "a":
        return _inside_unit_disk(rng, shape, is_complex)
    if name == "A":
        if dec.kind == "lti" and dec.discretization == "none":
            return _inside_unit_disk(rng, shape, is_complex)
        return _continuous_decay(rng, shape, is_complex)
    if name == "trap":
        return rng.normal(0.0, 1.5, shape)
    if name == "angles":
        return rng.normal(0.0, 1.0, shape)
    if name in ("B_bias", "C_bias"):
        return 0.5 * rng.standard_normal(shape)
    return _normal(rng, shape, is_complex)


def _cast(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.iscomplexobj(value):
        return value.astype(_COMPLEX_OF[dtype])
    return value.astype(dtype)


def random_state(
    program: Program,
    rng: np.random.Generator,
    *,
    inputs: Optional[Mapping[str, Any]] = None,
    rows: Optional[int] = None,
    batch: int = 2,
    dim: int = 4,
    dstate: int = 4,
    heads: int = 2,
    headdim: int = 4,
    rank: Optional[int] = None,
    pairs: Optional[int] = None,
    dtype: Any = np.float64,
) -> Any:
    """A random initial state for ``program`` (the form :func:`scancc.oracle.sequential` takes).

    Dimensions come from ``inputs`` when given (else from the keywords); ``rows`` overrides
    the leading size (``num_seqs`` for ``cu_seqlens``). Vector/matrix states: one array
    (complex for complex states); Mamba-3: the dict ``{"angle", "ssm", "k", "x"}`` with
    angles in [0, 2π).
    """
    dtype = np.dtype(dtype)
    if dtype not in _COMPLEX_OF:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if inputs is not None:
        np_inputs = {k: v for k, v in inputs.items() if v is not None}
        dims = bind(program, np_inputs).dims
    else:
        dims = _sizes(program, batch, 1, dim, dstate, 1, heads, headdim, rank, pairs)
    n_rows = rows if rows is not None else dims["batch"]
    shapes = state_shapes(Bound(program, NumpyOps, {}, dims), n_rows)
    if "h" in shapes:
        return _cast(_normal(rng, shapes["h"], program.state.complex), dtype)
    out = {key: _normal(rng, shape, False) for key, shape in shapes.items()}
    out["angle"] = rng.uniform(0.0, TWO_PI, shapes["angle"])
    return {key: _cast(value, dtype) for key, value in out.items()}


def as_torch(arrays: Any, *, device: Any = None, requires_grad: bool = False) -> Any:
    """Torch tensors from NumPy arrays (a dict, or one array); dtypes kept."""
    import torch

    if isinstance(arrays, Mapping):
        return {k: as_torch(v, device=device, requires_grad=requires_grad) for k, v in arrays.items()}
    if arrays is None:
        return None
    return torch.tensor(np.asarray(arrays), device=device, requires_grad=requires_grad)
