"""CUDA backend tests. GPU tests reuse the Triton suite's cases and float64 checks
(``tests/triton/triton_helpers.py``) with the backend swapped; every buffer the CUDA kernels
should overwrite is poisoned with NaN first; compiled cubins go to a temporary cache."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "triton"))

from triton_helpers import poison_empty  # noqa: E402

from scancc.backends import diagonal_host  # noqa: E402


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setattr(diagonal_host, "_empty", poison_empty)
    monkeypatch.setenv("SCANCC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "scancc-cache"))
