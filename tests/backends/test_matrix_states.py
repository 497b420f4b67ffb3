"""state_entries: the initial states the CUDA and TVM recurrent kernels of SSD/GLA/Mamba-3 take."""

from __future__ import annotations

import pytest
import torch

from scancc.backends.matrix_states import state_entries

SIZES = dict(nseq=2, heads=3, headdim=4, dstate=8, pairs=2)


def test_a_tensor_is_the_ssm_state_and_none_is_nothing() -> None:
    ssm = torch.randn(2, 3, 4, 8)
    assert state_entries(None, False, rank=1, **SIZES) == {}
    assert state_entries(ssm, False, rank=1, **SIZES)["ssm"] is ssm


def test_mamba3_entries_are_checked_and_k_gets_its_rank_axis() -> None:
    k = torch.randn(2, 3, 8)
    got = state_entries({"k": k, "angle": torch.zeros(2, 3, 2), "x": None}, True, rank=1, **SIZES)
    assert set(got) == {"k", "angle"} and got["k"].shape == (2, 1, 3, 8)
    got = state_entries({"k": torch.randn(2, 4, 3, 8)}, True, rank=4, **SIZES)
    assert got["k"].shape == (2, 4, 3, 8)


@pytest.mark.parametrize("state, mamba3, error, match", [
    ([torch.zeros(1)], True, TypeError, "initial_state must be a tensor or a dict, got list"),
    ({"angle": torch.zeros(2, 3, 2)}, False, ValueError, r"keys must be among \['ssm'\]"),
    ({"h": torch.zeros(1)}, True, ValueError, "keys must be among"),
    ({"x": torch.zeros(2, 3, 5)}, True, ValueError, r"initial_state\['x'\] must have shape \(2, 3, 4\), got \(2, 3, 5\)"),
    ({"ssm": 1.0}, True, TypeError, r"initial_state\['ssm'\] must be a tensor, got float"),
])
def test_bad_states_name_the_entry(state, mamba3: bool, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        state_entries(state, mamba3, rank=1, **SIZES)
