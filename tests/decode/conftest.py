"""Decode-test setup: the output buffer starts as NaN, so an element the kernel forgets to
write fails the comparison with the float64 oracle."""

from __future__ import annotations

import pytest
import torch

from scancc.ops import decode


def _poison_empty(shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.full(shape, float("nan"), device=device, dtype=dtype)


@pytest.fixture(autouse=True)
def poisoned_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "_empty", _poison_empty)
