"""Two runs side by side: per latency metric, B's mean minus A's with a bootstrap 95%
confidence interval over the per-request samples, and a plain verdict.

Requests are resampled whole (a request's ITL gaps travel together), 2,000 times with a fixed
seed, and the interval is the 2.5th to 97.5th percentile of the resampled differences (the
percentile bootstrap, Efron & Tibshirani 1993, ch. 13). An interval that excludes zero is a
difference; one that spans zero is "no significant difference". So is a difference under
MIN_EFFECT of A's mean: the bootstrap resamples requests, and cannot see what moves a whole run
by a few percent (CPU clocks, other processes on a shared machine), so two runs of one server
can differ by 3-4% with an interval clear of zero.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from qinfra.quality.bench_stats import percentile
from qinfra.quality.bench_workload import BenchError

RESAMPLES = 2000
CONFIDENCE = 95
SEED = 14
# metric -> the result's per-request array (seconds); itls holds a list per request.
METRICS = {"ttft": "ttfts", "tpot": "tpots", "itl": "itls", "e2el": "e2els"}

# Smallest relative change of a mean called faster or slower (see the module docstring).
MIN_EFFECT = 0.05


class Verdict(StrEnum):
    FASTER = "faster"
    SLOWER = "slower"
    SAME = "no significant difference"


@dataclass(frozen=True)
class MetricComparison:
    """B against A for one metric, in milliseconds; `relative` is the difference over A."""

    metric: str
    a_mean_ms: float
    b_mean_ms: float
    difference_ms: float
    ci_low_ms: float
    ci_high_ms: float
    relative: float
    verdict: Verdict
    a_samples: int
    b_samples: int


def _samples(result: dict[str, Any], key: str) -> list[tuple[float, int]]:
    """(sum of seconds, count) per successful request, so a resampled mean weighs ITL gaps."""
    errors = result.get("errors") or [""] * len(result[key])
    out = []
    for value, error in zip(result[key], errors, strict=False):
        if error or value is None:
            continue
        if isinstance(value, list):
            if value:
                out.append((float(sum(value)), len(value)))
        else:
            out.append((float(value), 1))
    return out


def _mean(samples: Sequence[tuple[float, int]]) -> float:
    count = sum(n for _, n in samples)
    return sum(s for s, _ in samples) / count if count else 0.0


def compare_metric(metric: str, a: Sequence[tuple[float, int]], b: Sequence[tuple[float, int]],
                   resamples: int = RESAMPLES, seed: int = SEED) -> MetricComparison:
    """B's mean minus A's with its percentile-bootstrap interval (both runs resampled)."""
    rng = random.Random(seed)
    diffs = [_mean(rng.choices(b, k=len(b))) - _mean(rng.choices(a, k=len(a)))
             for _ in range(resamples)]
    tail = (100 - CONFIDENCE) / 2
    low, high = percentile(diffs, tail) * 1000, percentile(diffs, 100 - tail) * 1000
    a_mean, b_mean = _mean(a) * 1000, _mean(b) * 1000
    material = a_mean > 0 and abs(b_mean - a_mean) / a_mean >= MIN_EFFECT
    verdict = (Verdict.SAME if not material else
               Verdict.FASTER if high < 0 else Verdict.SLOWER if low > 0 else Verdict.SAME)
    return MetricComparison(metric, a_mean, b_mean, b_mean - a_mean, low, high,
                            (b_mean - a_mean) / a_mean if a_mean else 0.0, verdict,
                            sum(n for _, n in a), sum(n for _, n in b))


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[MetricComparison]:
    """Every latency metric both runs measured. BenchError when one of them has no successful
    request to compare."""
    out = []
    for metric, key in METRICS.items():
        sa, sb = _samples(a, key), _samples(b, key)
        if not sa or not sb:
            if metric in ("ttft", "e2el"):
                raise BenchError(f"nothing to compare: run {'A' if not sa else 'B'} has no "
                                 "successful request")
            continue  # tpot/itl need two output tokens; runs of max_tokens 1 have none
        out.append(compare_metric(metric, sa, sb))
    return out


def to_json(a_label: str, b_label: str, rows: Sequence[MetricComparison]) -> dict[str, Any]:
    return {
        "a": a_label, "b": b_label, "confidence": CONFIDENCE / 100, "resamples": RESAMPLES,
        "method": "percentile bootstrap over requests, difference of means (B - A)",
        "metrics": {r.metric: {k: v for k, v in asdict(r).items() if k != "metric"} for r in rows},
    }


def describe(row: MetricComparison) -> str:
    """`TPOT: B 12.0% faster (-1.20 ms, 95% CI -1.50 to -0.90)`"""
    if row.verdict is Verdict.SAME:
        return (f"{row.metric.upper()}: no significant difference ({row.difference_ms:+.2f} ms, "
                f"95% CI {row.ci_low_ms:+.2f} to {row.ci_high_ms:+.2f})")
    return (f"{row.metric.upper()}: B {abs(row.relative):.1%} {row.verdict} "
            f"({row.difference_ms:+.2f} ms, 95% CI {row.ci_low_ms:+.2f} to {row.ci_high_ms:+.2f})")
