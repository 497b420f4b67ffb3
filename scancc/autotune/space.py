"""Search spaces: which schedules may be tried, and which are pruned before anything compiles.

A :class:`SearchSpace` is a base :class:`~scancc.ir.Schedule` (the fields that stay fixed),
candidate values for some fields, and :class:`Constraint` predicates that see the
candidate, the :class:`~scancc.autotune.problem.Problem` and the
:class:`~scancc.autotune.device.DeviceLimits`. Backends declare their spaces next to
their templates::

    @register_space("triton")
    def _triton_space(program, default):
        if default.algorithm != "chunked_scan":
            return None                       # let the next provider (or the generic space) answer
        return SearchSpace(default, {"block_l": (64, 128, 256), "num_warps": (2, 4, 8)}, (...))

Providers registered later are asked first; the first one to return a space wins, and
:func:`generic_space` answers when none does. A backend registers its providers when its
module is imported, or in a sibling module ``scancc/backends/<backend>_space.py`` that
:func:`space_for_default` imports the first time the backend's space is asked for (so a
new backend, e.g. ``cuda``, declares its space by adding ``cuda_space.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Mapping, Optional

from ..ir import IRValidationError, Program, Schedule
from .device import DeviceLimits
from .problem import Problem
from .target import BackendLike, resolve_backend

Predicate = Callable[[Schedule, Problem, DeviceLimits], bool]
SpaceProvider = Callable[[Program, Schedule], Optional["SearchSpace"]]

MAX_POINTS = 1_000_000
_SCHEDULE_FIELDS = tuple(f.name for f in fields(Schedule))


@dataclass(frozen=True)
class Constraint:
    """A named feasibility predicate; ``predicate(schedule, problem, limits)`` is True when feasible."""

    name: str
    predicate: Predicate

    def __call__(self, schedule: Schedule, problem: Problem, limits: DeviceLimits) -> bool:
        return bool(self.predicate(schedule, problem, limits))


@dataclass(frozen=True)
class Pruned:
    """The feasible points of a space for one problem, and how many each constraint rejected."""

    feasible: tuple[Schedule, ...]
    rejected: Mapping[str, int]
    total: int


class SearchSpace:
    """The cartesian product of candidate values over ``base``, filtered by ``constraints``.

    ``params`` maps :class:`~scancc.ir.Schedule` field names to candidate values (in the
    order given); fields not named keep ``base``'s value. Every value is validated as a
    schedule field when the space is built.
    """

    def __init__(self, base: Schedule, params: Mapping[str, Any], constraints: tuple[Constraint, ...] = ()) -> None:
        if not isinstance(base, Schedule):
            raise TypeError(f"base must be a scancc.ir.Schedule, got {type(base).__name__}")
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping of schedule field to values, got {type(params).__name__}")
        clean: list[tuple[str, tuple[Any, ...]]] = []
        for name, values in params.items():
            if name not in _SCHEDULE_FIELDS:
                raise ValueError(f"search parameter {name!r} is not a Schedule field; "
                                 f"expected one of {_SCHEDULE_FIELDS}")
            values = tuple(values)
            if not values:
                raise ValueError(f"search parameter {name!r} has no candidate values")
            if len(set(values)) != len(values):
                raise ValueError(f"search parameter {name!r} repeats values: {values}")
            for v in values:
                try:
                    base.replace(**{name: v})
                except IRValidationError as exc:
                    raise ValueError(f"candidate {name}={v!r} is not a valid schedule value: {exc}") from None
            clean.append((name, values))
        for c in constraints:
            if not isinstance(c, Constraint):
                raise TypeError(f"constraints must be Constraint objects, got {type(c).__name__}")
        self.base = base
        self.params: tuple[tuple[str, tuple[Any, ...]], ...] = tuple(clean)
        self.constraints = tuple(constraints)
        if self.size > MAX_POINTS:
            raise ValueError(f"search space has {self.size} points, more than the {MAX_POINTS} that can be enumerated")

    @property
    def size(self) -> int:
        return math.prod(len(v) for _, v in self.params)

    def points(self) -> Iterator[Schedule]:
        """Every point, unpruned, in a deterministic order."""
        names = [n for n, _ in self.params]
        for combo in itertools.product(*(v for _, v in self.params)):
            yield self.base.replace(**dict(zip(names, combo)))

    def violations(self, schedule: Schedule, problem: Problem, limits: DeviceLimits) -> list[str]:
        """Names of the constraints ``schedule`` breaks (empty when feasible)."""
        return [c.name for c in self.constraints if not c(schedule, problem, limits)]

    def admits(self, schedule: Schedule, problem: Problem, limits: DeviceLimits) -> bool:
        """Whether ``schedule`` satisfies every constraint (it need not be a point of the space)."""
        return all(c(schedule, problem, limits) for c in self.constraints)

    def prune(self, problem: Problem, limits: DeviceLimits) -> Pruned:
        """Feasible points in order; a point is charged to the first constraint it breaks."""
        feasible: list[Schedule] = []
        rejected = {c.name: 0 for c in self.constraints}
        total = 0
        for point in self.points():
            total += 1
            for c in self.constraints:
                if not c(point, problem, limits):
                    rejected[c.name] += 1
                    break
            else:
                feasible.append(point)
        return Pruned(tuple(feasible), rejected, total)

    def pinned(self, **fixed: Any) -> "SearchSpace":
        """The same space with the named fields held at the given values (dropped from the
        search, set in the base): e.g. ``space.pinned(chunk=256)`` when a caller fixes the chunk."""
        for name, value in fixed.items():
            if name not in _SCHEDULE_FIELDS:
                raise ValueError(f"pinned field {name!r} is not a Schedule field; expected one of {_SCHEDULE_FIELDS}")
            try:
                self.base.replace(**{name: value})
            except IRValidationError as exc:
                raise ValueError(f"pinned {name}={value!r} is not a valid schedule value: {exc}") from None
        params = {n: v for n, v in self.params if n not in fixed}
        return SearchSpace(self.base.replace(**fixed), params, self.constraints)

    def restricted(self, **values: Any) -> "SearchSpace":
        """The same space searching only the given candidate values of the named fields (a smaller
        grid for an exhaustive reference search); a field not searched before is added."""
        params = {n: v for n, v in self.params}
        params.update({n: tuple(v) for n, v in values.items()})
        return SearchSpace(self.base, params, self.constraints)

    def __repr__(self) -> str:
        params = ", ".join(f"{n}={list(v)}" for n, v in self.params)
        return f"SearchSpace({self.base.algorithm}: {params}; {len(self.constraints)} constraints, {self.size} points)"


# -- registration ------------------------------------------------------------------------
_PROVIDERS: dict[str, list[SpaceProvider]] = {}
_DISCOVERED: set[str] = set()
SPACE_MODULE = "scancc.backends.{backend}_space"
"""Where a backend may declare its spaces; imported once, the first time they are asked for."""


def register_space(backend: str, provider: Optional[SpaceProvider] = None) -> Any:
    """Register ``provider(program, default_schedule) -> SearchSpace | None`` for ``backend``.

    Usable as ``register_space("triton", fn)`` or as a decorator ``@register_space("triton")``.
    """
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"backend must be a non-empty string, got {backend!r}")

    def _register(fn: SpaceProvider) -> SpaceProvider:
        if not callable(fn):
            raise TypeError(f"a space provider must be callable, got {type(fn).__name__}")
        _PROVIDERS.setdefault(backend, []).append(fn)
        return fn

    return _register(provider) if provider is not None else _register


def unregister_space(backend: str, provider: SpaceProvider) -> None:
    """Remove a provider registered with :func:`register_space` (tests, plugins)."""
    _PROVIDERS.get(backend, []).remove(provider)


def discover(backend: str) -> None:
    """Import ``scancc.backends.<backend>_space`` once, if there is such a module (it registers
    the backend's providers). A module that exists but fails to import is an error."""
    if backend in _DISCOVERED:
        return
    _DISCOVERED.add(backend)
    if not backend.isidentifier():
        return
    name = SPACE_MODULE.format(backend=backend)
    try:
        found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        found = False
    if found:
        try:
            importlib.import_module(name)
        except BaseException:
            _DISCOVERED.discard(backend)
            raise


def space_for_default(program: Program, backend: str, default: Schedule) -> SearchSpace:
    """The space the backend's providers declare for ``program``, else :func:`generic_space`."""
    discover(backend)
    for provider in reversed(_PROVIDERS.get(backend, [])):
        space = provider(program, default)
        if space is not None:
            if not isinstance(space, SearchSpace):
                raise TypeError(f"space provider {provider!r} for {backend!r} returned {type(space).__name__}, "
                                "expected a SearchSpace or None")
            return space
    return generic_space(program, default)


def space_for(program: Program, backend: BackendLike) -> SearchSpace:
    """The space ``backend`` (a name or a Backend) declares for ``program`` around its default schedule."""
    be = resolve_backend(backend)
    return space_for_default(program, be.name, be.default_schedule(program))


# -- generic spaces ----------------------------------------------------------------------
def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _threads(s: Schedule) -> int:
    return 32 * s.num_warps


def _scan_tile(s: Schedule, p: Problem) -> int:
    """Elements of state one program of a diagonal chunked scan keeps live: block_l × block_d × block_n."""
    n = s.block_n or (p.get("dstate", 1) if p.program.readout.kind == "contract" else 1)
    return (s.block_l or 1) * (s.block_d or 1) * n


def _scan_regs_per_thread(s: Schedule, p: Problem) -> float:
    # a_t, b_t and h_t per element (fp32), twice for complex, plus ~32 registers of addressing.
    words = 3 * (2 if p.program.state.complex else 1)
    return _scan_tile(s, p) * words / _threads(s) + 32


def _seq_inputs(p: Problem) -> int:
    return sum(1 for spec in p.program.tensors() if "seqlen" in spec.dims and "batch" in spec.dims)


CHUNKED_SCAN_CONSTRAINTS = (
    Constraint("block_l_within_seqlen", lambda s, p, d: (s.block_l or 1) <= max(64, _next_pow2(p.seqlen))),
    Constraint("stages_need_several_tiles", lambda s, p, d: s.num_stages == 1 or p.seqlen > (s.block_l or 1)),
    Constraint("threads_have_work", lambda s, p, d: _threads(s) <= _scan_tile(s, p)),
    Constraint("fits_registers", lambda s, p, d: _scan_regs_per_thread(s, p) <= d.regs_per_thread
               and _scan_regs_per_thread(s, p) * _threads(s) <= d.regs_per_sm),
    Constraint("fits_shared_memory", lambda s, p, d: s.num_stages * (s.block_l or 1) * (s.block_d or 1)
               * _seq_inputs(p) * p.itemsize <= d.smem_per_block),
    Constraint("threads_per_block", lambda s, p, d: _threads(s) <= d.max_threads_per_block),
)


def _ssd_regs_per_thread(s: Schedule, p: Problem) -> float:
    q, hp, n = s.chunk or 64, s.block_d or p.get("headdim", 64), s.block_n or p.get("dstate", 64)
    # intra-chunk scores Q×Q, the chunk's outputs Q×P and the carried P×N state, fp32.
    return (q * q + q * hp + hp * n) / _threads(s) + 32


def _ssd_smem(s: Schedule, p: Problem) -> int:
    q, hp, n = s.chunk or 64, s.block_d or p.get("headdim", 64), s.block_n or p.get("dstate", 64)
    return s.num_stages * (2 * q * n + q * hp) * p.itemsize  # B, C and x tiles per pipeline stage


SSD_CONSTRAINTS = (
    Constraint("chunk_within_seqlen", lambda s, p, d: (s.chunk or 16) <= max(16, _next_pow2(p.seqlen))),
    Constraint("stages_need_several_chunks", lambda s, p, d: s.num_stages == 1 or p.seqlen > (s.chunk or 16)),
    Constraint("fits_registers", lambda s, p, d: _ssd_regs_per_thread(s, p) <= d.regs_per_thread
               and _ssd_regs_per_thread(s, p) * _threads(s) <= d.regs_per_sm),
    Constraint("fits_shared_memory", lambda s, p, d: _ssd_smem(s, p) <= d.smem_per_block),
    Constraint("threads_per_block", lambda s, p, d: _threads(s) <= d.max_threads_per_block),
)

LAUNCH_CONSTRAINTS = (
    Constraint("threads_per_block", lambda s, p, d: _threads(s) <= d.max_threads_per_block),
)


def generic_space(program: Program, default: Schedule) -> SearchSpace:
    """A sensible space when the backend declares none.

    ``chunked_scan`` on a vector (diagonal) state: ``block_l`` ∈ {64, …, 4096},
    ``num_warps`` ∈ {1, 2, 4, 8, 16}, ``num_stages`` ∈ {1, 2, 3}. ``ssd_chunked``:
    ``chunk`` ∈ {32, …, 256}, ``num_warps`` ∈ {2, 4, 8}, ``num_stages`` ∈ {1, 2, 3}.
    Anything else: launch parameters only. The remaining fields keep ``default``'s values.
    """
    if default.algorithm == "chunked_scan" and program.state.shape == "vector":
        return SearchSpace(default, {
            "block_l": tuple(1 << k for k in range(6, 13)),
            "num_warps": (1, 2, 4, 8, 16),
            "num_stages": (1, 2, 3),
        }, CHUNKED_SCAN_CONSTRAINTS)
    if default.algorithm == "ssd_chunked":
        return SearchSpace(default, {
            "chunk": (32, 64, 128, 256),
            "num_warps": (2, 4, 8),
            "num_stages": (1, 2, 3),
        }, SSD_CONSTRAINTS)
    return SearchSpace(default, {"num_warps": (1, 2, 4, 8)}, LAUNCH_CONSTRAINTS)
