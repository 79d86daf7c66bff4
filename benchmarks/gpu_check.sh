#!/usr/bin/env bash
# One prepared check for a lent GPU machine (no network): install in place, run the GPU test subset
# and the kernel + model benchmarks, write everything under $OUT. Meant to finish in under 8 minutes.
#   OUT=/some/dir bash benchmarks/gpu_check.sh [--full]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/local}"
mkdir -p "$OUT"
quick="--quick"
[ "${1:-}" = "--full" ] && quick=""
py=python3

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $py -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# Offline install: the image has setuptools and every runtime dependency. The server's extra
# (FastAPI, uvicorn) is not on the image: benchmarks/fetch_device_wheels.sh prepares it, carried.
$py -m pip install --quiet --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 \
  || { echo "install failed"; tail -5 "$OUT/install.log"; }
if [ -d .device-wheels ]; then
  $py -m pip install --quiet --no-index --find-links .device-wheels fastapi uvicorn ir-measures bm25s \
    >> "$OUT/install.log" 2>&1 || echo "serve/eval extras: install from .device-wheels failed"
fi

status=0
timeout 200 $py -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py tests/test_triton_model.py \
  tests/test_batch_invariance.py --junitxml="$OUT/gpu_tests.xml" > "$OUT/gpu_tests.log" 2>&1 || status=1
tail -15 "$OUT/gpu_tests.log"

timeout 100 $py -m benchmarks.gpu_kernels --out "$OUT" $quick > "$OUT/gpu_kernels.log" 2>&1 || status=1
tail -30 "$OUT/gpu_kernels.log"
timeout 100 $py -m benchmarks.gpu_model --out "$OUT" $quick > "$OUT/gpu_model.log" 2>&1 || status=1
tail -30 "$OUT/gpu_model.log"
# The suite's GPU cases (turborank Triton vs its PyTorch path; the HF reference code is not on the image).
timeout 80 $py -m benchmarks.run --device cuda --quick --out "$OUT" > "$OUT/suite.log" 2>&1 || status=1
tail -25 "$OUT/suite.log"
if $py -c "import fastapi, uvicorn" 2>/dev/null; then
  timeout 60 $py -m benchmarks.load_test --preset turbo --device cuda --rates 50,200 --seconds 8 --soak 20 \
    --out "$OUT" > "$OUT/load_test.log" 2>&1 || status=1
  tail -12 "$OUT/load_test.log"
fi
if $py -c "import ir_measures, bm25s" 2>/dev/null; then
  $py -m turborank.testing "$OUT/ckpt" --preset turbo > /dev/null && $py -m turborank.testing "$OUT/beir" --beir > /dev/null
  timeout 60 $py -m turborank.cli eval --model "$OUT/ckpt" --data "$OUT/beir" --bm25 --top-k 100 --device cuda \
    --output "$OUT/beir/run.trec" > "$OUT/eval.log" 2>&1 || status=1
  tail -5 "$OUT/eval.log"
  rm -rf "$OUT/ckpt"
fi
exit $status
