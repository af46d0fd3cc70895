"""The router's Prometheus metrics, per variant, all named qinfra_router_*: what a later analysis
compares between the baseline and quantized variants, for streamed and non-streamed requests alike.

Time to first token and inter-token latency exist only for streamed requests (a non-streamed body
arrives at once); end-to-end latency, tokens, empty completions and finish reasons cover both.
"""

from __future__ import annotations

import itertools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from qinfra.core.spec import Variant
from qinfra.serving.router.assign import Cohort
from qinfra.serving.router.signals import has_loop, is_refusal
from qinfra.serving.router.tally import Tally

PREFIX = "qinfra_router_"
# Log-spaced, from a fast stub's millisecond to a long CPU generation's minutes.
_TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_E2E_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_FRACTION_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class RouterMetrics:
    """One registry per router, so two routers in one process (or a test) never share counts."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        v = ("variant",)
        self.requests = Counter(f"{PREFIX}requests", "Requests answered, by variant, endpoint and "
                                "HTTP status (499: the client hung up first).",
                                (*v, "endpoint", "code"), registry=r)
        self.assignments = Counter(f"{PREFIX}assignments", "Requests assigned to a variant, by "
                                   "cohort: sticky (a key) or random (no key).", (*v, "cohort"),
                                   registry=r)
        self.ttft = Histogram(f"{PREFIX}time_to_first_token_seconds", "Streamed requests: arrival "
                              "at the router to the first chunk carrying text.", v,
                              buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram(f"{PREFIX}inter_token_latency_seconds", "Streamed requests: gap "
                             "between successive chunks carrying text.", v, buckets=_ITL_BUCKETS,
                             registry=r)
        self.e2e = Histogram(f"{PREFIX}e2e_request_latency_seconds", "Arrival at the router to "
                             "the last byte sent, for completed requests.", v,
                             buckets=_E2E_BUCKETS, registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}prompt_tokens", "Prompt tokens of completed "
                                     "requests.", v, registry=r)
        self.completion_tokens = Counter(f"{PREFIX}completion_tokens", "Completion tokens of "
                                         "completed requests.", v, registry=r)
        self.empty = Counter(f"{PREFIX}empty_completions", "Completed requests whose output was "
                             "empty.", v, registry=r)
        self.loops = Counter(f"{PREFIX}repetition_loops", "Completed requests whose output ends "
                             "in a repetition loop (a 4-word sequence 4 times in its last 256 "
                             "words; qinfra/serving/router/signals.py).", v, registry=r)
        self.refusals = Counter(f"{PREFIX}refusals", "Completed requests whose output opens "
                                "with a refusal phrase (signals.py); compared with the baseline's "
                                "rate, an excess is the unexpected refusals.", v, registry=r)
        self.finish = Counter(f"{PREFIX}finish_reason", "Choices finished, by finish_reason "
                              "(length: cut off at max_tokens).", (*v, "reason"), registry=r)
        self.in_flight = Gauge(f"{PREFIX}in_flight_requests", "Requests the router is serving now.",
                               v, registry=r)
        self.retries = Counter(f"{PREFIX}upstream_retries", "Requests retried on another replica "
                               "of the same variant after a refused connection.", v, registry=r)
        self.failovers = Counter(f"{PREFIX}failovers", "Requests assigned to this variant but "
                                 "answered by the other, because no replica of this one accepted "
                                 "the connection (nothing had been sent).", v, registry=r)
        self.upstream_up = Gauge(f"{PREFIX}upstream_up", "1 while some replica of the variant "
                                 "accepts connections (its last connect or probe), else 0; 0 also "
                                 "when it has no replicas.", v, registry=r)
        self.quantized_percent = Gauge(f"{PREFIX}quantized_percent", "The live weight of the "
                                       "quantized variant.", registry=r)
        self.reloads = Counter(f"{PREFIX}config_reloads", "Config file reloads, by result.",
                               ("result",), registry=r)
        self.config_error = Gauge(f"{PREFIX}config_error", "1 while the config file on disk could "
                                  "not be loaded (the last good config serves), else 0.", registry=r)
        self.shadow_requests = Counter(f"{PREFIX}shadow_requests", "Mirrored requests, by outcome "
                                       "(compared, not_greedy, error).", ("outcome",), registry=r)
        self.shadow_dropped = Counter(f"{PREFIX}shadow_dropped", "Mirrors dropped because the "
                                      "shadow queue was full.", registry=r)
        self.shadow_exact = Counter(f"{PREFIX}shadow_exact_match", "Greedy mirrors whose output "
                                    "equalled the baseline's.", registry=r)
        self.shadow_prefix = Histogram(f"{PREFIX}shadow_common_prefix_fraction", "Greedy mirrors: "
                                       "common-prefix length over the longer output.",
                                       buckets=_FRACTION_BUCKETS, registry=r)
        self.shadow_similarity = Histogram(f"{PREFIX}shadow_similarity", "Greedy mirrors: "
                                           "difflib ratio of the two outputs.",
                                           buckets=_FRACTION_BUCKETS, registry=r)
        for variant in Variant:  # every series exists from the start, so a rate() has a zero
            for cohort in Cohort:
                self.assignments.labels(variant, cohort)
            for name in ("ttft", "itl", "e2e", "prompt_tokens", "completion_tokens", "empty",
                         "loops", "refusals", "in_flight", "retries", "failovers"):
                getattr(self, name).labels(variant)
            self.finish.labels(variant, "length")
        for outcome in ("compared", "not_greedy", "error"):
            self.shadow_requests.labels(outcome)
        for result in ("ok", "error"):
            self.reloads.labels(result)

    def completed(self, variant: Variant, tally: Tally, started: float, ended: float) -> None:
        """Record one response read to its end: tokens, reasons, latencies, and the output
        signals (loop, refusal), streamed or not."""
        if tally.prompt_tokens is not None:
            self.prompt_tokens.labels(variant).inc(tally.prompt_tokens)
        self.completion_tokens.labels(variant).inc(tally.completion_count)
        output = tally.output
        if not output:
            self.empty.labels(variant).inc()
        elif has_loop(output):
            self.loops.labels(variant).inc()
        if output and is_refusal(output):
            self.refusals.labels(variant).inc()
        for reason in tally.finish_reasons:
            self.finish.labels(variant, reason).inc()
        self.e2e.labels(variant).observe(ended - started)
        times = tally.token_times
        if times:
            self.ttft.labels(variant).observe(times[0] - started)
            itl = self.itl.labels(variant)
            for before, after in itertools.pairwise(times):
                itl.observe(after - before)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
