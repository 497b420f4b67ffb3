#!/usr/bin/env bash
# Build .tvm-bundle/ (TVM CUDA kernels for sm_90 compiled ahead of time + TVM's runtime-only
# subset, ~12 MiB) on a machine with the full apache-tvm and nvcc, then check that the bundle
# loads and matches the oracle here with `import tvm` blocked (its llvm variants, on the CPU).
#
# On the GPU machine (Python 3.12, no TVM), from the repository root with .tvm-bundle/ carried:
#   PYTHONPATH=.tvm-bundle python benchmarks/tvm_bundle_run.py --device cuda --out tvm_bundle_results.json
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
$python benchmarks/tvm_gpu_bundle.py --out .tvm-bundle --python "${GPU_PYTHON:-3.12}" --arch "${ARCH:-sm_90}" "$@"
env -u PYTHONPATH PYTHONPATH=.tvm-bundle $python benchmarks/tvm_bundle_run.py --bundle .tvm-bundle --device cpu
