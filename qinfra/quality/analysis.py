"""One analysis window: the router's metrics per variant read from a Prometheus HTTP API with
PromQL over the window, then judged (analysis_stats) and kept as an auditable record.

Every query is recorded beside its raw value, so a reviewer can rerun it against the same
Prometheus; reading errors are their own verdict (Argo's consecutiveErrorLimit), never a pass.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from qinfra.core.analysis_spec import QINFRA_STACK_LABEL, AnalysisSpec
from qinfra.core.spec import Variant
from qinfra.quality.analysis_stats import (
    CheckResult,
    Figures,
    Shadow,
    Verdict,
    judge,
    window_verdict,
)

PREFIX = "qinfra_router_"  # qinfra/serving/router/metrics.py names every series so
QUERY_TIMEOUT_S = 10.0


class MetricsReadError(Exception):
    """The Prometheus server did not answer a query (down, refused, a bad reply)."""


def _window(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _count(expr: str) -> str:
    """A count over the window; 0 (not nothing) when no series matched."""
    return f"sum({expr}) or vector(0)"


def _stack(stack: str | None) -> str:
    """The matcher on the label every qinfra scrape job sets (qinfra/serving/scrape.py), so a
    Prometheus scraping several stacks, or one router twice, gives one stack's series once."""
    return "" if stack is None else f'{QINFRA_STACK_LABEL}="{stack}"'


def variant_queries(variant: Variant, window_s: float, stack: str | None = None) -> dict[str, str]:
    """PromQL per `Figures` field for one variant over the window ending at the query time
    (`stack`: that stack's series only)."""
    w, v = _window(window_s), ",".join(filter(None, (f'variant="{variant.value}"', _stack(stack))))

    def inc(name: str, extra: str = "") -> str:
        return _count(f"increase({PREFIX}{name}{{{v}{extra}}}[{w}])")

    def p95(name: str) -> str:
        return (f"histogram_quantile(0.95, sum by (le) (rate({PREFIX}{name}_bucket{{{v}}}"
                f"[{w}])))")

    # A request the router failed over (the assigned variant accepted no connection, so another
    # answered) counts for the assigned variant as a request and as an error: a dead engine
    # must fail its variant's error check, not vanish from its traffic.
    failed_over = inc("failovers_total")
    answered, failed = inc("requests_total"), inc("requests_total", ',code=~"5.."')
    return {
        "requests": f"({answered}) + ({failed_over})",
        "errors": f"({failed}) + ({failed_over})",
        "completed": inc("e2e_request_latency_seconds_count"),
        "empty": inc("empty_completions_total"),
        "length": inc("finish_reason_total", ',reason="length"'),
        "loops": inc("repetition_loops_total"),
        "refusals": inc("refusals_total"),
        "tokens": inc("completion_tokens_total"),
        "streamed": inc("time_to_first_token_seconds_count"),
        "e2e_p95_s": p95("e2e_request_latency_seconds"),
        "ttft_p95_s": p95("time_to_first_token_seconds"),
    }


def shadow_queries(window_s: float, stack: str | None = None) -> dict[str, str]:
    w, s = _window(window_s), _stack(stack)
    compared = ",".join(filter(None, ('outcome="compared"', s)))

    def inc(name: str, matchers: str = s) -> str:
        return _count(f"increase({PREFIX}{name}{{{matchers}}}[{w}])")

    return {
        "compared": inc("shadow_requests_total", compared),
        "exact": inc("shadow_exact_match_total"),
        "prefix_sum": inc("shadow_common_prefix_fraction_sum"),
        "prefix_count": inc("shadow_common_prefix_fraction_count"),
        "similarity_sum": inc("shadow_similarity_sum"),
        "similarity_count": inc("shadow_similarity_count"),
    }


def query(base_url: str, promql: str, at: float) -> float | None:
    """The instant query's single value at time `at` (None: no series, or NaN).
    Raises MetricsReadError when the server does not answer with a result."""
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
    try:
        with urllib.request.urlopen(url, timeout=QUERY_TIMEOUT_S) as response:
            doc = json.loads(response.read())
    except (OSError, ValueError) as exc:
        detail = exc.read().decode(errors="replace")[:200] if isinstance(
            exc, urllib.error.HTTPError) else str(exc)
        raise MetricsReadError(f"{base_url}: {detail}") from None
    if doc.get("status") != "success":
        raise MetricsReadError(f"{base_url}: {doc.get('error', doc)}")
    result = doc.get("data", {}).get("result") or []
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class Window:
    """One window's record: what was asked, what came back, how it was judged."""

    analysis_id: str
    index: int
    step_percent: int
    start: float
    end: float
    prometheus_url: str
    queries: dict[str, dict[str, str]]
    values: dict[str, dict[str, float | None]]
    checks: list[CheckResult]
    verdict: Verdict
    error: str | None = None

    def failed_checks(self) -> list[CheckResult]:
        return [c for c in self.checks if c.counted is Verdict.FAIL]

    def to_json(self) -> dict[str, Any]:
        return {"analysis_id": self.analysis_id, "window": self.index,
                "step_percent": self.step_percent, "start": self.start, "end": self.end,
                "prometheus_url": self.prometheus_url, "queries": self.queries,
                "values": self.values, "checks": [c.to_json() for c in self.checks],
                "verdict": self.verdict.value, "error": self.error}


def read_window(base_url: str, window_s: float, at: float, stack: str | None = None
                ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, float | None]]]:
    """Every query of the window ending at `at`, and its raw value (MetricsReadError if any
    query cannot be read)."""
    queries = {v.value: variant_queries(v, window_s, stack) for v in Variant}
    queries["shadow"] = shadow_queries(window_s, stack)
    values = {group: {name: query(base_url, q, at) for name, q in qs.items()}
              for group, qs in queries.items()}
    return queries, values


def analyse(spec: AnalysisSpec, base_url: str, shadowing: bool, analysis_id: str, index: int,
            step_percent: int, start: float, end: float, stack: str | None = None) -> Window:
    """Read and judge the window [start, end] (wall-clock seconds) from `stack`'s series: a
    read failure makes an ERROR window that keeps the queries it meant to run."""
    try:
        queries, values = read_window(base_url, end - start, end, stack)
    except MetricsReadError as exc:
        queries = {v.value: variant_queries(v, end - start, stack) for v in Variant}
        return Window(analysis_id, index, step_percent, start, end, base_url, queries, {}, [],
                      Verdict.ERROR, str(exc))
    names = {f.name for f in fields(Figures)}
    figures = {v: Figures(**{k: x for k, x in values[v.value].items() if k in names})
               for v in Variant}
    results = judge(figures, Shadow(**values["shadow"]), spec, shadowing)
    return Window(analysis_id, index, step_percent, start, end, base_url, queries, values,
                  results, window_verdict(results))


def wait_until(moment: float) -> None:
    """Sleep until wall-clock `moment` (short sleeps, so Ctrl-C lands at once)."""
    while (left := moment - time.time()) > 0:
        time.sleep(min(left, 0.25))


class StepOutcome(StrEnum):
    """How a step's analysis ended (Argo: Successful, Failed, Inconclusive, Error)."""

    PROMOTE = "promote"
    ROLLBACK = "rollback"
    HOLD = "hold"


@dataclass
class StepTally:
    """A step's windows counted as Argo counts an AnalysisRun's measurements: `windows` passes
    promote; failures past failure_limit or consecutive read errors past error_limit roll back;
    inconclusive windows past inconclusive_limit hold the rollout for a human."""

    spec: AnalysisSpec
    passed: int = 0
    failed: int = 0
    inconclusive: int = 0
    errors_in_a_row: int = 0

    def add(self, verdict: Verdict) -> StepOutcome | None:
        """Count one window; the step's outcome once it is decided, else None (analyse on)."""
        s = self.spec
        if verdict is Verdict.ERROR:
            self.errors_in_a_row += 1
            return StepOutcome.ROLLBACK if self.errors_in_a_row > s.error_limit else None
        self.errors_in_a_row = 0
        if verdict is Verdict.FAIL:
            self.failed += 1
            return StepOutcome.ROLLBACK if self.failed > s.failure_limit else None
        if verdict is Verdict.INCONCLUSIVE:
            self.inconclusive += 1
            return StepOutcome.HOLD if self.inconclusive > s.inconclusive_limit else None
        self.passed += 1
        return StepOutcome.PROMOTE if self.passed >= s.windows else None
