"""Mamba-3 test setup: every buffer the kernels should overwrite starts as NaN, so an element a
kernel forgets to write fails the comparison with the float64 oracle."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from scancc.backends import triton_ssd
from scancc.ops import mamba3_op


def poison_empty(shape: tuple[int, ...], *, device: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.full(shape, float("nan"), device=device, dtype=dtype)


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_ssd, "_empty", poison_empty)
    monkeypatch.setattr(mamba3_op, "_empty", poison_empty)
