"""Mamba-1 selective scan, bf16, with ``z`` gate, ``D`` skip, ``delta_bias`` and softplus.

Shapes (mamba-ssm layout, ``B``/``C`` shared by all channels: ``(batch, 1, N, L)``):
B4 D5120 N16 L4096, B8 D1536 N16 L4096 and B1 D5120 N16 L65536; forward and
forward+backward. scancc's ``selective_scan_fn`` (``scancc``: the default backend and schedule;
``scancc unrolled_scan``: the Triton kernels under the ``unrolled_scan`` schedule, which the
default does not take (measured slower on the H100); ``scancc ckpt16`` / ``ckpt32``: the
default schedule with checkpoints every 16 / 32 steps instead of 64 (``Schedule.chunk``), so
the backward's tiles sum ``dB``/``dC`` over 4 / 2 channels before their atomic adds; ``scancc
cuda``: the CUDA backend, chunked forward and sequential backward) against mamba-ssm's pure-PyTorch
``selective_scan_ref`` (where it fits in memory) and, as quoted rows, mamba-ssm's CUDA
kernel and the floors from ``/work/shared/anchors.md`` (its CUDA extension is not built here).

Bytes (the least any kernel must move): forward reads ``u, delta, z`` (B·D·L each), ``B, C``
(B·N·L each) and writes ``out``; the backward also reads ``dout`` and the forward inputs once
more and writes ``du, ddelta, dz, dB, dC`` (the fp32 ``A, D, delta_bias`` and their grads are
negligible). Forward outputs are checked against the float64 oracle on 16 channels.

    PYTHONPATH=.anchors python benchmarks/bench_selective_scan.py --out results/
    python benchmarks/bench_selective_scan.py --only "scancc cuda" --out results/   # the CUDA backend alone
    python benchmarks/bench_selective_scan.py --smoke --out /tmp/bench   # CPU, interpreter
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCHEDULE_ROWS = {  # scancc rows pinned to a Triton schedule (see the module docstring)
    "scancc unrolled_scan": {"algorithm": "unrolled_scan", "num_warps": 1},
    "scancc ckpt16": {"algorithm": "sequential", "num_warps": 2, "chunk": 16},
    "scancc ckpt32": {"algorithm": "sequential", "num_warps": 2, "chunk": 32},
}
IMPLS = ("scancc", *SCHEDULE_ROWS, "scancc cuda", "mamba_ssm selective_scan_ref")
MODES = ("fwd", "fwd+bwd")
FULL_SHAPES = [(4, 5120, 16, 4096), (8, 1536, 16, 4096), (1, 5120, 16, 65536)]
SMOKE_SHAPES = [(1, 8, 4, 64)]
CHECK_CHANNELS = 16
REF_MEMORY_FRACTION = 0.8
# mamba-ssm's CUDA selective_scan_fn and the floors on an H100, from /work/shared/anchors.md (2026-11-22).
ANCHORS = [
    ((4, 5120, 16, 4096), "fwd", "mamba-ssm CUDA (anchors.md)", 1.456, ""),
    ((4, 5120, 16, 4096), "fwd+bwd", "mamba-ssm CUDA (anchors.md)", 7.97, ""),
    ((4, 5120, 16, 4096), "fwd", "floor (anchors.md)", 0.37, "1.34 G exp2 at 16/clk/SM; bytes alone 0.22 ms"),
    ((8, 1536, 16, 4096), "fwd", "mamba-ssm CUDA (anchors.md)", 0.885, ""),
    ((8, 1536, 16, 4096), "fwd+bwd", "mamba-ssm CUDA (anchors.md)", 4.80, ""),
    ((1, 5120, 16, 65536), "fwd", "mamba-ssm CUDA (anchors.md)", 7.50, ""),
]


def shape_name(batch: int, dim: int, dstate: int, seqlen: int) -> str:
    return f"B{batch} D{dim} N{dstate} L{seqlen}"


def min_bytes(batch: int, dim: int, dstate: int, seqlen: int, mode: str) -> float:
    """Least bytes moved (bf16 activations): see the module docstring."""
    seq, bc = batch * dim * seqlen, batch * dstate * seqlen
    fwd = 2.0 * (3 * seq + 2 * bc + seq)
    if mode == "fwd":
        return fwd
    return fwd + 2.0 * ((3 * seq + 2 * bc + seq) + (3 * seq + 2 * bc))


def _ref_bytes(batch: int, dim: int, dstate: int, seqlen: int, mode: str) -> float:
    """Rough peak memory of ``selective_scan_ref``: four fp32 (B, D, L, N) tensors, ~2.5× with autograd."""
    full = 4.0 * 4 * batch * dim * seqlen * dstate
    return full if mode == "fwd" else 2.5 * full


def _scancc_cuda(op: str, device: str) -> Callable[..., Any]:
    """``scancc.ops.<op>`` pinned to the CUDA backend; :class:`common.Unavailable` without CuPy or a GPU."""
    import functools

    import scancc.ops
    from scancc.backends.cuda import CUDABackend

    reason = CUDABackend().unavailable_reason() if device == "cuda" else "needs a CUDA GPU"
    if reason is not None:
        raise common.Unavailable(f"CUDA backend: {reason}")
    return functools.partial(getattr(scancc.ops, op), backend="cuda")


def _scancc_schedule(schedule: Any) -> Callable[..., Any]:
    """Mamba-1 through ``scancc.ops.run_program`` (the same custom op ``selective_scan_fn`` runs)
    on the Triton backend, pinned to ``schedule``; the benchmark's arguments only."""
    from scancc.ir import selective
    from scancc.ops import run_program

    program_json, schedule_json = selective().to_json(), schedule.to_json()
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

    def fn(*tensors: Any, delta_softplus: bool = True, **optional: Any) -> Any:
        """``selective_scan_fn``'s calling convention: u, delta, A, B, C, then D, z, delta_bias
        positionally or by name."""
        assert delta_softplus
        inputs = dict(zip(names, tensors))
        inputs.update(optional)
        out, _ = run_program(program_json, inputs, backend="triton", schedule=schedule_json)
        return out

    return fn


def load_impl(name: str, device: str = "cuda") -> Callable[..., Any]:
    """A function with mamba-ssm's ``selective_scan_fn`` signature."""
    if name == "scancc":
        from scancc.ops import selective_scan_fn

        return selective_scan_fn
    if name in SCHEDULE_ROWS:
        from scancc.ir import Schedule

        return _scancc_schedule(Schedule(**SCHEDULE_ROWS[name]))
    if name == "scancc cuda":
        return _scancc_cuda("selective_scan_fn", device)
    if name == "mamba_ssm selective_scan_ref":
        # The module imports mamba-ssm's CUDA extension at the top; only the pure-PyTorch
        # reference is used here, so an empty module stands in for the extension.
        sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
        except ImportError as exc:
            raise common.Unavailable(f"{type(exc).__name__}: {exc} (put .anchors on PYTHONPATH; needs einops)") from None
        return selective_scan_ref
    raise ValueError(f"unknown implementation {name!r}; expected one of {IMPLS}")


def make_inputs(batch: int, dim: int, dstate: int, seqlen: int, device: str) -> dict[str, Any]:
    """Random inputs in the ranges a trained Mamba-1 sees (decays exp(Δ·A) mostly in (0.5, 1))."""
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    bf16, f32 = torch.bfloat16, torch.float32

    def randn(*shape: int, dtype: torch.dtype = bf16, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, device=device, generator=gen)).to(dtype)

    return {
        "u": randn(batch, dim, seqlen),
        "delta": randn(batch, dim, seqlen, scale=0.5),
        "A": -(0.5 + torch.rand(dim, dstate, device=device, generator=gen)),
        "B": randn(batch, 1, dstate, seqlen),
        "C": randn(batch, 1, dstate, seqlen),
        "D": randn(dim, dtype=f32),
        "z": randn(batch, dim, seqlen),
        "delta_bias": -2.0 + 0.5 * torch.rand(dim, device=device, generator=gen),
    }


def oracle_error(inputs: dict[str, Any], out: Any) -> float:
    """rel-L2 of ``out[0, :16]`` against the float64 oracle on batch 0, channels 0..15."""
    from scancc.ir import selective
    from scancc.oracle import rel_l2, sequential

    c = CHECK_CHANNELS
    sliced = {
        "u": inputs["u"][:1, :c], "delta": inputs["delta"][:1, :c], "A": inputs["A"][:c],
        "B": inputs["B"][:1], "C": inputs["C"][:1], "D": inputs["D"][:c], "z": inputs["z"][:1, :c],
        "delta_bias": inputs["delta_bias"][:c],
    }
    ref = sequential(selective(), {k: v.detach().float().cpu().numpy() for k, v in sliced.items()})
    return rel_l2(out[:1, :c], ref)


def run_case(case: dict[str, Any], device: str) -> dict[str, Any]:
    import torch

    batch, dim, dstate, seqlen = case["shape"]
    mode = case["mode"]
    if not case["impl"].startswith("scancc") and device == "cuda":
        need = _ref_bytes(batch, dim, dstate, seqlen, mode)
        have = REF_MEMORY_FRACTION * torch.cuda.get_device_properties(0).total_memory
        if need > have:
            return {"status": f"skipped: needs ~{need / 2**30:.0f} GiB of GPU memory"}
    fn = load_impl(case["impl"], device)
    inputs = make_inputs(batch, dim, dstate, seqlen, device)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

    def forward() -> torch.Tensor:
        return fn(*(inputs[n] for n in names), delta_softplus=True)

    with torch.no_grad():
        err = oracle_error(inputs, forward())
    if mode == "fwd":
        ms = common.bench_ms(forward, device)
    else:
        for n in names:
            inputs[n].requires_grad_(True)
        grad_out = torch.randn(batch, dim, seqlen, device=device).to(torch.bfloat16)
        leaves = [inputs[n] for n in names]
        ms = common.bench_ms(lambda: torch.autograd.grad(forward(), leaves, grad_out), device)
    return {"time_ms": ms, "err": err}


def plan(args: argparse.Namespace) -> dict[str, Any]:
    shapes = SMOKE_SHAPES if args.smoke else FULL_SHAPES
    cases = [{"impl": impl, "shape": shape, "mode": mode} for shape in shapes for mode in MODES for impl in IMPLS]

    def make_row(case: dict[str, Any]) -> common.Row:
        shape, mode = tuple(case["shape"]), case["mode"]
        return common.Row(bench="selective_scan", case=shape_name(*shape), impl=case["impl"], mode=mode,
                          dtype="bfloat16", bytes=min_bytes(*shape, mode), group=f"{shape_name(*shape)} {mode}",
                          note="rel-L2: forward output" if mode != "fwd" else "")

    refs = [] if args.smoke else [
        common.Row(bench="selective_scan", case=shape_name(*shape), impl=impl, mode=mode, dtype="bfloat16",
                   status="reference", time_ms=ms, bytes=min_bytes(*shape, mode),
                   group=f"{shape_name(*shape)} {mode}", note=note or "H100 2026-11-22, not this run")
        for shape, mode, impl, ms, note in ANCHORS
    ]
    return {"name": "selective_scan", "title": "Mamba-1 selective scan (bf16, z, D, delta_bias, softplus)",
            "cases": cases, "make_row": make_row, "reference_rows": refs}


def main(argv: list[str] | None = None) -> int:
    return common.main_for(__file__, __doc__.splitlines()[0], run_case, plan, argv)


if __name__ == "__main__":
    sys.exit(main())
