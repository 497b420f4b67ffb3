"""Load the kernels of ``.tvm-bundle/`` with TVM's runtime only, check and time them.

Needs only the bundle (``benchmarks/tvm_gpu_bundle.py`` builds it), torch and scancc: ``import
tvm`` is blocked in this process, so a machine without the full TVM runs it the same way.

1. Every case at a small shape against the float64 oracle (fp32 and each bundled dtype).
2. On a GPU (``--device cuda``): the benchmark shape against the Triton backend, and the
   median time of both (``triton.testing.do_bench``); rows are printed and written as JSON.

GPU machine (from the repository root, the bundle carried along)::

    PYTHONPATH=.tvm-bundle python benchmarks/tvm_bundle_run.py --device cuda --out tvm_bundle_results.json

This machine (CPU, the bundle's llvm variants)::

    PYTHONPATH=.tvm-bundle .venv/bin/python benchmarks/tvm_bundle_run.py --device cpu
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class _NoTVM(importlib.abc.MetaPathFinder):
    """Refuse ``import tvm`` (the compiler), so the run proves the runtime-only route."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname == "tvm" or fullname.startswith("tvm."):
            raise ImportError(f"{fullname} is blocked: the bundle must run with TVM's runtime only")
        return None


def setup(bundle: Path) -> None:
    sys.meta_path.insert(0, _NoTVM())
    sys.path[:0] = [str(bundle), str(ROOT)]
    import torch  # noqa: F401  # before tvm_ffi: TVM's CPU thread pool crashed when torch came second
    import tvm_ffi

    where = Path(tvm_ffi.__file__).resolve()
    if bundle.resolve() not in where.parents:
        raise SystemExit(f"tvm_ffi was imported from {where}, not from the bundle {bundle}")


def _inputs(program: Any, shape: dict, dtype: Any, device: str, seed: int) -> tuple[dict, dict]:
    """``(numpy float64 arrays as the kernel sees them, torch inputs)``: sequence tensors in ``dtype``."""
    import numpy as np
    import torch

    from scancc.oracle import random_inputs

    arrays = random_inputs(program, np.random.default_rng(seed), dtype=np.float32, **shape)
    seq = {s.name for s in program.tensors() if "seqlen" in s.dims}
    tensors = {k: torch.from_numpy(v).to(device, dtype if k in seq else torch.float32) for k, v in arrays.items()}
    exact = {k: v.detach().cpu().double().numpy() for k, v in tensors.items()}
    return exact, tensors


def small_shape(case: dict) -> dict:
    sizes = case["sizes"]
    shape = {"batch": 2, "seqlen": 37, "dim": 8, "heads": 4, "groups": 2, "dstate": sizes["dstate"]}
    if "headdim" in sizes:
        shape["headdim"] = sizes["headdim"]
    return shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(ROOT / ".tvm-bundle"))
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", help="write the result rows here (JSON)")
    parser.add_argument("--no-bench", action="store_true", help="only the small oracle checks")
    args = parser.parse_args(argv)
    bundle = Path(args.bundle)
    setup(bundle)

    import torch

    from scancc.backends.tvm import LoadedScan
    from scancc.ir import Program
    from scancc.oracle import rel_l2, sequential, tolerance

    manifest = json.loads((bundle / "manifest.json").read_text())
    target = "cuda" if args.device == "cuda" else "llvm"
    rows, failed = [], 0
    for name, case in manifest["cases"].items():
        program = Program.from_dict(case["program"])
        started = time.perf_counter()
        kernel = LoadedScan(bundle / case["files"][target], bundle / "tvm_runtime")
        load_s = time.perf_counter() - started
        for dtype_name in dict.fromkeys(["float32", *case["dtypes"]]):
            dtype = getattr(torch, dtype_name)
            exact, inputs = _inputs(program, small_shape(case), dtype, args.device, seed=0)
            out = kernel.forward(inputs).out
            err = rel_l2(out, sequential(program, exact))
            tol = tolerance(dtype_name)
            ok = err <= tol
            failed += not ok
            row = {"case": name, "check": "oracle", "dtype": dtype_name, "shape": small_shape(case), "rel_l2": err,
                   "tol": tol, "pass": ok, "load_s": load_s}
            rows.append(row)
            print(f"{name:<15} {dtype_name:<9} vs oracle  rel-L2 {err:.2e} (tol {tol:.0e}) "
                  f"{'pass' if ok else 'FAIL'}", flush=True)
        if args.device != "cuda" or args.no_bench:
            continue
        from triton.testing import do_bench

        from scancc import compile as scancc_compile

        triton_kernel = scancc_compile(program, backend="triton")
        for dtype_name in case["dtypes"]:
            dtype = getattr(torch, dtype_name)
            _, inputs = _inputs(program, case["shape"], dtype, "cuda", seed=1)
            got = kernel.forward(inputs).out
            ref = triton_kernel.forward(inputs).out
            err = rel_l2(got.float(), ref.float())
            tol = tolerance(dtype_name, chunked=True, tf32=True)
            tvm_ms = do_bench(lambda: kernel.forward(inputs), warmup=5, rep=50, return_mode="median")
            triton_ms = do_bench(lambda: triton_kernel.forward(inputs), warmup=5, rep=50, return_mode="median")
            ok = err <= tol
            failed += not ok
            rows.append({"case": name, "check": "triton", "dtype": dtype_name, "shape": case["shape"], "rel_l2": err,
                         "tol": tol, "pass": ok, "tvm_ms": tvm_ms, "triton_ms": triton_ms,
                         "device": torch.cuda.get_device_name()})
            print(f"{name:<15} {dtype_name:<9} vs triton  rel-L2 {err:.2e} (tol {tol:.0e}) {'pass' if ok else 'FAIL'}  "
                  f"tvm {tvm_ms:.3f} ms  triton {triton_ms:.3f} ms  {case['shape']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    print(f"{len(rows) - failed} passed, {failed} failed; 'tvm' imported: {'tvm' in sys.modules}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
