#!/usr/bin/env bash
# One prepared check for a lent GPU machine (no network): install in place, run the GPU test subset
# and the kernel + model benchmarks, write the results under $OUT. Finishes in under 8 minutes:
# each step has its own limit, cut to what is left of the budget.
#   OUT=/some/dir bash benchmarks/gpu_check.sh [--full]
# The device tool brings back at most 8 files from $OUT, so the steps write into a work folder that
# is packed into $OUT/gpu_check.tar.gz; $OUT/summary.md gathers the tables and the test tail.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/local}"
mkdir -p "$OUT"
WORK="$(mktemp -d)/gpu_check"
mkdir -p "$WORK"
quick="--quick"
[ "${1:-}" = "--full" ] && quick=""
py=python3
BUDGET_S=${BUDGET_S:-510}
start=$(date +%s)
status=0
export PYTHONUNBUFFERED=1

# step NAME LIMIT_S CMD...: run CMD with its output in $WORK/NAME.log, for LIMIT_S seconds or what is
# left of the budget if less; skipped when under 30 s are left. The Python steps rewrite their
# report after each section, so a step stopped at its limit keeps what it finished.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - ($(date +%s) - start)))
  if [ "$left" -lt 30 ]; then
    echo "== $name: skipped, ${left}s left of the ${BUDGET_S}s budget" | tee -a "$WORK/steps.txt"
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  [ $rc -ne 0 ] && status=1
  echo "== $name: rc=$rc in $(($(date +%s) - t0))s (limit ${limit}s)" | tee -a "$WORK/steps.txt"
  tail -25 "$WORK/$name.log"
}

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $py -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
} > "$WORK/machine.txt" 2>&1
cat "$WORK/machine.txt"

# Offline install: the image has setuptools and every runtime dependency. The serve and eval extras
# are not on the image: benchmarks/fetch_device_wheels.sh prepares them in .device-wheels, carried.
$py -m pip install --quiet --no-deps --no-build-isolation -e . > "$WORK/install.log" 2>&1 \
  || { echo "install failed"; tail -5 "$WORK/install.log"; }
if [ -d .device-wheels ]; then
  $py -m pip install --quiet --no-index --find-links .device-wheels fastapi uvicorn ir-measures bm25s \
    >> "$WORK/install.log" 2>&1 || echo "serve/eval extras: install from .device-wheels failed"
fi

# Triton compiles each kernel variant on the host: spread the test files over 4 processes when
# pytest-xdist is there (the image has it; the GPU is shared, memory is ample).
xdist=()
$py -c "import xdist" 2>/dev/null && xdist=(-n 4)
step gpu_tests 200 $py -m pytest -q -p no:cacheprovider "${xdist[@]}" tests/test_triton_kernels.py \
  tests/test_triton_model.py tests/test_cuda_graphs.py tests/test_gelu_glu_linear.py tests/test_batch_invariance.py \
  --junitxml="$WORK/gpu_tests.xml"
step gpu_kernels 150 $py -m benchmarks.gpu_kernels --out "$WORK" $quick
step gpu_model 120 $py -m benchmarks.gpu_model --out "$WORK" $quick
# The suite's GPU cases: turborank (Triton) vs its PyTorch path, and vs the HF reference code when
# fetch_device_wheels.sh packed it (with the transformers 4.46 stack it needs, installed aside in
# /tmp/hfsite and put first on the reference process's path only).
suite_args=()
suite_limit=70
if [ -f .device-wheels/hf/code/modeling_bert.py ]; then
  if $py -m pip install --quiet --no-index --no-deps --target /tmp/hfsite .device-wheels/hf/*.whl \
    >> "$WORK/install.log" 2>&1; then
    printf '#!/bin/sh\nPYTHONPATH=/tmp/hfsite${PYTHONPATH:+:$PYTHONPATH} exec %s "$@"\n' "$(command -v $py)" \
      > /tmp/hfpython
    chmod +x /tmp/hfpython
    suite_args=(--reference-code .device-wheels/hf/code --hf-python /tmp/hfpython)
    suite_limit=150
  else
    echo "HF reference: install from .device-wheels/hf failed (see install.log)"
  fi
fi
step suite $suite_limit $py -m benchmarks.run --device cuda --quick --out "$WORK" "${suite_args[@]}"
step tune_attention 100 $py -m benchmarks.tune_attention --out "$WORK" $quick
if $py -c "import fastapi, uvicorn" 2>/dev/null; then
  step load_test 50 $py -m benchmarks.load_test --preset turbo --device cuda --rates 50,200 --seconds 8 \
    --soak 15 --out "$WORK"
fi
if $py -c "import ir_measures, bm25s" 2>/dev/null; then
  $py -m turborank.testing "$WORK/ckpt" --preset turbo > /dev/null && $py -m turborank.testing "$WORK/beir" --beir > /dev/null
  step eval 50 $py -m turborank.cli eval --model "$WORK/ckpt" --data "$WORK/beir" --bm25 --top-k 100 \
    --device cuda --output "$WORK/beir/run.trec"
  rm -rf "$WORK/ckpt" "$WORK/beir"
fi

$py -m benchmarks.targets "$WORK" > /dev/null 2>&1 || echo "targets: could not judge (see the reports)"
{
  echo "# gpu_check $(head -1 "$WORK/machine.txt")"
  echo
  sed 1d "$WORK/machine.txt"
  echo
  cat "$WORK/steps.txt"
  echo
  cat "$WORK/targets.md" 2>/dev/null
  echo
  echo '## tests'
  tail -8 "$WORK/gpu_tests.log" 2>/dev/null
  for f in "$WORK"/*_20*.md; do
    [ -e "$f" ] && { echo; cat "$f"; }
  done
} > "$OUT/summary.md"
tar czf "$OUT/gpu_check.tar.gz" -C "$(dirname "$WORK")" gpu_check
echo "== total $(($(date +%s) - start))s, status $status"
exit $status
