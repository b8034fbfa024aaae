#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine and run it:
# system packages (Lua 5.4 + busted + luacheck, liblo's oscsend/oscdump, ffmpeg, sox,
# fluidsynth + a GM soundfont, espeak-ng, drum samples, inotify-tools), the Python package with
# its test extras, then pytest (which also runs the Lua specs and luacheck).
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES="lua5.4 lua-socket lua-busted lua-check liblo-tools ffmpeg sox libsox-fmt-all fluidsynth
  timgm6mb-soundfont espeak-ng sonic-pi-samples inotify-tools"
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
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/ruff check daemon tests bench
.venv/bin/python -m pytest -q "$@"
