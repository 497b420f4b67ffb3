"""Comparing results with the float64 oracle: relative L2 error and the tolerance table."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .xp import to_numpy

# recurrences.md, "Oracle tolerances" (relative L2 error against float64).
TOLERANCES: dict[str, float] = {
    "fp32_sequential": 1e-5,  # fp32 math, sequential / scan schedules
    "fp32_chunked": 1e-4,     # fp32 math, chunked (matmul) schedules
    "tf32": 1e-3,             # tf32 dot products
    "bf16": 2e-2,             # bf16 inputs
    "fp16": 2e-2,             # fp16 inputs
}
# The same by dtype name (float32: the sequential figure; use tolerance() to pick the chunked one).
TOLERANCES.update(float32=TOLERANCES["fp32_sequential"], bfloat16=TOLERANCES["bf16"], float16=TOLERANCES["fp16"])


def tolerance(dtype: Any, *, chunked: bool = False, tf32: bool = False) -> float:
    """The tolerance for results computed from inputs of ``dtype`` (a NumPy or torch dtype or
    its name: float32, bfloat16, float16, complex64)."""
    if isinstance(dtype, str):
        name = dtype
    elif isinstance(dtype, type) or isinstance(dtype, np.dtype):
        name = np.dtype(dtype).name
    else:
        name = str(dtype).replace("torch.", "")
    if name in ("bfloat16", "bf16"):
        return TOLERANCES["bf16"]
    if name in ("float16", "half", "fp16"):
        return TOLERANCES["fp16"]
    if name in ("float32", "complex64", "fp32", "float"):
        if tf32:
            return TOLERANCES["tf32"]
        return TOLERANCES["fp32_chunked" if chunked else "fp32_sequential"]
    raise ValueError(f"no tolerance for dtype {dtype!r}; expected float32, complex64, bfloat16 or float16")


def rel_l2(out: Any, ref: Any) -> float:
    """``‖out − ref‖₂ / ‖ref‖₂`` in float64 (complex values by modulus).

    Takes NumPy arrays or torch tensors (any dtype, any device; detached), or mappings of
    them with the same keys (Mamba-3 states: the largest error over the entries; an entry
    named ``angle`` holds angles mod 2π and is compared as ``e^{iφ}``, so 2π − ε and ε agree). NaN
    anywhere in ``out`` or ``ref`` gives ``inf``, so NaN never passes a tolerance. A zero
    reference gives 0 when ``out`` is also exactly zero, else ``inf``.
    """
    if isinstance(out, Mapping) or isinstance(ref, Mapping):
        if not (isinstance(out, Mapping) and isinstance(ref, Mapping)):
            raise TypeError("rel_l2: out and ref must both be mappings or both arrays")
        if set(out) != set(ref):
            raise ValueError(f"rel_l2: keys differ: out has {sorted(out)}, ref has {sorted(ref)}")
        return max((_angle_rel_l2(out[k], ref[k]) if k == "angle" else rel_l2(out[k], ref[k]) for k in out),
                   default=0.0)
    a, b = to_numpy(out), to_numpy(ref)
    if a is None or b is None:
        raise TypeError("rel_l2: out and ref must be arrays, got None")
    if a.shape != b.shape:
        raise ValueError(f"rel_l2: shapes differ: out {a.shape}, ref {b.shape}")
    a = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
    b = b.astype(np.complex128 if np.iscomplexobj(b) else np.float64)
    if np.isnan(a).any() or np.isnan(b).any():
        return math.inf
    diff = float(np.linalg.norm((a - b).ravel()))
    norm = float(np.linalg.norm(b.ravel()))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    if not math.isfinite(diff):
        return math.inf
    return diff / norm


def _angle_rel_l2(out: Any, ref: Any) -> float:
    a, b = to_numpy(out), to_numpy(ref)
    if a is None or b is None:
        raise TypeError("rel_l2: angle entries must be arrays, got None")
    return rel_l2(np.exp(1j * a.astype(np.float64)), np.exp(1j * b.astype(np.float64)))
