"""First-order scan ``h_t = a_t·h_{t−1} + x_t``, fp32, B8 D1536, L ∈ {4K, 16K, 64K, 256K}.

scancc's ``linear_scan`` (``scancc``: the default backend; ``scancc cuda``: the CUDA backend's
chunked kernel) against accelerated-scan's Triton kernel (``accelerated_scan.scalar``),
its CUDA kernel (``accelerated_scan.warp``, built by torch on first use) and the PyTorch
log-cumsum trick (Heinsen's ``logcumsumexp`` form) that users write by hand. Bytes moved:
read ``a`` and ``x``, write ``y`` (3 × 4 bytes per element). Each output is checked against a
float64 oracle (``scancc.oracle.sequential``) on 8 channels.

    PYTHONPATH=.anchors python benchmarks/bench_linear_scan.py --out results/
    python benchmarks/bench_linear_scan.py --only "scancc cuda" --out results/   # the CUDA backend alone
    python benchmarks/bench_linear_scan.py --smoke --out /tmp/bench   # CPU, interpreter
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

IMPLS = ("scancc", "scancc cuda", "accelerated_scan.scalar (Triton)", "accelerated_scan.warp (CUDA)", "torch logcumsumexp")
FULL_SHAPES = [(8, 1536, 1 << 12), (8, 1536, 1 << 14), (8, 1536, 1 << 16), (8, 1536, 1 << 18)]
SMOKE_SHAPES = [(1, 4, 256)]
CHECK_CHANNELS = 8
# accelerated-scan Triton at B8 D1536 on an H100, from /work/shared/anchors.md (2026-11-22).
ANCHOR_MS = {1 << 12: 0.209, 1 << 14: 0.821, 1 << 16: 3.29}


def _torch_logcumsum(a, x):
    """``h_t = exp(a*_t)·Σ_{s≤t} exp(−a*_s)·x_s`` with ``a* = cumsum(log a)``, in log space."""
    import torch

    a_star = torch.cumsum(torch.log(a), dim=-1)
    log_h = a_star + torch.logcumsumexp(torch.log(x.to(torch.complex64)) - a_star, dim=-1)
    return torch.exp(log_h).real


def _scancc_cuda(op: str, device: str) -> Callable[..., Any]:
    """``scancc.ops.<op>`` pinned to the CUDA backend; :class:`common.Unavailable` without CuPy or a GPU."""
    import functools

    import scancc.ops
    from scancc.backends.cuda import CUDABackend

    reason = CUDABackend().unavailable_reason() if device == "cuda" else "needs a CUDA GPU"
    if reason is not None:
        raise common.Unavailable(f"CUDA backend: {reason}")
    return functools.partial(getattr(scancc.ops, op), backend="cuda")


def load_impl(name: str, device: str) -> Callable[[Any, Any], Any]:
    """The ``y = scan(a, x)`` function of implementation ``name``; :class:`common.Unavailable` if absent."""
    if name == "scancc":
        from scancc.ops import linear_scan

        return linear_scan
    if name == "scancc cuda":
        return _scancc_cuda("linear_scan", device)
    if name == "torch logcumsumexp":
        return _torch_logcumsum
    try:
        if name.startswith("accelerated_scan.scalar"):
            from accelerated_scan.scalar import scan
        elif name.startswith("accelerated_scan.warp"):
            if device != "cuda":
                raise common.Unavailable("CUDA kernel, needs a GPU")
            from accelerated_scan.warp import scan
        else:
            raise ValueError(f"unknown implementation {name!r}; expected one of {IMPLS}")
    except ImportError as exc:
        raise common.Unavailable(f"{type(exc).__name__}: {exc} (put .anchors on PYTHONPATH)") from None
    except common.Unavailable:
        raise
    except Exception as exc:  # the CUDA extension failed to build
        raise common.Unavailable(f"does not build: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}") from None
    return scan


def reference(a, x) -> Any:
    """The float64 oracle on batch 0, first ``CHECK_CHANNELS`` channels: ``(1, channels, L)``."""
    from scancc.ir import linear
    from scancc.oracle import sequential

    sliced = {"a": a[:1, :CHECK_CHANNELS], "x": x[:1, :CHECK_CHANNELS]}
    return sequential(linear(), {k: v.cpu().numpy() for k, v in sliced.items()})


def run_case(case: dict[str, Any], device: str) -> dict[str, Any]:
    import torch

    from scancc.oracle import rel_l2

    scan = load_impl(case["impl"], device)
    batch, dim, seqlen = case["B"], case["D"], case["L"]
    gen = torch.Generator(device=device).manual_seed(0)
    a = 0.5 + 0.5 * torch.rand(batch, dim, seqlen, device=device, generator=gen)  # decays in [0.5, 1)
    x = torch.randn(batch, dim, seqlen, device=device, generator=gen)
    y = scan(a, x)
    err = rel_l2(y[:1, :CHECK_CHANNELS], reference(a, x))
    del y
    ms = common.bench_ms(lambda: scan(a, x), device)
    return {"time_ms": ms, "err": err}


def plan(args: argparse.Namespace) -> dict[str, Any]:
    shapes = SMOKE_SHAPES if args.smoke else FULL_SHAPES
    cases = [{"impl": impl, "B": b, "D": d, "L": seq} for b, d, seq in shapes for impl in IMPLS]

    def make_row(case: dict[str, Any]) -> common.Row:
        b, d, seq = case["B"], case["D"], case["L"]
        return common.Row(bench="linear_scan", case=f"B{b} D{d} L{seq}", impl=case["impl"], dtype="float32",
                          bytes=3.0 * 4 * b * d * seq, group=f"L{seq}")

    refs = [] if args.smoke else [
        common.Row(bench="linear_scan", case=f"B8 D1536 L{seq}", impl="accelerated_scan.scalar (anchors.md)",
                   status="reference", time_ms=ms, bytes=3.0 * 4 * 8 * 1536 * seq, group=f"L{seq}",
                   note="H100 2026-11-22, not this run")
        for seq, ms in ANCHOR_MS.items()
    ]
    return {"name": "linear_scan", "title": "First-order scan h = a·h + x (fp32)", "cases": cases,
            "make_row": make_row, "reference_rows": refs}


def main(argv: list[str] | None = None) -> int:
    return common.main_for(__file__, __doc__.splitlines()[0], run_case, plan, argv)


if __name__ == "__main__":
    sys.exit(main())
