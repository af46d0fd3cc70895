"""`qinfra:analysis`: how `qinfra rollout --auto` judges the quantized variant against the
baseline serving beside it, window by window, from the router's Prometheus metrics.

The semantics follow Argo Rollouts' AnalysisTemplate where it has them (failureLimit,
inconclusiveLimit, consecutiveErrorLimit, dryRun; ../shared/reference/measure-and-control.md):
no data or too few requests is inconclusive, never a pass.
"""

from __future__ import annotations

import itertools
from enum import StrEnum

from pydantic import Field, field_validator

from qinfra.core.spec_types import Number, Whole
from qinfra.core.spec_types import SpecModel as _Model


class Check(StrEnum):
    """The comparisons of the quantized variant with the baseline; the order they are shown in."""

    E2E_LATENCY = "e2e_latency"
    TTFT = "ttft"
    ERROR_RATE = "error_rate"
    EMPTY_RATE = "empty_rate"
    LENGTH_RATE = "length_rate"
    SHADOW_AGREEMENT = "shadow_agreement"




class LatencyCheckSpec(_Model):
    """A p95 latency of the quantized variant over the baseline's in the same window."""

    enabled: bool = Field(True, description="Evaluate this check.")
    dry_run: bool = Field(False, description="Evaluate and record, but never fail or hold.")
    max_ratio: Number = Field(1.5, ge=1.0, le=100.0, description="Largest allowed p95 ratio "
                              "quantized / baseline.")
    min_baseline_s: Number = Field(0.0, ge=0.0, description="Ratios of latencies under this "
                                   "many seconds pass (noise of very fast answers).")


class RateCheckSpec(_Model):
    """A share of requests (errors, empty completions, cut at max_tokens) that the quantized
    variant may exceed the baseline's by: one-sided two-proportion z-test at `alpha`, failing
    only when the excess is also larger than `max_difference` (statistically and practically)."""

    enabled: bool = Field(True, description="Evaluate this check.")
    dry_run: bool = Field(False, description="Evaluate and record, but never fail or hold.")
    max_difference: Number = Field(0.02, ge=0.0, le=1.0, description="Largest allowed excess "
                                   "of the quantized rate over the baseline's (0.02: 2 points).")
    alpha: Number = Field(0.01, gt=0.0, lt=0.5, description="False-alarm rate of the one-sided "
                          "test per window when both rates are equal.")


class AgreementCheckSpec(_Model):
    """Shadowed requests (qinfra:router.shadow_percent): the share answered exactly as the
    baseline answered, and their mean similarity."""

    enabled: bool = Field(True, description="Evaluate this check (needs shadowing on).")
    dry_run: bool = Field(False, description="Evaluate and record, but never fail or hold.")
    min_exact_match: Number = Field(0.0, ge=0.0, le=1.0, description="Smallest share of "
                                    "compared mirrors answered identically.")
    # The gate's online bar (quality/data/gate_thresholds.toml [S4]): SmolLM2 Q4_K_M keeps a
    # mean common prefix of 0.35 against its F16 on 32-token greedy answers, Q2_K 0.18.
    min_prefix_fraction: Number = Field(0.25, ge=0.0, le=1.0, description="Smallest mean "
                                        "share of the longer answer both answers start with.")
    min_similarity: Number = Field(0.0, ge=0.0, le=1.0, description="Smallest mean difflib "
                                   "ratio of the two answers (0: not judged).")
    min_compared: Whole = Field(5, ge=1, description="Compared mirrors a window needs to judge.")


class ChecksSpec(_Model):
    e2e_latency: LatencyCheckSpec = Field(default_factory=LatencyCheckSpec,
                                          description="p95 end-to-end latency ratio.")
    ttft: LatencyCheckSpec = Field(default_factory=LatencyCheckSpec, description="p95 time to "
                                   "first token ratio (streamed requests only).")
    error_rate: RateCheckSpec = Field(default_factory=RateCheckSpec, description="Share of "
                                      "requests answered 5xx.")
    empty_rate: RateCheckSpec = Field(default_factory=RateCheckSpec, description="Share of "
                                      "completions with no output.")
    length_rate: RateCheckSpec = Field(
        default_factory=lambda: RateCheckSpec(max_difference=0.1),
        description="Share of choices cut at max_tokens (finish_reason=length).")
    shadow_agreement: AgreementCheckSpec = Field(default_factory=AgreementCheckSpec,
                                                 description="Agreement of shadowed requests.")

    def of(self, check: Check) -> LatencyCheckSpec | RateCheckSpec | AgreementCheckSpec:
        spec: LatencyCheckSpec | RateCheckSpec | AgreementCheckSpec = getattr(self, check.value)
        return spec


class AnalysisSpec(_Model):
    """How each step of an automatic rollout is judged.

    Defaults: interval 60 s is Flagger's; failure_limit 0 and error_limit 4 are Argo's
    failureLimit and consecutiveErrorLimit defaults; inconclusive_limit 2 rather than Argo's 0,
    because a quiet minute should not stop a rollout for a human at once; 100 requests per
    variant is where the error-rate test at alpha 0.01 catches a 1% -> 15% jump in 97% of
    windows (tests/quality/test_analysis_stats.py enumerates it).
    """

    prometheus_url: str | None = Field(None, description="Prometheus HTTP API holding the "
                                       "router's metrics; target local: default the stack's own "
                                       "Prometheus on qinfra:serving.port + 3.")
    scrape_interval_s: Number = Field(5.0, ge=0.5, le=300, description="How often Prometheus "
                                      "scrapes the router: the local target's own, and the job "
                                      "`qinfra render --what scrape-config` writes.")
    initial_delay_s: Number = Field(30.0, ge=0, le=86_400, description="Seconds after a step's "
                                    "apply before its first window starts.")
    interval_s: Number = Field(60.0, ge=1, le=86_400, description="Length of one analysis window.")
    windows: Whole = Field(3, ge=1, le=1000, description="Passing windows a step needs.")
    min_requests: Whole = Field(100, ge=1, description="Requests per variant a window needs; "
                                "fewer is inconclusive.")
    failure_limit: Whole = Field(0, ge=0, description="Failed windows a step tolerates; one "
                                 "more rolls back.")
    inconclusive_limit: Whole = Field(2, ge=0, description="Inconclusive windows a step "
                                      "tolerates; one more holds the rollout (exit 3).")
    error_limit: Whole = Field(4, ge=0, description="Consecutive windows whose metrics could not "
                               "be read that a step tolerates; one more rolls back.")
    checks: ChecksSpec = Field(default_factory=ChecksSpec, description="The comparisons.")
    scrape_security_group: str | None = Field(
        None, pattern=r"^sg-[0-9a-f]{8}([0-9a-f]{9})?$",
        description="target aws: the security group of the Prometheus that scrapes the routers; "
        "it alone (beside the public load balancer) may reach the routers' port.")

    @field_validator("prometheus_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL of a Prometheus server")
        return v.rstrip("/") if v else v


# The label every scrape job qinfra renders or runs puts on the router's series, naming the stack;
# the analysis' queries match on it (qinfra/serving/scrape.py says why).
QINFRA_STACK_LABEL = "qinfra_stack"
DEFAULT_STEPS = (5, 25, 50, 100)  # Argo's docs walk 20/40/60/80; a 5% canary first is Flagger's


def valid_steps(steps: list[int]) -> list[int]:
    """Rising traffic percentages in 1..100 ending at 100 (what `rollout --auto` walks)."""
    if not steps:
        raise ValueError("must list at least one percentage, e.g. [5, 25, 50, 100]")
    if any(not 1 <= s <= 100 for s in steps):
        raise ValueError("every step must be 1..100")
    if any(a >= b for a, b in itertools.pairwise(steps)):
        raise ValueError("steps must rise, e.g. [5, 25, 50, 100]")
    if steps[-1] != 100:
        raise ValueError("the last step must be 100 (stage full)")
    return steps


__all__ = ["DEFAULT_STEPS", "QINFRA_STACK_LABEL", "AnalysisSpec", "Check", "ChecksSpec", "valid_steps"]
