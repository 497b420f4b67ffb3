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
    """A backend object for ``backend`` (returned as is when it already is one).

    Names are looked up through ``scancc.backends.get_backend(name)`` when the package
    provides it, else in the module ``scancc.backends.<name>``, which must expose a
    ``BACKEND`` object (or a ``Backend`` class taking no arguments).
    """
    if not isinstance(backend, str):
        for attr in ("name", "default_schedule", "lower", "build"):
            if not hasattr(backend, attr):
                raise TypeError(f"backend must be a name or a Backend (missing {attr!r}), got {type(backend).__name__}")
        return backend
    import scancc.backends as pkg

    getter = getattr(pkg, "get_backend", None)
    if callable(getter):
        return getter(backend)
    try:
        module = importlib.import_module(f"scancc.backends.{backend}")
    except ModuleNotFoundError as exc:
        if exc.name != f"scancc.backends.{backend}":
            raise
        raise ValueError(f"unknown backend {backend!r}: there is no module scancc.backends.{backend}") from None
    obj = getattr(module, "BACKEND", None)
    if obj is None and isinstance(getattr(module, "Backend", None), type):
        obj = module.Backend()
    if obj is None:
        raise ValueError(f"backend module scancc.backends.{backend} exposes neither BACKEND nor a Backend class")
    return obj


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

