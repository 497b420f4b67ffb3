"""The eager fast path: what a repeated op call may skip, and the memo it keys on.

A serving loop calls the same op with tensors of the same shapes thousands of times. Every
argument check of the ops reads only tensor *metadata* (shape, strides, dtype, device) and
plain values, so a call whose :func:`signature` equals an earlier, accepted call's passes the
same checks: the ops keep what they derived from the checks in a :class:`Memo` under that
signature. ``cu_seqlens`` is the exception (its values are checked on the host), so calls
that pass it take no memo.

:func:`eager_mode` says when an op may also run without the ``torch.library`` dispatcher
(and its Python autograd layer): in eager mode with no tracing, dispatch mode or functorch
transform that would need to see the op, directly when no gradient is recorded, else
through a ``torch.autograd.Function`` that keeps the forward's saved state for the backward.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Hashable, Iterable, Optional, TypeVar

import torch

V = TypeVar("V")

MEMO_ENTRIES = 256
"""Distinct argument signatures one memo keeps (a model has a few per op; beyond this the
memo starts over rather than grow without bound)."""


def signature(values: Iterable[Any]) -> tuple[Any, ...]:
    """The metadata of ``values`` that argument checks read: per tensor its shape, strides,
    dtype, device and storage offset's parity (complex views need an even one); other
    values with their type (an unhashable one makes the key unusable: :meth:`Memo.get_or_make`
    then only calls ``make``)."""
    return tuple(
        (v.shape, v.stride(), v.dtype, v.device, v.storage_offset() & 1) if isinstance(v, torch.Tensor)
        else (type(v), v)  # the type too: 1 == True, but a check may accept only one of them
        for v in values
    )


def eager_mode(tensors: Iterable[Optional[torch.Tensor]]) -> Optional[str]:
    """How an op may run without the dispatcher: ``"direct"`` (call the implementation: no
    gradient to record), ``"autograd"`` (through a ``torch.autograd.Function``: a gradient to
    record), or ``None`` (through the dispatcher: traced by ``torch.compile``, under a Python
    dispatch or function mode or a functorch transform, or given a tensor subclass such as a
    fake tensor)."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() \
            or torch._C._is_torch_function_mode_enabled() or torch._C._functorch.peek_interpreter_stack() is not None:
        return None
    grad = torch.is_grad_enabled()
    needs_grad = False
    for t in tensors:
        if t is None:
            continue
        if type(t) is not torch.Tensor:
            return None
        needs_grad = needs_grad or (grad and t.requires_grad)
    return "autograd" if needs_grad else "direct"


def plain_eager(tensors: Iterable[Optional[torch.Tensor]]) -> bool:
    """Whether an op may call its implementation directly (:func:`eager_mode` is ``"direct"``)."""
    return eager_mode(tensors) == "direct"


_MISSING: Any = object()


class Memo(Generic[V]):
    """A bounded map from argument signatures to what an op derived from them."""

    def __init__(self, entries: int = MEMO_ENTRIES) -> None:
        self._entries = entries
        self._values: dict[Hashable, V] = {}

    def get(self, key: Hashable) -> Optional[V]:
        """The value stored under ``key`` (``None`` if none is)."""
        return self._values.get(key)

    def put(self, key: Hashable, value: V) -> None:
        """Store ``value`` under ``key`` (starting over when the memo is full)."""
        if len(self._values) >= self._entries:
            self._values.clear()
        self._values[key] = value

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        """The value stored under ``key``, else ``make()`` stored under it (an exception
        raised by ``make`` stores nothing; an unhashable key stores nothing either)."""
        try:
            value = self._values.get(key, _MISSING)
        except TypeError:
            return make()
        if value is _MISSING:
            value = make()
            self.put(key, value)
        return value

    def __len__(self) -> int:
        return len(self._values)

    def clear(self) -> None:
        self._values.clear()
