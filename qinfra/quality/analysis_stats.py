"""The verdict of each check on one window's numbers: pure functions, no I/O.

A check compares the quantized variant with the baseline measured over the same window. Too
few requests or a missing figure is inconclusive, never a pass (Argo Rollouts' rule: an empty
query result needs an explicit condition); rates are judged with a one-sided two-proportion
z-test, so ten requests with one error do not roll back a healthy variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from qinfra.core.analysis_spec import (
    AgreementCheckSpec,
    AnalysisSpec,
    Check,
    LatencyCheckSpec,
    LengthRatioCheckSpec,
    RateCheckSpec,
)
from qinfra.core.spec import Variant


class Verdict(StrEnum):
    """Ordered from best to worst: a window's verdict is the worst of its checks'."""

    PASS = "pass"
    SKIPPED = "skipped"  # nothing to judge by design (no streamed requests, shadowing off)
    INCONCLUSIVE = "inconclusive"
    FAIL = "fail"
    ERROR = "error"  # the metrics could not be read

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Verdict.PASS: 0, Verdict.SKIPPED: 0, Verdict.INCONCLUSIVE: 1, Verdict.FAIL: 2,
         Verdict.ERROR: 3}


@dataclass(frozen=True)
class Figures:
    """One variant's numbers over a window, as read from Prometheus (None: no data)."""

    requests: float | None = None  # answered, any status
    errors: float | None = None  # answered 5xx
    completed: float | None = None  # read to their end (the e2e histogram's count)
    empty: float | None = None
    length: float | None = None  # choices with finish_reason=length
    loops: float | None = None  # completions ending in a repetition loop
    refusals: float | None = None  # completions opening with a refusal
    tokens: float | None = None  # completion tokens of completed requests
    streamed: float | None = None  # the TTFT histogram's count
    e2e_p95_s: float | None = None
    ttft_p95_s: float | None = None


@dataclass(frozen=True)
class Shadow:
    """Shadowed (mirrored) requests over a window."""

    compared: float | None = None
    exact: float | None = None
    prefix_sum: float | None = None
    prefix_count: float | None = None
    similarity_sum: float | None = None
    similarity_count: float | None = None


@dataclass(frozen=True)
class CheckResult:
    check: Check
    verdict: Verdict
    reason: str
    values: dict[str, Any] = field(default_factory=dict)
    threshold: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def counted(self) -> Verdict:
        """What the check counts for: a dry-run check is recorded but always counts as a pass."""
        return Verdict.PASS if self.dry_run else self.verdict

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check.value, "verdict": self.verdict.value, "reason": self.reason,
                "values": self.values, "threshold": self.threshold, "dry_run": self.dry_run}


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def excess_p_value(x_q: float, n_q: float, x_b: float, n_b: float) -> float:
    """One-sided p-value of "the quantized rate x_q/n_q exceeds the baseline's x_b/n_b":
    the pooled two-proportion z-test (1.0 when no variance: both rates 0 or both 1)."""
    p_q, p_b = x_q / n_q, x_b / n_b
    pooled = (x_q + x_b) / (n_q + n_b)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_q + 1.0 / n_b))
    if se == 0.0:
        return 1.0
    return normal_sf((p_q - p_b) / se)


def rate_fails(x_q: float, n_q: float, x_b: float, n_b: float, spec: RateCheckSpec) -> bool:
    """Significantly higher at `alpha`, and higher by more than `max_difference`."""
    excess = x_q / n_q - x_b / n_b
    return excess > spec.max_difference and excess_p_value(x_q, n_q, x_b, n_b) < spec.alpha


def enough(figures: dict[Variant, Figures], min_requests: int) -> str | None:
    """Why the window is too thin to judge, or None when both variants had min_requests."""
    short = [f"{v}: {_n(figures[v].requests)} requests" for v in Variant
             if (figures[v].requests or 0) < min_requests]
    return f"fewer than {min_requests} requests per variant ({', '.join(short)})" if short else None


def _n(x: float | None) -> str:
    return "no data" if x is None else f"{x:.0f}"


def latency(check: Check, figures: dict[Variant, Figures], spec: LatencyCheckSpec,
            thin: str | None) -> CheckResult:
    """p95 ratio quantized / baseline against max_ratio."""
    attr = "e2e_p95_s" if check is Check.E2E_LATENCY else "ttft_p95_s"
    q, b = getattr(figures[Variant.QUANTIZED], attr), getattr(figures[Variant.BASELINE], attr)
    values: dict[str, Any] = {"quantized_p95_s": q, "baseline_p95_s": b}
    threshold = {"max_ratio": spec.max_ratio, "min_baseline_s": spec.min_baseline_s}

    def result(verdict: Verdict, reason: str) -> CheckResult:
        return CheckResult(check, verdict, reason, values, threshold, spec.dry_run)

    if check is Check.TTFT and not any(figures[v].streamed for v in Variant):
        return result(Verdict.SKIPPED, "no streamed requests in the window")
    if thin:
        return result(Verdict.INCONCLUSIVE, thin)
    if q is None or b is None or math.isnan(q) or math.isnan(b):
        return result(Verdict.INCONCLUSIVE, "no latency data for both variants")
    ratio = q / b if b > 0 else (1.0 if q <= 0 else math.inf)
    values["ratio"] = ratio if math.isfinite(ratio) else None
    if max(q, b) < spec.min_baseline_s or ratio <= spec.max_ratio:
        return result(Verdict.PASS, f"p95 ratio {ratio:.2f} <= {spec.max_ratio}")
    return result(Verdict.FAIL, f"p95 {q:.3f} s vs baseline {b:.3f} s: ratio {ratio:.2f} > "
                  f"{spec.max_ratio}")


_RATE_PARTS = {Check.ERROR_RATE: ("errors", "requests"), Check.EMPTY_RATE: ("empty", "completed"),
               Check.LENGTH_RATE: ("length", "completed"), Check.REPETITION_RATE: ("loops", "completed"),
               Check.REFUSAL_RATE: ("refusals", "completed")}
_OUTPUT_SIGNALS = {Check.REPETITION_RATE, Check.REFUSAL_RATE}


def rate(check: Check, figures: dict[Variant, Figures], spec: RateCheckSpec,
         thin: str | None) -> CheckResult:
    """A share of requests compared by the two-proportion test (see `rate_fails`)."""
    part, whole = _RATE_PARTS[check]
    counts = {v: (getattr(figures[v], part), getattr(figures[v], whole)) for v in Variant}
    values: dict[str, Any] = {f"{v}_{name}": x for v in Variant
                              for name, x in zip((part, whole), counts[v], strict=True)}
    threshold = {"max_difference": spec.max_difference, "alpha": spec.alpha}

    def result(verdict: Verdict, reason: str) -> CheckResult:
        return CheckResult(check, verdict, reason, values, threshold, spec.dry_run)

    if thin:
        return result(Verdict.INCONCLUSIVE, thin)
    if check in _OUTPUT_SIGNALS and all(x is None for x, _ in counts.values()):
        # a router before these counters exports no series at all: nothing to judge
        return result(Verdict.SKIPPED, f"no {part} counted by the router")
    if any(x is None or n is None or n <= 0 for x, n in counts.values()):
        return result(Verdict.INCONCLUSIVE, f"no {whole} counted for both variants")
    (x_q, n_q), (x_b, n_b) = counts[Variant.QUANTIZED], counts[Variant.BASELINE]
    x_q, x_b = min(x_q, n_q), min(x_b, n_b)  # increase() extrapolates: keep shares in 0..1
    p_value = excess_p_value(x_q, n_q, x_b, n_b)
    values.update(quantized_rate=x_q / n_q, baseline_rate=x_b / n_b, p_value=p_value)
    shown = f"{x_q / n_q:.1%} vs baseline {x_b / n_b:.1%} (p={p_value:.3g})"
    if rate_fails(x_q, n_q, x_b, n_b, spec):
        return result(Verdict.FAIL, f"{part} {shown}: more than {spec.max_difference:.1%} "
                      f"higher at alpha {spec.alpha}")
    return result(Verdict.PASS, f"{part} {shown}")


def length_ratio(figures: dict[Variant, Figures], spec: LengthRatioCheckSpec,
                 thin: str | None) -> CheckResult:
    """Mean completion tokens per completed request, quantized over baseline, against min_ratio."""
    means: dict[Variant, float | None] = {}
    for v in Variant:
        tokens, completed = figures[v].tokens, figures[v].completed
        means[v] = tokens / completed if tokens is not None and completed else None
    q, b = means[Variant.QUANTIZED], means[Variant.BASELINE]
    values: dict[str, Any] = {"quantized_mean_tokens": q, "baseline_mean_tokens": b}
    threshold = {"min_ratio": spec.min_ratio}

    def result(verdict: Verdict, reason: str) -> CheckResult:
        return CheckResult(Check.LENGTH_RATIO, verdict, reason, values, threshold, spec.dry_run)

    if thin:
        return result(Verdict.INCONCLUSIVE, thin)
    if figures[Variant.QUANTIZED].tokens is None and figures[Variant.BASELINE].tokens is None:
        return result(Verdict.SKIPPED, "no completion tokens reported (engines without usage)")
    if q is None or b is None or b <= 0:
        return result(Verdict.INCONCLUSIVE, "no completion tokens counted for both variants")
    ratio = q / b
    values["ratio"] = ratio
    shown = f"mean tokens {q:.1f} vs baseline {b:.1f}: ratio {ratio:.2f}"
    if ratio < spec.min_ratio:
        return result(Verdict.FAIL, f"{shown} < {spec.min_ratio}")
    return result(Verdict.PASS, f"{shown} >= {spec.min_ratio}")


def agreement(shadow: Shadow, spec: AgreementCheckSpec, shadowing: bool) -> CheckResult:
    """Exact-match share and mean similarity of the compared mirrors."""
    values: dict[str, Any] = {"compared": shadow.compared, "exact": shadow.exact}
    threshold = {"min_exact_match": spec.min_exact_match,
                 "min_prefix_fraction": spec.min_prefix_fraction,
                 "min_similarity": spec.min_similarity, "min_compared": spec.min_compared}

    def result(verdict: Verdict, reason: str) -> CheckResult:
        return CheckResult(Check.SHADOW_AGREEMENT, verdict, reason, values, threshold,
                           spec.dry_run)

    if not shadowing:
        return result(Verdict.SKIPPED, "shadowing is off (qinfra:router.shadow_percent 0)")
    compared = shadow.compared or 0.0
    if compared < spec.min_compared or not shadow.similarity_count or not shadow.prefix_count:
        return result(Verdict.INCONCLUSIVE, f"{compared:.0f} compared mirrors, fewer than "
                      f"{spec.min_compared}")
    exact = min(1.0, (shadow.exact or 0.0) / compared)
    prefix = (shadow.prefix_sum or 0.0) / shadow.prefix_count
    similarity = (shadow.similarity_sum or 0.0) / shadow.similarity_count
    values.update(exact_match=exact, prefix_fraction=prefix, similarity=similarity)
    shown = f"exact match {exact:.1%}, common prefix {prefix:.2f}, similarity {similarity:.2f}"
    if (exact < spec.min_exact_match or prefix < spec.min_prefix_fraction
            or similarity < spec.min_similarity):
        return result(Verdict.FAIL, f"{shown} (min {spec.min_exact_match:.1%}, "
                      f"{spec.min_prefix_fraction:.2f}, {spec.min_similarity:.2f})")
    return result(Verdict.PASS, shown)


def judge(figures: dict[Variant, Figures], shadow: Shadow, spec: AnalysisSpec,
          shadowing: bool) -> list[CheckResult]:
    """Every enabled check on one window's figures, in `Check` order."""
    thin = enough(figures, spec.min_requests)
    out: list[CheckResult] = []
    for check in Check:
        settings = spec.checks.of(check)
        if not settings.enabled:
            continue
        if isinstance(settings, LatencyCheckSpec):
            out.append(latency(check, figures, settings, thin))
        elif isinstance(settings, RateCheckSpec):
            out.append(rate(check, figures, settings, thin))
        elif isinstance(settings, LengthRatioCheckSpec):
            out.append(length_ratio(figures, settings, thin))
        else:
            out.append(agreement(shadow, settings, shadowing))
    return out


def window_verdict(results: list[CheckResult]) -> Verdict:
    """The worst counted verdict of the checks (a window with none passes)."""
    counted = [r.counted for r in results] or [Verdict.PASS]
    worst = max(counted, key=lambda v: v.rank)
    return Verdict.PASS if worst is Verdict.SKIPPED else worst
