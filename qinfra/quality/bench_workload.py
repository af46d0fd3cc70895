"""What `qinfra bench` sends and when: seeded prompts (synthetic or a user's JSONL) and the
arrival schedule (open loop: constant, Poisson or gamma; closed loop has none).

Everything here is a pure function of its arguments and the seed, so two runs with the same
seed send the same prompts at the same offsets.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

from qinfra.core.errors import QinfraError, SpecError

# The client has no tokenizer, so a prompt of N tokens is cut as N / TOKENS_PER_WORD words; the
# server's own count (usage.prompt_tokens) is what the results record. Measured on the shipped
# text with SmolLM2-135M-Instruct's tokenizer (llama-server /tokenize): 990 words, 1,210 tokens.
TOKENS_PER_WORD = 1.22


class BenchError(QinfraError):
    """A benchmark that cannot run: a bad workload file, an unreachable target, no results."""


class Arrival(StrEnum):
    """How open-loop requests arrive. POISSON is gamma with burstiness 1 (vllm bench serve)."""

    CONSTANT = "constant"
    POISSON = "poisson"


@dataclass(frozen=True)
class Distribution:
    """A length distribution in tokens: `128` (fixed), `uniform:64-256` or `normal:128,32`."""

    kind: str
    a: float
    b: float = 0.0

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            value = self.a
        elif self.kind == "uniform":
            value = rng.uniform(self.a, self.b)
        else:
            value = rng.gauss(self.a, self.b)
        return max(1, round(value))

    def describe(self) -> str:
        return {"fixed": f"{self.a:g}", "uniform": f"uniform:{self.a:g}-{self.b:g}",
                "normal": f"normal:{self.a:g},{self.b:g}"}[self.kind]


_DIST = re.compile(r"^(?:(?P<fixed>\d+)|uniform:(?P<lo>\d+)-(?P<hi>\d+)|"
                   r"normal:(?P<mean>\d+(?:\.\d+)?),(?P<sd>\d+(?:\.\d+)?))$")


def parse_distribution(option: str, text: str) -> Distribution:
    """`--input-tokens`/`--output-tokens` as typed; SpecError names the option and the forms."""
    match = _DIST.match(text.strip())
    if match is None or (match["fixed"] and int(match["fixed"]) < 1):
        raise SpecError(f"{option} {text!r} is not a length distribution. To fix: give a token "
                        "count (128), uniform:LOW-HIGH (uniform:64-256) or normal:MEAN,SD "
                        "(normal:128,32)")
    if match["fixed"]:
        return Distribution("fixed", int(match["fixed"]))
    if match["lo"]:
        lo, hi = int(match["lo"]), int(match["hi"])
        if not 1 <= lo <= hi:
            raise SpecError(f"{option} {text!r}: LOW must be at least 1 and at most HIGH")
        return Distribution("uniform", lo, hi)
    return Distribution("normal", float(match["mean"]), float(match["sd"]))


@dataclass(frozen=True)
class BenchRequest:
    """One request of a workload: a prompt (completions) or messages (chat), and its output
    length (`max_tokens` with `ignore_eos`, so the server generates exactly that many)."""

    index: int
    max_tokens: int
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    planned_input_tokens: int = 0

    def body(self, model: str, stream: bool = True) -> dict[str, Any]:
        """The OpenAI-shaped request body; usage is asked for in the last streamed chunk."""
        body: dict[str, Any] = {"model": model, "max_tokens": self.max_tokens, "ignore_eos": True,
                                "temperature": 0, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if self.messages is not None:
            body["messages"] = list(self.messages)
        else:
            body["prompt"] = self.prompt
        return body

    @property
    def chat(self) -> bool:
        return self.messages is not None


def shipped_text() -> str:
    """The public-domain text synthetic prompts are cut from (source in data/bench_text.source.md)."""
    return resources.files("qinfra.quality").joinpath("data/bench_text.txt").read_text("utf-8")


def synthetic(n: int, input_tokens: Distribution, output_tokens: Distribution, seed: int,
              text: str | None = None) -> list[BenchRequest]:
    """`n` prompts cut from the shipped text: each starts at a seeded word (so no two share a
    cached prefix by design) and runs for about the drawn number of tokens, wrapping around."""
    words = (text or shipped_text()).split()
    rng = random.Random(seed)
    requests = []
    for i in range(n):
        wanted = input_tokens.draw(rng)
        count = max(1, math.ceil(wanted / TOKENS_PER_WORD))
        start = rng.randrange(len(words))
        picked = [words[(start + k) % len(words)] for k in range(count)]
        requests.append(BenchRequest(i, output_tokens.draw(rng), prompt=" ".join(picked),
                                     planned_input_tokens=wanted))
    return requests


def from_jsonl(path: Path, n: int | None, output_tokens: Distribution, seed: int) -> list[BenchRequest]:
    """The user's prompts: one JSON object a line with `prompt` (a string) or `messages` (a chat);
    an optional `max_tokens` wins over the drawn output length. `n` takes the first n lines,
    cycling when the file is shorter. BenchError names the file and line of a bad entry."""
    try:
        lines = [line for line in path.read_text("utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise BenchError(f"cannot read the dataset {path}: {exc.strerror or exc}") from exc
    if not lines:
        raise BenchError(f"the dataset {path} has no entries. To fix: one JSON object a line with "
                         '"prompt" or "messages"')
    rng = random.Random(seed)
    entries = [_entry(path, number, line) for number, line in enumerate(lines, 1)]
    requests = []
    for i in range(n or len(entries)):
        entry = entries[i % len(entries)]
        drawn = output_tokens.draw(rng)
        max_tokens = int(entry.get("max_tokens") or drawn)
        messages = entry.get("messages")
        requests.append(BenchRequest(
            i, max_tokens, prompt=None if messages else entry["prompt"],
            messages=tuple(messages) if messages else None))
    return requests


def _entry(path: Path, number: int, line: str) -> dict[str, Any]:
    where = f"{path}:{number}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BenchError(f"{where} is not JSON: {exc.msg}") from exc
    if not isinstance(entry, dict):
        raise BenchError(f"{where} must be a JSON object with \"prompt\" or \"messages\"")
    prompt, messages = entry.get("prompt"), entry.get("messages")
    if isinstance(prompt, str) and prompt:
        return entry
    if (isinstance(messages, list) and messages
            and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages)):
        return entry
    raise BenchError(f"{where} has neither a non-empty \"prompt\" string nor a \"messages\" list "
                     "of {\"role\", \"content\"} objects")


def arrival_offsets(n: int, rate: float, arrival: Arrival = Arrival.POISSON,
                    burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Seconds after the start at which each of `n` requests is sent, whatever the responses do.

    rate inf: all at once. Constant: every 1/rate s. Otherwise gaps drawn from a gamma
    distribution of shape `burstiness` and mean 1/rate, as vllm bench serve draws them
    (burstiness 1 is a Poisson process; below 1 burstier, above 1 more regular).
    """
    if math.isinf(rate):
        return [0.0] * n
    if rate <= 0 or burstiness <= 0:
        raise SpecError(f"--rate {rate:g} and --burstiness {burstiness:g} must be above 0")
    rng = random.Random(seed ^ 0x5EED)
    offsets, t = [], 0.0
    for _ in range(n):
        offsets.append(t)
        gap = 1.0 / rate if arrival is Arrival.CONSTANT else rng.gammavariate(burstiness,
                                                                            1.0 / (rate * burstiness))
        t += gap
    return offsets
