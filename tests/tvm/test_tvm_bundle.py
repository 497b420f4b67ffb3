"""The ahead-of-time bundle (benchmarks/tvm_gpu_bundle.py): built here with llvm kernels, it
loads and matches the oracle in a fresh process that imports tvm_ffi from the bundle and
cannot import the full ``tvm``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tvm", reason="building the bundle needs the full apache-tvm")

ROOT = Path(__file__).resolve().parents[2]


def test_bundle_runs_with_the_runtime_only(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import tvm_gpu_bundle
    finally:
        sys.path.pop(0)
    bundle = tmp_path / "bundle"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert tvm_gpu_bundle.main(["--out", str(bundle), "--targets", "llvm", "--python", python]) == 0
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    assert size < 40 * 2**20
    assert not (bundle / "tvm").exists() and not list(bundle.rglob("libtvm_compiler.so"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(bundle)
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tvm_bundle_run.py"), "--bundle", str(bundle),
                             "--device", "cpu"], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed; 'tvm' imported: False" in result.stdout


@pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("cc") is None, reason="needs nvcc and a C compiler")
def test_cuda_export_ships_a_cubin_the_runtime_loads_without_a_compiler(tmp_path: Path) -> None:
    """TVM 0.27 embeds CUDA kernels as source and compiles them when the library loads, through a
    callback only the full TVM defines. export() compiles that source to a cubin beside the
    library; load_exported() hands it to the runtime, matched by the source's hash. Loaded here
    in a process that cannot import tvm, against a stub libcuda (the module is created, never run)."""
    from scancc import ir
    from scancc.backends.tvm import export

    lib = export(ir.linear(), "cuda -arch=sm_90", tmp_path / "linear-cuda", dstate=1)
    cubin = lib.with_suffix(".cubin").read_bytes()
    assert cubin[:4] == b"\x7fELF"
    stub = tmp_path / "stub"
    stub.mkdir()
    symbols = sorted({line.split()[-1].split("@")[0] for line in subprocess.run(
        ["nm", "-D", "--undefined-only", str(_runtime_dir() / "libtvm_runtime_cuda.so")], capture_output=True,
        text=True, check=True).stdout.splitlines() if line.split()[-1].startswith("cu") and line.split()[-1][2:3].isupper()})
    (stub / "stub.c").write_text("".join(f"int {name}(void) {{ return 999; }}\n" for name in symbols))
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(stub / "libcuda.so.1"), str(stub / "stub.c"),
                    "-Wl,-soname,libcuda.so.1"], check=True)
    other = export(ir.ssd(gate=False), "cuda -arch=sm_90", tmp_path / "ssd-cuda", dstate=16, headdim=16)
    script = f"""
import sys
class NoTVM:
    def find_spec(self, name, path=None, target=None):
        if name == "tvm" or name.startswith("tvm."):
            raise ImportError("blocked")
sys.meta_path.insert(0, NoTVM())
from pathlib import Path
import scancc.backends.tvm_runtime as runtime
runtime.load_exported({str(lib)!r}, {str(_runtime_dir())!r}, cuda=True)
print("loaded")
register = runtime._register_cubin
runtime._register_cubin = lambda path: register(Path({str(lib)!r}))   # the wrong cubin for the ssd module
try:
    runtime.load_exported({str(other)!r}, {str(_runtime_dir())!r}, cuda=True)
except Exception as exc:
    print("refused:", exc)
"""
    env = {**os.environ, "LD_LIBRARY_PATH": f"{stub}:{os.environ.get('LD_LIBRARY_PATH', '')}",
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loaded" in result.stdout and "refused: no precompiled cubin for this CUDA module" in result.stdout


def _runtime_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("tvm")
    assert spec is not None and spec.submodule_search_locations
    return Path(list(spec.submodule_search_locations)[0]) / "lib"
