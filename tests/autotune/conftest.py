"""Autotuner test fixtures: a private cache directory and a clean environment for every test."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from scancc.autotune import ScheduleCache, clear_memo


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``SCANCC_CACHE_DIR`` in a temporary directory; no autotuning unless a test asks for it."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("SCANCC_CACHE_DIR", str(directory))
    monkeypatch.delenv("SCANCC_AUTOTUNE", raising=False)
    monkeypatch.delenv("SCANCC_AUTOTUNE_BUDGET", raising=False)
    clear_memo()
    ScheduleCache._index.clear()
    yield directory
    clear_memo()
    ScheduleCache._index.clear()
