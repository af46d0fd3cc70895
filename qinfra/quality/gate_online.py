"""The online gate method, for any engine: the same short prompts at temperature 0 to both
variants' OpenAI-compatible endpoints, answers compared as the router's shadow mode compares
them (exact match, common-prefix fraction, similarity).

Works where llama-perplexity does not (vLLM's AWQ, GPTQ, FP8, INT8); needs both variants running.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from qinfra.quality.gate_answers import Answered, EndpointError, ask_all, read_prompt_set
from qinfra.serving.router.shadow import compare

__all__ = ["EndpointError", "OnlineMetrics", "ask_both", "compare_endpoints", "read_prompts",
           "shipped_prompts"]

PROMPTS = "gate_prompts.txt"  # shipped; data/gate_text.source.md says where it comes from
# Short answers: enough tokens for answers to diverge, few enough that 24 prompts on a 135M model
# on two cores take seconds.
MAX_TOKENS = 32


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
    """The prompts of a prompt set (data/gate_prompts.txt's format; answers dropped); SpecError
    for an empty file."""
    return [item.prompt for item in read_prompt_set(path)]


def ask_both(baseline: str, quantized: str, prompts: list[str], *, model: str | None = None,
             api_key: str | None = None) -> tuple[OnlineMetrics, list[Answered], list[Answered]]:
    """Ask both endpoints every prompt (MAX_TOKENS each): their agreement, and both answer lists."""
    with ThreadPoolExecutor(2) as pool:
        base_job = pool.submit(ask_all, baseline, prompts, model=model, api_key=api_key,
                               max_tokens=MAX_TOKENS)
        quant_job = pool.submit(ask_all, quantized, prompts, model=model, api_key=api_key,
                                max_tokens=MAX_TOKENS)
        base_answers, quant_answers = base_job.result(), quant_job.result()
    pairs = [(a.text, b.text) for a, b in zip(base_answers, quant_answers, strict=True)]
    results = [compare(a, b) for a, b in pairs]
    differing = tuple({"prompt": p, "baseline": a, "quantized": b}
                      for p, (a, b), r in zip(prompts, pairs, results, strict=True) if not r.exact)
    n = len(results)
    metrics = OnlineMetrics(
        prompts=n,
        exact_match=sum(r.exact for r in results) / n,
        prefix_fraction=sum(r.prefix_fraction for r in results) / n,
        similarity=sum(r.similarity for r in results) / n,
        differing=differing[:5],
    )
    return metrics, base_answers, quant_answers


def compare_endpoints(baseline: str, quantized: str, prompts: list[str], *,
                      model: str | None = None, api_key: str | None = None) -> OnlineMetrics:
    """Ask both endpoints every prompt and compare the answers pairwise."""
    return ask_both(baseline, quantized, prompts, model=model, api_key=api_key)[0]
