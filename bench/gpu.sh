#!/usr/bin/env bash
# Every GPU check and benchmark of mlpdeploy, in one call, on a CUDA machine with torch and
# triton installed (no network needed). Outputs go to $OUT if set, else bench/results/gpu/:
#   nvidia-smi.txt          the GPU as the driver reports it
#   gpu_tests.log / .xml    the plugin kernel tests compiled for the GPU (TRITON_INTERPRET=0)
#   gated_mlp_kernel.json   fused Triton GatedMLP vs torch vs cuBLAS (bench/gated_mlp_kernel.py)
#   gated_mlp_kernel.log    the same as a printed table
#   kan_kernels_gpu.json    KAN Triton kernels: GroupRational's bandwidth as a fraction of copy
#                           bandwidth, BSplineKAN and FANLayer vs torch (bench/kan_kernels_gpu.py)
#   kan_kernels_gpu.log     the same as printed rows
#   sparse_mlp_gpu.json     SparseMLP's Triton gather-GEMMs vs dense cuBLAS GEMMs at k/h 5-30% (bench/sparse_mlp_gpu.py)
#   sparse_mlp_gpu.log      the same as printed rows
#   w4a16_kernel.json       W4A16MatMul Triton kernel (NVFP4/MXFP4/INT4 decoded in the GEMM) vs torch
#                           dequantize-then-matmul and dense fp16, achieved bandwidth (bench/w4a16_kernel.py)
#   w4a16_kernel.log        the same as a printed table
# Exit status: 0 when every step passed, 1 otherwise (every step still runs).
#   bash bench/gpu.sh [--quick]      (--quick: skip the benchmark's tile sweep)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEST=${OUT:-$ROOT/bench/results/gpu}
mkdir -p "$DEST"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
BENCH_ARGS=("$@")

# mlpdeploy.plugins lives in plugins/ (setuptools package-dir): install it editable without
# touching dependencies or the network; failing that, assemble the package in a temp dir.
if ! (cd /tmp && "$PY" -c "import mlpdeploy.plugins.gated_mlp.kernel") 2>/dev/null; then
  if ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e "$ROOT" >"$DEST/pip.log" 2>&1; then
    SITE=$(mktemp -d)
    cp -r "$ROOT/mlpdeploy" "$SITE/mlpdeploy"
    cp -r "$ROOT/plugins" "$SITE/mlpdeploy/plugins"
    cp -r "$ROOT/models" "$SITE/mlpdeploy/zoo"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONSAFEPATH=1  # keep the repo's own mlpdeploy/ (without plugins/) off sys.path
    echo "pip install -e failed (see pip.log); using a copy of the package at $SITE"
  fi
fi
(cd /tmp && "$PY" -c "import mlpdeploy.plugins.gated_mlp.kernel as k; print('mlpdeploy kernel module:', k.__file__)") || exit 1

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: torch sees no CUDA device; nothing to check here" | tee "$DEST/gpu_tests.log"
  exit 2
fi
nvidia-smi >"$DEST/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >>"$DEST/nvidia-smi.txt"
status=0

echo "== kernel and plugin tests on the GPU (TRITON_INTERPRET=0)"
"$PY" -m pytest -q -p no:cacheprovider -rs \
  tests/plugins/test_gated_mlp_kernel.py tests/plugins/test_gated_mlp_trt_plugin.py \
  tests/plugins/test_group_rational_kernel.py tests/plugins/test_bspline_kan_kernel.py tests/plugins/test_fan_layer_kernel.py \
  tests/plugins/test_kan_kernel_properties.py tests/plugins/test_sparse_mlp.py tests/plugins/test_w4a16_matmul_kernel.py \
  --junitxml "$DEST/gpu_tests.xml" 2>&1 | tee "$DEST/gpu_tests.log" || status=1

echo "== bench/gated_mlp_kernel.py"
"$PY" bench/gated_mlp_kernel.py --json "$DEST/gated_mlp_kernel.json" "${BENCH_ARGS[@]}" 2>&1 \
  | tee "$DEST/gated_mlp_kernel.log" || status=1

echo "== bench/kan_kernels_gpu.py"
"$PY" bench/kan_kernels_gpu.py --json "$DEST/kan_kernels_gpu.json" 2>&1 | tee "$DEST/kan_kernels_gpu.log" || status=1

echo "== bench/sparse_mlp_gpu.py"
"$PY" bench/sparse_mlp_gpu.py --json "$DEST/sparse_mlp_gpu.json" 2>&1 | tee "$DEST/sparse_mlp_gpu.log" || status=1
echo "== bench/w4a16_kernel.py"
"$PY" bench/w4a16_kernel.py --json "$DEST/w4a16_kernel.json" 2>&1 | tee "$DEST/w4a16_kernel.log" || status=1

echo "== gpu.sh done: status $status, outputs in $DEST"
exit $status
