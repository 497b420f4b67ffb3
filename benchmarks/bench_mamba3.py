"""Mamba-3 SISO (mamba3_siso_combined), bf16, as a Mamba-3 layer calls it: rotary on every pair,
q/k biases, D and the z gate.

Shapes ``(batch, seqlen, nheads, headdim_v, nheads_qk, headdim_qk, chunk)``: the anchor B4 L4096
H32 Dv64 Hqk1 Dqk128 chunk 64 (the shape mamba-ssm's kernels are tuned for), then L 1K and 16K;
forward and forward+backward. scancc's ``mamba3_siso_combined`` against mamba-ssm's (Triton,
from ``.anchors``; it autotunes on its first call, so every case runs once before it is timed).

Bytes (the least any kernel must move, bf16): the forward reads ``Q, K, V, Z, Angles`` and
``ADT, DT, Trap`` (fp32 ADT/DT) and writes ``out``; the backward reads them again with ``dout``
and writes their gradients. Outputs are checked against the float64 oracle (sequential, on the
GPU) on batch row 0 and heads 0–1.

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
    if name == "scancc":
        from scancc.ops import mamba3_siso_combined

        return mamba3_siso_combined
    if name == "mamba_ssm":
        if device != "cuda":
            raise common.Unavailable("mamba-ssm's Triton kernels need a CUDA GPU")
        try:
            from mamba_ssm.ops.triton.mamba3.mamba3_siso_combined import mamba3_siso_combined
        except ImportError as exc:
            raise common.Unavailable(f"{type(exc).__name__}: {exc} (put .anchors on PYTHONPATH)") from None
        return mamba3_siso_combined
    raise ValueError(f"unknown implementation {name!r}; expected one of {IMPLS}")


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


def run_case(case: dict[str, Any], device: str) -> dict[str, Any]:
    import torch

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
    return [{"impl": impl, "shape": shape, "mode": mode}
            for shape in (SMOKE_SHAPES if smoke else FULL_SHAPES) for mode in MODES for impl in IMPLS]


def plan(args: argparse.Namespace) -> dict[str, Any]:
    def make_row(case: dict[str, Any]) -> common.Row:
        shape, mode = tuple(case["shape"]), case["mode"]
        return common.Row(bench="mamba3", case=shape_name(*shape), impl=case["impl"], mode=mode, dtype="bfloat16",
                          bytes=min_bytes(*shape, mode), group=f"{shape_name(*shape)} {mode}",
                          note="rel-L2: forward output" if mode != "fwd" else "")

    return {"name": "mamba3", "title": "Mamba-3 SISO chunked scan (bf16, rotary, q/k bias, D, z)",
            "cases": plan_cases(args.smoke), "make_row": make_row, "reference_rows": []}


def main(argv: list[str] | None = None) -> int:
    return common.main_for(__file__, __doc__.splitlines()[0], run_case, plan, argv)


if __name__ == "__main__":
    sys.exit(main())
