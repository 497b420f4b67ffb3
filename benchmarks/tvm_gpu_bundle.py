"""Build ``.tvm-bundle/``: TVM kernels compiled ahead of time + the runtime-only subset of TVM.

Run on a machine with the full ``apache-tvm`` (the compiler) and ``nvcc``; the GPU machine then
needs only what is in the folder (no ``libtvm_compiler.so``, no LLVM, no ``import tvm``)::

    .tvm-bundle/
      tvm_ffi/            the tvm_ffi package, pruned (headers, sources, build files removed),
                          with the compiled ``core`` module for this Python and for ``--python``
      tvm_runtime/        libtvm_runtime.so, libtvm_runtime_cuda.so, libcudart.so.13 (if found)
      modules/<case>-<target>.so/.json   exported kernels (scancc.backends.tvm.export)
      manifest.json       cases, shapes, dtypes and the files of each

With ``PYTHONPATH=.tvm-bundle`` the bundled ``tvm_ffi`` is imported, and
:class:`scancc.backends.tvm.LoadedScan` runs the kernels (``benchmarks/tvm_bundle_run.py``).

The cases are the benchmarks' anchors (``benchmarks/bench_*.py``); TVM kernels are
specialised on the state size and head dimension only, so any batch/length runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scancc import ir  # noqa: E402

# name -> (program, export sizes, benchmark shape, dtypes the benchmark uses)
CASES = {
    "linear_scan": (ir.linear(), {"dstate": 1}, {"batch": 8, "dim": 1536, "seqlen": 4096}, ["float32"]),
    "selective_scan": (ir.selective(), {"dstate": 16}, {"batch": 4, "dim": 5120, "seqlen": 4096, "dstate": 16},
                       ["float32", "bfloat16"]),
    "ssd": (ir.ssd(gate=False), {"dstate": 128, "headdim": 64},
            {"batch": 4, "seqlen": 4096, "heads": 80, "headdim": 64, "dstate": 128, "groups": 1}, ["bfloat16"]),
}
PRUNE = ("include", "src", "3rdparty", "cython", "share", "CMakeLists.txt")


def copy_tvm_ffi(out: Path, python: str, cache: Path) -> None:
    """The installed tvm_ffi, pruned, plus the ``core`` extension built for ``python`` (e.g. 3.12)."""
    import tvm_ffi

    src = Path(tvm_ffi.__file__).parent
    dst = out / "tvm_ffi"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    for name in PRUNE:
        path = dst / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    tag = "cp" + python.replace(".", "")
    if any(dst.glob(f"core.cpython-{tag[2:]}-*.so")):
        return
    version = tvm_ffi.__version__
    wheels = sorted(cache.glob(f"apache_tvm_ffi-{version}-{tag}-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", f"apache-tvm-ffi=={version}", "--no-deps",
                        "--only-binary=:all:", "--python-version", python, "--platform", "manylinux_2_28_x86_64",
                        "-d", str(cache)], check=True)
        wheels = sorted(cache.glob(f"apache_tvm_ffi-{version}-{tag}-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for member in wheel.namelist():
            if member.startswith("tvm_ffi/core.cpython-") and member.endswith(".so"):
                (dst / Path(member).name).write_bytes(wheel.read(member))


def copy_runtime(out: Path) -> None:
    import importlib.util

    spec = importlib.util.find_spec("tvm")
    assert spec is not None and spec.submodule_search_locations, "the full apache-tvm is needed to build the bundle"
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    dst = out / "tvm_runtime"
    dst.mkdir(parents=True)
    for name in ("libtvm_runtime.so", "libtvm_runtime_cuda.so"):
        shutil.copy2(lib / name, dst / name)
    for cudart in (Path("/usr/local/cuda/lib64/libcudart.so.13"),):
        if cudart.exists():
            shutil.copy2(cudart.resolve(), dst / "libcudart.so.13")


def export_cases(out: Path, arch: str, targets: list[str]) -> dict:
    from scancc.backends.tvm import export

    manifest: dict = {"arch": arch, "cases": {}}
    for name, (program, sizes, shape, dtypes) in CASES.items():
        files = {}
        for target in targets:
            spec = f"cuda -arch={arch}" if target == "cuda" else "llvm"
            lib = export(program, spec, out / "modules" / f"{name}-{target}", **sizes)
            files[target] = str(lib.relative_to(out))
            print(f"exported {name} for {spec}: {lib.stat().st_size / 1e6:.1f} MB", flush=True)
        manifest["cases"][name] = {"program": json.loads(program.to_json()), "sizes": sizes, "shape": shape,
                                   "dtypes": dtypes, "files": files}
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / ".tvm-bundle"), help="bundle folder (replaced)")
    parser.add_argument("--python", default="3.12", help="Python version of the GPU machine (its tvm_ffi core)")
    parser.add_argument("--arch", default="sm_90", help="CUDA architecture")
    parser.add_argument("--targets", default="cuda,llvm", help="cuda and/or llvm (llvm: to check the bundle here)")
    parser.add_argument("--cache", default=str(ROOT / ".tvm-bundle-cache"), help="where downloaded wheels are kept")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    copy_tvm_ffi(out, args.python, Path(args.cache))
    copy_runtime(out)
    manifest = export_cases(out, args.arch, args.targets.split(","))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"bundle {out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
