"""Host time of a cached ``selective_scan_fn`` call, Triton's own launch call left out (runs on the CPU).

    python benchmarks/host_time.py            # prints µs per call, without and with a gradient recorded

The kernel launch (``TritonScan._launch``) is replaced by a no-op after a first real call, so
what is timed is scancc's Python between the op's entry and the launch: argument checks,
dispatch, kernel choice, binding, buffers and launch arguments. Tiny shapes, CPU tensors,
``TRITON_INTERPRET=1``. Triton's launch path itself is measured on the GPU by
``bench_autotune.py --cases dispatch``.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from scancc.backends import triton as triton_backend  # noqa: E402
from scancc.ops import selective_scan_fn  # noqa: E402


def best_us(fn, calls: int = 2000, repeats: int = 7) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def main() -> None:
    batch, dim, dstate, seqlen = 1, 16, 4, 16
    g = torch.Generator().manual_seed(0)
    u, z = (torch.randn(batch, dim, seqlen, generator=g) for _ in range(2))
    delta = torch.rand(batch, dim, seqlen, generator=g) * 0.1
    A = -torch.rand(dim, dstate, generator=g)
    B, C = (torch.randn(batch, 1, dstate, seqlen, generator=g) for _ in range(2))
    D, bias = torch.randn(dim, generator=g), torch.randn(dim, generator=g)

    def call(x: torch.Tensor) -> torch.Tensor:
        return selective_scan_fn(x, delta, A, B, C, D, z, bias, delta_softplus=True, backend="triton")

    call(u)  # compile the kernels and fill the memos
    triton_backend.TritonScan._launch = lambda self, *args: None
    with torch.no_grad():
        print(f"selective_scan_fn, no gradient recorded: {best_us(lambda: call(u)):.1f} us of host time per call")
    leaf = u.clone().requires_grad_(True)
    print(f"selective_scan_fn, gradient recorded:    {best_us(lambda: call(leaf)):.1f} us of host time per call")


if __name__ == "__main__":
    main()
