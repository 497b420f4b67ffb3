"""Tiny cases worked out by hand (scalar formulas of recurrences.md), one or more per family,
so the oracle is anchored to the math and not only to its other forms."""

from __future__ import annotations

import cmath
import math

import numpy as np
import pytest

from scancc import ir
from scancc.oracle import rel_l2, sequential


def sp(x: float) -> float:
    return x if x > 20 else math.log1p(math.exp(x))


def silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def arr(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def close(got: np.ndarray, want: np.ndarray) -> None:
    err = rel_l2(got, np.asarray(want))
    assert err < 1e-13, f"rel L2 {err:.3g}\ngot  {np.asarray(got).ravel()}\nwant {np.asarray(want).ravel()}"


# -- linear / HGRN / RG-LRU --------------------------------------------------------------------

def test_linear_by_hand() -> None:
    a, x = arr(0.5, 0.8).reshape(1, 1, 2), arr(1.0, 2.0).reshape(1, 1, 2)
    close(sequential(ir.linear(), {"a": a, "x": x}), [[[1.0, 2.8]]])
    out, h = sequential(ir.linear(), {"a": a, "x": x}, initial_state=np.full((1, 1, 1), 3.0), return_final_state=True)
    close(out, [[[2.5, 4.0]]])
    close(h, [[[4.0]]])
    close(sequential(ir.hgrn(), {"a": a, "x": x}), [[[0.5, 0.8 * 0.5 + 0.2 * 2.0]]])
    h1 = math.sqrt(1 - 0.25)
    close(sequential(ir.rglru(), {"a": a, "x": x}), [[[h1, 0.8 * h1 + 0.6 * 2.0]]])


def test_linear_complex_by_hand() -> None:
    a = np.array([[[0.5j, 0.6 - 0.3j]]])
    x = arr(1.0, -2.0).reshape(1, 1, 2)
    h2 = (0.6 - 0.3j) * 1.0 - 2.0
    close(sequential(ir.linear(complex=True), {"a": a, "x": x}), [[[1.0, h2]]])
    g1, g2 = math.sqrt(1 - 0.25), math.sqrt(1 - abs(0.6 - 0.3j) ** 2)
    close(sequential(ir.rglru().replace(state=ir.State("vector", True)), {"a": a, "x": x}),
          [[[g1, (0.6 - 0.3j) * g1 - 2.0 * g2]]])


# -- LTI -----------------------------------------------------------------------------------------

LAM, DELTA, B, C, D = -1.0 + 2.0j, 0.5, 1.0 + 1.0j, 0.5 - 1.0j, 0.3
U = (1.0, -2.0)


def lti_inputs(lam: complex = LAM) -> dict[str, np.ndarray]:
    return {"u": arr(*U).reshape(1, 1, 2), "delta": arr(DELTA), "A": np.array([[lam]]), "B": np.array([[B]]),
            "C": np.array([[C]]), "D": arr(D)}


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_lti_by_hand(disc: str) -> None:
    if disc == "zoh":
        abar = cmath.exp(DELTA * LAM)
        bbar = (abar - 1) / LAM * B
    else:
        abar = (1 + DELTA * LAM / 2) / (1 - DELTA * LAM / 2)
        bbar = DELTA / (1 - DELTA * LAM / 2) * B
    h1 = bbar * U[0]
    h2 = abar * h1 + bbar * U[1]
    want = [2 * (C * h1).real + D * U[0], 2 * (C * h2).real + D * U[1]]
    close(sequential(ir.lti(discretization=disc), lti_inputs()), np.array(want).reshape(1, 1, 2))
    # without the conjugate-pair convention: Re, not 2·Re
    want_re = [(C * h1).real + D * U[0], (C * h2).real + D * U[1]]
    close(sequential(ir.lti(discretization=disc, conj_pairs=False), lti_inputs()), np.array(want_re).reshape(1, 1, 2))


def test_lti_real_by_hand() -> None:
    lam = -0.7
    inputs = {k: (v.real if np.iscomplexobj(v) else v) for k, v in lti_inputs().items()}
    inputs["A"] = np.array([[lam]])
    abar = math.exp(DELTA * lam)
    bbar = (abar - 1) / lam * B.real
    h1 = bbar * U[0]
    h2 = abar * h1 + bbar * U[1]
    close(sequential(ir.lti(complex=False), inputs), [[[C.real * h1 + D * U[0], C.real * h2 + D * U[1]]]])


def test_lru_by_hand() -> None:
    lam = 0.9 * cmath.exp(0.4j)
    inputs = lti_inputs(lam)
    del inputs["delta"]
    h1 = B * U[0]
    h2 = lam * h1 + B * U[1]
    close(sequential(ir.lru(), inputs), [[[(C * h1).real + D * U[0], (C * h2).real + D * U[1]]]])


# -- selective (Mamba-1) ------------------------------------------------------------------------

def test_selective_by_hand() -> None:
    # two states, softplus below and above the x > 20 threshold, delta_bias, D, z
    A = arr(-1.0, -0.5)
    bias = 0.1
    delta = (0.2, 21.0)
    u, z = (1.5, -0.5), (0.7, -1.2)
    Bt = ((1.0, 2.0), (-1.0, 0.5))   # B_t[n]
    Ct = ((0.5, -1.0), (2.0, 1.0))
    Dk = 0.25
    h = [0.0, 0.0]
    want = []
    for t in range(2):
        dl = sp(delta[t] + bias)
        h = [math.exp(dl * A[n]) * h[n] + dl * Bt[t][n] * u[t] for n in range(2)]
        y = sum(Ct[t][n] * h[n] for n in range(2)) + Dk * u[t]
        want.append(y * silu(z[t]))
    inputs = {"u": arr(*u).reshape(1, 1, 2), "delta": arr(*delta).reshape(1, 1, 2), "A": A.reshape(1, 2),
              "B": np.array(Bt).T.reshape(1, 1, 2, 2), "C": np.array(Ct).T.reshape(1, 1, 2, 2), "D": arr(Dk),
              "z": arr(*z).reshape(1, 1, 2), "delta_bias": arr(bias)}
    close(sequential(ir.selective(), inputs), np.array(want).reshape(1, 1, 2))
    assert sp(21.1) == 21.1


def test_selective_complex_fixed_by_hand() -> None:
    A, Bf, Cf = -0.5 + 1.0j, 0.3 - 0.2j, 1.0 + 0.5j
    delta, u = (0.4, 0.9), (1.0, 2.0)
    h, want = 0j, []
    for t in range(2):
        h = cmath.exp(delta[t] * A) * h + delta[t] * Bf * u[t]
        want.append(2 * (Cf * h).real)
    program = ir.selective(complex=True, varying_B=False, varying_C=False, skip=False, gate=False,
                           delta_bias=False, delta_softplus=False)
    inputs = {"u": arr(*u).reshape(1, 1, 2), "delta": arr(*delta).reshape(1, 1, 2), "A": np.array([[A]]),
              "B": np.array([[Bf]]), "C": np.array([[Cf]])}
    close(sequential(program, inputs), np.array(want).reshape(1, 1, 2))


# -- SSD (Mamba-2) -------------------------------------------------------------------------------

def test_ssd_by_hand() -> None:
    # one head, P = 2, N = 1, dt clamp engaged at t = 1, D per headdim element
    A, bias, lo, hi = -0.8, 0.2, 0.1, 0.9
    dt = (0.3, 2.5)
    x = ((1.0, -1.0), (0.5, 2.0))
    Bt, Ct = (1.5, -0.5), (2.0, 0.25)
    Dk = (0.3, -0.2)
    z = ((0.1, 0.2), (-0.3, 1.0))
    S = [0.0, 0.0]
    want = []
    for t in range(2):
        dl = min(max(sp(dt[t] + bias), lo), hi)
        S = [math.exp(dl * A) * S[p] + dl * x[t][p] * Bt[t] for p in range(2)]
        want.append([(S[p] * Ct[t] + Dk[p] * x[t][p]) * silu(z[t][p]) for p in range(2)])
    inputs = {"x": np.array(x).reshape(1, 2, 1, 2), "dt": arr(*dt).reshape(1, 2, 1), "A": arr(A),
              "B": arr(*Bt).reshape(1, 2, 1, 1), "C": arr(*Ct).reshape(1, 2, 1, 1), "D": np.array([Dk]),
              "z": np.array(z).reshape(1, 2, 1, 2), "dt_bias": arr(bias)}
    close(sequential(ir.ssd(dt_limit=(lo, hi)), inputs), np.array(want).reshape(1, 2, 1, 2))


def test_gla_by_hand() -> None:
    adt = ((-0.1, -1.0), (-0.5, -0.2))
    dt, x = (0.5, 1.5), (2.0, -1.0)
    k, q = ((1.0, 2.0), (0.5, -1.0)), ((1.0, 0.0), (0.5, 0.5))
    S, want = [0.0, 0.0], []
    for t in range(2):
        S = [math.exp(adt[t][n]) * S[n] + dt[t] * x[t] * k[t][n] for n in range(2)]
        want.append(sum(S[n] * q[t][n] for n in range(2)))
    inputs = {"x": arr(*x).reshape(1, 2, 1, 1), "dt": arr(*dt).reshape(1, 2, 1), "adt": np.array(adt).reshape(1, 2, 1, 2),
              "B": np.array(k).reshape(1, 2, 1, 2), "C": np.array(q).reshape(1, 2, 1, 2)}
    close(sequential(ir.gla(), inputs), np.array(want).reshape(1, 2, 1, 1))


# -- Mamba-3 -------------------------------------------------------------------------------------

def rot(v: tuple[float, float], phi: float) -> tuple[float, float]:
    return (v[0] * math.cos(phi) - v[1] * math.sin(phi), v[0] * math.sin(phi) + v[1] * math.cos(phi))


M3 = {
    "dt": (0.5, 0.8), "adt": (-0.3, -0.6), "trap": (0.4, -0.7), "ang": (0.9, -2.0),
    "x": (1.0, -2.0), "k": ((1.0, 0.5), (-0.5, 2.0)), "q": ((0.3, -1.0), (1.0, 1.0)),
    "kb": (0.1, -0.2), "qb": (0.05, 0.3), "D": 0.4, "z": (0.6, -0.4),
}


def mamba3_inputs(interleaved: bool = True) -> dict[str, np.ndarray]:
    m = M3
    return {"x": arr(*m["x"]).reshape(1, 2, 1, 1), "dt": arr(*m["dt"]).reshape(1, 2, 1),
            "adt": arr(*m["adt"]).reshape(1, 2, 1), "trap": arr(*m["trap"]).reshape(1, 2, 1),
            "B": np.array(m["k"]).reshape(1, 2, 1, 2), "C": np.array(m["q"]).reshape(1, 2, 1, 2),
            "B_bias": np.array([m["kb"]]), "C_bias": np.array([m["qb"]]), "angles": arr(*m["ang"]).reshape(1, 2, 1, 1),
            "D": arr(m["D"]), "z": arr(*m["z"]).reshape(1, 2, 1, 1)}


def test_mamba3_siso_by_hand() -> None:
    # P = 1, N = 2, one rotary pair (0, 1): both pairings coincide for N = 2
    m = M3
    phi, S, kprev, xprev, want = 0.0, [0.0, 0.0], (0.0, 0.0), 0.0, []
    for t in range(2):
        phi = (phi + m["dt"][t] * math.pi * math.tanh(m["ang"][t])) % (2 * math.pi)
        kt = rot((m["k"][t][0] + m["kb"][0], m["k"][t][1] + m["kb"][1]), phi)
        qt = rot((m["q"][t][0] + m["qb"][0], m["q"][t][1] + m["qb"][1]), phi)
        alpha, lam = math.exp(m["adt"][t]), sig(m["trap"][t])
        beta, gamma = (1 - lam) * m["dt"][t] * alpha, lam * m["dt"][t]
        S = [alpha * S[n] + beta * xprev * kprev[n] + gamma * m["x"][t] * kt[n] for n in range(2)]
        y = S[0] * qt[0] + S[1] * qt[1] + m["D"] * m["x"][t]
        want.append(y * silu(m["z"][t]))
        kprev, xprev = kt, m["x"][t]
    for pairing in ("interleaved", "halves"):
        out, st = sequential(ir.mamba3(pairing=pairing), mamba3_inputs(), return_final_state=True)
        close(out, np.array(want).reshape(1, 2, 1, 1))
        close(st["ssm"], np.array(S).reshape(1, 1, 1, 2))
        close(st["k"], np.array(kprev).reshape(1, 1, 2))
        close(st["x"], arr(xprev).reshape(1, 1, 1))
        close(st["angle"], arr(phi).reshape(1, 1, 1))


def test_mamba3_mimo_by_hand() -> None:
    # rank 2, P = 2, N = 4, one pair: halves pairs (0, 2); dims 1 and 3 untouched
    rng = np.random.default_rng(3)
    L, R, P, N = 2, 2, 2, 4
    x, z = rng.standard_normal((L, P)), rng.standard_normal((L, P))
    k, q = rng.standard_normal((L, R, N)), rng.standard_normal((L, R, N))
    kb, qb = rng.standard_normal((R, N)), rng.standard_normal((R, N))
    Wx, Wz, Wo = rng.standard_normal((R, P)), rng.standard_normal((R, P)), rng.standard_normal((R, P))
    dt, adt, trap, ang, Dk = (0.6, 0.3), (-0.2, -0.9), (0.5, -1.0), (1.3, 0.4), 0.7

    def rot4(v: np.ndarray, phi: float) -> np.ndarray:
        a, b = rot((v[0], v[2]), phi)
        return np.array([a, v[1], b, v[3]])

    phi, S = 0.0, np.zeros((P, N))
    kprev, xprev, want = np.zeros((R, N)), np.zeros(P), []
    for t in range(L):
        phi += dt[t] * math.pi * math.tanh(ang[t])
        kt = np.array([rot4(k[t, r] + kb[r], phi) for r in range(R)])
        qt = np.array([rot4(q[t, r] + qb[r], phi) for r in range(R)])
        alpha, lam = math.exp(adt[t]), sig(trap[t])
        beta, gamma = (1 - lam) * dt[t] * alpha, lam * dt[t]
        S = alpha * S + sum(beta * np.outer(xprev * Wx[r], kprev[r]) + gamma * np.outer(x[t] * Wx[r], kt[r])
                            for r in range(R))
        out = np.zeros(P)
        for r in range(R):
            y = S @ qt[r] + Dk * x[t] * Wx[r]
            out += Wo[r] * y * (z[t] * Wz[r]) / (1 + np.exp(-(z[t] * Wz[r])))
        want.append(out)
        kprev, xprev = kt, x[t]
    inputs = {"x": x.reshape(1, L, 1, P), "dt": arr(*dt).reshape(1, L, 1), "adt": arr(*adt).reshape(1, L, 1),
              "trap": arr(*trap).reshape(1, L, 1), "B": k.reshape(1, L, R, 1, N), "C": q.reshape(1, L, R, 1, N),
              "B_bias": kb[None], "C_bias": qb[None], "angles": arr(*ang).reshape(1, L, 1, 1),
              "W_x": Wx[None], "W_z": Wz[None], "W_o": Wo[None], "D": arr(Dk), "z": z.reshape(1, L, 1, P)}
    out, st = sequential(ir.mamba3(rank=2, pairing="halves"), inputs, return_final_state=True)
    close(out, np.array(want).reshape(1, L, 1, P))
    close(st["ssm"], S[None, None])
    close(st["k"], kprev[:, None][None])


def test_mamba3_initial_state_by_hand() -> None:
    # one token from a given state: H = αH₀ + β x₋₁ k₋₁ᵀ + γ x₀ k̃₀ᵀ, k₋₁ taken as given (already rotated)
    program = ir.mamba3(rotary=False, qk_bias=False, skip=False, gate=False)
    dt, adt, trap = 0.7, -0.4, 0.3
    x0, k0, q0 = 1.5, (1.0, -1.0), (0.5, 2.0)
    H0, km1, xm1 = (0.2, -0.3), (2.0, 1.0), -0.5
    alpha, lam = math.exp(adt), sig(trap)
    S = [alpha * H0[n] + (1 - lam) * dt * alpha * xm1 * km1[n] + lam * dt * x0 * k0[n] for n in range(2)]
    inputs = {"x": arr(x0).reshape(1, 1, 1, 1), "dt": arr(dt).reshape(1, 1, 1), "adt": arr(adt).reshape(1, 1, 1),
              "trap": arr(trap).reshape(1, 1, 1), "B": arr(*k0).reshape(1, 1, 1, 2), "C": arr(*q0).reshape(1, 1, 1, 2)}
    state = {"ssm": arr(*H0).reshape(1, 1, 1, 2), "k": arr(*km1).reshape(1, 1, 2), "x": arr(xm1).reshape(1, 1, 1)}
    out = sequential(program, inputs, initial_state=state)
    close(out, [[[[S[0] * q0[0] + S[1] * q0[1]]]]])
