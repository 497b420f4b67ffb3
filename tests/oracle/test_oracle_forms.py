"""The oracle's independent forms agree with the sequential recurrence:
chunked (SSD, Mamba-3) for every chunk size, FFT convolution (LTI), associative scan (diagonal family)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from oracle_cases import FP64_TOL, HEAD, MAMBA3, VECTOR, make_case
from scancc import ir
from scancc.oracle import associative, chunked, convolution, rel_l2, sequential

CHUNKED = {name: p for name, p in HEAD.items() if p.decay.param == "head"}
LTI = {name: p for name, p in VECTOR.items() if p.decay.kind == "lti"}


def assert_same(got: tuple, want: tuple, what: str) -> None:
    err_out, err_state = rel_l2(got[0], want[0]), rel_l2(got[1], want[1])
    assert err_out < FP64_TOL and err_state < FP64_TOL, f"{what}: out {err_out:.3g}, state {err_state:.3g}"


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(CHUNKED)), chunk=st.integers(16, 256), full_chunks=st.integers(0, 3),
       rest=st.floats(0.0, 1.0), with_state=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_chunked_matches_sequential(name: str, chunk: int, full_chunks: int, rest: float, with_state: bool,
                                    seed: int) -> None:
    program = CHUNKED[name]
    seqlen = max(1, full_chunks * chunk + int(rest * (chunk - 1)))  # mostly not a multiple of chunk
    inputs, state = make_case(program, seed, seqlen, batch=1, with_state=with_state, heads=2, headdim=2)
    want = sequential(program, inputs, initial_state=state, return_final_state=True)
    got = chunked(program, inputs, chunk, initial_state=state, return_final_state=True)
    assert_same(got, want, f"{name} chunk {chunk} L {seqlen}")


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(sorted(CHUNKED)), chunk=st.integers(1, 12), seqlen=st.integers(1, 40),
       seed=st.integers(0, 2**31 - 1), data=st.data())
def test_chunked_small_chunks_and_segments(name: str, chunk: int, seqlen: int, seed: int, data: st.DataObject) -> None:
    program = CHUNKED[name]
    inputs, state = make_case(program, seed, seqlen, groups=2, heads=4, headdim=2)
    seq_idx = np.cumsum(np.array(data.draw(st.lists(st.booleans(), min_size=2 * seqlen, max_size=2 * seqlen)))
                        .reshape(2, seqlen), axis=1).astype(np.int32)
    for segments in (None, seq_idx):
        want = sequential(program, inputs, initial_state=state, seq_idx=segments, return_final_state=True)
        got = chunked(program, inputs, chunk, initial_state=state, seq_idx=segments, return_final_state=True)
        assert_same(got, want, f"{name} chunk {chunk} L {seqlen} seq_idx {segments is not None}")


def test_chunked_single_token_and_mimo_rank3() -> None:
    for program in (MAMBA3["mamba3_mimo_interleaved"], MAMBA3["mamba3_mimo"], HEAD["ssd"]):
        for seqlen in (1, 17):
            inputs, state = make_case(program, 7, seqlen, dstate=8, pairs=3)
            want = sequential(program, inputs, initial_state=state, return_final_state=True)
            for chunk in (1, 16, 64):
                assert_same(chunked(program, inputs, chunk, initial_state=state, return_final_state=True), want,
                            f"{program.name} L {seqlen} chunk {chunk}")


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(sorted(LTI)), seqlen=st.integers(1, 200), with_state=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_fft_convolution_matches_sequential(name: str, seqlen: int, with_state: bool, seed: int) -> None:
    program = LTI[name]
    inputs, state = make_case(program, seed, seqlen, with_state=with_state)
    want = sequential(program, inputs, initial_state=state, return_final_state=True)
    got = convolution(program, inputs, initial_state=state, return_final_state=True)
    assert_same(got, want, f"{name} L {seqlen}")


def test_fft_convolution_pads_to_2L() -> None:
    # a slowly decaying kernel: a circular (unpadded) convolution would wrap the tail around
    program = ir.lti(complex=False, skip=False)
    L = 64
    inputs = {"u": np.ones((1, 1, L)), "delta": np.array([0.01]), "A": np.array([[-0.1]]),
              "B": np.array([[1.0]]), "C": np.array([[1.0]])}
    assert rel_l2(convolution(program, inputs), sequential(program, inputs)) < FP64_TOL


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(VECTOR)), seqlen=st.integers(1, 150), with_state=st.booleans(),
       groups=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_associative_matches_sequential(name: str, seqlen: int, with_state: bool, groups: int, seed: int,
                                        data: st.DataObject) -> None:
    program = VECTOR[name]
    inputs, state = make_case(program, seed, seqlen, groups=groups, with_state=with_state)
    seq_idx = None
    if data.draw(st.booleans()):
        seq_idx = np.cumsum(np.array(data.draw(st.lists(st.booleans(), min_size=2 * seqlen, max_size=2 * seqlen)))
                            .reshape(2, seqlen), axis=1)
    want = sequential(program, inputs, initial_state=state, seq_idx=seq_idx, return_final_state=True)
    got = associative(program, inputs, initial_state=state, seq_idx=seq_idx, return_final_state=True)
    assert_same(got, want, f"{name} L {seqlen}")


def test_forms_take_cu_seqlens() -> None:
    cu = np.array([0, 5, 5, 23, 40])
    for program, form in ((HEAD["mamba3"], lambda p, i, **kw: chunked(p, i, 16, **kw)),
                          (HEAD["ssd"], lambda p, i, **kw: chunked(p, i, 4, **kw)),
                          (VECTOR["selective"], associative)):
        inputs, _ = make_case(program, 3, 40, batch=1, with_state=False)
        from scancc.oracle import random_state
        state = random_state(program, np.random.default_rng(1), inputs=inputs, rows=4)
        want = sequential(program, inputs, initial_state=state, cu_seqlens=cu, return_final_state=True)
        assert_same(form(program, inputs, initial_state=state, cu_seqlens=cu, return_final_state=True), want,
                    program.name)
