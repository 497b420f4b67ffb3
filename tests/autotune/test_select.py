"""``best_schedule``: memo, cache, shipped defaults, SCANCC_AUTOTUNE, and no tuning while compiling."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import scancc.ir as ir
import scancc.autotune.cache as cache_mod
from scancc.autotune import AutotuneWarning, DeviceLimits, Problem, Record, ScheduleCache, best_schedule, cache_key
from scancc.autotune import clear_memo, tune_and_store
from scancc.ir import Schedule

from autotune_fakes import FakeBackend

PROGRAM = ir.linear()
SHAPES = {"batch": 1, "dim": 4, "seqlen": 256}
TUNED = Schedule(block_l=128, num_warps=2, num_stages=2)


def _key(be: FakeBackend, shapes: dict = SHAPES):  # type: ignore[no-untyped-def]
    return cache_key(Problem.make(PROGRAM, shapes, "fp32"), be, DeviceLimits.cpu())


def _fast_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCANCC_AUTOTUNE", "1")
    monkeypatch.setenv("SCANCC_AUTOTUNE_BUDGET", "5")


def test_miss_without_autotune_gives_the_default_and_builds_nothing() -> None:
    be = FakeBackend()
    assert best_schedule(PROGRAM, be, SHAPES, "cpu", "fp32") == be.default
    assert be.builds == 0 and not ScheduleCache().files()


def test_cached_record_is_used_and_memoised(private_cache: Path) -> None:
    be = FakeBackend()
    ScheduleCache().put([Record(_key(be), TUNED, 1e-3, 2e-3)])
    assert best_schedule(PROGRAM, be, SHAPES, "cpu", "fp32") == TUNED
    # A longer sequence in the same bucket reuses it.
    assert best_schedule(PROGRAM, be, {**SHAPES, "seqlen": 200}, "cpu", "fp32") == TUNED
    ScheduleCache().clear()
    assert best_schedule(PROGRAM, be, SHAPES, "cpu", "fp32") == TUNED  # from memory
    clear_memo()
    assert best_schedule(PROGRAM, be, SHAPES, "cpu", "fp32") == be.default
    assert be.builds == 0


def test_a_stored_schedule_that_does_not_fit_the_exact_shape_is_skipped() -> None:
    be = FakeBackend()
    too_long = Schedule(block_l=4096, num_warps=4)  # in the bucket's key but > next_pow2(seqlen)
    ScheduleCache().put([Record(_key(be), too_long)])
    assert best_schedule(PROGRAM, be, SHAPES, "cpu", "fp32") == be.default


def test_shipped_defaults_are_consulted_after_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    be = FakeBackend()
    key = _key(be)
    shipped = Record(cache_mod.CacheKey(key.device, key.arch, key.backend, "older", "0.0.1", key.program, key.bucket),
                     TUNED)
    monkeypatch.setattr(cache_mod, "shipped_records", lambda: (shipped,))
    assert best_schedule(PROGRAM, be, SHAPES, "cpu", "fp32") == TUNED
    clear_memo()
    mine = Schedule(block_l=64, num_warps=1)
    ScheduleCache().put([Record(key, mine)])
    assert best_schedule(PROGRAM, be, SHAPES, "cpu", "fp32") == mine


def test_autotune_on_a_miss_tunes_once_and_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    _fast_tuning(monkeypatch)
    be = FakeBackend()
    chosen = best_schedule(PROGRAM, be, SHAPES, "cpu", "fp32")
    assert be.builds > 1
    stored = ScheduleCache().lookup(_key(be))
    assert stored is not None and stored.schedule == chosen and stored.shape == {**SHAPES, "dstate": 1}
    assert stored.time_s is not None and stored.default_time_s is not None
    builds = be.builds
    clear_memo()  # as a new process would: the file answers, nothing is tuned again
    assert best_schedule(PROGRAM, be, SHAPES, "cpu", "fp32") == chosen
    assert be.builds == builds


def test_no_tuning_while_torch_compile_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    _fast_tuning(monkeypatch)
    be = FakeBackend()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert best_schedule(PROGRAM, be, SHAPES, "cpu", "fp32") == be.default
    assert be.builds == 0 and ScheduleCache().lookup(_key(be)) is None
    # The traced answer was not memoised: an eager call afterwards tunes.
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    best_schedule(PROGRAM, be, SHAPES, "cpu", "fp32")
    assert be.builds > 0


def test_no_tuning_while_a_cuda_graph_is_captured(monkeypatch: pytest.MonkeyPatch) -> None:
    _fast_tuning(monkeypatch)
    be = FakeBackend()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert best_schedule(PROGRAM, be, SHAPES, "cpu", "fp32") == be.default
    assert be.builds == 0


def test_autotune_variable_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCANCC_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match="SCANCC_AUTOTUNE"):
        best_schedule(PROGRAM, FakeBackend(), SHAPES, "cpu", "fp32")
    monkeypatch.setenv("SCANCC_AUTOTUNE", "0")
    assert best_schedule(PROGRAM, FakeBackend(), SHAPES, "cpu", "fp32") == FakeBackend().default


def test_failed_tuning_warns_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    _fast_tuning(monkeypatch)
    be = FakeBackend(compile_fail={FakeBackend().default})
    with pytest.warns(AutotuneWarning, match="failed to compile"):
        assert best_schedule(PROGRAM, be, SHAPES, "cpu", "fp32") == be.default
    assert ScheduleCache().lookup(_key(be)) is None


def test_tune_and_store_records_the_winner() -> None:
    be = FakeBackend()
    result = tune_and_store(PROGRAM, be, SHAPES, device="cpu", budget=5.0, repeats=3, warmup=1)
    record = ScheduleCache().lookup(_key(be))
    assert record is not None and record.schedule == result.best.schedule
    assert record.program_name == "linear_scan" and record.tuned_at.endswith("Z")


def test_cached_dispatch_overhead_is_small(private_cache: Path) -> None:
    be = FakeBackend()
    ScheduleCache().put([Record(_key(be), TUNED)])
    shapes = dict(SHAPES)
    assert best_schedule(PROGRAM, be, shapes, "cpu", "fp32") == TUNED
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(1000):
            best_schedule(PROGRAM, be, shapes, "cpu", "fp32")
        best = min(best, (time.perf_counter() - t0) / 1000)
    assert best < 20e-6, f"cached best_schedule took {best * 1e6:.1f} us"
