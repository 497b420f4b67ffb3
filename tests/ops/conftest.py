"""Op-test setup: keep Triton-interpreter runs fast on CPU."""

from __future__ import annotations

import pytest
import torch


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@pytest.fixture(autouse=True)
def tiles_no_longer_than_the_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a GPU, cap the schedule's time tile at the sequence length.

    Default tiles reach 2048 steps (plain scans, small states); under the interpreter every
    step of a tile costs the same whether masked or not, so the short test sequences would
    pay for all of them. Any tile length computes the same result.
    """
    if torch.cuda.is_available():
        return
    import scancc.autotune as autotune

    original = autotune.best_schedule

    def best_schedule(program, backend, shapes, **kwargs):
        schedule = original(program, backend, shapes, **kwargs)
        if "seqlen" in shapes:
            cap = max(16, _next_pow2(shapes["seqlen"]))
            if schedule.block_l is None or schedule.block_l > cap:
                schedule = schedule.replace(block_l=cap)
        return schedule

    monkeypatch.setattr(autotune, "best_schedule", best_schedule)
