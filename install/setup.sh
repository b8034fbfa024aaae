#!/usr/bin/env bash
# Set up ReaSAM in ./.venv and run the main job on the embedded default engine:
# generate a short example song and separate its vocals on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first, at the release this project is tested with. Whatever torch the venv already has
# is kept: install a CUDA or CPU-only build yourself first to choose (README, Quick start).
# TORCH_PIP_ARGS adds pip arguments, e.g. "--index-url https://download.pytorch.org/whl/cpu".
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install -q ${TORCH_PIP_ARGS:-} "torch==2.13.0"
.venv/bin/python -m pip install -q -e .
if [ "${1:-}" != "--no-demo" ]; then
  .venv/bin/reasam example examples/demo.wav
  .venv/bin/reasam separate examples/demo.wav --prompt vocals --out reasam-output
fi
