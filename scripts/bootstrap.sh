#!/usr/bin/env bash
# Create .venv with Python 3.11 and install memlora (editable) with the pinned version set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: an unpinned resolver would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
# Debian packages the on-device core builds against (scripts/build_core.sh), installed only when missing.
CORE_DEBS=(g++ nlohmann-json3-dev libpcre2-dev libsqlite3-dev)
if command -v dpkg >/dev/null; then
    missing=()
    for deb in "${CORE_DEBS[@]}"; do dpkg -s "$deb" >/dev/null 2>&1 || missing+=("$deb"); done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ]; then
            apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
        else
            echo "bootstrap.sh: the on-device core needs ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
        fi
    fi
fi
