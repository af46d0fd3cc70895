"""The analysis' statistics on synthetic samples with known answers: the two-proportion test's
p-value, its exact false-alarm rate and power at the default min_requests (enumerated over the
binomial distribution, no sampling noise), the latency ratio, and Argo's counting of windows."""

from __future__ import annotations

from math import comb

import pytest

from qinfra.core.analysis_spec import AnalysisSpec, Check, RateCheckSpec
from qinfra.core.spec import Variant
from qinfra.quality.analysis import StepOutcome, StepTally, variant_queries
from qinfra.quality.analysis_stats import (
    Figures,
    Shadow,
    Verdict,
    excess_p_value,
    judge,
    rate_fails,
    window_verdict,
)

N = AnalysisSpec().min_requests  # the default per-variant requests of a window


def _pmf(n: int, p: float) -> list[float]:
    return [comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]


def fail_probability(n: int, p_baseline: float, p_quantized: float) -> float:
    """P(the default error-rate check fails a window) when the true rates are as given: the
    sum over every pair of error counts the test rejects."""
    spec = RateCheckSpec()
    b, q = _pmf(n, p_baseline), _pmf(n, p_quantized)
    return sum(b[i] * q[j] for i in range(n + 1) for j in range(n + 1)
               if b[i] * q[j] > 1e-15 and rate_fails(j, n, i, n, spec))


def test_p_value_matches_the_pooled_z_test_by_hand():
    # 10/100 vs 2/100: pooled 0.06, se sqrt(0.06 * 0.94 * 0.02) = 0.033586, z = 2.3820
    assert excess_p_value(10, 100, 2, 100) == pytest.approx(0.008610, abs=1e-6)
    assert excess_p_value(0, 100, 0, 100) == 1.0  # no variance: nothing to reject
    assert excess_p_value(2, 100, 10, 100) > 0.99  # one-sided: lower is never an excess


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
def test_false_alarm_rate_stays_under_alpha_when_rates_are_equal(rate):
    assert fail_probability(N, rate, rate) <= RateCheckSpec().alpha


@pytest.mark.parametrize(("baseline", "quantized", "at_least"), [
    (0.01, 0.15, 0.95),  # a 14-point jump is caught in almost every window
    (0.0, 0.10, 0.90),   # errors where there were none
    (0.02, 0.20, 0.98),
    (0.01, 1.0, 0.999),  # a dead engine: every window
    (0.01, 0.10, 0.70),  # 9 points: most windows; failure_limit 0 acts on the first
])
def test_power_against_real_regressions(baseline, quantized, at_least):
    assert fail_probability(N, baseline, quantized) >= at_least


def test_a_small_excess_is_not_a_failure_even_if_significant():
    # 3% vs 0% on 10,000 requests is significant, but within max_difference 0.05
    spec = RateCheckSpec(max_difference=0.05)
    assert not rate_fails(300, 10_000, 0, 10_000, spec)
    assert rate_fails(600, 10_000, 0, 10_000, spec)


def _figures(requests: float, errors: float = 0, p95: float = 0.1) -> Figures:
    return Figures(requests=requests, errors=errors, completed=requests - errors, empty=0,
                   length=0, streamed=0, e2e_p95_s=p95, ttft_p95_s=None)


def _by_check(figures: dict[Variant, Figures], spec: AnalysisSpec | None = None) -> dict:
    results = judge(figures, Shadow(), spec or AnalysisSpec(), shadowing=False)
    return {r.check: r for r in results}


def test_too_few_requests_is_inconclusive_never_a_pass():
    got = _by_check({Variant.BASELINE: _figures(500), Variant.QUANTIZED: _figures(99)})
    assert got[Check.ERROR_RATE].verdict is Verdict.INCONCLUSIVE
    assert got[Check.E2E_LATENCY].verdict is Verdict.INCONCLUSIVE
    assert got[Check.TTFT].verdict is Verdict.SKIPPED  # no streamed requests at all
    assert got[Check.SHADOW_AGREEMENT].verdict is Verdict.SKIPPED  # shadowing off
    assert window_verdict(list(got.values())) is Verdict.INCONCLUSIVE


def test_latency_ratio_and_errors_judged_against_their_limits():
    healthy = _by_check({Variant.BASELINE: _figures(200, 1, 0.10),
                         Variant.QUANTIZED: _figures(200, 2, 0.14)})
    assert healthy[Check.E2E_LATENCY].verdict is Verdict.PASS
    assert healthy[Check.E2E_LATENCY].values["ratio"] == pytest.approx(1.4)
    assert window_verdict(list(healthy.values())) is Verdict.PASS
    slow = _by_check({Variant.BASELINE: _figures(200, 0, 0.10),
                      Variant.QUANTIZED: _figures(200, 0, 0.16)})
    assert slow[Check.E2E_LATENCY].verdict is Verdict.FAIL
    broken = _by_check({Variant.BASELINE: _figures(200, 0), Variant.QUANTIZED: _figures(200, 60)})
    assert broken[Check.ERROR_RATE].verdict is Verdict.FAIL
    assert broken[Check.ERROR_RATE].values["quantized_rate"] == pytest.approx(0.3)


def test_a_dry_run_check_is_recorded_but_counts_as_a_pass():
    spec = AnalysisSpec.model_validate({"checks": {"e2e_latency": {"dry_run": True}}})
    slow = _by_check({Variant.BASELINE: _figures(200, 0, 0.10),
                      Variant.QUANTIZED: _figures(200, 0, 0.50)}, spec)
    assert slow[Check.E2E_LATENCY].verdict is Verdict.FAIL
    assert window_verdict(list(slow.values())) is Verdict.PASS


@pytest.mark.parametrize(("prefix", "verdict"), [
    (0.35, Verdict.PASS),  # SmolLM2 Q4_K_M against its F16 (gate_thresholds.toml [S4])
    (0.18, Verdict.FAIL),  # its Q2_K
])
def test_agreement_judged_by_the_common_prefix(prefix, verdict):
    shadow = Shadow(compared=20, exact=1, prefix_sum=prefix * 20, prefix_count=20,
                    similarity_sum=6.0, similarity_count=20)
    figures = {v: _figures(200) for v in Variant}
    got = {r.check: r for r in judge(figures, shadow, AnalysisSpec(), shadowing=True)}
    assert got[Check.SHADOW_AGREEMENT].verdict is verdict
    assert got[Check.SHADOW_AGREEMENT].values["prefix_fraction"] == pytest.approx(prefix)
    few = Shadow(compared=4, exact=0, prefix_sum=0, prefix_count=4, similarity_sum=0,
                 similarity_count=4)
    thin = {r.check: r for r in judge(figures, few, AnalysisSpec(), shadowing=True)}
    assert thin[Check.SHADOW_AGREEMENT].verdict is Verdict.INCONCLUSIVE  # min_compared 5


@pytest.mark.parametrize(("limits", "verdicts", "outcome"), [
    ({"windows": 2}, ["pass", "pass"], StepOutcome.PROMOTE),
    ({"windows": 2}, ["pass", "fail"], StepOutcome.ROLLBACK),  # failure_limit 0: the first
    ({"failure_limit": 1, "windows": 3}, ["fail", "pass", "fail"], StepOutcome.ROLLBACK),
    ({"inconclusive_limit": 1, "windows": 3}, ["inconclusive", "pass", "inconclusive"],
     StepOutcome.HOLD),
    ({"inconclusive_limit": 1, "windows": 2}, ["inconclusive", "pass", "pass"],
     StepOutcome.PROMOTE),  # an inconclusive window never counts as a pass
    ({"error_limit": 1, "windows": 3}, ["error", "pass", "error", "error"], StepOutcome.ROLLBACK),
])
def test_windows_counted_as_argo_counts_measurements(limits, verdicts, outcome):
    tally = StepTally(AnalysisSpec.model_validate(limits))
    got = [tally.add(Verdict(v)) for v in verdicts]
    assert got[-1] is outcome
    assert all(g is None for g in got[:-1])


def test_queries_name_the_variant_and_the_window():
    queries = variant_queries(Variant.QUANTIZED, 2.5)
    assert 'variant="quantized"' in queries["errors"] and "[2500ms]" in queries["errors"]
    assert 'code=~"5.."' in queries["errors"]
    assert queries["e2e_p95_s"].startswith("histogram_quantile(0.95,")
