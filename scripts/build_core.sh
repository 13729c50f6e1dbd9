#!/usr/bin/env bash
# Build the on-device core's host runner, build/core/memlora-core, from device_core/ with g++ against the
# ExecuTorch runtime the executorch wheel in .venv ships (headers and shared libraries). Plain g++, no CMake:
# the wheel's CMake config wants CMake >= 3.28. Incremental: an object is rebuilt only when its source, a
# header it includes or the compiler flags changed; the link only when an object did.
# Needs g++, nlohmann-json3-dev, libpcre2-dev and libsqlite3-dev (scripts/bootstrap.sh installs them on Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=build/core
JOBS=${JOBS:-2}
[ -x "$PY" ] || { echo "build_core.sh: $PY not found (run scripts/bootstrap.sh first)" >&2; exit 2; }
read -r SITE LIBDIR SONAME < <("$PY" -c "import sysconfig as s; print(s.get_paths()['platlib'], s.get_config_var('LIBDIR'), s.get_config_var('INSTSONAME'))")
ET="$SITE/executorch"
[ -f "$ET/lib/libexecutorch.so" ] || { echo "build_core.sh: $ET/lib/libexecutorch.so not found (is executorch installed in .venv?)" >&2; exit 2; }
for header in nlohmann/json.hpp pcre2.h sqlite3.h; do
    [ -f "/usr/include/$header" ] || { echo "build_core.sh: /usr/include/$header not found (apt-get install nlohmann-json3-dev libpcre2-dev libsqlite3-dev)" >&2; exit 2; }
done
# On Linux the kernels of llama::custom_sdpa / llama::update_cache load only after libpython (see device_core/README.md).
CXXFLAGS=(-std=c++17 -O2 -g0 -MMD -Wall -Wextra -Wno-unused-parameter -fPIC -DC10_USING_CUSTOM_GENERATED_MACROS
          -isystem "$ET/include" -isystem "$ET/include/executorch/runtime/core/portable_type/c10"
          -DMEMLORA_LIBPYTHON="\"$LIBDIR/$SONAME\""
          -DMEMLORA_CUSTOM_OPS="\"$ET/extension/llm/custom_ops/libcustom_ops_aot_lib.so\"")
LDFLAGS=(-L"$ET/lib" -Wl,-rpath,"$ET/lib" -Wl,--no-as-needed -lexecutorch -lexecutorch_kernels_optimized
         -lexecutorch_backend_xnnpack -lexecutorch_threadpool -Wl,--as-needed -lpcre2-8 -lsqlite3 -ldl -lpthread)
mkdir -p "$OUT/obj"
FLAGS="${CXXFLAGS[*]} | ${LDFLAGS[*]}"
[ -f "$OUT/flags" ] && [ "$(cat "$OUT/flags")" = "$FLAGS" ] || { rm -f "$OUT"/obj/*.[od]; printf '%s' "$FLAGS" > "$OUT/flags"; }

SOURCES=(device_core/src/*.cpp device_core/host/*.cpp)
# an object is stale when its source or a header it included (its -MMD list) is newer
stale_object() {
    local obj=$1 dep
    [ -f "$obj" ] && [ -f "${obj%.o}.d" ] || return 0
    for dep in $(sed -e 's/^[^:]*://' -e 's/\\$//' "${obj%.o}.d"); do
        [ "$dep" -nt "$obj" ] && return 0
    done
    return 1
}
OBJECTS=()
stale=()
for src in "${SOURCES[@]}"; do
    obj="$OUT/obj/$(basename "${src%.cpp}").o"
    OBJECTS+=("$obj")
    if stale_object "$obj"; then stale+=("$src"); fi
done
if [ ${#stale[@]} -gt 0 ]; then
    echo "build_core.sh: compiling ${#stale[@]} of ${#SOURCES[@]} sources" >&2
    printf '%s\n' "${stale[@]}" | xargs -P "$JOBS" -I{} sh -c 'g++ "$@" -c {} -o '"$OUT"'/obj/$(basename {} .cpp).o' _ "${CXXFLAGS[@]}"
fi
BIN="$OUT/memlora-core"
if [ ! -x "$BIN" ] || [ -n "$(find "${OBJECTS[@]}" -newer "$BIN" -print -quit)" ]; then
    g++ "${OBJECTS[@]}" -o "$BIN.partial" "${LDFLAGS[@]}"
    mv "$BIN.partial" "$BIN"
    echo "build_core.sh: linked $BIN" >&2
fi
echo "$BIN"
