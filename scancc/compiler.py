"""``scancc.compile``: a program and a schedule in, a :class:`CompiledScan` out.

Compiled scans are cached in-process by ``(program hash, schedule, backend)``, so
calling :func:`compile` again (e.g. from every op call) costs a dictionary lookup.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

from .backends.base import CompiledScan
from .backends.registry import get_backend, known_backends
from .ir import Program, Schedule

BACKEND_ENV = "SCANCC_BACKEND"
DEFAULT_BACKEND = "triton"

_cache: dict[tuple[str, Schedule, str], CompiledScan] = {}
_lock = threading.Lock()


def default_backend() -> str:
    """``$SCANCC_BACKEND`` if set, else ``"triton"``."""
    return os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND


def compile(  # noqa: A001 - the public name is scancc.compile
    program: Program,
    backend: Optional[str] = None,
    schedule: Optional[Schedule] = None,
) -> CompiledScan:
    """Lower ``program`` with ``schedule`` (the backend's default when ``None``) for ``backend``.

    ``backend=None`` takes ``$SCANCC_BACKEND`` (default ``"triton"``). Raises ``TypeError``
    for arguments of the wrong type, ``ValueError`` for an unknown backend or a program or
    schedule the backend cannot lower, and ``ImportError`` when the backend's runtime is
    not installed.
    """
    if not isinstance(program, Program):
        raise TypeError(f"program must be a scancc.ir.Program, got {type(program).__name__}")
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a scancc.ir.Schedule or None, got {type(schedule).__name__}")
    name = default_backend() if backend is None else backend
    if name not in known_backends():
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(map(repr, known_backends()))}")
    impl = get_backend(name)
    if schedule is None:
        schedule = impl.default_schedule(program)
    key = (program.hash, schedule, name)
    with _lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    if not impl.available():
        raise ImportError(f"the {name!r} backend needs its runtime, which is not installed here: "
                          f"pip install 'scancc[{name}]'")
    if not impl.supports(program, schedule):
        explain = getattr(impl, "unsupported_reason", None)
        reason = explain(program, schedule) if explain is not None else None
        raise ValueError(f"backend {name!r} cannot lower program {program.name!r} ({program.family}) "
                         f"with schedule {schedule.to_json()}" + (f": {reason}" if reason else ""))
    compiled = impl.build(program, schedule, impl.lower(program, schedule))
    with _lock:
        return _cache.setdefault(key, compiled)


def clear_cache() -> None:
    """Forget every compiled scan of this process (generated files on disk stay)."""
    with _lock:
        _cache.clear()
