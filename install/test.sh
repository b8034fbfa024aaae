#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine and run it:
# system packages (python3-venv, Lua 5.4 + LuaSocket + busted + luacheck, liblo's
# oscsend/oscdump, ffmpeg, fluidsynth + a GM soundfont, espeak-ng, sonic-pi drum samples), the
# Python package with its test and cluster (Ray) extras, then ruff and pytest (which also runs
# the Lua specs and luacheck), two test files at a time (pytest-xdist).
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES="python3-venv lua5.4 lua-socket lua-busted lua-check liblo-tools ffmpeg fluidsynth
  timgm6mb-soundfont espeak-ng sonic-pi-samples"
missing=""
for pkg in $APT_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
bash install/setup.sh --no-demo
# The cluster extra (Ray) too: the batch tests run a real local Ray instance.
.venv/bin/python -m pip install -q -e '.[test,cluster]'
.venv/bin/ruff check daemon tests bench
# Two workers, one test file each at a time (module fixtures such as a shared daemon or the Ray
# instance stay on one worker): about a third less wall time on 2 cores. `-n 0` runs serially.
.venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
