"""Search: exhaustive and successive halving under budgets, the correctness gate, timing plumbing."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import scancc.ir as ir
from scancc.autotune import DeviceLimits, SearchSpace, TuneResult, rel_l2, tune
from scancc.autotune.search import COMPILE_ERROR, LAUNCH_ERROR, MISMATCH, OK, gate_tolerance
from scancc.autotune.timing import PerfCounterTimer, RotatingInputs, copies_for, measure
from scancc.ir import Schedule

from autotune_fakes import FakeBackend, FakeTimer, default_cost

SHAPE = {"batch": 1, "dim": 4, "seqlen": 1024}
BEST = Schedule(block_l=512, num_warps=4, num_stages=2)


def _tune(be: FakeBackend, shapes: dict = SHAPE, program: ir.Program = ir.linear(), **kw: Any) -> TuneResult:
    kw.setdefault("budget", 1e9)
    kw.setdefault("repeats", 9)
    kw.setdefault("warmup", 1)
    return tune(program, be, shapes, limits=DeviceLimits.cpu(), timer=FakeTimer(be.clock), clock=be.clock, **kw)


def test_exhaustive_search_finds_the_fastest_schedule() -> None:
    be = FakeBackend()
    space = SearchSpace(be.default, {"block_l": (128, 256, 512, 1024), "num_warps": (2, 4, 8), "num_stages": (1, 2)})
    result = _tune(be, space=space)
    assert result.strategy == "exhaustive"
    assert result.best.schedule == BEST
    assert result.best.status == OK
    assert result.best.time_s == pytest.approx(default_cost(BEST))
    assert result.default.time_s == pytest.approx(default_cost(be.default))
    assert result.speedup == pytest.approx(default_cost(be.default) / default_cost(BEST))
    # Every point but the default is tried exactly once; each is built once.
    tried = [t.schedule for t in result.trials]
    assert len(tried) == len(set(tried)) == space.size - 1 and be.default not in tried
    assert be.builds == space.size
    table = result.table()
    assert "* block_l=512 num_warps=4 num_stages=2" in table and "(default)" in table and "x" in table


def test_default_wins_when_nothing_beats_it() -> None:
    be = FakeBackend(default=BEST)
    result = _tune(be, space=SearchSpace(BEST, {"block_l": (256, 512, 1024)}))
    assert result.best is result.default and result.speedup == pytest.approx(1.0)


def test_correctness_gate_rejects_wrong_candidates_before_timing() -> None:
    wrong, nan = BEST, Schedule(block_l=512, num_warps=4, num_stages=3)
    broken = Schedule(block_l=1024, num_warps=4, num_stages=2)
    crashing = Schedule(block_l=256, num_warps=4, num_stages=2)
    be = FakeBackend(wrong={wrong}, nan={nan}, compile_fail={broken}, launch_fail={crashing})
    space = SearchSpace(be.default, {"block_l": (256, 512, 1024), "num_warps": (4,), "num_stages": (1, 2, 3)})
    result = _tune(be, space=space)
    status = {t.schedule: t for t in result.trials}
    assert status[wrong].status == MISMATCH and "relative L2 error" in status[wrong].error
    assert status[nan].status == MISMATCH and "inf" in status[nan].error
    assert status[broken].status == COMPILE_ERROR and "fake compile failure" in status[broken].error
    assert status[crashing].status == LAUNCH_ERROR and "fake launch failure" in status[crashing].error
    for t in (status[wrong], status[nan], status[broken], status[crashing]):
        assert t.time_s is None and t.repeats == 0
    # The miscompiled one would have been the fastest; the best correct one wins instead.
    assert result.best.schedule not in {wrong, nan, broken, crashing}
    assert result.best.schedule == Schedule(block_l=512, num_warps=4, num_stages=1) and result.best.status == OK
    assert "mismatch" in result.table()


def test_oracle_reference_catches_a_wrong_default() -> None:
    be = FakeBackend(wrong={FakeBackend().default})
    space = SearchSpace(be.default, {"block_l": (256, 512)})
    result = _tune(be, {"batch": 1, "dim": 2, "seqlen": 64}, space=space, reference="oracle")
    assert result.default.status == MISMATCH
    assert result.best.schedule == Schedule(block_l=512, num_warps=4, num_stages=1)
    assert result.best.status == OK and result.speedup is None
    # Without a trusted reference a failing default leaves nothing to check against.
    be2 = FakeBackend(compile_fail={FakeBackend().default})
    with pytest.raises(RuntimeError, match="default schedule .* failed to compile"):
        _tune(be2, space=space)


def test_successive_halving_respects_the_trial_budget() -> None:
    be = FakeBackend()
    result = _tune(be, trials=12, strategy="auto")  # 60-odd feasible points > 12 trials: halving
    assert result.strategy == "halving"
    assert len(result.trials) == 12 and be.builds == 13  # the default + 12 candidates
    assert result.stopped_by == "trials"
    assert result.best.status == OK
    assert result.best.time_s <= result.default.time_s  # type: ignore[operator]


def test_successive_halving_respects_the_time_budget() -> None:
    be = FakeBackend(compile_cost=1.0)  # each build costs one simulated second, each launch ~1 ms
    result = _tune(be, budget=10.0, strategy="halving")
    # Launches are cheap, so the first rung keeps building while another build fits...
    assert be.builds == 9 and len(result.trials) == 8
    assert result.stopped_by == "time"
    # ...and the leaders are still re-measured, within the budget.
    assert max(t.rung for t in result.trials) >= 1
    assert result.elapsed_s <= 10.0


def test_successive_halving_reserves_time_for_later_rungs_when_kernels_are_slow() -> None:
    be = FakeBackend(cost=lambda s: 10 * default_cost(s))  # ~10 ms a launch, free builds
    result = _tune(be, budget=3.0, strategy="halving")
    assert result.stopped_by == "time"
    assert max(t.rung for t in result.trials) >= 2  # the leaders were re-measured twice
    first_rung_time = sum(1 for t in result.trials) * 3 * 10e-3  # check + warm-up + 1 repeat each
    assert first_rung_time < 2.0  # the first rung stopped early to leave room
    assert result.elapsed_s <= 3.0 + 0.5  # one evaluation plus the confirmation past the budget at most
    assert result.best.status == OK and result.best.repeats == 9


def test_exhaustive_search_stops_before_a_trial_that_would_not_fit() -> None:
    be = FakeBackend(compile_cost=1.0)
    space = SearchSpace(be.default, {"block_l": (128, 256, 512, 1024), "num_warps": (2, 4, 8)})
    result = _tune(be, budget=6.0, space=space, strategy="exhaustive")
    assert result.stopped_by == "time" and len(result.trials) == 4  # the default's build and four more
    assert result.elapsed_s <= 6.0 and result.best.status == OK


def test_auto_strategy_prefers_halving_when_trying_everything_would_not_fit() -> None:
    space = SearchSpace(FakeBackend().default, {"block_l": (128, 256, 512, 1024), "num_warps": (2, 4, 8),
                                                "num_stages": (1, 2)})
    assert _tune(FakeBackend(compile_cost=1.0), budget=100.0, space=space).strategy == "exhaustive"
    assert _tune(FakeBackend(compile_cost=1.0), budget=10.0, space=space).strategy == "halving"


def test_successive_halving_finds_the_optimum_when_it_samples_everything() -> None:
    be = FakeBackend()
    result = _tune(be, strategy="halving", seed=3)
    assert result.best.schedule == BEST
    assert max(t.rung for t in result.trials) >= 2  # several rungs were run
    # Losers of the first rung were measured with fewer repeats than the finalists.
    reps = sorted({t.repeats for t in result.trials if t.status == OK})
    assert reps[0] < reps[-1]


def test_tuning_a_step_program_uses_private_state_copies() -> None:
    """The in-place kernel mutates the state; every candidate must still see the original one
    for its correctness check, and never the first call's inputs again while timing."""
    be = FakeBackend()
    result = _tune(be, {"batch": 2, "dim": 4}, ir.linear().as_step(),
                   space=SearchSpace(be.default, {"num_warps": (1, 2, 4, 8)}))
    assert [t.status for t in result.trials] == [OK, OK, OK]


def test_rotating_inputs_cycle_private_copies() -> None:
    be = FakeBackend()
    space = SearchSpace(be.default, {"num_warps": (2, 4)})
    inputs_l2 = DeviceLimits(name="gpu-ish", capability=(9, 0), l2_bytes=4096)
    tune(ir.linear(), be, {"batch": 1, "dim": 4, "seqlen": 32}, limits=inputs_l2, timer=FakeTimer(be.clock),
         clock=be.clock, space=space, repeats=8, warmup=1)
    pointers = {frozenset(seen.items()) for seen in be.seen_inputs}
    # a and x: 2 × 128 fp32 = 1 KiB per copy; 2·L2 / 1 KiB + 1 = 9 copies, cycled.
    assert len(pointers) == copies_for(1024, 4096) == 9


def test_copies_for_bounds() -> None:
    assert copies_for(1 << 20, 0) == 1
    assert copies_for(1 << 30, 50 << 20) == 2
    assert copies_for(1 << 10, 50 << 20) == 16
    assert copies_for(3 << 30, 50 << 20, max_bytes=4 << 30) == 1


def test_rotating_inputs_fresh_restores_state() -> None:
    state = torch.ones(2, 3)
    buf = RotatingInputs({"x": torch.zeros(3)}, state, copies=2)
    _, s0 = buf[0]
    s0.add_(5.0)
    assert torch.equal(state, torch.ones(2, 3))  # the caller's tensor is untouched
    _, again = buf.fresh(0)
    assert torch.equal(again, torch.ones(2, 3))
    assert buf[0][1] is not buf[1][1]


def test_measure_and_perf_counter_timer() -> None:
    calls: list[int] = []
    m = measure(calls.append, PerfCounterTimer(), warmup=2, repeats=5)
    assert calls == list(range(7)) and len(m.times) == 5 and m.best <= m.median
    with pytest.raises(ValueError, match="repeats"):
        measure(calls.append, PerfCounterTimer(), warmup=0, repeats=0)


def test_rel_l2_and_gate_tolerance() -> None:
    ref = torch.ones(4)
    assert rel_l2(ref * 1.001, ref) == pytest.approx(1e-3, rel=1e-4)
    assert math.isinf(rel_l2(torch.tensor([1.0, float("nan"), 1.0, 1.0]), ref))
    assert math.isinf(rel_l2(torch.ones(3), ref))
    kernels = gate_tolerance(torch.bfloat16, against_oracle=False)
    assert kernels == 2 * gate_tolerance(torch.bfloat16, against_oracle=True)


def test_bad_arguments() -> None:
    be = FakeBackend()
    with pytest.raises(ValueError, match="strategy"):
        _tune(be, strategy="random")
    with pytest.raises(ValueError, match="repeats"):
        _tune(be, repeats=0)
    with pytest.raises(ValueError, match="reference"):
        _tune(be, reference="truth")
    with pytest.raises(ValueError, match="Budget.trials"):
        _tune(be, trials=0)
