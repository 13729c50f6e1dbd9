#!/usr/bin/env bash
# Build the on-device core's host runner, build/core/memlora-core, and its C API for the apps,
# build/core/libmemlora_core.so (device_core/api/memlora_core.h), from device_core/ with g++ against the
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

SOURCES=(device_core/src/*.cpp device_core/host/*.cpp device_core/api/*.cpp)
# an object is stale when its source or a header it included (its -MMD list) is newer
stale_object() {
    local obj=$1 dep
    [ -f "$obj" ] && [ -f "${obj%.o}.d" ] || return 0
    for dep in $(sed -e 's/^[^:]*://' -e 's/\\$//' "${obj%.o}.d"); do
        [ "$dep" -nt "$obj" ] && return 0
    done
    return 1
}
object_of() { echo "$OUT/obj/$(basename "${1%.cpp}").o"; }
stale=()
for src in "${SOURCES[@]}"; do
    if stale_object "$(object_of "$src")"; then stale+=("$src"); fi
done
if [ ${#stale[@]} -gt 0 ]; then
    echo "build_core.sh: compiling ${#stale[@]} of ${#SOURCES[@]} sources" >&2
    printf '%s\n' "${stale[@]}" | xargs -P "$JOBS" -I{} sh -c 'g++ "$@" -c {} -o '"$OUT"'/obj/$(basename {} .cpp).o' _ "${CXXFLAGS[@]}"
fi
# link OUTPUT [g++ options] -- SOURCES...: relinked when missing or older than one of the sources' objects
link() {
    local target=$1 options=() objects=()
    shift
    while [ "$1" != "--" ]; do options+=("$1"); shift; done
    shift
    for src in "$@"; do objects+=("$(object_of "$src")"); done
    if [ ! -f "$target" ] || [ -n "$(find "${objects[@]}" -newer "$target" -print -quit)" ]; then
        g++ "${options[@]}" "${objects[@]}" -o "$target.partial" "${LDFLAGS[@]}"
        mv "$target.partial" "$target"
        echo "build_core.sh: linked $target" >&2
    fi
}
link "$OUT/memlora-core" -- device_core/src/*.cpp device_core/host/*.cpp
link "$OUT/libmemlora_core.so" -shared -- device_core/src/*.cpp device_core/api/*.cpp
# android_demo's JNI shim over the C API, compiled against the JDK's jni.h when one is installed (a check of
# the shim's signatures; the app builds it with the NDK)
JNI_INCLUDE=$(ls -d /usr/lib/jvm/*/include 2>/dev/null | head -n 1)
SHIM=android_demo/app/src/main/cpp/memlora_jni.cpp
if [ -n "$JNI_INCLUDE" ] && { [ ! -f "$OUT/libmemlora_jni.so" ] || [ "$SHIM" -nt "$OUT/libmemlora_jni.so" ] ||
                              [ device_core/api/memlora_core.h -nt "$OUT/libmemlora_jni.so" ]; }; then
    g++ -std=c++17 -O2 -Wall -Wextra -fPIC -shared -I device_core/api -I "$JNI_INCLUDE" -I "$JNI_INCLUDE/linux" "$SHIM" \
        -o "$OUT/libmemlora_jni.so" -L "$OUT" -Wl,-rpath,'$ORIGIN' -lmemlora_core
    echo "build_core.sh: linked $OUT/libmemlora_jni.so" >&2
fi
echo "$OUT/memlora-core"
