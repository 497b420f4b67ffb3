"""Identities between members of the family (recurrences.md §2–§4), each checked against a
form written out here independently of the oracle's code."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from oracle_cases import FP64_TOL, make_case
from scancc import ir
from scancc.oracle import random_inputs, random_state, rel_l2, sequential

SEEDS = st.integers(0, 2**31 - 1)


def check(what: str, got: object, want: object) -> None:
    err = rel_l2(got, want)
    assert err < FP64_TOL, f"{what}: rel L2 {err:.3g}"


def softplus(x: np.ndarray) -> np.ndarray:
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


# -- complex diagonal ≡ real 2×2 blocks --------------------------------------------------------

def real_block_selective(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Complex selective scan as a real recurrence on (Re h, Im h) with 2×2 rotation-scaling blocks."""
    u, A = inputs["u"], inputs["A"]
    Bsz, D, L = u.shape
    delta = softplus(inputs["delta"] + inputs["delta_bias"][:, None])
    Bc, Cc = inputs["B"], inputs["C"]  # (batch, 1, N, L)
    N = A.shape[1]
    y = np.zeros((Bsz, D, L))
    for b in range(Bsz):
        for d in range(D):
            for n in range(N):
                h = np.zeros(2)
                for t in range(L):
                    r, w = math.exp(delta[b, d, t] * A[d, n].real), delta[b, d, t] * A[d, n].imag
                    block = r * np.array([[math.cos(w), -math.sin(w)], [math.sin(w), math.cos(w)]])
                    inp = delta[b, d, t] * u[b, d, t] * np.array([Bc[b, 0, n, t].real, Bc[b, 0, n, t].imag])
                    h = block @ h + inp
                    c = Cc[b, 0, n, t]
                    y[b, d, t] += 2 * (c.real * h[0] - c.imag * h[1])
    y += inputs["D"][None, :, None] * u
    return y * silu(inputs["z"])


@settings(max_examples=10, deadline=None)
@given(seqlen=st.integers(1, 10), seed=SEEDS)
def test_complex_diagonal_equals_real_2x2_blocks(seqlen: int, seed: int) -> None:
    program = ir.selective(complex=True)
    inputs = random_inputs(program, np.random.default_rng(seed), seqlen=seqlen, dim=3, dstate=2)
    check("complex selective vs 2×2 blocks", sequential(program, inputs), real_block_selective(inputs))


def test_complex_linear_equals_real_blocks() -> None:
    rng = np.random.default_rng(5)
    program = ir.linear(complex=True)
    inputs = random_inputs(program, rng, seqlen=9, dim=3)
    a, x = inputs["a"], inputs["x"]
    h = np.zeros((2, 3, 2))
    want = np.zeros((2, 3, 9), complex)
    for t in range(9):
        ar, ai = a[..., t].real[..., None], a[..., t].imag[..., None]
        h = np.concatenate([ar * h[..., :1] - ai * h[..., 1:], ai * h[..., :1] + ar * h[..., 1:]], -1)
        h[..., 0] += x[..., t]
        want[..., t] = h[..., 0] + 1j * h[..., 1]
    check("complex linear vs 2×2 blocks", sequential(program, inputs), want)


# -- Mamba-3 reductions --------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(seqlen=st.integers(1, 20), rotary=st.booleans(), with_state=st.booleans(), groups=st.sampled_from([1, 2]),
       seed=SEEDS)
def test_mamba3_with_lambda_one_and_no_rotation_is_ssd(seqlen: int, rotary: bool, with_state: bool, groups: int,
                                                       seed: int) -> None:
    rng = np.random.default_rng(seed)
    ssd = ir.ssd(dt_bias=False, dt_softplus=False)
    inputs = random_inputs(ssd, rng, seqlen=seqlen, heads=4, headdim=3, dstate=4, groups=groups)
    A = inputs["A"]
    m3 = {k: inputs[k] for k in ("x", "dt", "B", "C", "D", "z")}
    m3["adt"] = inputs["dt"] * A
    m3["trap"] = np.full(inputs["dt"].shape, np.inf)  # λ = sigmoid(+inf) = 1: no half-step term
    program = ir.mamba3(rotary=rotary, qk_bias=rotary)
    if rotary:  # rotation by zero angles and zero biases: the identity
        m3.update(angles=np.zeros(inputs["dt"].shape + (2,)), B_bias=np.zeros((4, 4)), C_bias=np.zeros((4, 4)))
    h0 = random_state(ssd, rng, inputs=inputs) if with_state else None
    m3_state = None
    if with_state:  # k and x of the previous token are multiplied by β = 0
        m3_state = {"ssm": h0, "k": rng.standard_normal((2, 4, 4)), "x": rng.standard_normal((2, 4, 3))}
    want, want_h = sequential(ssd, inputs, initial_state=h0, return_final_state=True)
    got, got_state = sequential(program, m3, initial_state=m3_state, return_final_state=True)
    check("Mamba-3 (λ ≡ 1) vs SSD", got, want)
    check("Mamba-3 (λ ≡ 1) vs SSD state", got_state["ssm"], want_h)


def complex_diagonal_mamba3(inputs: dict[str, np.ndarray], pairing: str) -> np.ndarray:
    """Mamba-3 SISO with a complex diagonal state: pairs of B/C become complex numbers, the
    transition gains a phase ``e^{−iΔθ}``, and nothing is rotated. Unpaired dims stay real."""
    x, dt, adt, trap = inputs["x"], inputs["dt"], inputs["adt"], inputs["trap"]
    Bsz, L, H, P = x.shape
    N, K = inputs["B"].shape[-1], inputs["angles"].shape[-1]
    if pairing == "interleaved":
        i1, i2 = np.arange(0, 2 * K, 2), np.arange(1, 2 * K, 2)
    else:
        i1, i2 = np.arange(K), N // 2 + np.arange(K)
    rest = np.setdiff1d(np.arange(N), np.r_[i1, i2])
    G = inputs["B"].shape[2]
    k = np.repeat(inputs["B"], H // G, axis=2) + inputs["B_bias"]    # (b, L, H, N)
    q = np.repeat(inputs["C"], H // G, axis=2) + inputs["C_bias"]
    kc, qc = k[..., i1] + 1j * k[..., i2], q[..., i1] + 1j * q[..., i2]
    kr, qr = k[..., rest], q[..., rest]
    theta = math.pi * np.tanh(inputs["angles"])                      # (b, L, H, K)
    lam = 1 / (1 + np.exp(-trap))
    alpha = np.exp(adt)
    Sc = np.zeros((Bsz, H, P, K), complex)
    Sr = np.zeros((Bsz, H, P, len(rest)))
    y = np.zeros((Bsz, L, H, P))
    for t in range(L):
        phase = np.exp(-1j * dt[:, t, :, None] * theta[:, t])[:, :, None, :]      # (b, H, 1, K)
        a, g = alpha[:, t, :, None, None], (lam[:, t] * dt[:, t])[:, :, None, None]
        b = ((1 - lam[:, t]) * dt[:, t])[:, :, None, None] * a
        xt = x[:, t][..., None]
        if t > 0:
            xp = x[:, t - 1][..., None]
            Sc = phase * (a * Sc + b * xp * kc[:, t - 1][:, :, None]) + g * xt * kc[:, t][:, :, None]
            Sr = a * Sr + b * xp * kr[:, t - 1][:, :, None] + g * xt * kr[:, t][:, :, None]
        else:
            Sc = phase * a * Sc + g * xt * kc[:, t][:, :, None]
            Sr = a * Sr + g * xt * kr[:, t][:, :, None]
        y[:, t] = (np.einsum("bhpk,bhk->bhp", Sc, np.conj(qc[:, t])).real
                   + np.einsum("bhpn,bhn->bhp", Sr, qr[:, t]))
    y = y + inputs["D"][:, None] * x
    return y * silu(inputs["z"])


@settings(max_examples=20, deadline=None)
@given(pairing=st.sampled_from(["interleaved", "halves"]), seqlen=st.integers(1, 20), dstate=st.sampled_from([2, 4, 6, 8]),
       pair_frac=st.floats(0.0, 1.0), groups=st.sampled_from([1, 2]), seed=SEEDS)
def test_rotary_equals_complex_diagonal(pairing: str, seqlen: int, dstate: int, pair_frac: float, groups: int,
                                        seed: int) -> None:
    program = ir.mamba3(pairing=pairing)
    pairs = max(1, int(round(pair_frac * dstate / 2)))
    inputs = random_inputs(program, np.random.default_rng(seed), seqlen=seqlen, heads=2, headdim=3, dstate=dstate,
                           pairs=pairs, groups=groups)
    inputs["angles"] = inputs["angles"] * 3  # angles beyond 2π in total, so the mod matters
    check(f"rotary ({pairing}, K = {pairs}, N = {dstate}) vs complex diagonal", sequential(program, inputs),
          complex_diagonal_mamba3(inputs, pairing))


@settings(max_examples=15, deadline=None)
@given(pairing=st.sampled_from(["interleaved", "halves"]), seqlen=st.integers(1, 16), with_state=st.booleans(),
       seed=SEEDS)
def test_mimo_with_one_active_rank_is_siso(pairing: str, seqlen: int, with_state: bool, seed: int) -> None:
    # MIMO rank 2 whose second rank writes nothing (W_x = 0) and is not read out (W_o = 0)
    rng = np.random.default_rng(seed)
    mimo = ir.mamba3(rank=2, pairing=pairing)
    inputs = random_inputs(mimo, rng, seqlen=seqlen, heads=2, headdim=3, dstate=4, pairs=2)
    for w in ("W_x", "W_o"):
        inputs[w][:, 1] = 0.0
    Wx, Wz, Wo = inputs["W_x"][:, 0], inputs["W_z"][:, 0], inputs["W_o"][:, 0]  # (H, P)
    siso = ir.mamba3(pairing=pairing)
    s_inputs = {"x": inputs["x"] * Wx, "z": inputs["z"] * Wz, "B": inputs["B"][:, :, 0], "C": inputs["C"][:, :, 0],
                "B_bias": inputs["B_bias"][:, 0], "C_bias": inputs["C_bias"][:, 0],
                **{k: inputs[k] for k in ("dt", "adt", "trap", "angles", "D")}}
    m_state = s_state = None
    if with_state:
        m_state = random_state(mimo, rng, inputs=inputs)
        s_state = {"ssm": m_state["ssm"], "angle": m_state["angle"], "k": m_state["k"][:, 0],
                   "x": m_state["x"] * Wx}
    got, got_state = sequential(mimo, inputs, initial_state=m_state, return_final_state=True)
    want, want_state = sequential(siso, s_inputs, initial_state=s_state, return_final_state=True)
    check("MIMO (one active rank) vs SISO", got, want * Wo)
    check("MIMO (one active rank) vs SISO state", got_state["ssm"], want_state["ssm"])


# -- groups ----------------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(["selective", "selective_complex", "ssd", "mamba3", "mamba3_mimo", "gla"]),
       groups=st.sampled_from([2, 4]), seqlen=st.integers(1, 10), seed=SEEDS)
def test_groups_equal_explicitly_repeated_B_and_C(name: str, groups: int, seqlen: int, seed: int) -> None:
    # G groups ≡ one group per owner with B/C repeated: owner i uses group i // (owners / G)
    from oracle_cases import ALL

    program = ALL[name]
    inputs, state = make_case(program, seed, seqlen, groups=groups, dim=8, heads=8, headdim=2, dstate=4)
    owners = 8
    expanded = dict(inputs)
    for key in ("B", "C"):
        axis = 1 if program.layout == "channel" else inputs[key].ndim - 2
        expanded[key] = np.repeat(inputs[key], owners // groups, axis=axis)
    check(f"{name} G = {groups}", sequential(program, inputs, initial_state=state),
          sequential(program, expanded, initial_state=state))


def test_group_of_a_channel_is_its_block() -> None:
    # G = 2, D = 4: channels 0, 1 read group 0 and channels 2, 3 read group 1
    program = ir.selective(skip=False, gate=False)
    inputs = random_inputs(program, np.random.default_rng(0), dim=4, groups=2)
    inputs["B"][:, 1] = 0.0
    out = sequential(program, inputs)
    assert np.all(out[:, 2:] == 0.0) and np.all(np.abs(out[:, :2]) > 0)
