"""A tiny array-namespace shim so the oracle is written once for NumPy and torch.

The oracle computes in float64/complex128. With NumPy arrays it is a plain reference;
with torch tensors every operation used here is differentiable, so
``torch.autograd`` through the oracle gives float64 reference gradients.
Only out-of-place operations are used (no in-place writes that would break autograd).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

try:  # torch is a dependency of scancc, but the NumPy oracle must not need it
    import torch
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None  # type: ignore[assignment]

TWO_PI = 2.0 * math.pi


def is_torch(value: Any) -> bool:
    return torch is not None and isinstance(value, torch.Tensor)


class NumpyOps:
    """Array operations on NumPy arrays (float64 / complex128)."""

    name = "numpy"

    @staticmethod
    def asfloat(x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    @staticmethod
    def ascomplex(x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.complex128)

    @staticmethod
    def is_complex(x: Any) -> bool:
        return np.iscomplexobj(x)

    @staticmethod
    def zeros(shape: Sequence[int], *, complex: bool = False, like: Any = None) -> np.ndarray:
        return np.zeros(tuple(shape), dtype=np.complex128 if complex else np.float64)

    @staticmethod
    def ones(shape: Sequence[int], *, like: Any = None) -> np.ndarray:
        return np.ones(tuple(shape), dtype=np.float64)

    @staticmethod
    def full(shape: Sequence[int], value: float, *, like: Any = None) -> np.ndarray:
        return np.full(tuple(shape), value, dtype=np.float64)

    @staticmethod
    def arange(n: int, *, like: Any = None) -> np.ndarray:
        return np.arange(n, dtype=np.float64)

    @staticmethod
    def stack(xs: Iterable[Any], axis: int) -> np.ndarray:
        return np.stack(list(xs), axis=axis)

    @staticmethod
    def concat(xs: Iterable[Any], axis: int) -> np.ndarray:
        return np.concatenate(list(xs), axis=axis)

    @staticmethod
    def sum(x: Any, axis: int) -> np.ndarray:
        return np.sum(x, axis=axis)

    @staticmethod
    def cumsum(x: Any, axis: int) -> np.ndarray:
        return np.cumsum(x, axis=axis)

    @staticmethod
    def repeat(x: Any, repeats: int, axis: int) -> np.ndarray:
        return np.repeat(x, repeats, axis=axis)

    @staticmethod
    def moveaxis(x: Any, source: int, dest: int) -> np.ndarray:
        return np.moveaxis(x, source, dest)

    @staticmethod
    def expand_dims(x: Any, axis: int) -> np.ndarray:
        return np.expand_dims(x, axis)

    @staticmethod
    def squeeze(x: Any, axis: int) -> np.ndarray:
        return np.squeeze(x, axis=axis)

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> np.ndarray:
        return np.where(cond, a, b)

    @staticmethod
    def minimum(x: Any, value: float) -> np.ndarray:
        return np.minimum(x, value)

    @staticmethod
    def clip(x: Any, lo: float, hi: float) -> np.ndarray:
        return np.clip(x, lo, hi)

    @staticmethod
    def remainder(x: Any, m: float) -> np.ndarray:
        return np.mod(x, m)

    einsum = staticmethod(np.einsum)
    exp = staticmethod(np.exp)
    log1p = staticmethod(np.log1p)
    sqrt = staticmethod(np.sqrt)
    tanh = staticmethod(np.tanh)
    cos = staticmethod(np.cos)
    sin = staticmethod(np.sin)
    abs = staticmethod(np.abs)
    real = staticmethod(np.real)
    imag = staticmethod(np.imag)
    conj = staticmethod(np.conj)

    @staticmethod
    def sigmoid(x: Any) -> np.ndarray:
        # exp(-|x|) never overflows; sigmoid(+inf) = 1 exactly (Mamba-3's λ ≡ 1 limit).
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    @staticmethod
    def mask(cond: Any, like: Any) -> np.ndarray:
        """A float 0/1 array from a boolean array."""
        return np.asarray(cond, dtype=np.float64)


class TorchOps:
    """The same operations on torch tensors (float64 / complex128, differentiable)."""

    name = "torch"

    @staticmethod
    def asfloat(x: Any) -> "torch.Tensor":
        return x.to(torch.float64)

    @staticmethod
    def ascomplex(x: Any) -> "torch.Tensor":
        return x.to(torch.complex128)

    @staticmethod
    def is_complex(x: Any) -> bool:
        return bool(x.is_complex())

    @staticmethod
    def zeros(shape: Sequence[int], *, complex: bool = False, like: Any = None) -> "torch.Tensor":
        device = like.device if like is not None else None
        return torch.zeros(tuple(shape), dtype=torch.complex128 if complex else torch.float64, device=device)

    @staticmethod
    def ones(shape: Sequence[int], *, like: Any = None) -> "torch.Tensor":
        return torch.ones(tuple(shape), dtype=torch.float64, device=like.device if like is not None else None)

    @staticmethod
    def full(shape: Sequence[int], value: float, *, like: Any = None) -> "torch.Tensor":
        return torch.full(tuple(shape), value, dtype=torch.float64, device=like.device if like is not None else None)

    @staticmethod
    def arange(n: int, *, like: Any = None) -> "torch.Tensor":
        return torch.arange(n, dtype=torch.float64, device=like.device if like is not None else None)

    @staticmethod
    def stack(xs: Iterable[Any], axis: int) -> "torch.Tensor":
        return torch.stack(list(xs), dim=axis)

    @staticmethod
    def concat(xs: Iterable[Any], axis: int) -> "torch.Tensor":
        return torch.cat(list(xs), dim=axis)

    @staticmethod
    def sum(x: Any, axis: int) -> "torch.Tensor":
        return torch.sum(x, dim=axis)

    @staticmethod
    def cumsum(x: Any, axis: int) -> "torch.Tensor":
        return torch.cumsum(x, dim=axis)

    @staticmethod
    def repeat(x: Any, repeats: int, axis: int) -> "torch.Tensor":
        return torch.repeat_interleave(x, repeats, dim=axis)

    @staticmethod
    def moveaxis(x: Any, source: int, dest: int) -> "torch.Tensor":
        return torch.movedim(x, source, dest)

    @staticmethod
    def expand_dims(x: Any, axis: int) -> "torch.Tensor":
        return torch.unsqueeze(x, axis)

    @staticmethod
    def squeeze(x: Any, axis: int) -> "torch.Tensor":
        return torch.squeeze(x, dim=axis)

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> "torch.Tensor":
        return torch.where(cond, a, b)

    @staticmethod
    def minimum(x: Any, value: float) -> "torch.Tensor":
        return torch.clamp(x, max=value)

    @staticmethod
    def clip(x: Any, lo: float, hi: float) -> "torch.Tensor":
        return torch.clamp(x, min=lo, max=None if math.isinf(hi) else hi)

    @staticmethod
    def remainder(x: Any, m: float) -> "torch.Tensor":
        return torch.remainder(x, m)

    @staticmethod
    def einsum(spec: str, *operands: Any) -> "torch.Tensor":
        return torch.einsum(spec, *operands)

    @staticmethod
    def exp(x: Any) -> "torch.Tensor":
        return torch.exp(x)

    @staticmethod
    def log1p(x: Any) -> "torch.Tensor":
        return torch.log1p(x)

    @staticmethod
    def sqrt(x: Any) -> "torch.Tensor":
        return torch.sqrt(x)

    @staticmethod
    def tanh(x: Any) -> "torch.Tensor":
        return torch.tanh(x)

    @staticmethod
    def cos(x: Any) -> "torch.Tensor":
        return torch.cos(x)

    @staticmethod
    def sin(x: Any) -> "torch.Tensor":
        return torch.sin(x)

    @staticmethod
    def abs(x: Any) -> "torch.Tensor":
        return torch.abs(x)

    @staticmethod
    def real(x: Any) -> "torch.Tensor":
        return torch.real(x) if x.is_complex() else x

    @staticmethod
    def imag(x: Any) -> "torch.Tensor":
        return torch.imag(x)

    @staticmethod
    def conj(x: Any) -> "torch.Tensor":
        return torch.conj(x) if x.is_complex() else x

    @staticmethod
    def sigmoid(x: Any) -> "torch.Tensor":
        return torch.sigmoid(x)

    @staticmethod
    def mask(cond: Any, like: Any) -> "torch.Tensor":
        return torch.as_tensor(np.asarray(cond), dtype=torch.float64, device=like.device if like is not None else None)


Ops = Any  # NumpyOps or TorchOps (both used as classes of static methods)


def namespace_of(*groups: Any) -> type:
    """The ops class for the arrays found in ``groups`` (mappings, sequences, arrays or None).

    Raises ``TypeError`` when NumPy arrays and torch tensors are mixed.
    """
    kinds: set[str] = set()

    def visit(value: Any) -> None:
        if value is None:
            return
        if isinstance(value, Mapping):
            for v in value.values():
                visit(v)
        elif is_torch(value):
            kinds.add("torch")
        elif isinstance(value, np.ndarray):
            kinds.add("numpy")

    for group in groups:
        visit(group)
    if len(kinds) > 1:
        raise TypeError("inputs mix NumPy arrays and torch tensors; give all of one kind")
    return TorchOps if kinds == {"torch"} else NumpyOps


def to_numpy(value: Any) -> Optional[np.ndarray]:
    """A NumPy copy of an array or tensor (detached, on the host); None stays None."""
    if value is None:
        return None
    if is_torch(value):
        t = value.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.to(torch.float32)
        return t.numpy()
    return np.asarray(value)


def softplus(ops: Ops, x: Any) -> Any:
    """``log(1 + e^x)``, and ``x`` itself for ``x > 20`` (as mamba-ssm)."""
    return ops.where(x > 20.0, x, ops.log1p(ops.exp(ops.minimum(x, 20.0))))


def silu(ops: Ops, x: Any) -> Any:
    return x * ops.sigmoid(x)
