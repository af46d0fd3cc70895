#!/usr/bin/env bash
# Install llm-compressor (PyPI `llmcompressor`) in its own venv, .tools/llmcompressor/venv: the
# environment qinfra's recipes run in (qinfra/artifacts/recipe_tools: llm-compressor schemes, the
# dequantizer, and llama.cpp's convert_hf_to_gguf.py from scripts/install-llama-convert.sh).
#
#   bash scripts/install-llmcompressor.sh   # idempotent: seconds when the stamp matches
#
# Its own venv because llmcompressor pins transformers<=5.17.0 and compressed-tensors==0.19.0,
# while vLLM's CPU build (.tools/vllm/venv) pins transformers>=5.16.1 and compressed-tensors
# 0.17.0 (checkpoints written by 0.19 load in vLLM 0.32). The venv is stamped with every pin
# below and the sha256 of the constraints file: a rerun with the same pins does nothing; a
# changed pin deletes the venv and builds it again. The stamp is written last, so an interrupted
# install is redone on the next run; qinfra keys its made artifacts' cache on the stamp too.
#
# Knobs (environment):
#   PYTHON                        interpreter for the venv (default python3.11, else python3)
#   QINFRA_LLMC_REINSTALL=1       rebuild the venv even when the stamp matches
set -euo pipefail
shopt -s inherit_errexit

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO_ROOT/.tools/llmcompressor"
VENV="$TOOLS/venv"
STAMP="$VENV/qinfra-installed.txt"
# Pinned versions of every pip package in the venv (`pip freeze` of a good install on x86_64
# Linux, Python 3.11): the same install on every machine; regenerate it when a pin below moves.
CONSTRAINTS="$REPO_ROOT/scripts/llmcompressor-constraints.txt"
START=$SECONDS

# llm-compressor 0.14.0.1 and the compressed-tensors it pins; sha256 of each wheel as PyPI serves
# it (pip download, computed 2026-12-06). Both are pure-Python wheels.
LLMC_VERSION=0.14.0.1
LLMC_SHA256=fedc804a45bf3e353b84b8181147474c324ffba3356c9ecebceae29dfc3c5f00
CT_VERSION=0.19.0
CT_SHA256=5c2dcfd9cd820521906e23e096a51d68755cb88b67e19b1a5c9e11fa69637fb2
# torch inside llmcompressor's range (>=2.10,<=2.14): the same PyPI build the vLLM venv runs
# (its CUDA build; it runs on CPU), so the quantizer's arithmetic is the engine's torch's.
TORCH_VERSION=2.13.0
# transformers inside llmcompressor's range (>=5.15.0,<=5.17.0): the newest it allows.
TRANSFORMERS_VERSION=5.17.0

log() { printf '[install-llmcompressor] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
[[ -f "$CONSTRAINTS" ]] || die "$CONSTRAINTS is missing"

mkdir -p "$TOOLS"
if command -v flock >/dev/null 2>&1; then  # one run at a time; flock is util-linux, optional
    exec 9>"$TOOLS/.lock"
    flock 9
fi

PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
CONSTRAINTS_SHA256="$(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)"
WANT="llmcompressor=$LLMC_VERSION sha256=$LLMC_SHA256 compressed-tensors=$CT_VERSION"
WANT+=" sha256=$CT_SHA256 torch=$TORCH_VERSION transformers=$TRANSFORMERS_VERSION"
WANT+=" python=$PY_VERSION constraints=$CONSTRAINTS_SHA256"

if [[ "${QINFRA_LLMC_REINSTALL:-0}" != 1 && -x "$VENV/bin/python" && -f "$STAMP" \
      && "$(cat "$STAMP")" == "$WANT" ]]; then
    log "llmcompressor $LLMC_VERSION already installed in $VENV"
else
    log "installing llmcompressor $LLMC_VERSION into $VENV (a few minutes, several GB: torch)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    pip=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)
    "${pip[@]}" install -c "$CONSTRAINTS" --upgrade pip

    # 1. The two wheels that decide the checkpoint's format, hash-checked, without dependencies
    #    (--require-hashes would otherwise demand a hash for every dependency too).
    hashes="$(mktemp)"
    trap 'rm -f "$hashes"' EXIT
    printf 'llmcompressor==%s --hash=sha256:%s\ncompressed-tensors==%s --hash=sha256:%s\n' \
        "$LLMC_VERSION" "$LLMC_SHA256" "$CT_VERSION" "$CT_SHA256" >"$hashes"
    "${pip[@]}" install --no-deps --only-binary=:all: --require-hashes -r "$hashes"

    # 2. Their dependencies at the pinned versions (pip checks them against both wheels' ranges),
    #    and sentencepiece: llama.cpp's convert_hf_to_gguf.py (scripts/install-llama-convert.sh),
    #    which runs in this venv, imports it before it looks for a tokenizer.model.
    "${pip[@]}" install -c "$CONSTRAINTS" "llmcompressor==$LLMC_VERSION" \
        "compressed-tensors==$CT_VERSION" "torch==$TORCH_VERSION" \
        "transformers==$TRANSFORMERS_VERSION" sentencepiece
    "$VENV/bin/python" -m pip check >&2 || die "pip check failed in $VENV"

    got="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("llmcompressor"))')"
    [[ "$got" == "$LLMC_VERSION" ]] || die "installed llmcompressor $got, wanted $LLMC_VERSION"
    echo "$WANT" >"$STAMP"
    log "installed in $((SECONDS - START)) s, $(du -sh "$VENV" | cut -f1)"
fi
