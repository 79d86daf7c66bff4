#!/usr/bin/env bash
# One prepared check for a lent GPU machine (no network): install in place, run the GPU tests
# (`pytest -m gpu`), the kernel and model benchmarks, the suite's GPU cases, the attention tile
# sweep, a load test, the host pipeline and an eval; write the results under $OUT.
#   OUT=/some/dir bash benchmarks/gpu/gpu_check.sh [--full]
#   bash benchmarks/gpu/gpu_check.sh --plan    # print the steps, their limits and the install route; run nothing
# Each step runs under its own time limit and the limits sum to the budget, so a slow step never
# takes the time of the ones after it. The Python steps rewrite their report after every section
# or case, so a step stopped at its limit keeps what it finished. The device tool brings back at
# most 8 files from $OUT: the steps write into a work folder packed into $OUT/gpu_check.tar.gz, and
# $OUT/summary.md gathers the verdicts, the tables and the test results per file.
set -uo pipefail
cd "$(dirname "$0")/../.."

# Seconds: what a device call of 580 s leaves once this script's own start is counted, with the
# reserve for the verdicts and the packing after the last step.
BUDGET_S=510
RESERVE_S=10
# name and limit in seconds, in the order they run (correctness first).
STEPS=(
  "install 20"
  "gpu_tests 150"
  "gpu_kernels 85"
  "gpu_model 75"
  "suite 50"
  "tune_attention 25"
  "load_test 20"
  "host_pipeline 50"
  "eval 25"
)
py=python3
quick="--quick"
mode=run
case "${1:-}" in
  --full) quick="" ;;
  --plan) mode=plan ;;
  "") ;;
  *) echo "usage: OUT=DIR bash benchmarks/gpu/gpu_check.sh [--full | --plan]" >&2; exit 2 ;;
esac

# The install route: pyproject's SPDX `license` string needs setuptools >= 77 to build. The image's
# own setuptools is used as it is (--no-build-isolation) when new enough; otherwise a setuptools
# wheel carried in .device-wheels (benchmarks/gpu/fetch_device_wheels.sh puts one there) builds it in
# an isolated environment, still offline.
install_route() {
  local version
  version=$($py -c "import setuptools; print(setuptools.__version__)" 2>/dev/null || echo none)
  if [ "$version" != none ] && [ "${version%%.*}" -ge 77 ]; then
    echo "image-setuptools $version"
  elif compgen -G ".device-wheels/setuptools-*.whl" > /dev/null; then
    echo "carried-setuptools (image has $version)"
  else
    echo "none: the image has setuptools $version (< 77) and .device-wheels holds no setuptools wheel"
  fi
}

has_module() { $py -c "import $1" 2>/dev/null; }

# pyproject.toml's tokenizers requirement (one source for this script and fetch_device_wheels.sh).
tokenizers_requirement() {
  $py -c 'import re; print(re.search(r"\"(tokenizers[^\"]*)\"", open("pyproject.toml").read()).group(1))'
}

# A command of the running step, with what is left of that step's limit.
within() {
  local left=$((deadline - $(date +%s)))
  [ "$left" -gt 0 ] || return 124
  timeout "$left" "$@"
}

step_install() {
  local route
  route=$(install_route)
  echo "install route: $route"
  case "$route" in
    image-setuptools*) within $py -m pip install --no-deps --no-build-isolation -e . ;;
    carried-setuptools*) within $py -m pip install --no-deps --no-index --find-links .device-wheels -e . ;;
    *) return 1 ;;
  esac || return 1
  # The image's tokenizers (0.23.2) truncates pairs otherwise than the releases turborank reproduces,
  # and turborank refuses it at load: the carried one (pyproject's range) goes in its place.
  if compgen -G ".device-wheels/tokenizers-*.whl" > /dev/null; then
    within $py -m pip install --no-deps --no-index --find-links .device-wheels "$(tokenizers_requirement)" \
      || echo "tokenizers: install from .device-wheels failed"
  fi
  $py -c "import tokenizers; print('tokenizers', tokenizers.__version__)"
  if [ -d .device-wheels ]; then
    # The serve and eval extras are not on the image (fetch_device_wheels.sh packs them).
    # uvicorn[standard] for httptools, which the server's connection layer is built on.
    within $py -m pip install --no-index --find-links .device-wheels fastapi "uvicorn[standard]" orjson \
      ir-measures bm25s || echo "serve/eval extras: install from .device-wheels failed"
  fi
}

step_gpu_tests() {
  # Triton compiles each kernel variant on the host: spread the tests over 4 processes when
  # pytest-xdist is there (the image has it; the GPU is shared, memory is ample).
  local xdist=()
  has_module xdist && xdist=(-n 4)
  within $py -m pytest -q -p no:cacheprovider -m gpu "${xdist[@]}" tests --junitxml="$WORK/gpu_tests.xml"
}

step_gpu_kernels() { within $py -m benchmarks.gpu.gpu_kernels --out "$WORK" $quick; }
step_gpu_model() { within $py -m benchmarks.gpu.gpu_model --out "$WORK" $quick; }

step_suite() {
  # turborank (Triton) vs its PyTorch path, and vs the HF reference code when fetch_device_wheels.sh
  # packed it (with the transformers 4.46 stack it needs, installed aside in /tmp/hfsite and put
  # first on the reference process's path only).
  local args=()
  if [ -f .device-wheels/hf/code/modeling_bert.py ]; then
    if within $py -m pip install --quiet --no-index --no-deps --target /tmp/hfsite .device-wheels/hf/*.whl; then
      printf '#!/bin/sh\nPYTHONPATH=/tmp/hfsite${PYTHONPATH:+:$PYTHONPATH} exec %s "$@"\n' "$(command -v $py)" \
        > /tmp/hfpython
      chmod +x /tmp/hfpython
      # The public JinaBERT code's slope scheme, as every CPU run against it (README: --slopes).
      args=(--reference-code .device-wheels/hf/code --hf-python /tmp/hfpython --slopes standard)
    else
      echo "HF reference: install from .device-wheels/hf failed"
    fi
  fi
  within $py -m benchmarks.cpu.run --device cuda --quick --out "$WORK" "${args[@]}"
}

step_tune_attention() { within $py -m benchmarks.gpu.tune_attention --out "$WORK" $quick; }

step_load_test() {
  has_module fastapi && has_module httptools && has_module orjson \
    || { echo "skipped: fastapi/httptools/orjson not installed"; return 0; }
  within $py -m benchmarks.serve.load_test --preset turbo --device cuda --rates 50,200 --seconds 4 --soak 5 \
    --out "$WORK"
}

step_host_pipeline() {
  # The host side of serving in front of the real GPU: what benchmarks/serve/host_pipeline projects
  # with its stand-in device on machines without one (one pair, 1 x 50, 8 clients, the library);
  # then the serving cases again with 4 front-end processes feeding the model process (README,
  # "Front-end processes": projected for a 16-core GPU machine, measured here).
  has_module fastapi && has_module httptools && has_module orjson \
    || { echo "skipped: fastapi/httptools/orjson not installed"; return 0; }
  within $py -m benchmarks.serve.host_pipeline --device cuda --seconds 3 --clients 8 \
    --one-pair-requests 300 --fifty-doc-requests 20 --library-pairs 20000 --out "$WORK"
  local rc=$?
  within $py -m benchmarks.serve.host_pipeline --device cuda --seconds 2 --clients 32 \
    --one-pair-requests 200 --fifty-doc-requests 10 --no-library --name host_pipeline_4_front_ends \
    --out "$WORK" -- --front-ends 4 || rc=$?
  return $rc
}

step_eval() {
  has_module ir_measures && has_module bm25s || { echo "skipped: ir-measures/bm25s not installed"; return 0; }
  within $py -m turborank.testing "$WORK/ckpt" --preset turbo > /dev/null \
    && within $py -m turborank.testing "$WORK/beir" --beir > /dev/null \
    && within $py -m turborank.cli eval --model "$WORK/ckpt" --data "$WORK/beir" --bm25 --top-k 100 \
      --device cuda --output "$WORK/beir/run.trec"
  local rc=$?
  rm -rf "$WORK/ckpt" "$WORK/beir"
  return $rc
}

if [ "$mode" = plan ]; then
  total=0
  echo "gpu_check plan: budget ${BUDGET_S}s = steps + ${RESERVE_S}s reserve"
  for entry in "${STEPS[@]}"; do
    read -r name limit <<< "$entry"
    printf '  %-16s %4ss\n' "$name" "$limit"
    total=$((total + limit))
    declare -F "step_$name" > /dev/null || { echo "FAIL: no function step_$name"; exit 1; }
  done
  printf '  %-16s %4ss\n' "sum of steps" "$total"
  echo "install route: $(install_route)"
  for extra in "load_test fastapi httptools orjson" "host_pipeline fastapi httptools orjson" \
    "eval ir_measures bm25s"; do
    read -r name modules <<< "$extra"
    missing=""
    for module in $modules; do has_module "$module" || missing="$missing $module"; done
    [ -z "$missing" ] || [ -d .device-wheels ] || echo "$name: will be skipped here (missing:$missing; no .device-wheels)"
  done
  if [ "$total" -ne $((BUDGET_S - RESERVE_S)) ]; then
    echo "FAIL: the step limits sum to ${total}s, not the ${BUDGET_S}s budget less its ${RESERVE_S}s reserve"
    exit 1
  fi
  echo "OK: the step limits sum to the budget less its reserve"
  exit 0
fi

OUT="${OUT:?set OUT to the folder that comes back from the device machine}"
mkdir -p "$OUT"
WORK="$(mktemp -d)/gpu_check"
mkdir -p "$WORK"
status=0
export PYTHONUNBUFFERED=1
deadline=0

{
  date -u +%FT%TZ
  timeout -k 5 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  timeout -k 5 60 $py -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  # The device gets the working tree without .git: fetch_device_wheels.sh records the commit.
  if git rev-parse HEAD > /dev/null 2>&1; then
    echo "commit $(git rev-parse HEAD)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  else
    echo "commit $(cat .device-wheels/commit.txt 2>/dev/null || echo unknown)"
  fi
} > "$WORK/machine.txt" 2>&1
cat "$WORK/machine.txt"

# $OUT/summary.md and the packed work folder, written again after every step (well under a second:
# no Python) so that a device call stopped at its own limit still brings back every step that
# finished; the verdicts against the targets and the tests by file once all steps ran ("final").
write_out() {
  if [ "${1:-}" = final ]; then
    timeout -k 5 20 $py -m benchmarks.gpu.targets "$WORK" > /dev/null 2>&1 \
      || echo "targets: could not judge (see the reports)" > "$WORK/targets.md"
    if [ -f "$WORK/gpu_tests.xml" ]; then
      timeout -k 5 20 $py -m benchmarks.report junit "$WORK/gpu_tests.xml" > "$WORK/gpu_tests.md" 2>&1 \
        || tail -8 "$WORK/gpu_tests.log" > "$WORK/gpu_tests.md"
    fi
  fi
  summarise > "$OUT/summary.md.part" && mv "$OUT/summary.md.part" "$OUT/summary.md"
  tar czf "$OUT/gpu_check.tar.gz.part" -C "$(dirname "$WORK")" gpu_check \
    && mv "$OUT/gpu_check.tar.gz.part" "$OUT/gpu_check.tar.gz"
}

summarise() {
  echo "# gpu_check $(head -1 "$WORK/machine.txt")"
  echo
  sed 1d "$WORK/machine.txt"
  echo
  cat "$WORK/steps.txt"
  echo
  cat "$WORK/targets.md" 2>/dev/null
  echo
  echo '## GPU tests by file'
  echo
  cat "$WORK/gpu_tests.md" 2>/dev/null || tail -8 "$WORK/gpu_tests.log" 2>/dev/null
  for f in "$WORK"/*_20*.md; do
    if [ -e "$f" ]; then echo; cat "$f"; fi  # no report yet: the pattern stays as written
  done
  return 0
}

start=$(date +%s)
for entry in "${STEPS[@]}"; do
  read -r name limit <<< "$entry"
  t0=$(date +%s)
  deadline=$((t0 + limit))
  "step_$name" > "$WORK/$name.log" 2>&1
  rc=$?
  [ $rc -ne 0 ] && status=1
  echo "== $name: rc=$rc in $(($(date +%s) - t0))s (limit ${limit}s)" | tee -a "$WORK/steps.txt"
  tail -25 "$WORK/$name.log"
  write_out
done
write_out final
echo "== total $(($(date +%s) - start))s, status $status"
exit $status
