"""The IR: validation, JSON round trips, content hashes and readable forms."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scancc.ir as ir
from scancc.ir import Decay, Input, IRValidationError, Program, Readout, Schedule, State, Step


def _preset_programs() -> list[Program]:
    progs = [f() for f in ir.PRESETS.values()]
    progs += [
        ir.linear(complex=True),
        ir.lti(discretization="bilinear"),
        ir.lti(complex=False, conj_pairs=False),
        ir.selective(complex=True, gate=False),
        ir.selective(varying_B=False, varying_C=False, skip=False, delta_bias=False, delta_softplus=False),
        ir.ssd(dt_limit=(0.001, 0.1), skip=False),
        ir.mamba3(rotary=False),
        ir.mamba3(pairing="halves", rank=4),
    ]
    return progs + [p.as_step() for p in progs]


@pytest.mark.parametrize("program", _preset_programs(), ids=lambda p: p.name + "_" + p.hash)
def test_json_round_trip_preserves_program_and_hash(program: Program) -> None:
    text = program.to_json()
    again = Program.from_json(text)
    assert again == program
    assert again.hash == program.hash
    assert json.loads(text)["scancc_ir"] == 1
    # Pretty-printed JSON is the same program.
    assert Program.from_json(program.to_json(indent=2)).hash == program.hash


def test_hashes_are_distinct_across_presets() -> None:
    progs = _preset_programs()
    assert len({p.hash for p in progs}) == len({p.to_json() for p in progs}) == len(progs)


def test_hash_is_stable_across_releases() -> None:
    # Cache keys depend on this: changing the canonical JSON must be deliberate.
    assert ir.linear().to_json() == (
        '{"decay":{"discretization":null,"kind":"input","param":"element"},'
        '"input":{"b":"none","kind":"direct","rank":1,"scale":"none"},"layout":"channel","mode":"sequence",'
        '"name":"linear_scan","readout":{"c":"none","gate":"none","kind":"state","scale":1.0,"skip":false},'
        '"rotary":null,"scancc_ir":1,"state":{"complex":false,"shape":"vector"},"step":null}'
    )
    assert ir.linear().hash == "22e9056171d0467b"


def test_describe_states_the_recurrence() -> None:
    text = repr(ir.selective())
    assert "a_t = exp(Δ_t · A[d, n])" in text
    assert "Δ = softplus(delta + delta_bias)" in text
    assert "silu(z_t)" in text
    assert "2·Re" in repr(ir.lti())
    assert "(i, i + N/2)" in repr(ir.mamba3(pairing="halves"))


def test_tensors_follow_the_layouts() -> None:
    sel = {t.name: t.dims for t in ir.selective().tensors()}
    assert sel["u"] == ("batch", "dim", "seqlen")
    assert sel["B"] == ("batch", "groups", "dstate", "seqlen")
    assert {t.name: t.dims for t in ir.selective(varying_B=False).tensors()}["B"] == ("dim", "dstate")
    ssd = {t.name: t.dims for t in ir.ssd().tensors()}
    assert ssd["x"] == ("batch", "seqlen", "heads", "headdim")
    mimo = {t.name: t.dims for t in ir.mamba3(rank=2).tensors()}
    assert mimo["B"] == ("batch", "seqlen", "rank", "groups", "dstate") and "W_o" in mimo
    step = {t.name: t.dims for t in ir.ssd().as_step().tensors()}
    assert step["x"] == ("batch", "heads", "headdim")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ir.linear(name="bad name"), "identifier"),
        (lambda: ir.linear(name="1abc"), "identifier"),
        (lambda: ir.linear(name="class"), "reserved"),
        (lambda: ir.linear(name="tl"), "reserved"),
        (lambda: ir.linear(name="x" * 65), "identifier"),
        (lambda: ir.lti(discretization="euler"), "unknown discretization 'euler'"),
        (lambda: ir.mamba3(pairing="zigzag"), "unknown rotary pairing"),
        (lambda: ir.mamba3(rank=0), "rank must be a positive int"),
        (lambda: ir.mamba3(rank=-2), "rank must be a positive int"),
        (lambda: ir.ssd(dt_limit=(0.5, 0.1)), "0 <= lo <= hi"),
        (lambda: ir.ssd(dt_limit=(-1.0, 0.1)), "0 <= lo <= hi"),
        (lambda: Decay("exp", "state", "zoh"), "discretization only applies"),
        (lambda: Input("direct", "varying"), "takes no B"),
        (lambda: Input("euler", "varying", rank=2), "MIMO"),
        (lambda: Readout("contract", "none"), "needs C"),
        (lambda: Readout(scale=3), "scale must be 1 or 2"),
        (lambda: State("tensor"), "unknown state shape"),
        (lambda: Program("p", "channel", State(), Decay("exp", "state"), Input("euler", "varying"),
                         Readout("contract", "varying")), "Step"),
        (lambda: Program("p", "channel", State(), Decay(), Input(), Readout(scale=2)), "needs a complex state"),
        (lambda: Program("p", "head", State("matrix", True), Decay("exp", "head"), Input("euler", "varying"),
                         Readout("contract", "varying"), Step()), "Rotary"),
        (lambda: Program("p", "diagonal", State(), Decay(), Input(), Readout()), "unknown layout"),
        (lambda: Program("p", "channel", "vector", Decay(), Input(), Readout()), "must be a State"),
    ],
)
def test_invalid_programs_are_rejected_with_a_reason(build, message: str) -> None:
    with pytest.raises(IRValidationError, match=message):
        build()


def test_ir_errors_are_value_errors() -> None:
    assert issubclass(IRValidationError, ValueError)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"scancc_ir": 99}', "unsupported IR version"),
        (ir.linear().to_json().replace('"mode"', '"flavour"'), "unknown program fields"),
        (ir.linear().to_json().replace('"kind":"input"', '"kind":"teleport"'), "unknown decay kind"),
        (ir.linear().to_json().replace('"linear_scan"', '"os.system(1)"'), "identifier"),
        (ir.linear().to_json().replace('"rank":1', '"rank":1,"extra":2'), "unknown Input fields"),
    ],
)
def test_bad_json_is_rejected(text: str, message: str) -> None:
    with pytest.raises(IRValidationError, match=message):
        Program.from_json(text)


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=70))
def test_only_identifiers_reach_generated_code(name: str) -> None:
    try:
        prog = ir.linear(name=name)
    except IRValidationError:
        return
    assert name.isidentifier() and name.isascii() and len(name) <= 64
    assert prog.name == name


def test_schedule_validation_and_round_trip() -> None:
    s = Schedule(block_l=256, block_d=4, num_warps=8, num_stages=2)
    assert Schedule.from_dict(json.loads(s.to_json())) == s
    for bad, message in [
        (dict(block_l=100), "power of two"),
        (dict(chunk=8), r"\[16, 4096\]"),
        (dict(algorithm="magic"), "unknown algorithm"),
        (dict(num_stages=0), "num_stages"),
        (dict(num_warps=True), "num_warps"),
    ]:
        with pytest.raises(IRValidationError, match=message):
            Schedule(**bad)
    with pytest.raises(IRValidationError, match="unknown schedule fields"):
        Schedule.from_dict({"tile": 3})


def test_programs_are_frozen_and_replace_validates() -> None:
    p = ir.selective()
    with pytest.raises(AttributeError):
        p.name = "other"  # type: ignore[misc]
    assert p.replace(name="other").name == "other"
    with pytest.raises(IRValidationError):
        p.replace(step=None)


def test_step_clamp_is_normalised() -> None:
    assert Step(clamp=(0, 1)).clamp == (0.0, 1.0)
    assert ir.ssd(dt_limit=(0.0, float("inf"))).step.clamp is None


def test_decay_kinds_match_state_shapes() -> None:
    with pytest.raises(IRValidationError, match="log_input' needs a matrix state"):
        Program("p", "channel", State(), Decay("log_input", "state"), Input("euler", "varying"),
                Readout("contract", "varying"), Step())
    with pytest.raises(IRValidationError, match="per head"):
        Program("p", "head", State("matrix"), Decay("exp", "state"), Input("euler", "varying"),
                Readout("contract", "varying"), Step())
