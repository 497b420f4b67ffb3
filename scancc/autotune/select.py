"""``best_schedule``: the schedule to launch with, looked up in memory, the cache, the shipped
defaults, or tuned on a miss when ``SCANCC_AUTOTUNE=1``.

Environment:

- ``SCANCC_AUTOTUNE``: ``1`` tunes on a cache miss (and stores the result); ``0`` (default)
  uses the shipped default or the backend's default schedule.
- ``SCANCC_AUTOTUNE_BUDGET``: seconds one tuning on a miss may take (default 30).
- ``SCANCC_CACHE_DIR``: where the cache lives (see :mod:`scancc.autotune.cache`).

Tuning never happens while ``torch.compile`` traces (``torch.compiler.is_compiling()``) or
while a CUDA graph is being captured: those calls get the best schedule known without
tuning, and are not memoised, so a later eager call may still tune.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Optional

import torch

from .. import __version__ as SCANCC_VERSION
from ..backends.base import Backend
from ..ir import Program, Schedule
from .cache import CacheKey, Record, ScheduleCache, now, shape_bucket, shipped_lookup
from .device import DeviceLike, DeviceLimits, resolve_device
from .problem import DtypeLike, Problem
from .space import space_for_default
from .target import BackendLike, backend_version, resolve_backend
from .tuner import TuneResult, tune

_MEMO: dict[tuple[object, ...], Schedule] = {}


class AutotuneWarning(UserWarning):
    """Tuning on a cache miss failed; the default schedule is used."""


_DEPENDENT_MEMOS: list[Any] = []


def clear_memo() -> None:
    """Forget memoised choices (after the cache or the environment changed), and what other
    memos derived from them (see :func:`register_dependent_memo`)."""
    _MEMO.clear()
    for memo in _DEPENDENT_MEMOS:
        memo.clear()


def register_dependent_memo(memo: Any) -> None:
    """Have :func:`clear_memo` also clear ``memo`` (anything with ``clear()``), which keeps
    results derived from :func:`choose_schedule` answers that were ``final``."""
    _DEPENDENT_MEMOS.append(memo)


def autotune_enabled() -> bool:
    value = os.environ.get("SCANCC_AUTOTUNE", "0").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"SCANCC_AUTOTUNE must be 0 or 1, got {value!r}")


def _budget_seconds() -> float:
    text = os.environ.get("SCANCC_AUTOTUNE_BUDGET", "30")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"SCANCC_AUTOTUNE_BUDGET must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"SCANCC_AUTOTUNE_BUDGET must be positive, got {text!r}")
    return value


def tuning_blocked() -> bool:
    """True while ``torch.compile`` traces or the current CUDA stream captures a graph."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def pin_items(pin: Optional[Mapping[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """``pin`` as sorted ``(field, value)`` pairs (empty for ``None``)."""
    if pin is None:
        return ()
    if not isinstance(pin, Mapping):
        raise TypeError(f"pin must be a mapping of schedule field to value, got {type(pin).__name__}")
    return tuple(sorted(pin.items()))


def cache_key(problem: Problem, backend: Backend, limits: DeviceLimits,
              pin: Optional[Mapping[str, Any]] = None) -> CacheKey:
    """The key of ``problem`` on ``backend`` and this device; pinned schedule fields are part
    of the bucket (``"... bf16 chunk=256"``), so schedules tuned under different pins never mix."""
    bucket = " ".join([shape_bucket(problem), *(f"{k}={v}" for k, v in pin_items(pin))])
    return CacheKey(device=limits.name, arch=limits.arch, backend=backend.name,
                    backend_version=backend_version(backend), scancc_version=SCANCC_VERSION,
                    program=problem.program.hash, bucket=bucket)


def record_of(result: TuneResult, key: CacheKey) -> Record:
    return Record(key=key, schedule=result.best.schedule, time_s=result.best.time_s,
                  default_time_s=result.default.time_s, shape=result.problem.shape,
                  program_name=result.problem.program.name, tuned_at=now())


def tune_and_store(
    program: Program,
    backend: BackendLike,
    shapes: Mapping[str, int],
    *,
    dtype: DtypeLike = "fp32",
    device: DeviceLike = None,
    cache: Optional[ScheduleCache] = None,
    **tune_options: object,
) -> TuneResult:
    """:func:`~scancc.autotune.tune`, then store the winner in the cache (when it ran correctly).

    ``tune_options`` go to :func:`~scancc.autotune.tune` (``budget``, ``trials``, ``limits``…).
    """
    be = resolve_backend(backend)
    result = tune(program, be, shapes, dtype=dtype, device=device, **tune_options)  # type: ignore[arg-type]
    if result.best.status == "ok":
        store = cache if cache is not None else ScheduleCache()
        pin = tune_options.get("pin")
        store.put([record_of(result, cache_key(result.problem, be, result.device, pin))])  # type: ignore[arg-type]
        clear_memo()
    return result


def best_schedule(
    program: Program,
    backend: BackendLike,
    shapes: Mapping[str, int],
    device: DeviceLike = None,
    dtype: DtypeLike = "fp32",
    pin: Optional[Mapping[str, Any]] = None,
) -> Schedule:
    """The schedule to launch ``program`` with on ``backend`` at ``shapes`` (see :func:`choose_schedule`)."""
    return choose_schedule(program, backend, shapes, device, dtype, pin)[0]


def choose_schedule(
    program: Program,
    backend: BackendLike,
    shapes: Mapping[str, int],
    device: DeviceLike = None,
    dtype: DtypeLike = "fp32",
    pin: Optional[Mapping[str, Any]] = None,
) -> tuple[Schedule, bool]:
    """The schedule to launch ``program`` with on ``backend`` at ``shapes``, and whether the
    answer is final (a later call with the same arguments gets the same one until
    :func:`clear_memo`; not final: a default chosen while tuning was blocked).

    Looks in order at: the in-process memo (exact shapes), the cache file, then either a
    fresh tuning (with ``SCANCC_AUTOTUNE=1``, not while compiling or capturing) or the
    shipped defaults, and finally ``backend.default_schedule(program)``. A stored schedule
    is used only if it satisfies the search space's constraints at these exact shapes.
    ``shapes`` maps the program's symbolic dimensions to sizes (see :class:`Problem`).
    ``pin`` holds schedule fields the caller fixes (``{"chunk": 256}``): the answer always has
    them, and only schedules tuned under the same pin are looked up.
    """
    pins = pin_items(pin)
    name = backend if isinstance(backend, str) else backend.name
    device_token: object = device
    current = device is None or device == "cuda"
    if current or (isinstance(device, torch.device) and device.type == "cuda" and device.index is None):
        # "the current device": which one that is belongs in the key
        device_token = (device, torch.cuda.current_device()) if torch.cuda.is_initialized() else device
    tune_on_miss = autotune_enabled()
    memo_key = (program.hash, name, tuple(sorted(shapes.items())), device_token, dtype, tune_on_miss, pins)
    hit = _MEMO.get(memo_key)
    if hit is not None:
        return hit, True
    schedule, final = _resolve(program, backend, shapes, device, dtype, tune_on_miss, dict(pins))
    if final:
        _MEMO[memo_key] = schedule
    return schedule, final


def _resolve(program: Program, backend: BackendLike, shapes: Mapping[str, int], device: DeviceLike,
             dtype: DtypeLike, tune_on_miss: bool, pin: dict[str, Any]) -> tuple[Schedule, bool]:
    """The schedule, and whether it may be memoised."""
    be = resolve_backend(backend)
    problem = Problem.make(program, shapes, dtype)
    dev = resolve_device(device)
    limits = DeviceLimits.from_torch(dev)
    default = be.default_schedule(program).replace(**pin)
    space = space_for_default(program, be.name, default)
    key = cache_key(problem, be, limits, pin)

    def usable(record: Optional[Record]) -> bool:
        return (record is not None and all(getattr(record.schedule, k) == v for k, v in pin.items())
                and space.admits(record.schedule, problem, limits) and be.supports(program, record.schedule))

    record = ScheduleCache().lookup(key)
    if usable(record):
        return record.schedule, True  # type: ignore[union-attr]
    if tune_on_miss and tuning_blocked():
        shipped = shipped_lookup(key)
        return (shipped.schedule if usable(shipped) else default), False  # type: ignore[union-attr]
    if tune_on_miss:
        try:
            result = tune_and_store(program, be, shapes, dtype=dtype, device=dev, budget=_budget_seconds(),
                                    pin=pin or None)
        except Exception as exc:  # noqa: BLE001 - a failed tuning must not take the model down
            warnings.warn(f"autotuning {problem.describe()} on {be.name} failed ({type(exc).__name__}: {exc}); "
                          "using the default schedule", AutotuneWarning, stacklevel=3)
            return default, True
        return (result.best.schedule if result.best.status == "ok" else default), True
    shipped = shipped_lookup(key)
    return (shipped.schedule if usable(shipped) else default), True
