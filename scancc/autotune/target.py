"""Resolve a backend name to a :class:`~scancc.backends.base.Backend` and name its version."""

from __future__ import annotations

import importlib
from typing import Union

from ..backends.base import Backend, CompiledScan
from ..ir import Program, Schedule

BackendLike = Union[str, Backend]

# Runtime packages whose version decides which schedule is fastest, per backend name.
_RUNTIMES = {"triton": "triton", "tvm": "tvm", "cuda": "cupy"}


def resolve_backend(backend: BackendLike) -> Backend:
    """The registered backend called ``backend`` (:func:`scancc.backends.registry.get_backend`),
    or ``backend`` itself when it already is a backend object."""
    if isinstance(backend, str):
        from ..backends import registry

        return registry.get_backend(backend)
    for attr in ("name", "default_schedule", "supports", "lower", "build"):
        if not hasattr(backend, attr):
            raise TypeError(f"backend must be a name or a Backend (missing {attr!r}), got {type(backend).__name__}")
    return backend


def backend_version(backend: Backend) -> str:
    """``backend.version`` if it has one, else its runtime package's ``__version__`` (``"unknown"`` if neither)."""
    version = getattr(backend, "version", None)
    if isinstance(version, str) and version:
        return version
    module = _RUNTIMES.get(backend.name)
    if module is not None:
        try:
            return f"{module}-{importlib.import_module(module).__version__}"
        except ImportError:
            pass
    return "unknown"


def compile_with(backend: Backend, program: Program, schedule: Schedule) -> CompiledScan:
    """Lower and build ``program`` with ``schedule`` (the backend contract, no compiler-level caching)."""
    if not backend.supports(program, schedule):
        raise ValueError(f"backend {backend.name!r} does not support {program.name!r} with {schedule}")
    source = backend.lower(program, schedule)
    return backend.build(program, schedule, source)

