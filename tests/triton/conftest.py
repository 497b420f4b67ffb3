"""Triton backend tests: kernels run under the interpreter without a GPU (the suite's root
conftest sets ``TRITON_INTERPRET=1`` before Triton is imported), and every output buffer the
kernels should overwrite is poisoned with NaN first."""

from __future__ import annotations

import pytest
from triton_helpers import poison_empty

from scancc.backends import diagonal_host


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diagonal_host, "_empty", poison_empty)
