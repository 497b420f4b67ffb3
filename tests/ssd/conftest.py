"""SSD test setup: every buffer the kernels should overwrite starts as NaN, so an element a
kernel forgets to write fails the comparison with the float64 oracle."""

from __future__ import annotations

import pytest
from ssd_cases import poison_empty

from scancc.backends import triton_ssd


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_ssd, "_empty", poison_empty)

