"""``scancc.compile``: a program and a schedule in, a :class:`CompiledScan` out.

Compiled scans are cached in-process by ``(program hash, schedule, backend)``, so
calling :func:`compile` again (e.g. from every op call) costs a dictionary lookup.

Which backend runs a program (:func:`default_backend`), first match wins:

1. an explicit ``backend=`` (of :func:`compile` or of an op in :mod:`scancc.ops`);
2. ``$SCANCC_BACKEND``;
3. the device of the tensors: CUDA → ``"triton"``; CPU → ``"tvm"`` when Apache TVM is
   installed (native code for the host), else ``"triton"`` under its interpreter, with a
   one-time notice (slow: a Python loop over the kernel);
4. no device known (:func:`compile` without ``device=``): ``"triton"``.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any, Optional

from .backends.base import CompiledScan
from .backends.registry import get_backend, known_backends
from .ir import Program, Schedule

BACKEND_ENV = "SCANCC_BACKEND"
DEFAULT_BACKEND = "triton"
CPU_BACKEND = "tvm"

# The pip extra that installs each backend's runtime (pyproject.toml's optional-dependencies).
EXTRAS = {"triton": "triton", "tvm": "tvm", "cuda": "cuda"}

_cache: dict[tuple[str, Schedule, str], CompiledScan] = {}
_lock = threading.Lock()
_notified: set[str] = set()


class InterpreterNotice(UserWarning):
    """CPU tensors run on the Triton interpreter because TVM is not installed."""


def _device_type(device: Any) -> Optional[str]:
    if device is None:
        return None
    if isinstance(device, str):
        return device.split(":")[0]
    return getattr(device, "type", None)


def default_backend(device: Any = None) -> str:
    """The backend for tensors on ``device`` (a ``torch.device``, ``"cpu"``, ``"cuda:0"`` or
    ``None``): ``$SCANCC_BACKEND`` if set; else ``"triton"`` for CUDA (and for an unknown
    device); for CPU ``"tvm"`` when TVM is installed, else ``"triton"`` (interpreter) with a
    one-time :class:`InterpreterNotice`."""
    env = os.environ.get(BACKEND_ENV)
    if env:
        return env
    if _device_type(device) != "cpu":
        return DEFAULT_BACKEND
    if get_backend(CPU_BACKEND).available():
        return CPU_BACKEND
    if CPU_BACKEND not in _notified:
        _notified.add(CPU_BACKEND)
        warnings.warn(f"scancc: CPU tensors run on the Triton interpreter (slow) because the TVM backend is not "
                      f"installed; for native CPU kernels: {install_hint(CPU_BACKEND)}", InterpreterNotice,
                      stacklevel=3)
    return DEFAULT_BACKEND


def install_hint(name: str) -> str:
    """The pip command that installs backend ``name``'s runtime."""
    return f"pip install 'scancc[{EXTRAS.get(name, name)}]'"


def require_available(name: str) -> None:
    """``ImportError`` naming the extra to install when backend ``name``'s runtime is missing."""
    if not get_backend(name).available():
        raise ImportError(f"the {name!r} backend needs its runtime, which is not installed here: "
                          f"{install_hint(name)}")


def compile(  # noqa: A001 - the public name is scancc.compile
    program: Program,
    backend: Optional[str] = None,
    schedule: Optional[Schedule] = None,
    *,
    device: Any = None,
) -> CompiledScan:
    """Lower ``program`` with ``schedule`` (the backend's default when ``None``) for ``backend``.

    ``backend=None`` takes :func:`default_backend` of ``device`` (``$SCANCC_BACKEND``, else
    ``"tvm"`` for ``device="cpu"`` when TVM is installed, else ``"triton"``). Raises ``TypeError``
    for arguments of the wrong type, ``ValueError`` for an unknown backend or a program or
    schedule the backend cannot lower, and ``ImportError`` when the backend's runtime is
    not installed.
    """
    if not isinstance(program, Program):
        raise TypeError(f"program must be a scancc.ir.Program, got {type(program).__name__}")
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a scancc.ir.Schedule or None, got {type(schedule).__name__}")
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a backend name (str) or None, got {type(backend).__name__}")
    name = default_backend(device) if backend is None else backend
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
    require_available(name)
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
