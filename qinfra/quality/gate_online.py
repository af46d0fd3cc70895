"""The online gate method, for any engine: the same short prompts at temperature 0 to both
variants' OpenAI-compatible endpoints, answers compared as the router's shadow mode compares
them (exact match, common-prefix fraction, similarity).

Works where llama-perplexity does not (vLLM's AWQ, GPTQ, FP8, INT8); needs both variants running.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from qinfra.core.errors import QinfraError, SpecError
from qinfra.serving.router.shadow import compare

PROMPTS = "gate_prompts.txt"  # shipped; data/gate_text.source.md says where it comes from
# Short answers: enough tokens for answers to diverge, few enough that 24 prompts on a 135M model
# on two cores take seconds.
MAX_TOKENS = 32
TIMEOUT_S = 120.0
PARALLEL = 4


class EndpointError(QinfraError):
    """A variant's endpoint that did not answer a gate prompt."""


@dataclass(frozen=True)
class OnlineMetrics:
    prompts: int
    exact_match: float
    prefix_fraction: float
    similarity: float
    differing: tuple[dict[str, str], ...]  # the first few prompts whose answers differ

    def judged(self) -> dict[str, float]:
        return {"exact_match": self.exact_match, "prefix_fraction": self.prefix_fraction}

    def to_json(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "exact_match": self.exact_match,
                "prefix_fraction": self.prefix_fraction, "similarity": self.similarity,
                "differing": list(self.differing)}


def shipped_prompts() -> Path:
    return Path(str(resources.files("qinfra.quality").joinpath("data", PROMPTS)))


def read_prompts(path: Path) -> list[str]:
    """One prompt per non-empty line; SpecError for an empty file."""
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise SpecError(f"{path} holds no prompts. To fix: one prompt per line")
    return prompts


def answer(endpoint: str, prompt: str, *, model: str | None, api_key: str | None) -> str:
    """The greedy chat answer of one endpoint (`http://host:port`, with or without /v1)."""
    base = endpoint.rstrip("/").removesuffix("/v1")
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}],
                            "temperature": 0, "max_tokens": MAX_TOKENS, "seed": 0}
    if model:
        body["model"] = model
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                                     headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            doc = json.loads(response.read())
        return str(doc["choices"][0]["message"]["content"])
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as exc:
        raise EndpointError(f"{base} did not answer a gate prompt: {exc}. To fix: check the "
                            "variant is running (`qinfra status`) and serves /v1/chat/completions"
                            ) from None


def compare_endpoints(baseline: str, quantized: str, prompts: list[str], *,
                      model: str | None = None, api_key: str | None = None) -> OnlineMetrics:
    """Ask both endpoints every prompt and compare the answers pairwise."""
    def ask(job: tuple[str, str]) -> str:
        return answer(job[0], job[1], model=model, api_key=api_key)

    jobs = [(ep, p) for p in prompts for ep in (baseline, quantized)]
    with ThreadPoolExecutor(PARALLEL) as pool:
        answers = list(pool.map(ask, jobs))
    pairs = list(zip(answers[0::2], answers[1::2], strict=True))
    results = [compare(a, b) for a, b in pairs]
    differing = tuple({"prompt": p, "baseline": a, "quantized": b}
                      for p, (a, b), r in zip(prompts, pairs, results, strict=True) if not r.exact)
    n = len(results)
    return OnlineMetrics(
        prompts=n,
        exact_match=sum(r.exact for r in results) / n,
        prefix_fraction=sum(r.prefix_fraction for r in results) / n,
        similarity=sum(r.similarity for r in results) / n,
        differing=differing[:5],
    )
