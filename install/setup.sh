#!/usr/bin/env bash
# Set up ReaSAM in ./.venv and run the main job on the embedded default engine:
# generate a short example song and separate its vocals on the CPU.
#   --torch cpu|cuda|skip  which torch build to install (default: cuda where nvidia-smi lists an
#               NVIDIA GPU, else cpu; the environment variable REASAM_TORCH says the same).
#               cpu: PyTorch's CPU-only build (about 200 MB). cuda: PyPI's Linux build, which is
#               the CUDA one (about 3 GB with its nvidia-* libraries). skip: install no torch
#               here; pip then takes it as reasam's dependency from your own pip configuration.
#               A torch already in .venv is always kept.
#   --no-demo   skip the example job
#   --sam       also install SAM-Audio (README, "Installing SAM-Audio") without replacing the
#               venv's torch: torchvision and torchaudio come from the index of that torch
#               build, and every later install runs under a constraints file that pins all three.
#   --print-plan  print the Python and the torch build it would use, and the torch install
#               command, then stop: nothing is created, installed or downloaded.
# PYTHON=python3.12 picks the interpreter (default: python3, else the newest python3.1x >= 3.11).
# TORCH_PIP_ARGS adds pip arguments to the torch install, e.g. "--index-url URL" for another build.
set -euo pipefail
cd "$(dirname "$0")/.."
CPU_INDEX=https://download.pytorch.org/whl/cpu
TORCH=${REASAM_TORCH:-auto}
DEMO=1
SAM=0
PLAN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --no-demo) DEMO=0 ;;
    --sam) SAM=1 ;;
    --print-plan) PLAN=1 ;;
    --torch) [ $# -ge 2 ] || { echo "setup.sh: --torch needs cpu, cuda or skip" >&2; exit 2; }
      TORCH=$2; shift ;;
    --torch=*) TORCH=${1#--torch=} ;;
    *) echo "setup.sh: unknown option $1 (known: --torch cpu|cuda|skip, --no-demo, --sam, --print-plan)" >&2
      exit 2 ;;
  esac
  shift
done
case "$TORCH" in
  auto|cpu|cuda|skip) ;;
  *) echo "setup.sh: --torch (or REASAM_TORCH) must be cpu, cuda or skip, not '$TORCH'" >&2; exit 2 ;;
esac
step() { echo "==> $*"; }

# --- Python: 3.11 or newer -------------------------------------------------------------------
new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if ! new_enough python3; then
    for candidate in python3.14 python3.13 python3.12 python3.11; do
      if command -v "$candidate" >/dev/null && new_enough "$candidate"; then PYTHON=$candidate; break; fi
    done
  fi
fi
if ! command -v "$PYTHON" >/dev/null; then
  echo "setup.sh: $PYTHON not found; ReaSAM needs Python 3.11 or newer" >&2; exit 1
fi
if ! new_enough "$PYTHON"; then
  found=$("$PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "?")
  cat >&2 <<EOF
setup.sh: ReaSAM needs Python 3.11 or newer; $PYTHON is $found. Install a newer one beside it and
point this script at it, for example:
  Ubuntu 22.04:  sudo add-apt-repository ppa:deadsnakes/ppa && sudo apt install python3.11 python3.11-venv
                 PYTHON=python3.11 bash install/setup.sh
  with uv:       uv python install 3.12 && PYTHON="\$(uv python find 3.12)" bash install/setup.sh
EOF
  exit 1
fi
if [ -x .venv/bin/python ] && ! new_enough .venv/bin/python; then
  echo "setup.sh: .venv holds an older Python than 3.11; remove it (rm -r .venv) and run this again" >&2
  exit 1
fi

# --- torch: which build ----------------------------------------------------------------------
# The range comes from pyproject.toml (the releases the suite has run on); no pin here.
TORCH_REQ=$("$PYTHON" -c 'import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(d for d in deps if d.replace(" ", "").startswith("torch>")))')
why=""
if [ "$TORCH" = auto ]; then
  if [ "$(uname -s)" = Darwin ]; then
    TORCH=cpu; why="macOS: PyPI's build runs on the CPU and the Apple GPU (MPS)"
  elif gpus=$(nvidia-smi -L 2>/dev/null) && [[ $gpus == GPU\ * ]]; then
    gpu=${gpus%%$'\n'*}
    TORCH=cuda; why="found ${gpu%% (UUID*}"
  else
    TORCH=cpu; why="no NVIDIA GPU found: nvidia-smi lists none"
  fi
else
  why="asked for"
fi
# CPU mode on Linux asks PyTorch's CPU index. Where pip's own configuration adds indexes that
# carry the CUDA build too, or that index cannot be reached and pip's configured indexes are
# used instead, these constraints make any CUDA build unresolvable: every Linux CUDA build of
# torch depends on triton and on cuDNN (nvidia-cudnn-cu1x), the CPU build on neither.
CPU_ONLY="triton<0 nvidia-cudnn-cu11<0 nvidia-cudnn-cu12<0 nvidia-cudnn-cu13<0 cuda-toolkit<0"
torch_args=()
case "$TORCH" in
  cpu)
    if [ "$(uname -s)" = Darwin ]; then
      size="about 80 MB"; source_text="PyPI"
    else
      size="about 200 MB download, 700 MB installed"; source_text="$CPU_INDEX"
      torch_args=(--index-url "$CPU_INDEX" -c .venv/reasam-cpu-only.txt)
    fi ;;
  cuda)
    if [ "$(uname -s)" = Darwin ]; then
      echo "setup.sh: there is no CUDA build of torch for macOS; use --torch cpu" >&2; exit 2
    fi
    size="about 3 GB download with its nvidia-* libraries, 6 GB installed"; source_text="PyPI" ;;
  skip) size=""; source_text="" ;;
esac
# shellcheck disable=SC2206  # TORCH_PIP_ARGS is a list of words on purpose
torch_args+=(${TORCH_PIP_ARGS:-})

torch_version() { .venv/bin/python -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null; }
if [ "$PLAN" = 1 ]; then
  echo "python: $(command -v "$PYTHON") ($("$PYTHON" -c 'import platform; print(platform.python_version())'))"
  if [ -x .venv/bin/python ] && installed=$(torch_version); then
    echo "torch $installed is already in .venv: it is kept, whatever the choice below"
  fi
  echo "torch: $TORCH ($why)"
  if [ "$TORCH" != skip ]; then
    echo "torch source: $source_text ($size)"
    echo "torch install: pip install ${torch_args[*]:+${torch_args[*]} }'$TORCH_REQ'"
    case " ${torch_args[*]:-} " in
      *reasam-cpu-only.txt*) echo "  (.venv/reasam-cpu-only.txt, written by the real run, holds: $CPU_ONLY)" ;;
    esac
  fi
  exit 0
fi

# --- the venv, torch, ReaSAM -----------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  step "creating the virtual environment .venv ($PYTHON, $("$PYTHON" -c 'import platform; print(platform.python_version())'))"
  "$PYTHON" -m venv .venv
else
  step "using the virtual environment .venv"
fi
.venv/bin/python -m pip install -q --upgrade pip
installed=$(torch_version || true)
if [ -n "$installed" ]; then
  step "torch $installed is already in .venv: kept (to change it: .venv/bin/python -m pip uninstall torch, then run this again)"
elif [ "$TORCH" = skip ]; then
  step "torch: skipped (--torch skip); pip installs it with ReaSAM from your pip configuration"
else
  step "installing torch, the $TORCH build ($why), from $source_text: $size"
  if [ "$TORCH" = cpu ] && [ "$(uname -s)" != Darwin ]; then
    printf '%s\n' $CPU_ONLY > .venv/reasam-cpu-only.txt
    if ! .venv/bin/python -c "import urllib.request; urllib.request.urlopen('$CPU_INDEX/torch/', timeout=15)" 2>/dev/null; then
      echo "    $CPU_INDEX cannot be reached: looking for a CPU build in pip's configured indexes instead"
      torch_args=(-c .venv/reasam-cpu-only.txt ${TORCH_PIP_ARGS:-})
    fi
  fi
  if ! .venv/bin/python -m pip install -q ${torch_args[@]+"${torch_args[@]}"} "$TORCH_REQ"; then
    echo "setup.sh: installing torch ($TORCH build) failed. Choose another build with --torch cpu|cuda," >&2
    echo "or install torch into .venv yourself (.venv/bin/python -m pip install ...) and run this again." >&2
    exit 1
  fi
  step "installed torch $(torch_version)"
fi
step "installing ReaSAM and its dependencies into .venv"
# An editable install of a package with mapped folders (pyproject.toml) makes setuptools warn, in
# a large box, that a folder named like the package in the working directory would shadow it;
# there is none here.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q -e .
if [ "$SAM" = 1 ]; then
  step "installing SAM-Audio over the venv's torch"
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
  PYTHONWARNINGS="ignore:Editable installation" \
    .venv/bin/python -m pip install -q ${index_args[@]+"${index_args[@]}"} -c "$constraints" -e '.[sam]'
  .venv/bin/python -m pip install -q ${index_args[@]+"${index_args[@]}"} -c "$constraints" \
    "sam-audio @ git+https://github.com/facebookresearch/sam-audio"
  echo "SAM-Audio installed over torch $torch_version (pins in $constraints)."
  echo "Next: accept the licence on the hub, log in, then: .venv/bin/reasam models pull"
fi
if [ "$DEMO" = 1 ]; then
  step "running the example: the vocals of a generated song, on the CPU with the embedded engine"
  .venv/bin/reasam example examples/demo.wav >/dev/null
  # A new folder per run, never overwriting: demo-vocals/, then demo-vocals-2/, ...
  stems=$(.venv/bin/reasam separate examples/demo.wav --prompt vocals --device cpu --out reasam-output)
  echo "$stems" | sed 's/^/    /'
fi
cat <<EOF
==> done. Next:
    export PATH="$PWD/.venv/bin:\$PATH"    # or call .venv/bin/reasam
    reasam install-reaper                  # the REAPER actions (README, "In REAPER")
    bash install/test.sh                   # the test suite (installs what it needs)
EOF
