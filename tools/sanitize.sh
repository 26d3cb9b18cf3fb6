#!/usr/bin/env bash
# Build the C++ core with AddressSanitizer + UndefinedBehaviorSanitizer and run the test suite
# under it, in a virtual environment of its own (the normal install is left alone).
#
#   tools/sanitize.sh                      # the whole suite (slow tests excluded, as usual)
#   tools/sanitize.sh tests/test_fuzz.py   # arguments go to pytest
#
# Any memory error (out-of-bounds access, use after free, ...) or undefined behaviour in the
# core aborts the run with a report and a non-zero exit.  Leak detection is off: CPython
# deliberately keeps memory until exit.  Needs GCC or Clang with their sanitizer runtimes.
# Environment: NESTEDATOMS_SANITIZE_VENV (default build/sanitize-venv) and
# NESTEDATOMS_SANITIZE_BUILD (default build/sanitize) choose where the venv and build go.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${NESTEDATOMS_SANITIZE_VENV:-$PWD/build/sanitize-venv}"
build_dir="${NESTEDATOMS_SANITIZE_BUILD:-$PWD/build/sanitize}"
cxx="${CXX:-c++}"

libasan="$("$cxx" -print-file-name=libasan.so)"
if [ ! -e "$libasan" ]; then
  echo "sanitize.sh: $cxx has no libasan.so (install the compiler's sanitizer runtime)" >&2
  exit 2
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
# A regular (not editable) install, built into its own directory with the sanitizer option of
# CMakeLists.txt; debug info keeps the reports readable.  The build requirements are installed
# into the venv and the build is not isolated, so include paths stay the same from run to run
# and a rerun only recompiles what changed.
python -m pip install --quiet "scikit-build-core>=0.10" "pybind11>=2.12" "cmeel-eigen>=3.4" \
  cmake ninja
sanitize_flags=(--no-build-isolation -Ccmake.define.NESTEDATOMS_SANITIZE=ON
                -Ccmake.build-type=RelWithDebInfo -Cbuild-dir="$build_dir")
if ! python -c "import nestedatoms" 2>/dev/null; then
  python -m pip install --quiet ".[test]" "${sanitize_flags[@]}"       # dependencies too
fi
python -m pip install --quiet --force-reinstall --no-deps . "${sanitize_flags[@]}"

# The interpreter is not built with ASan, so its runtime must be loaded first; libstdc++ right
# after it, or ASan cannot intercept C++ exceptions thrown by extensions (pybind11 turns ours
# into ValueError; matplotlib's ft2font throws at import) and aborts.
libstdcxx="$("$cxx" -print-file-name=libstdc++.so)"
export LD_PRELOAD="$libasan:$libstdcxx${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_init_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

python - <<'PY'
import sys

import nestedatoms._core as core

assert core.__file__.startswith(sys.prefix), f"not the sanitized build: {core.__file__}"
print("sanitized core:", core.__file__)
PY
if [ "$#" -eq 0 ]; then
  set -- tests
fi
python -m pytest -p no:cacheprovider "$@"
