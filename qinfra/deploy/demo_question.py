"""The question a local `up` ends with: one per variant that takes traffic, through the front
door, so the user sees both sides of the A/B test answer (or fail) and gets the curl to ask it."""

from __future__ import annotations

import contextlib
import json
import shlex
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qinfra.core.spec import StackSpec, Variant
from qinfra.serving.router.assign import bucket_of, variant_of

# Not a near-tie: measured (issue 24) on the local stack's models, greedy, the F16 baseline and the
# Q8_0, Q6_K, Q4_K_M and Q2_K files made from it all answer "The chemical symbol for gold is Au"
# (their wording after it differs). "What is the capital of France?", the question before, is a
# tie for this 135M model: its first token "L" and "The" have the same log-probability, so Q8_0
# and Q4_K_M loop in French where F16 and Q6_K say "Paris", which showed one flip, not the
# variant's quality (the gate's answers pass measures that: `qinfra gate`).
QUESTION = "What is the chemical symbol for gold?"
_TIMEOUT_S = 60


@dataclass(frozen=True)
class Answer:
    variant: Variant
    text: str
    ok: bool


@dataclass(frozen=True)
class DemoQuestion:
    question: str
    answers: tuple[Answer, ...]
    curl: str

    @property
    def failed(self) -> list[Answer]:
        return [a for a in self.answers if not a.ok]


def api_key(run_dir: Path, stack: str) -> str | None:
    """The key the stack's local engines were started with (the router passes the client's
    Authorization through to them)."""
    from qinfra.deploy.targets.local_servers import engine_key

    return engine_key(run_dir / stack / v.value for v in Variant)


def ask(spec: StackSpec, endpoint: str, key: str | None) -> DemoQuestion:
    """Ask through `endpoint` with, per variant that takes traffic, a sticky user the router
    sends there; `key` (the stack's qinfra:api_key) as the bearer token when set."""
    percent = spec.rollout.traffic_percent()
    body = {"model": spec.model.served_name or "model", "max_tokens": 32, "temperature": 0,
            "messages": [{"role": "user", "content": QUESTION}]}
    answers = []
    for variant in (v for v in Variant if percent[v] > 0):
        user = next(k for k in (f"you-{i}" for i in range(10_000)) if variant_of(
            bucket_of(spec.router.salt, k), percent[Variant.QUANTIZED]) is variant)
        answers.append(_answer(variant, endpoint, body, {spec.router.key_header: user}, key))
    auth = " -H \"Authorization: Bearer $QINFRA_API_KEY\"" if key else ""
    curl = (f"curl -s {endpoint}/v1/chat/completions -H 'Content-Type: application/json' "
            f"-H '{spec.router.key_header}: you-0'{auth} -d {shlex.quote(json.dumps(body))}")
    return DemoQuestion(QUESTION, tuple(answers), curl)


def _answer(variant: Variant, endpoint: str, body: dict[str, Any], headers: dict[str, str],
            key: str | None) -> Answer:
    headers = {"Content-Type": "application/json", **headers}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"{endpoint}/v1/chat/completions",
                                     data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            text = json.loads(response.read())["choices"][0]["message"]["content"]
    except urllib.error.HTTPError as exc:
        return Answer(variant, f"(asking {endpoint} failed: HTTP {exc.code} {exc.reason})", False)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        return Answer(variant, f"(asking {endpoint} failed: {exc})", False)
    return Answer(variant, " ".join(str(text).split()), True)


def gate_line(spec: StackSpec) -> str | None:
    """The pinned gate report's verdict and answers, in one line: the measurement behind the
    one answer shown (None when no report is pinned or it cannot be read)."""
    from qinfra.core.errors import QinfraError
    from qinfra.quality.gate_answers import summary
    from qinfra.quality.gate_report import read_report

    uri = spec.variants.quantized.gate
    if not uri:
        return None
    try:
        report = read_report(uri)
    except (QinfraError, OSError, ValueError):
        return None
    answers = report.metrics.get("answers") if isinstance(report.metrics, dict) else None
    line = f"gate: {report.verdict.value.upper()} ({report.quantized.format} vs " \
           f"{report.baseline.format})"
    if isinstance(answers, dict):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            line += f"; answers: {summary(answers)}"
    return line
