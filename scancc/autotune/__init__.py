"""Schedule autotuning with a persistent, shareable cache.

- :class:`SearchSpace` / :func:`register_space`: what may be tuned, declared by backends
  (the Triton backend's in :mod:`scancc.backends.triton_space`; a backend ``x`` may put
  its declarations in ``scancc/backends/x_space.py``, imported when first needed).
- :func:`tune`: search a space at one shape behind a correctness gate; :func:`tune_and_store`
  also records the winner.
- :func:`best_schedule` (:func:`choose_schedule`): the schedule to launch with (memo → cache → shipped defaults →
  tuning when ``SCANCC_AUTOTUNE=1`` → backend default).
- :class:`ScheduleCache`: the JSON cache under ``$SCANCC_CACHE_DIR``.
"""

from .cache import CacheKey, CacheWarning, Record, ScheduleCache, cache_dir, shape_bucket, shipped_records
from .device import DeviceLimits
from .problem import SHAPE_PRESETS, Problem, parse_dtype, parse_shape
from .search import Budget, Trial, rel_l2
from .select import (AutotuneWarning, autotune_enabled, best_schedule, cache_key, choose_schedule, clear_memo,
                     tune_and_store)
from .space import Constraint, SearchSpace, generic_space, register_space, space_for, unregister_space
from .target import resolve_backend
from .timing import CudaEventTimer, PerfCounterTimer, Timer
from .tuner import TuneResult, tune

__all__ = [
    "AutotuneWarning", "Budget", "CacheKey", "CacheWarning", "Constraint", "CudaEventTimer", "DeviceLimits",
    "PerfCounterTimer", "Problem", "Record", "SHAPE_PRESETS", "ScheduleCache", "SearchSpace", "Timer", "Trial",
    "TuneResult",
    "autotune_enabled", "best_schedule", "cache_dir", "cache_key", "choose_schedule", "clear_memo", "generic_space",
    "parse_dtype",
    "parse_shape", "register_space", "rel_l2", "resolve_backend", "shape_bucket", "shipped_records",
    "space_for", "tune", "tune_and_store", "unregister_space",
]

