"""Whether a stack may give its quantized variant traffic: a passing gate report, pinned, made
for exactly the artifacts the stack pins. `qinfra up`/`rollout`, the Pulumi program and the
policy pack all ask this one function, so they refuse with the same line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qinfra.core.errors import ArtifactError, SpecError
from qinfra.core.spec import StackSpec, Variant
from qinfra.core.stack_keys import GATE_SKIP

if TYPE_CHECKING:
    from qinfra.quality.gate_report import GateReport

SKIP_FLAG = "--skip-gate"
SKIP_KEY = GATE_SKIP
# The figure each method exists to measure: `qinfra gate` always writes it, so a report without
# it was not made by the gate, and its verdict rests on nothing that can be judged again.
HEADLINE = {"kld": "mean_kld", "online": "prefix_fraction"}


@dataclass(frozen=True)
class GateCheck:
    """The gate's standing for one stack: `problem` is None when traffic may flow. `verdict` is
    the one reached now (the report's figures judged again), not the one the report records."""

    quantized_percent: int
    report_uri: str | None
    verdict: str | None
    problem: str | None
    skipped: bool

    @property
    def refuses(self) -> bool:
        return self.problem is not None and not self.skipped

    def skip_updates(self, spec: StackSpec) -> dict[str, str]:
        """The stack-file edit that records a skip of this refusal (the quantized artifact's
        URI under qinfra:gate.skip), so the skip shows in review and in every later update's
        recorded config; {} when nothing is refused."""
        if not self.refuses or spec.variants.quantized.artifact is None:
            return {}
        return {SKIP_KEY: spec.variants.quantized.artifact}

    def to_props(self) -> dict[str, Any]:
        """What the program records for the policy pack (qinfra:quality:GateEvidence)."""
        return {"quantized_percent": self.quantized_percent, "report_uri": self.report_uri,
                "verdict": self.verdict, "problem": self.problem, "skipped": self.skipped}


def _artifact_id(uri: str | None) -> str | None:
    return uri.rstrip("/").rpartition("/")[2] if uri else None


def check_gate(spec: StackSpec) -> GateCheck:
    """Read the pinned report (if traffic would reach the quantized variant) and say what, if
    anything, stands in the way, with the command that fixes it."""
    from qinfra.quality.gate_report import read_report

    percent = spec.rollout.traffic_percent()[Variant.QUANTIZED]
    quantized = spec.variants.quantized
    uri = quantized.gate
    # a skip names the artifact by URI (as --skip-gate writes it) or by its content id alone
    skipped = spec.gate.skip is not None and _artifact_id(spec.gate.skip) == _artifact_id(
        quantized.artifact)
    fix = f"To fix: run `qinfra gate --stack {spec.name}`"
    skip = f"or pass {SKIP_FLAG} (recorded in the stack file)"
    if percent == 0:
        return GateCheck(percent, uri, None, None, skipped)
    head = f"stack {spec.name} gives the quantized variant {percent}% of traffic, but"
    if uri is None:
        return GateCheck(percent, None, None, f"{head} pins no gate report "
                         f"(qinfra:variants.quantized.gate). {fix}, {skip}", skipped)
    try:
        report = read_report(uri)
    except ArtifactError as exc:
        return GateCheck(percent, uri, None, f"{head} its gate report cannot be used: "
                         f"{exc.message.rstrip('.')}, {skip}", skipped)
    pinned = {v: _artifact_id(spec.variants.of(v).artifact) for v in Variant}
    made_for = {Variant.BASELINE: report.baseline.artifact_id,
                Variant.QUANTIZED: report.quantized.artifact_id}
    stale = [f"{v.value} {made_for[v]} (pinned: {pinned[v]})" for v in Variant
             if made_for[v] != pinned[v]]
    if stale:
        return GateCheck(percent, uri, report.verdict.value, f"{head} its gate report {uri} was "
                         f"made for other artifacts: {'; '.join(stale)}. {fix} again, {skip}",
                         skipped)
    better = (f"To fix: build a better quantized artifact and gate it, lower the stage to "
              f"baseline_only, {skip}")
    if report.verdict.value != "pass":
        why = "; ".join(report.reasons) or "verdict fail"
        return GateCheck(percent, uri, report.verdict.value, f"{head} its gate report {uri} "
                         f"failed ({why}). {better}", skipped)
    failures = rejudge(report, spec)
    if failures:
        return GateCheck(percent, uri, "fail", f"{head} its gate report {uri} records 'pass' but "
                         f"its figures do not clear the bars ({'; '.join(failures)}). {better}",
                         skipped)
    return GateCheck(percent, uri, report.verdict.value, None, skipped)


def rejudge(report: GateReport, spec: StackSpec) -> list[str]:
    """The report's figures judged again against the bars the stack holds now (the shipped table
    with its qinfra:gate overrides): one reason per bar broken, e.g. `mean_kld 2.5 > 0.15
    (acceptance)`. The recorded verdict is never trusted: it may be forged (the report's name
    only proves its bytes, not who wrote them), or stale after the bars were tightened."""
    from qinfra.quality.gate_thresholds import Metric, thresholds_for

    try:
        thresholds = thresholds_for(spec.variants.quantized.format, spec.gate.thresholds())
    except SpecError as exc:
        return [exc.message]
    figures = report.metrics
    headline = HEADLINE.get(report.method.value)
    unjudged = []
    if headline is not None and headline not in figures:
        unjudged.append(f"{headline} is missing (a {report.method.value} report always has it)")
    # null is how a stored report writes a NaN or infinite figure (JSON has none)
    unjudged += [f"{m.value} is null (no finite figure)" for m in Metric
                 if m.value in figures and figures[m.value] is None]
    return [*unjudged, *thresholds.failures(figures)]
