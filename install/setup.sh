#!/usr/bin/env bash
# Set up ReaSAM in ./.venv and run the main job on the embedded default engine:
# generate a short example song and separate its vocals on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first and pinned: on machines without a matching wheel an open range pulls a multi-GB
# CUDA build. Users with a GPU install their CUDA torch before running this script.
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e .
if [ "${1:-}" != "--no-demo" ]; then
  .venv/bin/reasam example examples/demo.wav
  .venv/bin/reasam separate examples/demo.wav --prompt vocals --out reasam-output
fi
