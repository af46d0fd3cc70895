#!/bin/sh
# Rendered by qinfra from stack local, variant quantized; do not edit.
# A replica counts as ready only after /health answers and one short completion succeeds, so the
# first real request does not pay for lazy start-up work (kernels, CUDA graphs, page cache).
#   warmup.sh         wait up to 61 s for /health, then warm up (systemd, local)
#   warmup.sh --once  one attempt without waiting (a Kubernetes startupProbe repeats it)
set -eu
base="http://127.0.0.1:${QINFRA_PORT:-8082}"
health() {
  curl -fsS --max-time 5 -o /dev/null "$base/health"
}
if [ "${1:-}" = "--once" ]; then
  health
else
  deadline=$(( $(date +%s) + 61 ))
  until health 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "qinfra: $base/health did not answer within 61 s" >&2
      exit 1
    fi
    sleep 2
  done
fi
body='{"max_tokens":4,"messages":[{"content":"Say hello.","role":"user"}],"model":"smollm2-135m-instruct","temperature":0}'
curl -fsS --max-time 60 -H 'Content-Type: application/json' \
  -d "$body" "$base/v1/chat/completions" | grep -q '"choices"'
echo "qinfra: local/quantized is warm at $base"
