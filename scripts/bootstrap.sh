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
# Debian packages the on-device core builds against (scripts/build_core.sh; g++ builds llama.cpp too), installed
# only when missing.
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
# llama.cpp for the gguf target. PyPI has no wheel of it for this platform: build the pinned sdist once (about
# 3 minutes on 2 cores) into a wheel cached under MEMLORA_HOME and keyed by requirement and build flags, so a
# fresh venv installs it in seconds. Only the libraries the bindings load; AVX2, plus the AVX-512 sets this CPU
# lists, rather than -march=native, which would turn on AMX kernels that a VM may not grant (SIGILL).
LLAMA_CPP=$(.venv/bin/python -c "from memlora.runtime.gguf_backend import REQUIREMENT; print(REQUIREMENT)")
LLAMA_CMAKE="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF \
-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF"
for isa in avx512f:AVX512 avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    if grep -qw "${isa%%:*}" /proc/cpuinfo 2>/dev/null; then LLAMA_CMAKE="$LLAMA_CMAKE -DGGML_${isa#*:}=ON"; fi
done
LLAMA_KEY=$(printf '%s\n%s\n' "$LLAMA_CPP" "$LLAMA_CMAKE" | sha256sum | cut -c1-16)
LLAMA_WHEELS="${MEMLORA_HOME:-$HOME/.cache/memlora}/wheels/llama-cpp-$LLAMA_KEY"
if ! ls "$LLAMA_WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    if ! command -v cc >/dev/null || ! command -v c++ >/dev/null; then
        echo "bootstrap.sh: building $LLAMA_CPP for the gguf target needs a C and C++ compiler (sudo apt-get install g++)" >&2
        exit 1
    fi
    echo "bootstrap.sh: building $LLAMA_CPP (once; cached in $LLAMA_WHEELS)" >&2
    rm -rf "$LLAMA_WHEELS.tmp"
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) CMAKE_ARGS="$LLAMA_CMAKE" .venv/bin/python -m pip wheel --quiet --no-deps \
        --no-binary llama-cpp-python --no-cache-dir "--config-settings=build.targets=llama;llama-common" \
        -w "$LLAMA_WHEELS.tmp" "$LLAMA_CPP"
    mv "$LLAMA_WHEELS.tmp" "$LLAMA_WHEELS"
fi
if [ "$(cat .venv/memlora-llama-cpp 2>/dev/null)" != "$LLAMA_KEY" ]; then  # pip keeps a same-version build
    .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "$LLAMA_WHEELS"/llama_cpp_python-*.whl
    echo "$LLAMA_KEY" > .venv/memlora-llama-cpp
fi
.venv/bin/python -m pip install --quiet "$LLAMA_WHEELS"/llama_cpp_python-*.whl
