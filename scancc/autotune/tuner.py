"""``tune``: search a program's schedule space at one shape and report every candidate."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from ..ir import Program, Schedule
from .device import DeviceLike, DeviceLimits, resolve_device
from .inputs import make_inputs
from .problem import DtypeLike, Problem
from .search import (OK, Budget, Evaluator, Progress, Reference, Trial, exhaustive, oracle_reference,
                     successive_halving)
from .space import Pruned, SearchSpace, space_for_default
from .target import BackendLike, resolve_backend
from .timing import RotatingInputs, Timer, copies_for, nbytes, timer_for

STRATEGIES = ("auto", "exhaustive", "halving")


def format_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds:.2f} s"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned plain-text columns under ``header``."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


@dataclass
class TuneResult:
    """Outcome of :func:`tune`.

    ``default``: the backend's default schedule, measured first (also the trusted result
    unless a reference was given); ``trials``: every other candidate in evaluation order;
    ``best``: the fastest ok trial after a final side-by-side re-measurement against the
    default (the default itself when nothing beats it).
    """

    problem: Problem
    backend: str
    device: DeviceLimits
    space: SearchSpace
    pruned: Pruned
    strategy: str
    default: Trial
    trials: list[Trial]
    best: Trial
    elapsed_s: float
    stopped_by: str

    @property
    def speedup(self) -> Optional[float]:
        return self.speedup_of(self.best)

    def speedup_of(self, trial: Trial) -> Optional[float]:
        if trial.time_s is None or self.default.time_s is None or trial.time_s <= 0:
            return None
        return self.default.time_s / trial.time_s

    def config(self, schedule: Schedule) -> str:
        """The searched fields of ``schedule``, e.g. ``block_l=256 num_warps=8 num_stages=1``."""
        return " ".join(f"{name}={getattr(schedule, name)}" for name, _ in self.space.params)

    def rows(self) -> list[dict[str, object]]:
        """One dict per trial (default first), ok trials fastest first, then failures."""
        ordered = sorted(self.trials, key=lambda t: (t.status != OK, t.time_s if t.time_s is not None else 0.0))
        out = []
        for trial in [self.default, *ordered]:
            out.append({
                "config": self.config(trial.schedule) + (" (default)" if trial is self.default else ""),
                "time_s": trial.time_s, "status": trial.status, "speedup": self.speedup_of(trial),
                "best": trial is self.best, "error": trial.error,
            })
        return out

    def table(self, top: Optional[int] = None) -> str:
        """A plain-text table: config, median time, status, speedup vs the default."""
        rows = self.rows()
        if top is not None:
            rows = rows[: top + 1]
        body = [(("* " if r["best"] else "  ") + str(r["config"]), format_time(r["time_s"]),  # type: ignore[arg-type]
                 str(r["status"]) + (f" ({r['error']})" if r["error"] else ""),
                 "-" if r["speedup"] is None else f"{r['speedup']:.2f}x") for r in rows]
        lines = [format_table(("config", "time", "status", "speedup"), body)]
        failed = sum(1 for t in self.trials if t.status != OK)
        lines.append(f"{self.problem.describe()} on {self.device.name}, backend {self.backend}: "
                     f"{len(self.trials)} candidates tried ({failed} failed) of {len(self.pruned.feasible)} feasible "
                     f"/ {self.pruned.total} in the space, {self.strategy}, {self.elapsed_s:.1f} s"
                     + (f", stopped by the {self.stopped_by} budget" if self.stopped_by else ""))
        return "\n".join(lines)


def tune(
    program: Program,
    backend: BackendLike,
    shapes: Mapping[str, int],
    *,
    dtype: DtypeLike = "fp32",
    device: DeviceLike = None,
    budget: float = 60.0,
    trials: Optional[int] = None,
    strategy: str = "auto",
    space: Optional[SearchSpace] = None,
    limits: Optional[DeviceLimits] = None,
    timer: Optional[Timer] = None,
    reference: Union[str, Reference] = "default",
    warmup: int = 3,
    repeats: int = 20,
    seed: int = 0,
    exhaustive_limit: int = 64,
    progress: Optional[Progress] = None,
    clock: Callable[[], float] = time.monotonic,
    pin: Optional[Mapping[str, Any]] = None,
) -> TuneResult:
    """Find the fastest correct schedule of ``program`` on ``backend`` at ``shapes``.

    ``shapes`` names the program's symbolic dimensions (``batch``, ``dim``, ``dstate``,
    ``seqlen``, …). ``budget`` (seconds of wall clock) and ``trials`` (candidates compiled
    besides the default) bound the search. ``strategy``: ``exhaustive`` tries every feasible
    point (in a seeded random order); ``halving`` samples ``trials`` points and runs successive
    halving; ``auto`` is exhaustive when at most ``exhaustive_limit`` points (and ``trials``)
    allow and trying them all, at what the default's compile-check-measure took, fits the budget.
    Inputs are random (see :mod:`scancc.autotune.inputs`) and cycled over enough copies to
    defeat the L2 cache. Each candidate's output is first checked against ``reference``:
    ``"default"`` (the default schedule's output), ``"oracle"`` (the float64 sequential
    oracle, slow at large shapes) or a callable ``(inputs, state) -> (out, state)``.
    ``pin`` holds schedule fields at given values, for callers that fix them (the SSD op's
    ``chunk_size``): they leave the search and replace the default's. Step (decode)
    programs update private copies of the state in place, never the caller's.
    Results are not stored; see :func:`scancc.autotune.tune_and_store`.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    for name, value, lo in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    if isinstance(reference, str):
        if reference not in ("default", "oracle"):
            raise ValueError(f"reference must be 'default', 'oracle' or a callable, got {reference!r}")
        reference_fn = None if reference == "default" else oracle_reference(program)
    elif callable(reference):
        reference_fn = reference
    else:
        raise TypeError(f"reference must be 'default', 'oracle' or a callable, got {type(reference).__name__}")
    plan = Budget(float(budget), trials, clock)
    started = clock()  # the budget covers making inputs and measuring the default too
    be = resolve_backend(backend)
    problem = Problem.make(program, shapes, dtype)
    dev = resolve_device(device)
    limits = limits if limits is not None else DeviceLimits.from_torch(dev)
    default = be.default_schedule(program)
    space = space if space is not None else space_for_default(program, be.name, default)
    if pin:
        space = space.pinned(**pin)
        default = default.replace(**pin)
    pruned = space.prune(problem, limits)
    candidates = [s for s in pruned.feasible if s != default]

    inputs, state = make_inputs(problem, dev, seed=seed)
    buffers = RotatingInputs(inputs, state, copies_for(nbytes([*inputs.values(), state]), limits.l2_bytes))
    sync: Callable[[], None] = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    ev = Evaluator(be, problem, default, buffers, timer if timer is not None else timer_for(dev),
                   reference=reference_fn, warmup=warmup, synchronize=sync)

    before = clock()
    default_trial = ev.evaluate(default, repeats)
    per_trial = clock() - before  # compile + check + measure: what each exhaustive trial costs
    rng = random.Random(seed)
    if strategy == "auto":
        fits = len(candidates) <= exhaustive_limit and (trials is None or len(candidates) <= trials)
        in_time = len(candidates) * per_trial <= plan.seconds - (clock() - started)
        strategy = "exhaustive" if fits and in_time else "halving"
    if strategy == "exhaustive":
        log = exhaustive(ev, candidates, plan, started, repeats=repeats, rng=rng, progress=progress)
    else:
        log = successive_halving(ev, candidates, plan, started, repeats=repeats, rng=rng, progress=progress)

    best = min(log.finalists, key=lambda t: t.time_s, default=None)  # type: ignore[arg-type, return-value]
    if default_trial.status == OK and best is not None:
        # Side by side, same repeats: the speedup compares like with like.
        ev.time(default_trial, repeats, best.rung)
        ev.time(best, repeats, best.rung)
        if best.status != OK or (default_trial.status == OK
                                 and best.time_s >= default_trial.time_s):  # type: ignore[operator]
            best = default_trial
    if best is None:
        best = default_trial
    return TuneResult(problem, be.name, limits, space, pruned, strategy, default_trial, log.trials, best,
                      clock() - started, log.stopped_by)
