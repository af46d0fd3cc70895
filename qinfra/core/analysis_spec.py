"""`qinfra:analysis`: how `qinfra rollout --auto` judges the quantized variant against the
baseline serving beside it, window by window, from the router's Prometheus metrics.

The semantics follow Argo Rollouts' AnalysisTemplate where it has them (failureLimit,
inconclusiveLimit, consecutiveErrorLimit, dryRun; ../shared/reference/measure-and-control.md):
no data or too few requests is inconclusive, never a pass.
"""

from __future__ import annotations

import itertools
import math
from enum import StrEnum
from typing import Any, Self

from pydantic import Field, field_validator, model_validator

from qinfra.core.spec_problems import FieldError
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
    REPETITION_RATE = "repetition_rate"
    REFUSAL_RATE = "refusal_rate"
    LENGTH_RATIO = "length_ratio"


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


class LengthRatioCheckSpec(_Model):
    """Mean completion tokens of the quantized variant's answers over the baseline's in the same
    window: a drop means truncated or degenerate answers. The lesson's automatic-rollback
    controller (shared/reference/lesson-deploying-quantized-models.txt) rolls back below 60%."""

    enabled: bool = Field(True, description="Evaluate this check.")
    dry_run: bool = Field(False, description="Evaluate and record, but never fail or hold.")
    min_ratio: Number = Field(0.6, ge=0.0, le=1.0, description="Smallest allowed ratio of mean "
                              "completion tokens, quantized / baseline (the lesson's 0.6).")


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
    # The lesson's monitor alerts on a repetition or refusal rate 0.05 above the baseline's, and
    # calls a 5-10 point rise in refusals worth a rollback (shared/reference/lesson-deploying-
    # quantized-models.txt, "Monitoring Quantization Quality Drift"; its Q&A on thresholds).
    repetition_rate: RateCheckSpec = Field(
        default_factory=lambda: RateCheckSpec(max_difference=0.05),
        description="Share of completions ending in a repetition loop (router counter "
        "qinfra_router_repetition_loops_total).")
    refusal_rate: RateCheckSpec = Field(
        default_factory=lambda: RateCheckSpec(max_difference=0.05),
        description="Share of completions opening with a refusal phrase (router counter "
        "qinfra_router_refusals_total): an excess over the baseline's is unexpected refusals.")
    length_ratio: LengthRatioCheckSpec = Field(default_factory=LengthRatioCheckSpec,
                                               description="Mean completion tokens, quantized "
                                               "over baseline.")

    def of(self, check: Check) -> (LatencyCheckSpec | RateCheckSpec | AgreementCheckSpec
                                   | LengthRatioCheckSpec):
        spec: LatencyCheckSpec | RateCheckSpec | AgreementCheckSpec | LengthRatioCheckSpec = (
            getattr(self, check.value))
        return spec


DEFAULT_SCRAPE_S = 5.0  # Prometheus' common 5-15 s; short enough for one-minute windows
MIN_SCRAPE_S = 0.5
WINDOW_DEFAULT_S = 60.0


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
    scrape_interval_s: Number = Field(DEFAULT_SCRAPE_S, ge=MIN_SCRAPE_S, le=300, description="How "
                                      "often Prometheus scrapes the router: the local target's "
                                      "own, and the job `qinfra render --what scrape-config` "
                                      "writes. Unset: 5, or a third of a shorter interval_s; a "
                                      "window must hold two scrapes (interval_s >= 2 x this).")
    initial_delay_s: Number = Field(30.0, ge=0, le=86_400, description="Seconds after a step's "
                                    "apply before its first window starts.")
    interval_s: Number = Field(WINDOW_DEFAULT_S, ge=1, le=86_400,
                               description="Length of one analysis window.")
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

    # A window must hold two scrapes: every figure is an increase() or rate() over the window,
    # evaluated at its end, and Prometheus needs two samples inside the range to give one. The
    # range (end - interval_s, end] holds floor(interval_s / scrape_interval_s) samples at the
    # least, so interval_s >= 2 x scrape_interval_s is the bar. The read slack after a window
    # (rollout --auto waits a scrape and a little more) only lets the last scrape land; the
    # query still ends at the window's end, so the slack adds no sample to the window.
    # Both ways out, chosen by what the user wrote: a scrape interval left unset follows the
    # window (a user who wrote only `interval_s: 5` asked for 5 s windows, not 5 s scrapes);
    # one set by hand is kept and a window too short for it is refused, since it may also be
    # what a Prometheus outside qinfra scrapes at, which qinfra cannot change.
    @model_validator(mode="before")
    @classmethod
    def _scrape_follows_window(cls, data: Any) -> Any:
        """Unset scrape_interval_s: DEFAULT_SCRAPE_S, or a third of a shorter window (three
        scrapes a window: two even when a scrape lands late), never under the 0.5 s floor."""
        if not isinstance(data, dict) or "scrape_interval_s" in data:
            return data
        window = data.get("interval_s", WINDOW_DEFAULT_S)
        if isinstance(window, bool) or not isinstance(window, int | float) or not math.isfinite(window):
            return data  # the field's own validation names the bad value
        return {**data, "scrape_interval_s": min(DEFAULT_SCRAPE_S, max(MIN_SCRAPE_S, window / 3))}

    @model_validator(mode="after")
    def _window_holds_two_scrapes(self) -> Self:
        """Refuse a window that cannot hold two scrapes: every window would be inconclusive."""
        scrape, window = self.scrape_interval_s, self.interval_s
        if window < 2 * scrape:
            raise FieldError(("interval_s",), window, (
                f"at least 2 x qinfra:analysis.scrape_interval_s ({scrape:g}) = {2 * scrape:g}: "
                f"Prometheus' increase() needs two scrapes inside a window, so every {window:g} s "
                f"window would see no data and be inconclusive. To fix: set interval_s to "
                f"{2 * scrape:g} or more, or scrape_interval_s to {max(window / 2, MIN_SCRAPE_S):g} "
                "or less (or remove scrape_interval_s: it then follows the window)"))
        return self


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
