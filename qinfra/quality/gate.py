"""`qinfra gate`'s front door: find the two models' files, run the method that fits their formats,
judge the figures against the thresholds, and keep the report where the stack pins it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from qinfra.core.artifact_uri import parse_artifact_uri
from qinfra.core.errors import ArtifactError, SpecError
from qinfra.core.formats import Format, FormatKind, format_info
from qinfra.core.spec import StackSpec, Variant
from qinfra.quality.gate_answers import AnswerMetrics
from qinfra.quality.gate_kld import PERPLEXITY, baseline_logits, kl_divergence, logits_path
from qinfra.quality.gate_report import GateReport, Method, Subject, Verdict, write_report
from qinfra.quality.gate_thresholds import Thresholds, thresholds_for

TEXT = "gate_text.txt"  # shipped evaluation text (data/gate_text.source.md: origin, licence)


@dataclass(frozen=True)
class Resolved:
    """A model to measure: what the report says about it, and the local GGUF file to read."""

    subject: Subject
    path: Path


@dataclass(frozen=True)
class GateResult:
    report: GateReport
    report_uri: str
    baseline_logits_cached: bool

    def to_json(self) -> dict[str, Any]:
        """The JSON view: verdict, method, metrics, thresholds, report_uri and the evidence;
        per variant its answers' `accuracy`, `loops`, `refusals`, `mean_tokens`, and the
        `flips` between them (when the answers pass ran)."""
        doc = self.report.to_json()
        sides = {"baseline": doc["baseline"], "quantized": doc["quantized"]}
        answers = doc["metrics"].get("answers")
        flips = None
        if answers:
            for side in sides:
                figures = answers[side]
                sides[side] = {**sides[side], "accuracy": figures["accuracy"],
                               "right": figures["right"], "checkable": figures["checkable"],
                               "loops": figures["loops"], "refusals": figures["refusals"],
                               "mean_tokens": figures["mean_tokens"]}
            flips = {"right_to_wrong": answers["right_to_wrong"],
                     "wrong_to_right": answers["wrong_to_right"],
                     "accuracy_diff": answers["accuracy_diff"],
                     "accuracy_diff_ci95": answers["accuracy_diff_ci95"]}
        return {
            "verdict": doc["verdict"], "method": doc["method"], "metrics": doc["metrics"],
            "thresholds": doc["thresholds"], "report_uri": self.report_uri,
            "reasons": doc["reasons"], **sides, "flips": flips,
            "input_sha256": doc["input_sha256"], "tool": doc["tool"],
            "baseline_logits_cached": self.baseline_logits_cached,
        }


def shipped_text() -> Path:
    return Path(str(resources.files("qinfra.quality").joinpath("data", TEXT)))


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def gguf_format(path: Path) -> Format:
    """The qinfra format of a GGUF file, from its `general.file_type` (llama.cpp's LlamaFileType).

    Raises SpecError when the file is no GGUF or its type is not one qinfra knows.
    """
    from gguf import GGUFReader, LlamaFileType

    try:
        field = GGUFReader(str(path)).fields.get("general.file_type")
    except (ValueError, OSError) as exc:
        raise SpecError(f"{path} is not a GGUF file ({exc}). To fix: give a .gguf file") from None
    if field is None:
        raise SpecError(f"{path} records no general.file_type. To fix: pass --format")
    name = LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_").lower()
    try:
        return Format(f"gguf-{name}")
    except ValueError:
        known = ", ".join(f.value for f in Format if format_info(f).is_gguf)
        raise SpecError(f"{path} is GGUF type {name.upper()}, which qinfra does not gate. "
                        f"Known: {known}") from None


def resolve(source: str, fmt: Format | None, *, need: FormatKind) -> Resolved:
    """A local GGUF file, or a pushed artifact in a file:// store (checked against its manifest
    first, so the gate measures exactly what would be served).

    Raises ArtifactError when the source is neither or holds no single GGUF file, SpecError
    when its format is not of the `need` kind.
    """
    try:
        parsed = parse_artifact_uri(source)
    except ValueError:
        parsed = None
    if parsed is not None:
        path, sha256 = _artifact_gguf(str(parsed))
        artifact_id: str | None = parsed.artifact_id
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ArtifactError(f"'{source}' is neither a file nor an artifact URI "
                                "(<store>/sha256-<hex>/). To fix: give a .gguf path or a pin")
        sha256, artifact_id = file_sha256(path), None
    fmt = fmt or gguf_format(path)
    if format_info(fmt).kind is not need:
        raise SpecError(f"{source} is {fmt.value}, not a {need.value} format. To fix: give the "
                        f"{need.value} model there")
    return Resolved(Subject(source, artifact_id, sha256, fmt.value), path)


def _artifact_gguf(uri: str) -> tuple[Path, str]:
    from qinfra.artifacts.fetch import project_hash_cache
    from qinfra.artifacts.filestore import FileStore
    from qinfra.artifacts.verify import verify_before_serving

    manifest = verify_before_serving(uri, project_hash_cache())
    ggufs = [e for e in manifest.files if e.path.endswith(".gguf")]
    if len(ggufs) != 1:
        raise ArtifactError(f"{uri} holds {len(ggufs)} .gguf files; the offline gate measures "
                            "one. To fix: gate a single-file GGUF artifact")
    parsed = parse_artifact_uri(uri)
    return FileStore(parsed.store).root / parsed.artifact_id / ggufs[0].path, ggufs[0].sha256


def judged_reasons(thresholds: Thresholds, judged: Mapping[str, float],
                   answers: AnswerMetrics | None) -> list[str]:
    """The bars' failures; one on an answers figure names the answers' counts too."""
    reasons = thresholds.failures(judged)
    if answers is None:
        return reasons
    return [f"answers: {r}: {answers.evidence(r.split(' ', 1)[0])}"
            if r.split(" ", 1)[0] in answers.judged() else r for r in reasons]


def offline_answers(baseline: Resolved, quantized: Resolved, prompts: Path, cache: Path,
                    tool: str) -> AnswerMetrics:
    """The answers pass on two GGUF files: each served by a llama-server started for the gate
    (the baseline's answers cached per baseline, prompt set, answer length and llama.cpp build)."""
    from qinfra.quality.gate_answers import (
        ANSWER_TOKENS,
        cached_answers,
        gguf_answers,
        judge_answers,
        keep_answers,
        read_prompt_set,
    )

    items = read_prompt_set(prompts)
    asked = [i.prompt for i in items]
    base_id = baseline.subject.artifact_id or f"sha256-{baseline.subject.sha256}"
    key = (f"{base_id}-prompts-{file_sha256(prompts)[:16]}-t{ANSWER_TOKENS}-"
           f"{hashlib.sha256(tool.encode()).hexdigest()[:12]}")
    base_answers = cached_answers(cache, key)
    if base_answers is None or len(base_answers) != len(items):
        base_answers = gguf_answers(baseline.path, asked)
        keep_answers(cache, key, base_answers)
    return judge_answers(items, base_answers, gguf_answers(quantized.path, asked), ANSWER_TOKENS)


def gate_offline(baseline: Resolved, quantized: Resolved, thresholds: Thresholds, *,
                 text: Path | None, cache: Path, prompts: Path | None = None
                 ) -> tuple[GateReport, bool]:
    """Run llama-perplexity (baseline logits cached per baseline id and text hash) and the
    answers pass on the prompt set, judge the figures; the report and whether the baseline's
    logits came from the cache."""
    from qinfra.quality.gate_online import shipped_prompts
    from qinfra.serving.llamacpp import server_version

    text = text or shipped_text()
    prompts = prompts or shipped_prompts()
    text_sha = file_sha256(text)
    base_id = baseline.subject.artifact_id or f"sha256-{baseline.subject.sha256}"
    logits = logits_path(cache, base_id, text_sha)
    cached = not baseline_logits(baseline.path, text, logits)
    metrics = kl_divergence(quantized.path, text, logits)
    tool = server_version()
    bad = metrics.non_finite()
    # NaN or infinite figures come from NaN or infinite logits: nothing such a file answers can
    # be trusted, so the answers pass is not run on it
    answers = None if bad else offline_answers(baseline, quantized, prompts, cache, tool)
    judged = {**metrics.judged(), **(answers.judged() if answers else {})}
    reasons = judged_reasons(thresholds, judged, answers)
    if bad:
        # whatever the bars say of the figures that stayed finite
        reasons.insert(0, f"{PERPLEXITY} found non-finite figures ({', '.join(bad)}): the "
                          f"quantized model {quantized.path.name} gives NaN or infinite logits "
                          "(a corrupted or broken file)")
    figures = metrics.to_json()
    if answers is not None:
        figures.update(answers.judged(), answers=answers.to_json())
    report = GateReport(
        method=Method.KLD,
        verdict=Verdict.FAIL if reasons else Verdict.PASS,
        baseline=baseline.subject,
        quantized=quantized.subject,
        input_sha256=text_sha,
        thresholds=thresholds.to_json(),
        metrics=figures,
        reasons=tuple(reasons),
        tool=tool,
        extra={"prompts_sha256": file_sha256(prompts)} if answers is not None else {},
    )
    return report, cached


def run_gate(baseline: str, quantized: str, *, store: str | None, cache: Path,
             text: Path | None = None, formats: tuple[Format | None, Format | None] = (None, None),
             overrides: Mapping[str, Any] | None = None, prompts: Path | None = None) -> GateResult:
    """The offline gate on two GGUF models (paths or artifact URIs): KLD over `text` and the
    answers pass over `prompts` (default: the shipped sets); the report is written to `store`
    (the quantized artifact's, for a stack) or to the local cache's report store."""
    base = resolve(baseline, formats[0], need=FormatKind.BASELINE)
    quant = resolve(quantized, formats[1], need=FormatKind.QUANTIZED)
    for side in (base, quant):
        if not format_info(Format(str(side.subject.format))).is_gguf:
            raise SpecError(f"{side.subject.source} is {side.subject.format}: the offline gate "
                            "reads GGUF files. To fix: use the online method (a running stack)")
    thresholds = thresholds_for(Format(str(quant.subject.format)), overrides)
    report, cached = gate_offline(base, quant, thresholds, text=text, cache=cache, prompts=prompts)
    where = store or (cache / "gate" / "reports").as_uri()
    return GateResult(report, write_report(report, where), cached)


def run_online_gate(spec: StackSpec, endpoints: Mapping[Variant, str], *, store: str,
                    prompts: Path | None = None,
                    overrides: Mapping[str, Any] | None = None,
                    api_key: str | None = None) -> GateResult:
    """The online gate: the prompts to both variants' running endpoints, their agreement and
    their answers judged, and stored. `api_key`: the stack's qinfra:api_key, which the engines
    ask of every request."""
    from qinfra.quality.gate_answers import judge_answers, read_prompt_set
    from qinfra.quality.gate_online import MAX_TOKENS, ask_both, shipped_prompts

    prompts = prompts or shipped_prompts()
    quant_fmt = spec.variants.quantized.format
    thresholds = thresholds_for(quant_fmt, overrides)
    items = read_prompt_set(prompts)
    metrics, base_answers, quant_answers = ask_both(
        endpoints[Variant.BASELINE], endpoints[Variant.QUANTIZED], [i.prompt for i in items],
        model=spec.model.served_name, api_key=api_key)
    answers = judge_answers(items, base_answers, quant_answers, MAX_TOKENS)
    reasons = judged_reasons(thresholds, {**metrics.judged(), **answers.judged()}, answers)

    def subject(v: Variant) -> Subject:
        pinned = spec.variants.of(v).artifact
        artifact_id = pinned.rstrip("/").rpartition("/")[2] if pinned else None
        return Subject(endpoints[v], artifact_id, None, spec.variants.of(v).format.value)

    report = GateReport(
        method=Method.ONLINE,
        verdict=Verdict.FAIL if reasons else Verdict.PASS,
        baseline=subject(Variant.BASELINE),
        quantized=subject(Variant.QUANTIZED),
        input_sha256=file_sha256(prompts),
        thresholds=thresholds.to_json(),
        metrics={**metrics.to_json(), **answers.judged(), "answers": answers.to_json()},
        reasons=tuple(reasons),
    )
    return GateResult(report, write_report(report, store), False)
