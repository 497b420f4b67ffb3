"""State handling of the sequential oracle, for every family: carrying a state across a split,
step mode, packed variable-length sequences (cu_seqlens) and segment boundaries (seq_idx)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from oracle_cases import (ALL, FP64_TOL, batch_row, concat_time, make_case, out_axis, state_concat, state_row,
                          time_index, time_slice, zero_state)
from scancc.oracle import random_state, rel_l2, sequential

NAMES = sorted(ALL)


def check(what: str, got: object, want: object) -> None:
    err = rel_l2(got, want)
    assert err < FP64_TOL, f"{what}: rel L2 {err:.3g}"


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(NAMES), seqlen=st.integers(2, 40), cut=st.floats(0.0, 1.0), with_state=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_split_with_carried_state_equals_whole(name: str, seqlen: int, cut: float, with_state: bool, seed: int) -> None:
    program = ALL[name]
    inputs, state = make_case(program, seed, seqlen, with_state=with_state)
    t = int(round(cut * seqlen))  # 0 and seqlen included: empty parts
    whole, final = sequential(program, inputs, initial_state=state, return_final_state=True)
    first, mid = sequential(program, time_slice(program, inputs, 0, t), initial_state=state, return_final_state=True)
    second, end = sequential(program, time_slice(program, inputs, t, seqlen), initial_state=mid,
                             return_final_state=True)
    check(f"{name} out split at {t}", np.concatenate([first, second], axis=out_axis(program)), whole)
    check(f"{name} final state split at {t}", end, final)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(NAMES), seqlen=st.integers(1, 12), with_state=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_step_mode_repeated_equals_sequence(name: str, seqlen: int, with_state: bool, seed: int) -> None:
    program = ALL[name]
    inputs, state = make_case(program, seed, seqlen, with_state=with_state)
    whole, final = sequential(program, inputs, initial_state=state, return_final_state=True)
    step = program.as_step()
    outs = []
    for t in range(seqlen):
        out, state = sequential(step, time_index(program, inputs, t), initial_state=state)
        outs.append(out)
    check(f"{name} step outputs", np.stack(outs, axis=out_axis(program)), whole)
    check(f"{name} step state", state, final)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(NAMES), lengths=st.lists(st.integers(0, 9), min_size=1, max_size=4),
       with_state=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_varlen_equals_separate_sequences(name: str, lengths: list[int], with_state: bool, seed: int) -> None:
    program = ALL[name]
    parts, states = [], []
    for i, n in enumerate(lengths):
        inputs, state = make_case(program, seed + i, n, batch=1)
        parts.append(inputs)
        states.append(state)
    shared = {k for k, v in parts[0].items() if k not in {s.name for s in program.tensors() if s.dims[:1] == ("batch",)}}
    for p in parts[1:]:  # parameters without a batch axis are shared by all sequences
        p.update({k: parts[0][k] for k in shared})
    packed = concat_time(program, parts)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    initial = state_concat(states) if with_state else None
    out, final = sequential(program, packed, cu_seqlens=cu, initial_state=initial, return_final_state=True)
    want_outs, want_finals = [], []
    for i, p in enumerate(parts):
        o, f = sequential(program, p, initial_state=states[i] if with_state else None, return_final_state=True)
        want_outs.append(o)
        want_finals.append(f)
    check(f"{name} varlen out", out, np.concatenate(want_outs, axis=out_axis(program)))
    check(f"{name} varlen final states", final, state_concat(want_finals))


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(NAMES), seqlen=st.integers(2, 24), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_seq_idx_segments_never_interact(name: str, seqlen: int, seed: int, data: st.DataObject) -> None:
    program = ALL[name]
    inputs, state = make_case(program, seed, seqlen)
    starts = data.draw(st.lists(st.booleans(), min_size=2 * seqlen, max_size=2 * seqlen))
    seq_idx = np.cumsum(np.array(starts).reshape(2, seqlen), axis=1).astype(np.int32) * 3  # ids need not be 0, 1, ...
    out, final = sequential(program, inputs, initial_state=state, seq_idx=seq_idx, return_final_state=True)
    axis = out_axis(program)
    for b in range(2):
        row_inputs, row_state = batch_row(program, inputs, b), state_row(state, b)
        bounds = np.flatnonzero(np.r_[True, seq_idx[b, 1:] != seq_idx[b, :-1], True])
        for j, (s0, s1) in enumerate(zip(bounds[:-1], bounds[1:])):
            init = row_state if j == 0 else zero_state(row_state)
            want, want_final = sequential(program, time_slice(program, row_inputs, s0, s1), initial_state=init,
                                          return_final_state=True)
            got = np.take(out, [b], axis=0).take(range(s0, s1), axis=axis)
            check(f"{name} batch {b} segment {j}", got, want)
        check(f"{name} batch {b} final state", state_row(final, b), want_final)


def test_seq_idx_boundary_blocks_earlier_inputs() -> None:
    # changing everything before a boundary must leave everything after it untouched
    for name in NAMES:
        program = ALL[name]
        inputs, state = make_case(program, 11, 12)
        seq_idx = np.array([[0] * 5 + [1] * 7] * 2, dtype=np.int64)
        base = sequential(program, inputs, initial_state=state, seq_idx=seq_idx)
        noisy = time_slice(program, inputs, 0, 5)
        rng = np.random.default_rng(0)
        noisy = {k: v + (rng.standard_normal(v.shape) if k in ("x", "u") else 0.0) for k, v in noisy.items()}
        changed = sequential(program, concat_time(program, [noisy, time_slice(program, inputs, 5, 12)]),
                             initial_state=random_state(program, rng, inputs=inputs), seq_idx=seq_idx)
        after = [slice(None)] * base.ndim
        after[out_axis(program)] = slice(5, None)
        assert np.array_equal(base[tuple(after)], changed[tuple(after)]), name
        before = [slice(None)] * base.ndim
        before[out_axis(program)] = slice(0, 5)
        assert not np.allclose(base[tuple(before)], changed[tuple(before)]), name
