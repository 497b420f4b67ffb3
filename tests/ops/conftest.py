"""Op-test setup: keep Triton-interpreter runs fast on CPU."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


TILE = 16


@pytest.fixture(autouse=True)
def short_tiles(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Without a GPU, run the kernels with tiles of at most ``TILE`` time steps.

    Default tiles reach 2048 steps (plain scans, small states); under the interpreter every
    step of a tile costs the same whether masked or not, so the short test sequences would
    pay for all of them. Any tile length computes the same result, and short tiles make the
    test sequences span several tiles, so the state carried between tiles is exercised too.
    """
    if torch.cuda.is_available():
        yield
        return
    import scancc.autotune as autotune

    original = autotune.choose_schedule

    def choose_schedule(program, backend, shapes, *args, **kwargs):
        schedule, final = original(program, backend, shapes, *args, **kwargs)
        if schedule.block_l is None or schedule.block_l > TILE:
            schedule = schedule.replace(block_l=TILE)
        return schedule, final

    monkeypatch.setattr(autotune, "choose_schedule", choose_schedule)
    autotune.clear_memo()  # kernels chosen without the patch are memoised
    yield
    autotune.clear_memo()
