"""The ahead-of-time bundle (benchmarks/tvm_gpu_bundle.py): built here with llvm kernels, it
loads and matches the oracle in a fresh process that imports tvm_ffi from the bundle and
cannot import the full ``tvm``."""

from __future__ import annotations

import os
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
