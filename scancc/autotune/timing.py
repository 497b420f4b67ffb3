"""Timing kernels: device events on CUDA, ``perf_counter`` elsewhere, medians over rotating inputs."""

from __future__ import annotations

import math
import statistics
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import torch

Run = Callable[[int], object]


class Timer(ABC):
    """Times calls ``run(i)`` one by one; ``i`` picks the input copy, see :class:`RotatingInputs`."""

    name: str = "timer"

    @abstractmethod
    def time(self, run: Run, start: int, count: int) -> list[float]:
        """Call ``run(start)``, …, ``run(start + count - 1)``; return each call's duration in seconds."""


class PerfCounterTimer(Timer):
    """Host wall clock around each call (for CPU kernels, whose calls return when done)."""

    name = "perf_counter"

    def time(self, run: Run, start: int, count: int) -> list[float]:
        out = []
        for i in range(start, start + count):
            t0 = time.perf_counter()
            run(i)
            out.append(time.perf_counter() - t0)
        return out


class CudaEventTimer(Timer):
    """CUDA events recorded on the current stream around each call; one synchronize at the end,
    so launches queue back to back as they would in a model.

    Before the calls the stream is held busy for about ``HOLD_PER_CALL_S`` per call
    (``torch.cuda._sleep``), so the host has queued every launch before the first one runs:
    otherwise a kernel shorter than its launch (a decode step, a tiny shape) would be timed
    as the host's launch cost, the gap between two events spent waiting for the next launch.
    """

    name = "cuda_events"
    HOLD_PER_CALL_S = 200e-6
    CLOCK_HZ = 1.5e9  # a lower bound of the SM clock: the hold errs on the long side

    def time(self, run: Run, start: int, count: int) -> list[float]:
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
        torch.cuda.synchronize()
        sleep = getattr(torch.cuda, "_sleep", None)
        if sleep is not None:
            sleep(int(min(count * self.HOLD_PER_CALL_S, 0.5) * self.CLOCK_HZ))
        for i, (begin, end) in zip(range(start, start + count), pairs):
            begin.record()
            run(i)
            end.record()
        torch.cuda.synchronize()
        return [begin.elapsed_time(end) * 1e-3 for begin, end in pairs]


def timer_for(device: torch.device) -> Timer:
    return CudaEventTimer() if device.type == "cuda" else PerfCounterTimer()


@dataclass(frozen=True)
class Measurement:
    """Per-call durations in seconds."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


def measure(run: Run, timer: Timer, *, warmup: int, repeats: int) -> Measurement:
    """``warmup`` untimed calls, then ``repeats`` timed ones (input copies keep rotating)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for i in range(warmup):
        run(i)
    return Measurement(tuple(timer.time(run, warmup, repeats)))


def nbytes(tensors: Sequence[Optional[torch.Tensor]]) -> int:
    """Total bytes of the given tensors (``None`` entries count 0)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def copies_for(copy_bytes: int, l2_bytes: int, *, max_copies: int = 16, max_bytes: int = 4 << 30) -> int:
    """How many input copies to cycle so consecutive calls never find their inputs in L2:
    enough that the other copies together span twice the L2, within ``max_bytes``."""
    if l2_bytes <= 0 or copy_bytes <= 0:
        return 1
    wanted = 1 + math.ceil(2 * l2_bytes / copy_bytes)
    affordable = max(1, max_bytes // copy_bytes)
    return max(1, min(wanted, max_copies, affordable))


class RotatingInputs:
    """``copies`` private clones of a call's inputs (and state), handed out round-robin.

    The caller's tensors are never passed to a kernel: in-place kernels (decode steps)
    update the clones. ``fresh(i)`` gives copy ``i`` with its state restored, for
    correctness checks that must see the original state.
    """

    def __init__(self, inputs: Mapping[str, torch.Tensor], state: Optional[torch.Tensor], copies: int) -> None:
        if copies < 1:
            raise ValueError(f"copies must be at least 1, got {copies}")
        self._inputs = dict(inputs)
        self._state = state
        self._sets = [({k: v.clone() for k, v in inputs.items()}, None if state is None else state.clone())
                      for _ in range(copies)]

    @property
    def copies(self) -> int:
        return len(self._sets)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], Optional[torch.Tensor]]:
        return self._sets[i % len(self._sets)]

    def fresh(self, i: int = 0) -> tuple[dict[str, torch.Tensor], Optional[torch.Tensor]]:
        """Copy ``i`` with its inputs and state reset to the originals."""
        inputs, state = self[i]
        for k, v in self._inputs.items():
            inputs[k].copy_(v)
        if state is not None and self._state is not None:
            state.copy_(self._state)
        return inputs, state
