"""Searching a space: evaluate candidates behind a correctness gate, exhaustively or by successive halving.

Every candidate is compiled, run once on fresh inputs and compared with the trusted
result (relative L2 error, NaN never passes) *before* it is timed; a candidate that
fails to compile, raises when launched or computes something else is recorded with
that status and never timed.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .. import oracle
from ..backends.base import Backend, CompiledScan
from ..ir import Program, Schedule
from .problem import Problem
from .target import compile_with
from .timing import RotatingInputs, Timer, measure

OK, COMPILE_ERROR, LAUNCH_ERROR, MISMATCH = "ok", "compile_error", "launch_error", "mismatch"

Outputs = tuple[torch.Tensor, Optional[torch.Tensor]]
"""A call's result: the readout ``out`` and, in step mode, the state as updated in place."""

Reference = Callable[[dict[str, torch.Tensor], Optional[torch.Tensor]], Outputs]
"""A trusted implementation (e.g. the oracle): ``(inputs, state) -> (out, updated state or None)``.
It receives private copies and may update the state in place."""


@dataclass(frozen=True)
class Budget:
    """Limits of one search: wall-clock ``seconds`` and at most ``trials`` candidates compiled
    besides the default schedule (``None``: no limit). ``clock`` is injectable for tests."""

    seconds: float = 60.0
    trials: Optional[int] = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if not isinstance(self.seconds, (int, float)) or not self.seconds > 0:
            raise ValueError(f"Budget.seconds must be a positive number, got {self.seconds!r}")
        if self.trials is not None and (not isinstance(self.trials, int) or self.trials < 1):
            raise ValueError(f"Budget.trials must be a positive int or None, got {self.trials!r}")


@dataclass
class Trial:
    """One candidate's outcome: ``status`` is ok / compile_error / launch_error / mismatch;
    ``time_s`` is the median of the latest measurement (``None`` unless ok)."""

    schedule: Schedule
    status: str = OK
    time_s: Optional[float] = None
    repeats: int = 0
    rung: int = 0
    error: str = ""


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """:func:`scancc.oracle.rel_l2` (NaN never passes), with a shape mismatch an infinite error."""
    if tuple(out.shape) != tuple(ref.shape):
        return math.inf
    return oracle.rel_l2(out, ref)


def gate_tolerance(dtype: torch.dtype, *, against_oracle: bool) -> float:
    """The oracle's tolerance for ``dtype`` (fp32 allowing tf32 dots); twice that between two
    kernels, which may each be off by the tolerance in opposite directions."""
    tol = oracle.tolerance(dtype, tf32=True)
    return tol if against_oracle else 2 * tol


def oracle_reference(program: Program) -> Reference:
    """The float64 sequential oracle as a :data:`Reference` (run on the host)."""

    def run(inputs: dict[str, torch.Tensor], state: Optional[torch.Tensor]) -> Outputs:
        host = {k: v.detach().cpu() for k, v in inputs.items()}
        if program.mode != "step":
            return oracle.sequential(program, host), None
        out, new_state = oracle.sequential(program, host, initial_state=None if state is None else state.detach().cpu())
        return out, new_state["ssm"] if isinstance(new_state, dict) else new_state

    return run


def advance_state(kernel: CompiledScan, inputs: dict[str, torch.Tensor], state: torch.Tensor) -> torch.Tensor:
    """One decode step that leaves the new state in ``state`` (a private copy); returns ``out``.

    A kernel with an in-place entry point ``advance(inputs, state) -> out`` (the decode
    kernels that ``selective_state_update`` launches) is timed as it runs in a model;
    otherwise ``forward`` from ``state`` and the final state copied back.
    """
    advance = getattr(kernel, "advance", None)
    if callable(advance):
        return advance(inputs, state)
    fwd = kernel.forward(inputs, initial_state=state, return_final_state=True)
    if fwd.final_state is None:
        raise RuntimeError(f"{type(kernel).__name__}.forward(return_final_state=True) returned no final state")
    state.copy_(fwd.final_state)
    return fwd.out


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:200]


class Evaluator:
    """Compiles, checks and times schedules of one problem on private rotating inputs.

    ``reference`` is the trusted result (e.g. :func:`oracle_reference`); when ``None`` the
    ``default`` schedule's own output is used, and a default that fails is an error (there
    is nothing to check against). ``rtol`` defaults to :func:`gate_tolerance`.
    """

    def __init__(
        self,
        backend: Backend,
        problem: Problem,
        default: Schedule,
        buffers: RotatingInputs,
        timer: Timer,
        *,
        reference: Optional[Reference] = None,
        warmup: int = 3,
        rtol: Optional[float] = None,
        synchronize: Callable[[], None] = lambda: None,
    ) -> None:
        self.backend, self.problem, self.default = backend, problem, default
        self.buffers, self.timer, self.warmup = buffers, timer, warmup
        self.rtol = gate_tolerance(problem.dtype, against_oracle=reference is not None) if rtol is None else rtol
        self._synchronize = synchronize
        self._compiled: dict[Schedule, CompiledScan] = {}
        self._reference_fn = reference
        self._expected: Optional[Outputs] = None

    # -- running ------------------------------------------------------------------------
    def _call(self, kernel: CompiledScan, i: int) -> Outputs:
        inputs, state = self.buffers[i]
        if state is None:
            return kernel.forward(inputs).out, None
        return advance_state(kernel, inputs, state), state

    def _expected_outputs(self) -> Outputs:
        if self._expected is None:
            inputs, state = self.buffers.fresh(0)
            if self._reference_fn is not None:
                out, new_state = self._reference_fn(inputs, state)
            else:
                trial = Trial(self.default)
                kernel = self._kernel(trial)
                if kernel is None:
                    raise RuntimeError(f"the default schedule {self.default} failed to compile ({trial.error}); "
                                       "pass a reference to check candidates against")
                try:
                    out, new_state = self._call(kernel, 0)
                    self._synchronize()
                except Exception as exc:  # noqa: BLE001 - any failure of the default is reported as such
                    raise RuntimeError(f"the default schedule {self.default} failed to run: {_short(exc)}; "
                                       "pass a reference to check candidates against") from exc
            self._expected = (out.detach().clone(), None if new_state is None else new_state.detach().clone())
        return self._expected

    def _kernel(self, trial: Trial) -> Optional[CompiledScan]:
        kernel = self._compiled.get(trial.schedule)
        if kernel is not None:
            return kernel
        try:
            kernel = compile_with(self.backend, self.problem.program, trial.schedule)
        except Exception as exc:  # noqa: BLE001 - a candidate that does not compile is a result, not a crash
            trial.status, trial.error = COMPILE_ERROR, _short(exc)
            return None
        self._compiled[trial.schedule] = kernel
        return kernel

    def check(self, trial: Trial) -> Optional[CompiledScan]:
        """Compile ``trial.schedule`` and compare one run with the trusted result; on failure set
        the trial's status and return None."""
        expected = self._expected_outputs()
        kernel = self._kernel(trial)
        if kernel is None:
            return None
        try:
            self.buffers.fresh(0)
            got = self._call(kernel, 0)
            self._synchronize()
        except Exception as exc:  # noqa: BLE001
            trial.status, trial.error = LAUNCH_ERROR, _short(exc)
            return None
        errors = [rel_l2(got[0], expected[0])]
        if expected[1] is not None:
            errors.append(math.inf if got[1] is None else rel_l2(got[1], expected[1]))
        worst = max(errors)
        if not worst <= self.rtol:
            trial.status, trial.error = MISMATCH, f"relative L2 error {worst:.3g} > {self.rtol:g}"
            return None
        return kernel

    def time(self, trial: Trial, repeats: int, rung: int = 0) -> None:
        """Measure an already checked trial (``repeats`` timed calls after the warm-up)."""
        kernel = self._compiled[trial.schedule]
        try:
            m = measure(lambda i: self._call(kernel, i), self.timer, warmup=self.warmup, repeats=repeats)
        except Exception as exc:  # noqa: BLE001
            trial.status, trial.error, trial.time_s = LAUNCH_ERROR, _short(exc), None
            self.forget(trial.schedule)
            return
        trial.status, trial.time_s, trial.repeats, trial.rung = OK, m.median, repeats, rung

    def evaluate(self, schedule: Schedule, repeats: int, rung: int = 0) -> Trial:
        trial = Trial(schedule, rung=rung)
        if self.check(trial) is not None:
            self.time(trial, repeats, rung)
        return trial

    def forget(self, schedule: Schedule) -> None:
        """Drop a compiled kernel that will not be timed again."""
        self._compiled.pop(schedule, None)


# -- strategies ------------------------------------------------------------------------
Progress = Callable[[int, int, Trial], None]
"""``progress(done, total, trial)`` after each evaluation (``total`` is an estimate under a time budget)."""


@dataclass
class SearchLog:
    """Every trial in evaluation order; ``finalists``: the ok trials the winner is chosen from."""

    trials: list[Trial] = field(default_factory=list)
    finalists: list[Trial] = field(default_factory=list)
    stopped_by: str = ""  # "", "time" or "trials"


def _time_left(budget: Budget, started: float, reserve: float = 0.0) -> bool:
    return budget.clock() - started + reserve < budget.seconds


def exhaustive(
    ev: Evaluator, candidates: Sequence[Schedule], budget: Budget, started: float, *, repeats: int,
    rng: random.Random, progress: Optional[Progress] = None,
) -> SearchLog:
    """Every candidate with ``repeats`` timed calls, while the next one fits the budgets (at the
    average cost so far). Candidates are visited in a seeded random order, so a search cut
    short by the clock is a fair random sample of the space rather than its first corner."""
    log = SearchLog()
    limit = len(candidates) if budget.trials is None else min(budget.trials, len(candidates))
    spent = 0.0
    for schedule in rng.sample(list(candidates), len(candidates)):
        if len(log.trials) >= limit:
            log.stopped_by = "trials"
            break
        if not _time_left(budget, started, spent / len(log.trials) if log.trials else 0.0):
            log.stopped_by = "time"
            break
        before = budget.clock()
        trial = ev.evaluate(schedule, repeats)
        spent += budget.clock() - before
        log.trials.append(trial)
        if progress is not None:
            progress(len(log.trials), limit, trial)
    log.finalists = [t for t in log.trials if t.status == OK]
    return log


def _first_rung_repeats(n: int, eta: int, repeats: int) -> int:
    """Repeats on the first rung, so that the last of the ``1 + ceil(log_eta n)`` rungs gets ``repeats``."""
    rungs = 1 + max(0, math.ceil(math.log(max(n, 1)) / math.log(eta)))
    return max(1, repeats // eta ** (rungs - 1))


def _later_rungs(n: int, eta: int, reps: int, repeats: int) -> list[tuple[int, int]]:
    """``(survivors, repeats)`` of each rung after the first, from ``n`` ok trials measured ``reps`` times."""
    out = []
    while n > 1:
        n = math.ceil(n / eta)
        if n == 1:
            break
        reps = min(repeats, reps * eta)
        out.append((n, reps))
    return out


def successive_halving(
    ev: Evaluator, candidates: Sequence[Schedule], budget: Budget, started: float, *, repeats: int,
    rng: random.Random, eta: int = 3, progress: Optional[Progress] = None,
) -> SearchLog:
    """Random sample of the candidates, measured cheaply; the best ``1/eta`` advance to the next
    rung with ``eta`` times more repeats, until one is left or the time runs out.

    The first rung (compiling and checking: the expensive part) starts another candidate only
    while the time left covers it (at the first rung's average so far) plus what the later
    rungs and the final confirmation will need (from the kernel times measured so far); so
    later rungs get to re-measure the leaders, and no budget is left unused when kernels are fast.
    """
    if eta < 2:
        raise ValueError(f"eta must be at least 2, got {eta}")
    log = SearchLog()
    n = len(candidates) if budget.trials is None else min(budget.trials, len(candidates))
    pool = rng.sample(list(candidates), n)
    reps = _first_rung_repeats(n, eta, repeats)
    total_evals = n + sum(k for k, _ in _later_rungs(n, eta, reps, repeats))
    done = 0

    def reserve(alive: list[Trial]) -> float:
        if not alive:
            return 0.0
        kernel = sorted(t.time_s for t in alive)[len(alive) // 2]  # type: ignore[type-var]
        calls = sum(k * (ev.warmup + r) for k, r in _later_rungs(len(alive) + 1, eta, reps, repeats))
        return (calls + 2 * (ev.warmup + repeats)) * kernel  # type: ignore[operator]

    alive: list[Trial] = []
    spent = 0.0  # wall time of the first rung's evaluations so far
    for schedule in pool:
        next_one = spent / len(log.trials) if log.trials else 0.0
        if not _time_left(budget, started, next_one + reserve(alive)):
            log.stopped_by = "time"
            break
        before = budget.clock()
        trial = ev.evaluate(schedule, reps, rung=0)
        spent += budget.clock() - before
        log.trials.append(trial)
        done += 1
        if progress is not None:
            progress(done, total_evals, trial)
        if trial.status == OK:
            alive.append(trial)
    if len(log.trials) == n < len(candidates):
        log.stopped_by = "trials"

    rung = 0
    while len(alive) > 1 and _time_left(budget, started):
        rung += 1
        alive.sort(key=lambda t: t.time_s)  # type: ignore[arg-type, return-value]
        keep = math.ceil(len(alive) / eta)
        for t in alive[keep:]:
            ev.forget(t.schedule)
        alive = alive[:keep]
        if keep == 1:
            break  # the winner is confirmed against the default by the caller
        reps = min(repeats, reps * eta)
        for t in list(alive):
            if not _time_left(budget, started):
                log.stopped_by = "time"
                break
            ev.time(t, reps, rung)
            done += 1
            if progress is not None:
                progress(done, total_evals, t)
            if t.status != OK:
                alive.remove(t)
    log.finalists = alive
    return log
