"""The analysis' output-signal checks (repetition_rate, refusal_rate, length_ratio): judged on
synthetic figures, and end to end: the real router in front of stub engines that answer a set
text, scraped by a real Prometheus, read and judged by the analysis, which rolls back a variant
whose answers loop, refuse or shrink."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from qinfra.core.analysis_spec import AnalysisSpec, Check
from qinfra.core.spec import Variant
from qinfra.quality.analysis import StepOutcome, StepTally, analyse, query, variant_queries
from qinfra.quality.analysis_stats import Figures, Shadow, Verdict, judge
from tests.ports import free_port
from tests.router.client import call, stream, wait_for
from tests.router.processes import start_router, start_stub, stop

ANSWER = "The capital of France is Paris, a city on the Seine in the north of the country."
LOOP = "la femme, la femme, la femme, la femme, la femme, la femme"
REFUSE = "I'm sorry, but I can't help with that request, it is not something I can answer."


def _figures(loops: float = 0, refusals: float = 0, tokens: float = 2000) -> Figures:
    return Figures(requests=200, errors=0, completed=200, empty=0, length=0, loops=loops,
                   refusals=refusals, tokens=tokens, e2e_p95_s=1.0)


def _checks(base: Figures, quant: Figures, spec: AnalysisSpec | None = None) -> dict[Check, object]:
    results = judge({Variant.BASELINE: base, Variant.QUANTIZED: quant}, Shadow(),
                    spec or AnalysisSpec(), shadowing=False)
    return {r.check: r for r in results}


@pytest.mark.parametrize(
    ("quant", "check", "verdict"),
    [
        # 30 of 200 loop against the baseline's 4: significant and over 5 points
        (_figures(loops=30), Check.REPETITION_RATE, Verdict.FAIL),
        # 8 of 200 against 4: within 5 points
        (_figures(loops=8), Check.REPETITION_RATE, Verdict.PASS),
        # 25 refusals of 200 against the baseline's 2
        (_figures(refusals=25), Check.REFUSAL_RATE, Verdict.FAIL),
        # half the baseline's mean tokens: under the lesson's 0.6
        (_figures(tokens=1000), Check.LENGTH_RATIO, Verdict.FAIL),
        # 70% of them: above it
        (_figures(tokens=1400), Check.LENGTH_RATIO, Verdict.PASS),
    ],
)
def test_signal_checks_on_synthetic_figures(quant: Figures, check: Check, verdict: Verdict) -> None:
    got = _checks(_figures(loops=4, refusals=2), quant)[check]
    assert got.verdict is verdict, got.reason


def test_length_ratio_reports_both_means_and_is_inconclusive_without_tokens() -> None:
    got = _checks(_figures(), _figures(tokens=1000))[Check.LENGTH_RATIO]
    assert got.values == {"quantized_mean_tokens": 5.0, "baseline_mean_tokens": 10.0, "ratio": 0.5}
    assert got.threshold == {"min_ratio": 0.6} and "ratio 0.50 < 0.6" in got.reason
    empty = _checks(_figures(), Figures(requests=200, completed=200))[Check.LENGTH_RATIO]
    assert empty.verdict is Verdict.INCONCLUSIVE


def test_the_checks_are_configured_like_the_others() -> None:
    spec = AnalysisSpec.model_validate({"checks": {
        "repetition_rate": {"max_difference": 0.1}, "refusal_rate": {"enabled": False},
        "length_ratio": {"min_ratio": 0.8, "dry_run": True}}})
    checks = _checks(_figures(), _figures(loops=15, refusals=100, tokens=1000), spec)
    assert checks[Check.REPETITION_RATE].verdict is Verdict.PASS  # 7.5% excess < 10 points
    assert Check.REFUSAL_RATE not in checks
    assert checks[Check.LENGTH_RATIO].verdict is Verdict.FAIL and checks[Check.LENGTH_RATIO].dry_run
    with pytest.raises(ValueError, match="min_ratio"):
        AnalysisSpec.model_validate({"checks": {"length_ratio": {"min_ratio": 2}}})


def test_queries_read_the_router_counters() -> None:
    q = variant_queries(Variant.QUANTIZED, 60, "s")
    assert "qinfra_router_repetition_loops_total{variant=\"quantized\",qinfra_stack=\"s\"}" in q["loops"]
    assert "qinfra_router_refusals_total" in q["refusals"]
    assert "qinfra_router_completion_tokens_total" in q["tokens"]


SCRAPE_S = 1.0
SCRAPE_MS = round(SCRAPE_S * 1000)
WINDOW_S = 8.0


def _prometheus(folder: Path, router_port: int) -> tuple[object, str]:
    from qinfra.deploy.targets import prometheus_process

    port = free_port()
    config = (f"global:\n  scrape_interval: {SCRAPE_MS}ms\nscrape_configs:\n"
              f"  - job_name: router\n    scrape_interval: {SCRAPE_MS}ms\n    scrape_timeout: {SCRAPE_MS}ms\n"
              f"    static_configs:\n      - targets: ['127.0.0.1:{router_port}']\n"
              f"        labels: {{qinfra_stack: 'signals'}}\n")
    try:
        return prometheus_process.start(folder, port, config), f"http://127.0.0.1:{port}"
    except RuntimeError as exc:
        pytest.fail(f"prometheus: {exc}", pytrace=False)


@pytest.mark.real
@pytest.mark.parametrize(
    ("quantized_text", "failing"),
    [
        (LOOP, Check.REPETITION_RATE),
        (REFUSE, Check.REFUSAL_RATE),
        ("Paris.", Check.LENGTH_RATIO),
    ],
    ids=["loops", "refuses", "shrinks"],
)
def test_the_analysis_rolls_back_a_variant_whose_answers_degrade(
        tmp_path: Path, quantized_text: str, failing: Check) -> None:
    procs = []
    try:
        ports = {v: free_port() for v in Variant}
        for v, text in ((Variant.BASELINE, ANSWER), (Variant.QUANTIZED, quantized_text)):
            procs.append(start_stub(ports[v], v.value, tmp_path / f"{v}.log", 0.0, text))
        config = tmp_path / "router.json"
        config.write_text(json.dumps({"replicas": {v.value: [f"http://127.0.0.1:{ports[v]}"]
                                                   for v in Variant},
                                      "quantized_percent": 50, "salt": "t"}))
        router_port = free_port()
        procs.append(start_router(config, router_port, tmp_path / "router.log"))
        prom, url = _prometheus(tmp_path / "prometheus", router_port)
        procs.append(prom)
        base = f"http://127.0.0.1:{router_port}"
        # one request per variant before the window: the requests series (labelled by status)
        # exist from their first request, and increase() needs a sample before the window's
        seen: set[str] = set()
        for i in range(50):
            _, headers, _ = call(base, "/v1/completions", {"prompt": "warm"},
                                      {"X-Qinfra-User": f"w-{i}"})
            seen.add(headers["x-qinfra-variant"])
            if len(seen) == 2:
                break
        # Prometheus hands new targets to its scraper every 5 s: wait for the router's first
        # scrapes, so the window's increase() has samples from before its traffic
        wait_for(lambda: (query(url, "count(count_over_time(qinfra_router_requests_total[10s]) "
                                     ">= 2)", time.time()) or 0) >= 2,
                 timeout=30, what="two scrapes of both variants' request counters")
        start = time.time()
        time.sleep(1.5 * SCRAPE_S)  # a sample inside the window from before its traffic
        for i in range(160):  # about 80 per variant; half of them streamed
            body = {"prompt": "Capital of France?", "max_tokens": 32}
            user = {"X-Qinfra-User": f"u-{i}"}
            if i % 2:
                assert stream(base, "/v1/completions", {**body, "stream": True}, user)[0] == 200
            else:
                assert call(base, "/v1/completions", body, user)[0] == 200
        end = start + WINDOW_S
        time.sleep(max(0.0, end - time.time()) + 3 * SCRAPE_S)
        spec = AnalysisSpec.model_validate({
            "interval_s": WINDOW_S, "scrape_interval_s": SCRAPE_S, "min_requests": 50,
            # stubs answer in milliseconds: their latency ratio is noise, not a finding
            "checks": {"e2e_latency": {"min_baseline_s": 1}, "ttft": {"min_baseline_s": 1}}})
        window = analyse(spec, url, False, "signals-test", 0, 50, start, end, stack="signals")
        assert window.verdict is Verdict.FAIL, ([c.reason for c in window.checks], window.values)
        assert [c.check for c in window.failed_checks()] == [failing], window.to_json()
        assert StepTally(spec).add(window.verdict) is StepOutcome.ROLLBACK
    finally:
        for proc in reversed(procs):
            stop(proc)  # type: ignore[arg-type]
