#!/usr/bin/env bash
# Prepares .device-wheels/ (git-ignored) for a lent GPU machine, which has no network; name that
# folder in the device tool's `carry` and benchmarks/gpu/gpu_check.sh installs from it.
#   bash benchmarks/gpu/fetch_device_wheels.sh [REFERENCE_CODE_DIR]
# - the wheels `turborank serve` and `turborank eval` need that the image lacks (FastAPI, uvicorn
#   with httptools, Starlette, pydantic, orjson; ir-measures, pytrec-eval-terrier, bm25s), for its
#   Python 3.12 on x86-64;
# - setuptools >= 77 (pure Python), which builds turborank's pyproject (an SPDX license string)
#   offline when the image's own setuptools is older;
# - tokenizers in pyproject's range (the image's 0.23.2 truncates pairs otherwise, and turborank
#   refuses it at load);
# - commit.txt: the commit of this checkout (the device gets the working tree without .git);
# - with REFERENCE_CODE_DIR (a folder holding the JinaBERT `modeling_bert.py` and
#   `configuration_bert.py`): a copy of that code and the transformers 4.46 stack it runs on
#   (transformers, tokenizers 0.20, huggingface_hub < 1; the image's transformers 5 cannot load it)
#   into .device-wheels/hf/, so the suite compares against the HF reference on the GPU too.
#   The reference code is never committed; this folder is ignored by git.
set -euo pipefail
cd "$(dirname "$0")/../.."
download() {
  python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 "$@"
}
rm -rf .device-wheels  # one version of each package: two stop an offline install
mkdir -p .device-wheels
download --dest .device-wheels fastapi "uvicorn[standard]" orjson ir-measures bm25s
download --dest .device-wheels "setuptools>=77"
tokenizers=$(python3 -c 'import re; print(re.search(r"\"(tokenizers[^\"]*)\"", open("pyproject.toml").read()).group(1))')
download --no-deps --dest .device-wheels "$tokenizers"
echo "$(git rev-parse HEAD)$(git diff --quiet || echo ' (+ uncommitted changes)')" > .device-wheels/commit.txt
# The image has NumPy and SciPy (bm25s needs them); they would take most of the 64 MiB that travels.
rm -f .device-wheels/numpy-*.whl .device-wheels/scipy-*.whl
if [ -n "${1:-}" ]; then
  for f in modeling_bert.py configuration_bert.py; do
    [ -f "$1/$f" ] || { echo "no $f in $1" >&2; exit 2; }
  done
  mkdir -p .device-wheels/hf/code
  cp "$1/modeling_bert.py" "$1/configuration_bert.py" .device-wheels/hf/code/
  # --no-deps: the image has the rest of what transformers needs (numpy, regex, safetensors, ...).
  download --no-deps --dest .device-wheels/hf transformers==4.46.3 tokenizers==0.20.3 huggingface_hub==0.36.2
fi
du -sh .device-wheels
find .device-wheels -name '*.whl' | sort
