#!/usr/bin/env bash
# The README's set-up command: everything shardrun's test suite needs, on a fresh Debian machine
# with Python 3.11 and nothing else.
#   - system packages (as root, with apt-get): Chromium, which the status-page tests use to look
#     at the status page as a person would, and Python's venv module where Debian ships it apart;
#   - a virtualenv in .venv with shardrun installed in editable mode and its test extra.
# Run it again at any time: what is already there is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}

say() { printf 'set-up: %s\n' "$*" >&2; }

command -v "$PYTHON" >/dev/null || { say "$PYTHON not found: install Python 3.11 first (Debian: apt-get install python3.11)"; exit 1; }

missing=()
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=("python3-venv")
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "missing system packages: ${missing[*]}. Install them as root (apt-get install ${missing[*]}), or"
    say "run this script as root on Debian; the test suite needs them (Chromium renders the status page)."
    exit 1
  fi
fi

[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
say "ready: run the tests with .venv/bin/python -m pytest -n 2"
