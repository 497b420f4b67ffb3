"""The TVM bundle on a GPU (no TVM installed there): build it on a CPU machine with
``benchmarks/tvm_gpu_bundle.sh`` and carry ``.tvm-bundle/`` along."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / ".tvm-bundle"


@pytest.mark.gpu
@pytest.mark.skipif(not (BUNDLE / "manifest.json").exists(), reason="no .tvm-bundle/ (benchmarks/tvm_gpu_bundle.sh)")
def test_bundle_matches_oracle_and_triton_on_the_gpu() -> None:
    env = {**os.environ, "PYTHONPATH": str(BUNDLE)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tvm_bundle_run.py"), "--device", "cuda",
                             "--no-bench"], capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
