#!/usr/bin/env bash
# Set up ReaSAM in ./.venv and run the main job on the embedded default engine:
# generate a short example song and separate its vocals on the CPU.
#   --no-demo   skip the example job
#   --sam       also install SAM-Audio (README, "Installing SAM-Audio") without replacing the
#               venv's torch: torchvision and torchaudio come from the index of that torch
#               build, and every later install runs under a constraints file that pins all three.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEMO=1
SAM=0
for arg in "$@"; do
  case "$arg" in
    --no-demo) DEMO=0 ;;
    --sam) SAM=1 ;;
    *) echo "setup.sh: unknown option $arg (known: --no-demo, --sam)" >&2; exit 2 ;;
  esac
done
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first, at the release this project is tested with. Whatever torch the venv already has
# is kept: install a CUDA or CPU-only build yourself first to choose (README, Quick start).
# TORCH_PIP_ARGS adds pip arguments, e.g. "--index-url https://download.pytorch.org/whl/cpu".
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install -q ${TORCH_PIP_ARGS:-} "torch==2.13.0"
.venv/bin/python -m pip install -q -e .
if [ "$SAM" = 1 ]; then
  # timm (for perception-models) and upstream sam-audio itself depend on torchvision and
  # torchaudio; resolved freely, pip takes them from PyPI with the torch they were built for, and
  # that replaces a CPU or older CUDA torch (6 GB). So: pin the torch we have, take its
  # torchvision/torchaudio from the same PyTorch index (+cpu -> whl/cpu, +cu128 -> whl/cu128;
  # a plain PyPI build -> PyPI), then pin those too for everything after.
  constraints=.venv/reasam-torch-constraints.txt
  torch_version=$(.venv/bin/python -c 'import torch; print(torch.__version__)')
  local_tag=${torch_version#*+}
  index_args=()
  if [ "$local_tag" != "$torch_version" ]; then
    index_args=(--extra-index-url "https://download.pytorch.org/whl/$local_tag")
  fi
  echo "torch==$torch_version" > "$constraints"
  .venv/bin/python -m pip install -q ${index_args[@]+"${index_args[@]}"} -c "$constraints" torchvision torchaudio
  .venv/bin/python -m pip freeze | grep -iE '^(torch|torchvision|torchaudio)==' > "$constraints"
  .venv/bin/python -m pip install -q ${index_args[@]+"${index_args[@]}"} -c "$constraints" -e '.[sam]'
  .venv/bin/python -m pip install -q ${index_args[@]+"${index_args[@]}"} -c "$constraints" \
    "sam-audio @ git+https://github.com/facebookresearch/sam-audio"
  echo "SAM-Audio installed over torch $torch_version (pins in $constraints)."
  echo "Next: accept the licence on the hub, log in, then: .venv/bin/reasam models pull"
fi
if [ "$DEMO" = 1 ]; then
  .venv/bin/reasam example examples/demo.wav
  .venv/bin/reasam separate examples/demo.wav --prompt vocals --out reasam-output
fi
