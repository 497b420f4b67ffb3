"""Mamba-3 SISO (mamba3_siso_combined), bf16, as a Mamba-3 layer calls it: rotary on every pair,
q/k biases, D and the z gate; and the decode step (mamba3_step) against copy bandwidth.

Shapes ``(batch, seqlen, nheads, headdim_v, nheads_qk, headdim_qk, chunk)``: the anchor B4 L4096
H32 Dv64 Hqk1 Dqk128 chunk 64 (the shape mamba-ssm's kernels are tuned for), then L 1K and 16K;
forward and forward+backward. scancc's ``mamba3_siso_combined`` against mamba-ssm's (Triton,
from ``.anchors``; it autotunes on its first call, so every case runs once before it is timed).

Bytes (the least any kernel must move, bf16): the forward reads ``Q, K, V, Z, Angles`` and
``ADT, DT, Trap`` (fp32 ADT/DT) and writes ``out``; the backward reads them again with ``dout``
and writes their gradients. Outputs are checked against the float64 oracle (sequential, on the
GPU) on batch row 0 and heads 0–1.

Decode (mode ``decode``, shapes ``(batch, nheads, headdim_v, headdim_qk, rank)``, B64 H32 P64
N128, SISO and MIMO rank 4): one token of ``mamba3_step`` on fp32 states with bf16 tokens. Bytes:
the four states read and written (the ssm state is nearly all of it); the row's % of copy is
the step's state bandwidth (timed as a CUDA graph replay) against ``Tensor.copy_``. Checked against the float64 oracle's step.

    PYTHONPATH=.anchors python benchmarks/bench_mamba3.py --out results/
    python benchmarks/bench_mamba3.py --smoke --out /tmp/bench   # CPU, interpreter
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

IMPLS = ("scancc", "mamba_ssm")
MODES = ("fwd", "fwd+bwd")
ANCHOR = (4, 4096, 32, 64, 1, 128, 64)
FULL_SHAPES = [ANCHOR, (4, 1024, 32, 64, 1, 128, 64), (4, 16384, 32, 64, 1, 128, 64)]
SMOKE_SHAPES = [(1, 48, 2, 16, 1, 16, 16)]
DECODE_SHAPES = [(64, 32, 64, 128, 1), (64, 32, 64, 128, 4)]
SMOKE_DECODE_SHAPES = [(2, 2, 8, 16, 1), (2, 2, 8, 16, 2)]
ARGS = ("Q", "K", "V", "ADT", "DT", "Trap", "Q_bias", "K_bias", "Angles")
GRAD_ARGS = ARGS + ("D", "Z")


def shape_name(batch: int, seqlen: int, heads: int, headdim: int, heads_qk: int, dstate: int, chunk: int) -> str:
    return f"B{batch} L{seqlen} H{heads} Dv{headdim} Hqk{heads_qk} Dqk{dstate} Q{chunk}"


def min_bytes(batch: int, seqlen: int, heads: int, headdim: int, heads_qk: int, dstate: int, chunk: int,
              mode: str) -> float:
    """Least bytes moved: see the module docstring."""
    tokens = batch * seqlen
    v, qk, ang, per_head = tokens * heads * headdim, tokens * heads_qk * dstate, tokens * heads * dstate // 2, \
        tokens * heads
    reads = 2.0 * (2 * v + 2 * qk + ang + per_head) + 4.0 * 2 * per_head
    fwd = reads + 2.0 * v
    if mode == "fwd":
        return fwd
    return fwd + reads + 2.0 * v + reads


def load_impl(name: str, device: str) -> Callable[..., Any]:
    """A function with mamba-ssm's ``mamba3_siso_combined`` signature."""
    return common.scancc_or_mamba_ssm(name, device, "mamba3_siso_combined",
                                      "mamba_ssm.ops.triton.mamba3.mamba3_siso_combined")


def make_inputs(batch: int, seqlen: int, heads: int, headdim: int, heads_qk: int, dstate: int,
                device: str) -> dict[str, Any]:
    """Random inputs as a Mamba-3 layer feeds them: Δ = softplus(dt + dt_bias) around [0.001, 0.1],
    A in [−16, −1], ADT = A·Δ (fp32, (batch, nheads, seqlen)), angles on every pair."""
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    bf16 = torch.bfloat16

    def randn(*shape: int, scale: float = 1.0, dtype: torch.dtype = bf16) -> torch.Tensor:
        return (scale * torch.randn(*shape, device=device, generator=gen)).to(dtype)

    lo, hi = math.log(1e-3), math.log(0.1)
    dt_init = torch.exp(lo + (hi - lo) * torch.rand(heads, device=device, generator=gen))
    DT = torch.nn.functional.softplus(randn(batch, heads, seqlen, scale=0.5, dtype=torch.float32)
                                      + (dt_init + torch.log(-torch.expm1(-dt_init)))[None, :, None])
    A = -(1.0 + 15.0 * torch.rand(heads, device=device, generator=gen))
    return {
        "Q": randn(batch, seqlen, heads_qk, dstate, scale=dstate ** -0.5),
        "K": randn(batch, seqlen, heads_qk, dstate, scale=dstate ** -0.5),
        "V": randn(batch, seqlen, heads, headdim),
        "ADT": (A[None, :, None] * DT).contiguous(),
        "DT": DT.contiguous(),
        "Trap": randn(batch, heads, seqlen),
        "Q_bias": randn(heads, dstate, scale=0.1, dtype=torch.float32),
        "K_bias": randn(heads, dstate, scale=0.1, dtype=torch.float32),
        "Angles": randn(batch, seqlen, heads, dstate // 2),
        "D": torch.randn(heads, device=device, generator=gen),
        "Z": randn(batch, seqlen, heads, headdim),
    }


def oracle_error(inputs: dict[str, Any], out: Any) -> float:
    """rel-L2 of ``out`` on batch row 0, heads 0–1 (q/k head 0) against the float64 oracle."""
    import torch

    from scancc.ir import mamba3
    from scancc.oracle import rel_l2, sequential

    h = 2
    f64 = {k: v.detach().to(torch.float64) for k, v in inputs.items()}
    program_inputs = {
        "x": f64["V"][:1, :, :h], "dt": f64["DT"][:1, :h].transpose(1, 2), "adt": f64["ADT"][:1, :h].transpose(1, 2),
        "trap": f64["Trap"][:1, :h].transpose(1, 2), "B": f64["K"][:1, :, :1], "C": f64["Q"][:1, :, :1],
        "B_bias": f64["K_bias"][:h], "C_bias": f64["Q_bias"][:h], "angles": f64["Angles"][:1, :, :h],
        "D": f64["D"][:h], "z": f64["Z"][:1, :, :h],
    }
    with torch.no_grad():
        ref = sequential(mamba3(), program_inputs)
    return rel_l2(out[:1, :, :h], ref)


def decode_name(batch: int, heads: int, headdim: int, dstate: int, rank: int) -> str:
    return f"decode B{batch} H{heads} P{headdim} N{dstate} R{rank}"


def decode_state_bytes(batch: int, heads: int, headdim: int, dstate: int, rank: int) -> float:
    """The four fp32 states, read and written: ssm ``P·N``, k ``R·N``, x ``P``, angle ``N/2`` per head."""
    per_head = headdim * dstate + rank * dstate + headdim + dstate // 2
    return 2.0 * 4 * batch * heads * per_head


def make_decode_inputs(batch: int, heads: int, headdim: int, dstate: int, rank: int,
                       device: str) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """``mamba3_step`` keyword arguments (bf16 tokens, one q/k head) and fp32 states."""
    import torch

    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, scale: float = 1.0, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return (scale * torch.randn(*shape, device=device, generator=gen)).to(dtype)

    lead = (batch, rank) if rank > 1 else (batch,)
    bias = (heads, rank, dstate) if rank > 1 else (heads, dstate)
    DT = torch.nn.functional.softplus(randn(batch, heads, scale=0.5, dtype=torch.float32) - 3.0)
    kwargs: dict[str, Any] = {
        "Q": randn(*lead, 1, dstate, scale=dstate ** -0.5), "K": randn(*lead, 1, dstate, scale=dstate ** -0.5),
        "V": randn(batch, heads, headdim), "ADT": -4.0 * DT, "DT": DT, "Trap": randn(batch, heads),
        "Q_bias": randn(*bias, scale=0.1, dtype=torch.float32), "K_bias": randn(*bias, scale=0.1, dtype=torch.float32),
        "Angles": randn(batch, heads, dstate // 2), "D": randn(heads, dtype=torch.float32),
        "Z": randn(batch, heads, headdim),
    }
    if rank > 1:
        kwargs.update({w: randn(heads, rank, headdim, scale=0.5, dtype=torch.float32) + 1.0
                       for w in ("W_x", "W_z", "W_o")})
    k_shape = (batch, rank, heads, dstate) if rank > 1 else (batch, heads, dstate)
    states = (randn(batch, heads, dstate // 2, dtype=torch.float32), randn(batch, heads, headdim, dstate,
              scale=0.1, dtype=torch.float32), randn(*k_shape, dtype=torch.float32),
              randn(batch, heads, headdim, dtype=torch.float32))
    return kwargs, states


def decode_error(kwargs: dict[str, Any], states: tuple[Any, ...], out: Any, rank: int) -> float:
    """rel-L2 of ``out`` (one step from ``states``) against the float64 oracle's step."""
    import torch

    from scancc.ir import mamba3
    from scancc.oracle import rel_l2, sequential

    program = mamba3(rank=rank, pairing="halves" if rank > 1 else "interleaved").as_step()
    names = {"Q": "C", "K": "B", "V": "x", "ADT": "adt", "DT": "dt", "Trap": "trap", "Q_bias": "C_bias",
             "K_bias": "B_bias", "Angles": "angles", "D": "D", "Z": "z", "W_x": "W_x", "W_z": "W_z", "W_o": "W_o"}
    inputs = {names[k]: v.double() for k, v in kwargs.items()}
    state = dict(zip(("angle", "ssm", "k", "x"), (s.double() for s in states)))
    with torch.no_grad():
        ref, _ = sequential(program, inputs, initial_state=state, return_final_state=True)
    return rel_l2(out, ref)


DECODE_TILES = {"scancc": None, "scancc block_d=32": (32, 8), "scancc block_d=16 4 warps": (16, 4)}
"""Decode rows: the op's default tiles, and two other (block_d, num_warps) of the step kernel."""


def decode_bandwidth(batch: int, heads: int, headdim: int, dstate: int, rank: int, device: str,
                     tiles: tuple[int, int] | None = None) -> dict[str, float]:
    """One ``mamba3_step`` (CUDA graph replay) timed against ``Tensor.copy_`` of the ssm state
    (both read and write it once): ``{"step_ms", "eager_ms", "copy_ms", "state_gbps",
    "copy_gbps", "fraction", "err"}``; ``eager_ms`` includes the host's argument checks.
    ``tiles``: ``(block_d, num_warps)`` of the step kernel instead of its default schedule."""
    import torch

    import scancc.ops.mamba3 as m3
    from scancc.ir import Schedule
    from scancc.ops import mamba3_step

    if tiles is not None:   # the op's schedule, replaced for this process (a worker runs one case)
        schedule = Schedule(algorithm="step", block_d=tiles[0], num_warps=tiles[1]).to_json()
        m3.step_schedule_json = lambda: schedule

    kwargs, states = make_decode_inputs(batch, heads, headdim, dstate, rank, device)
    work = tuple(s.clone() for s in states)
    out = mamba3_step(work, **kwargs)
    err = decode_error(kwargs, states, out, rank)
    step_ms = common.graph_ms(lambda: mamba3_step(work, **kwargs), device)
    eager_ms = common.bench_ms(lambda: mamba3_step(work, **kwargs), device)
    ssm = states[1]
    dst = torch.empty_like(ssm)
    copy_ms = common.graph_ms(lambda: dst.copy_(ssm), device)
    state_gbps = decode_state_bytes(batch, heads, headdim, dstate, rank) / (step_ms * 1e-3) / 1e9
    copy_gbps = 2.0 * ssm.numel() * ssm.element_size() / (copy_ms * 1e-3) / 1e9
    return {"step_ms": step_ms, "eager_ms": eager_ms, "copy_ms": copy_ms, "state_gbps": state_gbps,
            "copy_gbps": copy_gbps, "fraction": state_gbps / copy_gbps, "err": err}


def run_case(case: dict[str, Any], device: str) -> dict[str, Any]:
    import torch

    if case["mode"] == "decode":
        result = decode_bandwidth(*case["shape"], device=device, tiles=DECODE_TILES[case["impl"]])
        return {"time_ms": result["step_ms"], "err": result["err"],
                "note": f"CUDA graph; {100 * result['fraction']:.0f}% of a same-size copy_ "
                        f"({result['copy_ms'] * 1e3:.1f} us); eager call {result['eager_ms'] * 1e3:.1f} us"}

    batch, seqlen, heads, headdim, heads_qk, dstate, chunk = case["shape"]
    fn = load_impl(case["impl"], device)
    inputs = make_inputs(batch, seqlen, heads, headdim, heads_qk, dstate, device)

    def forward() -> torch.Tensor:
        return fn(*(inputs[n] for n in ARGS), D=inputs["D"], Z=inputs["Z"], chunk_size=chunk)

    with torch.no_grad():
        out = forward()  # also mamba-ssm's autotuning, outside the timed region
        err = oracle_error(inputs, out)
    if case["mode"] == "fwd":
        with torch.no_grad():
            ms = common.bench_ms(forward, device)
    else:
        leaves = [inputs[n].requires_grad_(True) for n in GRAD_ARGS]
        grad_out = torch.randn_like(out)

        def step() -> Any:
            return torch.autograd.grad(forward(), leaves, grad_out)

        step()  # the backward's first call (autotuning, compilation)
        ms = common.bench_ms(step, device)
    return {"time_ms": ms, "err": err}


def plan_cases(smoke: bool) -> list[dict[str, Any]]:
    cases = [{"impl": impl, "shape": shape, "mode": mode}
             for shape in (SMOKE_SHAPES if smoke else FULL_SHAPES) for mode in MODES for impl in IMPLS]
    return cases + [{"impl": impl, "shape": shape, "mode": "decode"}
                    for shape in (SMOKE_DECODE_SHAPES if smoke else DECODE_SHAPES) for impl in DECODE_TILES]


def plan(args: argparse.Namespace) -> dict[str, Any]:
    def make_row(case: dict[str, Any]) -> common.Row:
        shape, mode = tuple(case["shape"]), case["mode"]
        if mode == "decode":
            return common.Row(bench="mamba3", case=decode_name(*shape), impl=case["impl"], mode=mode, dtype="bfloat16",
                              bytes=decode_state_bytes(*shape), group=decode_name(*shape))
        return common.Row(bench="mamba3", case=shape_name(*shape), impl=case["impl"], mode=mode, dtype="bfloat16",
                          bytes=min_bytes(*shape, mode), group=f"{shape_name(*shape)} {mode}",
                          note="rel-L2: forward output" if mode != "fwd" else "")

    return {"name": "mamba3", "title": "Mamba-3 SISO chunked scan (bf16, rotary, q/k bias, D, z)",
            "cases": plan_cases(args.smoke), "make_row": make_row, "reference_rows": []}


def main(argv: list[str] | None = None) -> int:
    return common.main_for(__file__, __doc__.splitlines()[0], run_case, plan, argv)


if __name__ == "__main__":
    sys.exit(main())
