#!/bin/sh
# Rendered by qinfra from stack local, variant quantized (gguf-q4_k_m); do not edit.
# llama.cpp b11434 on cpu: --ctx-size is the KV cache of all 4 slot(s) together,
# each slot gets an equal share; every flag is the plan's (`qinfra plan --stack local`).
# --log-verbosity 4: llama-server logs its model, KV and compute buffer sizes only at this level (not
# at the default 3, nor in /props or /slots); `qinfra status` holds them against the plan.
# QINFRA_PORT, where set, is the port of one of several engines on a machine (qinfra-engine@<n>).
set -eu
model=/tmp/qinfra-artifacts/local/sha256-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
if [ -d "$model" ]; then
  # An artifact directory: serve its one GGUF file, or the first shard of a split one.
  set -- "$model"/*-00001-of-*.gguf
  [ -f "$1" ] || set -- "$model"/*.gguf
  if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then
    echo "qinfra: expected one .gguf file in $model" >&2
    exit 1
  fi
  model=$1
fi
exec "${LLAMA_SERVER:-llama-server}" \
  --model "$model" \
  --alias smollm2-135m-instruct \
  --host 127.0.0.1 \
  --port "${QINFRA_PORT:-8082}" \
  --ctx-size 4096 \
  --parallel 4 \
  --no-kv-unified \
  --n-gpu-layers 0 \
  --threads 2 \
  --flash-attn on \
  --cache-type-k f16 \
  --cache-type-v f16 \
  --no-webui \
  --metrics \
  --log-verbosity 4
