"""Every program the CUDA backend lowers, by family (shared by the compile and GPU tests)."""

from __future__ import annotations

from scancc import ir
from scancc.ir import Decay, Step

_sel = ir.selective()
DIAGONAL = {
    "linear": ir.linear(), "hgrn": ir.hgrn(), "rglru": ir.rglru(),
    "linear_c": ir.linear(complex=True, name="linear_c"),
    "hgrn_c": ir.linear(complex=True, scale="one_minus_a", name="hgrn_c"),
    "rglru_c": ir.linear(complex=True, scale="sqrt_one_minus_a2", name="rglru_c"),
    "s4d_zoh": ir.lti(), "lti_bilinear_real": ir.lti(discretization="bilinear", complex=False, skip=False),
    "lti_noconj": ir.lti(conj_pairs=False), "lru": ir.lru(), "lti_none_real": ir.lti(discretization="none", complex=False),
    "selective": _sel,
    "selective_c": ir.selective(complex=True, name="selective_c"),
    "selective_fixed_bc": ir.selective(varying_B=False, varying_C=False, gate=False, delta_bias=False,
                                       name="selective_fixed_bc"),
    "selective_plain": ir.selective(skip=False, gate=False, delta_softplus=False, name="selective_plain"),
    "selective_clamped": _sel.replace(step=Step(bias=True, softplus=True, clamp=(0.05, 0.9)), name="selective_clamped"),
    "selective_channel_A": _sel.replace(decay=Decay("exp", "channel"), name="selective_channel_a"),
    "selective_channel_A_c": ir.selective(complex=True).replace(decay=Decay("exp", "channel"), name="selective_channel_ac"),
}
STEP = {
    "selective_step": ir.selective().as_step(),
    "selective_step_plain": ir.selective(skip=False, gate=False, delta_bias=False, name="sel_plain").as_step(),
    "ssd_step": ir.ssd(dt_limit=(0.01, 5.0)).as_step(),
}
MATRIX = {
    "ssd": ir.ssd(), "ssd_clamped": ir.ssd(dt_limit=(0.1, 0.6), gate=False, name="ssd_clamped"), "gla": ir.gla(),
    "mamba3": ir.mamba3(), "mamba3_mimo": ir.mamba3(rank=2, pairing="halves", name="mamba3_mimo"),
    "mamba3_plain": ir.mamba3(rotary=False, skip=False, gate=False, name="mamba3_plain"),
}
ALL = {**DIAGONAL, **STEP, **MATRIX}
