#!/usr/bin/env bash
# Run the scancc benchmarks on a CUDA GPU (written for an H100) with the peers from .anchors/.
#
#   usage: benchmarks/run_h100.sh [tests|linear|selective|ssd|mamba3|autotune|all]     (default: all)
#
# One benchmark takes a few minutes (ssd the longest: mamba-ssm autotunes in every
# isolated case); run them one per call where a command's time is limited. autotune stays
# under 8 minutes (its --deadline) and also writes $out/autotune_defaults.json, the tuned
# records that become scancc/autotune/defaults/h100.json.
#
# tests runs the GPU test suite (pytest -m gpu, $out/gpu_tests.log); carry .tvm-bundle/ (built by
# benchmarks/tvm_gpu_bundle.sh) to include the TVM ahead-of-time route. It is not part of all.
# Results go to $OUT (default ./bench-results): <bench>.jsonl, <bench>.md and <bench>.log.
# Where the checkout travels without .git, pass the commit: SCANCC_COMMIT=$(git rev-parse --short HEAD).
# BENCH_TIMEOUT (default 300) bounds each isolated case, WARP_BUILD_TIMEOUT (default 300) the
# one-off build of accelerated-scan's CUDA kernel before the linear benchmark, in seconds.
# Peers: prepare .anchors/ once on a machine with network access
#   PYTHON=.venv/bin/python /work/shared/bench/prepare_anchors.sh .anchors
# and bring it along; scancc itself is imported from this checkout (no install needed
# where torch, triton, numpy and jinja2 are present).
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
out=${OUT:-bench-results}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD/.anchors:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
[ -d .anchors ] || echo "warning: no .anchors/ here: peer rows will read 'unavailable'" >&2
$py -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(), torch.__version__)"

status=0
run() {  # run <name>: one benchmark script, its output also kept in $out/<name>.log
  set -o pipefail
  $py "benchmarks/bench_$1.py" --out "$out" --timeout "${BENCH_TIMEOUT:-300}" 2>&1 | tee "$out/$1.log" || status=1
}
prebuild_warp() {  # torch builds accelerated-scan's CUDA kernel on first import (minutes): once, untimed
  timeout "${WARP_BUILD_TIMEOUT:-300}" $py -c "import accelerated_scan.warp" >"$out/warp_build.log" 2>&1 \
    || echo "accelerated_scan.warp did not build (see $out/warp_build.log): its rows will say so" >&2
}
gpu_tests() {  # comparisons with peers (minutes of their autotuning) and tests that time themselves run apart
  $py -m pytest -m "gpu and not timing and not peer" -q -rfE -n "${TEST_WORKERS:-8}" -p no:cacheprovider tests 2>&1 \
    | tee "$out/gpu_tests.log" || status=1
  $py -m pytest -m "gpu and peer" -q -rfE -n 2 -p no:cacheprovider tests 2>&1 | tee -a "$out/gpu_tests.log" || status=1
  $py -m pytest -m "gpu and timing" -q -rfE -p no:cacheprovider tests 2>&1 | tee -a "$out/gpu_tests.log" || status=1
}
case "$which" in
  tests) gpu_tests ;;
  linear) prebuild_warp; run linear_scan ;;
  selective) run selective_scan ;;
  ssd) run ssd ;;
  mamba3) run mamba3 ;;
  autotune) run autotune ;;
  all) prebuild_warp; run linear_scan; run selective_scan; run ssd; run mamba3 ;;
  *) echo "usage: $0 [tests|linear|selective|ssd|mamba3|autotune|all]" >&2; exit 2 ;;
esac
exit $status
