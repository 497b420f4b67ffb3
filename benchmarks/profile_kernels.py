"""Per-kernel GPU time of one op call, scancc next to its peer, from ``torch.profiler``.

Where a benchmark says how long an op takes, this says which of its kernels the time goes to:

    PYTHONPATH=.anchors python benchmarks/profile_kernels.py ssd --impl scancc mamba_ssm
    PYTHONPATH=.anchors python benchmarks/profile_kernels.py selective --mode fwd+bwd --impl scancc "scancc ckpt16"
    PYTHONPATH=.anchors python benchmarks/profile_kernels.py mamba3 --impl scancc mamba_ssm

Each implementation runs a few times untimed (compilation, the peers' autotuning), then
``--iters`` times under the profiler; the table gives every CUDA kernel's mean time per call,
summed over its launches. ``--schedule '{"block_d": 32}'`` replaces fields of scancc's default
schedule (SSD only) to compare variants.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _ssd_call(impl: str, shape: tuple[int, ...], mode: str, schedule: dict[str, Any]) -> Callable[[], Any]:
    import bench_ssd
    import torch

    batch, seqlen, heads, headdim, dstate, groups, chunk = shape
    if schedule and impl == "scancc":
        bench_ssd._apply_variant({"schedule": schedule.get("schedule"), "fused": schedule.get("fused")})
    fn = bench_ssd.load_impl(impl, "cuda")
    inputs = bench_ssd.make_inputs(batch, seqlen, heads, headdim, dstate, groups, "cuda")
    names = ("x", "dt", "A", "B", "C")

    def forward() -> torch.Tensor:
        return fn(*(inputs[n] for n in names), chunk, D=inputs["D"], dt_bias=inputs["dt_bias"], dt_softplus=True)

    if mode == "fwd":
        return lambda: forward()
    leaves = [inputs[n].requires_grad_(True) for n in (*names, "D", "dt_bias")]
    grad = torch.randn(batch, seqlen, heads, headdim, device="cuda", dtype=torch.bfloat16)
    return lambda: torch.autograd.grad(forward(), leaves, grad)


def _selective_call(impl: str, shape: tuple[int, ...], mode: str, schedule: dict[str, Any]) -> Callable[[], Any]:
    import bench_selective_scan as bench
    import torch

    fn = bench.load_impl(impl)
    inputs = bench.make_inputs(*shape, "cuda")
    names = ("u", "delta", "A", "B", "C")

    def forward() -> torch.Tensor:
        return fn(*(inputs[n] for n in names), D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"],
                  delta_softplus=True)

    if mode == "fwd":
        return lambda: forward()
    leaves = [inputs[n].requires_grad_(True) for n in (*names, "D", "z", "delta_bias")]
    grad = torch.randn_like(forward())
    return lambda: torch.autograd.grad(forward(), leaves, grad)


def _mamba3_call(impl: str, shape: tuple[int, ...], mode: str, schedule: dict[str, Any]) -> Callable[[], Any]:
    import bench_mamba3 as bench
    import torch

    batch, seqlen, heads, headdim, heads_qk, dstate, chunk = shape
    fn = bench.load_impl(impl, "cuda")
    inputs = bench.make_inputs(batch, seqlen, heads, headdim, heads_qk, dstate, "cuda")

    def forward() -> torch.Tensor:
        return fn(*(inputs[n] for n in bench.ARGS), D=inputs["D"], Z=inputs["Z"], chunk_size=chunk)

    if mode == "fwd":
        return lambda: forward()
    leaves = [inputs[n].requires_grad_(True) for n in bench.GRAD_ARGS]
    grad = torch.randn_like(forward())
    return lambda: torch.autograd.grad(forward(), leaves, grad)


OPS = {
    "ssd": (_ssd_call, (4, 4096, 80, 64, 128, 1, 256)),
    "selective": (_selective_call, (4, 5120, 16, 4096)),
    "mamba3": (_mamba3_call, (4, 4096, 32, 64, 1, 128, 64)),
}


def kernel_times(call: Callable[[], Any], iters: int) -> dict[str, float]:
    """Mean CUDA time per call (ms) of every kernel launched by ``call``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            call()
        torch.cuda.synchronize()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name] += event.device_time / 1e3 / iters
    return dict(totals)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("op", choices=sorted(OPS))
    p.add_argument("--impl", nargs="+", default=["scancc"])
    p.add_argument("--mode", choices=("fwd", "fwd+bwd"), default="fwd")
    p.add_argument("--shape", help="comma-separated shape (default: the op's anchor shape)")
    p.add_argument("--schedule", default="", help='JSON: {"schedule": {...}, "fused": bool} for scancc SSD')
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args(argv)
    make, shape = OPS[args.op]
    if args.shape:
        shape = tuple(int(v) for v in args.shape.split(","))
    variant = json.loads(args.schedule) if args.schedule else {}
    for impl in args.impl:
        times = kernel_times(make(impl, shape, args.mode, variant), args.iters)
        total = sum(times.values())
        print(f"\n{args.op} {args.mode} {impl} shape={shape} {variant or ''}: {total:.3f} ms of kernels per call")
        for name, ms in sorted(times.items(), key=lambda kv: -kv[1]):
            print(f"  {ms:8.3f} ms  {100 * ms / total:5.1f} %  {name[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
