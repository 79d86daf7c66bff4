#!/usr/bin/env bash
# Downloads the wheels `turborank serve` and `turborank eval` need that the lent GPU image lacks
# (FastAPI, uvicorn, Starlette, pydantic; ir-measures, pytrec-eval-terrier, bm25s) for its Python
# 3.12 on x86-64, into .device-wheels/ (git-ignored). Name that
# folder in the device tool's `carry`; benchmarks/gpu_check.sh installs from it with no network.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device-wheels
python3 -m pip download --quiet --dest .device-wheels --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --implementation cp \
  fastapi uvicorn starlette pydantic pydantic-core annotated-types typing-inspection \
  ir-measures pytrec-eval-terrier bm25s
ls .device-wheels
