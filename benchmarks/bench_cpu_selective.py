"""Selective scan (Mamba-1) forward on the CPU: scancc's TVM kernel against PyTorch loops.

    python benchmarks/bench_cpu_selective.py [--batch 1 --dim 1536 --dstate 16 --seqlen 2048]

Baselines: ``reference`` is the step-by-step PyTorch loop of mamba-ssm's
``selective_scan_ref`` (precomputed ``exp(Δ·A)`` and ``Δ·B·u`` for all steps, then one
Python iteration per time step), written out here so the script needs no mamba-ssm;
``torch.compile`` is a per-step loop whose step function is compiled. Times are medians over
``--repeats`` runs after one warm-up run; all variants use float32.

Bandwidth: the least bytes the forward must move (read ``u``, ``delta``, ``z``, ``B``, ``C``,
write ``out``; fp32) over the TVM kernel's time, next to this machine's copy bandwidth measured
in the same run (``dst.copy_(src)`` of ``--copy-mib`` MiB fp32, read + write counted).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

import scancc
from scancc import ir


def reference(u, delta, A, B, C, D, z, delta_bias):
    """mamba-ssm's selective_scan_ref computation (real A, B/C (batch, groups=1, N, L))."""
    delta = F.softplus(delta + delta_bias[:, None])
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, B[:, 0], u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, 0, :, t]))
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return y * F.silu(z)


def _step(h, dt, A, B_t, C_t, u_t):
    h = torch.exp(dt * A) * h + dt * B_t[:, None] * u_t
    return h, (h * C_t[:, None]).sum(-1)


def loop(u, delta, A, B, C, D, z, delta_bias, step=_step):
    """The same recurrence without materialising (B, D, L, N) tensors; ``step`` is one time
    step (the torch.compile baseline compiles only it: unrolling all L steps would not finish)."""
    delta = F.softplus(delta + delta_bias[:, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h, y = step(h, delta[:, :, t, None], A, B[:, 0, :, t], C[:, 0, :, t], u[:, :, t, None])
        ys.append(y)
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return y * F.silu(z)


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth_gbs(mib: int, repeats: int) -> float:
    """Read + write bytes per second of ``dst.copy_(src)`` on ``mib`` MiB, in GB/s."""
    src = torch.rand(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), repeats)
    return 2 * src.numel() * 4 / seconds / 1e9


def forward_bytes(batch: int, dim: int, dstate: int, seqlen: int) -> int:
    """fp32 bytes the forward reads and writes at least: u, delta, z, out (B·D·L each), B and C (B·N·L each)."""
    return 4 * (4 * batch * dim * seqlen + 2 * batch * dstate * seqlen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--dstate", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--copy-mib", type=int, default=512, help="size of the copy that measures memory bandwidth")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile baseline")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    b, d, n, L = args.batch, args.dim, args.dstate, args.seqlen
    u = torch.randn(b, d, L, generator=g)
    delta = torch.randn(b, d, L, generator=g) * 0.5
    A = -torch.rand(d, n, generator=g) * 2.0 - 0.2
    B = torch.randn(b, 1, n, L, generator=g)
    C = torch.randn(b, 1, n, L, generator=g)
    D = torch.randn(d, generator=g)
    z = torch.randn(b, d, L, generator=g)
    bias = torch.rand(d, generator=g) - 1.0
    inputs = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": bias}
    call = (u, delta, A, B, C, D, z, bias)

    kernel = scancc.compile(ir.selective(), backend="tvm")
    kernel.forward(inputs)  # compile (or load from the disk cache) outside the timing
    t_tvm = timed(lambda: kernel.forward(inputs), args.repeats)
    ref = reference(*call)
    err = float((kernel.forward(inputs).out - ref).norm() / ref.norm())
    t_ref = timed(lambda: reference(*call), max(1, args.repeats // 2))
    print(f"shape B{b} D{d} N{n} L{L}, {torch.get_num_threads()} torch threads")
    copy_gbs = copy_bandwidth_gbs(args.copy_mib, args.repeats)
    tvm_gbs = forward_bytes(b, d, n, L) / t_tvm / 1e9
    print(f"memory copy     {copy_gbs:9.2f} GB/s ({args.copy_mib} MiB fp32, read + write)")
    print(f"scancc tvm      {t_tvm * 1e3:9.2f} ms   (rel. L2 vs reference {err:.1e}); "
          f"{tvm_gbs:.2f} GB/s = {100 * tvm_gbs / copy_gbs:.1f} % of copy")
    print(f"reference loop  {t_ref * 1e3:9.2f} ms   tvm speed-up {t_ref / t_tvm:6.1f}x")
    if not args.skip_compile:
        step = torch.compile(_step, dynamic=False)
        t_cmp = timed(lambda: loop(*call, step=step), max(1, args.repeats // 2))
        print(f"torch.compile   {t_cmp * 1e3:9.2f} ms   tvm speed-up {t_cmp / t_tvm:6.1f}x")


if __name__ == "__main__":
    main()
