"""The gate's answers pass: the prompt set (with accepted answers where one exists) asked of both
variants at temperature 0, and judged as a person would judge it: how many answers are right on
each side, which flipped (right -> wrong, wrong -> right: Dutta et al., "Accuracy is Not All You
Need", arXiv 2407.09141), and the lesson's output signals per answer (repetition loop, unexpected
refusal, length in tokens; qinfra/serving/router/signals.py, the same detectors the router runs).

A prompt file: one prompt per line; after ` => `, the accepted answers separated by ` | ` (any one,
as whole words, case ignored, makes an answer right); a prompt with no ` => ` is asked and its
signals counted but it has no right answer. Lines starting with `#` are comments.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qinfra.core.errors import ArtifactError, QinfraError, SpecError
from qinfra.serving.router.signals import has_loop, is_refusal, unexpected_refusal

ANSWER_MARK = " => "
ALTERNATIVES = " | "
# The offline pass's answer length: the measurement (64 greedy tokens), long enough for a
# loop to show (3 x 3 words) and for a right answer after a preamble.
ANSWER_TOKENS = 64
TIMEOUT_S = 120.0
PARALLEL = 4
Z95 = 1.959964  # two-sided 95% normal quantile


class EndpointError(QinfraError):
    """A variant's endpoint that did not answer a gate prompt."""


@dataclass(frozen=True)
class PromptItem:
    prompt: str
    accepted: tuple[str, ...] = ()  # empty: no checkable answer

    @property
    def checkable(self) -> bool:
        return bool(self.accepted)


@dataclass(frozen=True)
class Answered:
    """One answer: its text and its completion tokens (the server's usage count)."""

    text: str
    tokens: int


def read_prompt_set(path: Path) -> list[PromptItem]:
    """The prompts of `path` and their accepted answers; SpecError for an empty file or a
    ` => ` with no answer after it."""
    items = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        prompt, mark, answers = line.partition(ANSWER_MARK.strip())
        accepted = tuple(a.strip() for a in answers.split(ALTERNATIVES.strip()) if a.strip())
        if mark and not accepted:
            raise SpecError(f"{path}:{number}: '=>' with no accepted answer after it. To fix: "
                            f"'{prompt.strip()} => ANSWER | OTHER ANSWER', or drop the '=>'")
        items.append(PromptItem(prompt.strip(), accepted))
    if not items:
        raise SpecError(f"{path} holds no prompts. To fix: one prompt per line, optionally "
                        "followed by ' => ' and its accepted answers separated by ' | '")
    return items


def is_right(text: str, accepted: Sequence[str]) -> bool:
    """Whether `text` says one of the accepted answers as whole words (case ignored)."""
    said = f" {_words(text)} "
    return any(f" {_words(a)} " in said for a in accepted if _words(a))


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


def answer(endpoint: str, prompt: str, *, model: str | None, api_key: str | None,
           max_tokens: int) -> Answered:
    """The greedy chat answer of one endpoint (`http://host:port`, with or without /v1).

    Raises EndpointError when it does not answer."""
    base = endpoint.rstrip("/").removesuffix("/v1")
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}],
                            "temperature": 0, "max_tokens": max_tokens, "seed": 0}
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
        text = str(doc["choices"][0]["message"]["content"] or "")
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as exc:
        raise EndpointError(f"{base} did not answer a gate prompt: {exc}. To fix: check the "
                            "variant is running (`qinfra status`) and serves /v1/chat/completions"
                            ) from None
    usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
    tokens = usage.get("completion_tokens")
    return Answered(text, tokens if isinstance(tokens, int) else len(text.split()))


def ask_all(endpoint: str, prompts: Sequence[str], *, model: str | None = None,
            api_key: str | None = None, max_tokens: int = ANSWER_TOKENS) -> list[Answered]:
    """Every prompt's answer from one endpoint, in order (PARALLEL at a time)."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda p: answer(endpoint, p, model=model, api_key=api_key,
                                              max_tokens=max_tokens), prompts))


@dataclass(frozen=True)
class SideFigures:
    """One variant's answers, counted."""

    right: int
    checkable: int
    accuracy: float | None  # right / checkable (None: no checkable prompt)
    loops: int
    loop_rate: float
    refusals: int
    refusal_rate: float
    mean_tokens: float


@dataclass(frozen=True)
class AnswerMetrics:
    prompts: int
    max_tokens: int
    baseline: SideFigures
    quantized: SideFigures
    right_to_wrong: int
    wrong_to_right: int
    accuracy_diff: float | None  # quantized - baseline
    accuracy_diff_ci95: tuple[float, float] | None
    unexpected_refusals: int  # the quantized variant refused where the baseline did not
    answers: tuple[dict[str, Any], ...]  # per prompt: both answers and their judgements

    def judged(self) -> dict[str, float]:
        """What the bars judge: accuracy drop (baseline - quantized), loop-rate excess
        (quantized - baseline), share of prompts refused unexpectedly by the quantized variant."""
        out = {"loop_excess": self.quantized.loop_rate - self.baseline.loop_rate,
               "unexpected_refusal_rate": self.unexpected_refusals / self.prompts}
        if self.accuracy_diff is not None:
            out["accuracy_drop"] = -self.accuracy_diff
        return out

    def evidence(self, metric: str) -> str:
        """The counts behind one judged figure, for a failure's reason."""
        b, q = self.baseline, self.quantized
        if metric == "accuracy_drop":
            return (f"right: baseline {b.right}/{b.checkable}, quantized "
                    f"{q.right}/{q.checkable}; {self.right_to_wrong} right -> wrong, "
                    f"{self.wrong_to_right} wrong -> right")
        if metric == "loop_excess":
            return (f"looping: baseline {b.loops}/{self.prompts}, quantized "
                    f"{q.loops}/{self.prompts}")
        return (f"quantized refused {self.unexpected_refusals}/{self.prompts} prompts the "
                "baseline answered")

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["accuracy_diff_ci95"] = list(self.accuracy_diff_ci95) if self.accuracy_diff_ci95 else None
        doc["answers"] = list(self.answers)
        return doc


def summary(doc: dict[str, Any]) -> str:
    """One line of an AnswerMetrics' JSON: right answers, loops and refusals both sides, flips."""
    b, q = doc["baseline"], doc["quantized"]
    ci = doc.get("accuracy_diff_ci95")
    diff = (f", difference {doc['accuracy_diff']:+.0%} (95% CI {ci[0]:+.0%} to {ci[1]:+.0%})"
            if ci else "")
    return (f"right {b['right']}/{b['checkable']} baseline, {q['right']}/{q['checkable']} "
            f"quantized{diff}; flips {doc['right_to_wrong']} right -> wrong, "
            f"{doc['wrong_to_right']} wrong -> right; loops {b['loops']} vs {q['loops']}, "
            f"refusals {b['refusals']} vs {q['refusals']} of {doc['prompts']}; mean tokens "
            f"{b['mean_tokens']:.0f} vs {q['mean_tokens']:.0f}")


def paired_difference(right_to_wrong: int, wrong_to_right: int, n: int
                      ) -> tuple[float, tuple[float, float]] | None:
    """Accuracy difference (quantized - baseline) of paired right/wrong judgements on the same n
    prompts, and its Wald 95% interval for paired proportions (the variance of the per-prompt
    difference, which only the flips contribute to; McNemar's setting). None when n is 0."""
    if n == 0:
        return None
    diff = (wrong_to_right - right_to_wrong) / n
    flips = right_to_wrong + wrong_to_right
    se = math.sqrt(max(0.0, flips - (wrong_to_right - right_to_wrong) ** 2 / n)) / n
    return diff, (max(-1.0, diff - Z95 * se), min(1.0, diff + Z95 * se))


def _side(answers: Sequence[Answered], items: Sequence[PromptItem]) -> SideFigures:
    checkable = [(a, i) for a, i in zip(answers, items, strict=True) if i.checkable]
    right = sum(is_right(a.text, i.accepted) for a, i in checkable)
    loops = sum(has_loop(a.text) for a in answers)
    refusals = sum(is_refusal(a.text) for a in answers)
    n = len(answers)
    return SideFigures(right, len(checkable), right / len(checkable) if checkable else None,
                       loops, loops / n, refusals, refusals / n,
                       sum(a.tokens for a in answers) / n)


def judge_answers(items: Sequence[PromptItem], baseline: Sequence[Answered],
                  quantized: Sequence[Answered], max_tokens: int) -> AnswerMetrics:
    """Both variants' answers to the same prompts, counted and compared."""
    rows, rw, wr = [], 0, 0
    for item, b, q in zip(items, baseline, quantized, strict=True):
        row: dict[str, Any] = {"prompt": item.prompt, "baseline": b.text, "quantized": q.text,
                               "baseline_loop": has_loop(b.text), "quantized_loop": has_loop(q.text),
                               "unexpected_refusal": unexpected_refusal(q.text, b.text)}
        if item.checkable:
            b_ok, q_ok = is_right(b.text, item.accepted), is_right(q.text, item.accepted)
            rw += b_ok and not q_ok
            wr += q_ok and not b_ok
            row.update(accepted=list(item.accepted), baseline_right=b_ok, quantized_right=q_ok)
        rows.append(row)
    n_checkable = sum(i.checkable for i in items)
    paired = paired_difference(rw, wr, n_checkable)
    return AnswerMetrics(
        prompts=len(items), max_tokens=max_tokens,
        baseline=_side(baseline, items), quantized=_side(quantized, items),
        right_to_wrong=rw, wrong_to_right=wr,
        accuracy_diff=paired[0] if paired else None,
        accuracy_diff_ci95=paired[1] if paired else None,
        unexpected_refusals=sum(r["unexpected_refusal"] for r in rows),
        answers=tuple(rows),
    )


def gguf_answers(model: Path, prompts: Sequence[str], *, max_tokens: int = ANSWER_TOKENS
                 ) -> list[Answered]:
    """Answers of a GGUF file: a llama-server started for the gate on a free loopback port,
    asked every prompt, then stopped. One slot and sequential prompts, so each answer is the
    model's alone (batched slots can shift near-ties between runs).

    Raises ArtifactError when the server does not start, with its log's tail."""
    from qinfra.serving.llamacpp import SERVER, find_binary

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="qinfra-gate-") as folder:
        log = Path(folder) / "llama-server.log"
        argv = [str(find_binary(SERVER)), "-m", str(model), "--host", "127.0.0.1",
                "--port", str(port), "-c", "1024", "-np", "1", "-t", "1", "--no-webui"]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            _wait_ready(proc, f"http://127.0.0.1:{port}", log, model)
            base = f"http://127.0.0.1:{port}"
            return [answer(base, p, model=None, api_key=None, max_tokens=max_tokens)
                    for p in prompts]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path, model: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise ArtifactError(f"llama-server did not start on {model.name} for the gate's answers "
                        f"(exit code {proc.poll()}):\n{tail}")


def cached_answers(cache: Path, key: str) -> list[Answered] | None:
    try:
        doc = json.loads((cache / "gate" / "answers" / f"{key}.json").read_text())
        return [Answered(str(d["text"]), int(d["tokens"])) for d in doc]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keep_answers(cache: Path, key: str, answers: Sequence[Answered]) -> None:
    from qinfra.core.fileio import replacing

    dest = cache / "gate" / "answers" / f"{key}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dest) as tmp:
        tmp.write_text(json.dumps([asdict(a) for a in answers]))
