"""The known backends, imported lazily: adding one is one line in :data:`BACKENDS`."""

from __future__ import annotations

import functools
import importlib

from .base import Backend

# name -> "module:attribute" of a class whose instances implement the Backend protocol.
BACKENDS: dict[str, str] = {
    "triton": "scancc.backends.triton:TritonBackend",
    "tvm": "scancc.backends.tvm:TVMBackend",
    "cuda": "scancc.backends.cuda:CUDABackend",
}


def known_backends() -> tuple[str, ...]:
    return tuple(BACKENDS)


@functools.cache
def get_backend(name: str) -> Backend:
    """The backend called ``name``; ``ValueError`` naming the known ones if there is none.

    Importing the backend's module does not need its runtime (e.g. Triton): that is
    checked by :meth:`Backend.available` when something is built.
    """
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(map(repr, BACKENDS))}")
    module_name, attr = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), attr)()
