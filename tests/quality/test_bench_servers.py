"""The harness against real llama-servers: its TTFT and end-to-end latency agree with the server's
own `timings`; seeded runs send the same prompts; open-loop sends follow the asked rate;
`compare` finds F16 slower than Q4_K_M (SmolLM2) and no difference between two runs of one.

The two runs of a comparison are interleaved request by request (as benchmarks/bench_router.py
does), so that the load other processes put on a shared two-core machine hits both alike."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from typing import Any

import aiohttp
import pytest

from qinfra.quality.bench_client import RequestResult, Target, send
from qinfra.quality.bench_compare import MIN_EFFECT, Verdict, compare
from qinfra.quality.bench_runner import BenchRun, Load, run
from qinfra.quality.bench_stats import summarize
from qinfra.quality.bench_workload import Arrival, BenchRequest, parse_distribution, synthetic

pytestmark = pytest.mark.real


def _requests(n: int, seed: int, input_tokens: str = "32", output_tokens: str = "16") -> tuple:
    return tuple(synthetic(n, parse_distribution("-", input_tokens),
                           parse_distribution("-", output_tokens), seed))


def test_latencies_agree_with_the_servers_own_timings(demo_server) -> None:
    """One at a time, so nothing queues: TTFT is the server's prompt time plus the hop, the
    end-to-end latency its prompt and generation time plus the hop (median within 10 ms)."""
    result = run(BenchRun(Target(demo_server.base, "bench-model"), _requests(30, 1),
                          Load(concurrency=1), seed=1))
    assert result["failed"] == 0 and result["completed"] == 30
    assert result["output_lens"] == [16] * 30  # ignore_eos: exactly what was asked
    ttft_gap = [t * 1000 - p for t, p in zip(result["ttfts"], result["server_prompt_ms"],
                                             strict=True)]
    e2el_gap = [e * 1000 - p - g for e, p, g in zip(result["e2els"], result["server_prompt_ms"],
                                                    result["server_predicted_ms"], strict=True)]
    assert -2 < statistics.median(ttft_gap) < 10, ttft_gap
    assert -2 < statistics.median(e2el_gap) < 10, e2el_gap
    # a gap per chunk after the first: up to one per token (the demo model's random bytes are
    # sometimes held back as half a UTF-8 character, and two tokens then arrive in one chunk)
    assert all(len(itl) <= 15 for itl in result["itls"])
    assert statistics.median(len(itl) for itl in result["itls"]) == 15
    assert result["client"]["limited"] is False


def test_seeded_runs_send_the_same_prompts(demo_server) -> None:
    """The server's own prompt token counts: equal for one seed, different for another."""
    target = Target(demo_server.base, "bench-model")
    counts = [run(BenchRun(target, _requests(12, seed, "uniform:8-64", "2"), Load(concurrency=2),
                           seed))["input_lens"] for seed in (5, 5, 6)]
    assert counts[0] == counts[1]
    assert counts[0] != counts[2]


def test_open_loop_sends_follow_the_asked_rate(demo_server) -> None:
    """Poisson at 100 req/s: the mean gap between sends within 4 standard errors of 10 ms, and
    the share of gaps longer than the mean near e^-1, as exponential gaps have it."""
    rate, n = 100.0, 300
    result = run(BenchRun(Target(demo_server.base, "bench-model"), _requests(n, 2, "8", "2"),
                          Load(rate=rate, arrival=Arrival.POISSON), seed=2))
    sent = sorted(result["sent_s"])
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    mean = statistics.fmean(gaps)
    assert abs(mean - 1 / rate) < 4 * (1 / rate) / len(gaps) ** 0.5, mean
    longer = sum(g > 1 / rate for g in gaps) / len(gaps)
    share_se = (0.368 * 0.632 / len(gaps)) ** 0.5
    assert abs(longer - 0.368) < 4 * share_se, longer
    assert result["failed"] == 0


async def _interleaved(targets: list[Target], requests: list[BenchRequest]) -> list[list[RequestResult]]:
    """Request i goes to targets[i % len(targets)], one at a time."""
    out: list[list[RequestResult]] = [[] for _ in targets]
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        for request in requests:
            side = request.index % len(targets)
            out[side].append(await send(session, targets[side], request,
                                        RequestResult(request.index), t0))
    return out


def _runs(targets: list[Target], n: int, seed: int, output: str = "12") -> list[dict[str, Any]]:
    requests = list(_requests(n * len(targets), seed, "16", output))
    sides = asyncio.run(_interleaved(targets, requests))
    return [summarize(side, 1.0, None, {}) for side in sides]


def test_compare_finds_an_injected_slowdown(smollm2_servers) -> None:
    """A verdict of "faster" must not rest on how fast a shared machine happens to run two
    formats (the F16 vs Q4_K_M gap of 10-15% flaked under load): the F16 server is stalled
    (SIGSTOP for STALL_S of every STALL_S + RUN_S) while both are measured, so it is at least
    about twice as slow per token whatever else the machine does, and compare must say so."""
    import os
    import signal
    import threading

    stall_s, run_s = 0.15, 0.15
    f16, q4 = (Target(smollm2_servers[k].base, "bench-model") for k in ("F16", "Q4_K_M"))
    pid, done = smollm2_servers["F16"].pid, threading.Event()

    def stall() -> None:
        while not done.is_set():
            os.kill(pid, signal.SIGSTOP)
            time.sleep(stall_s)
            os.kill(pid, signal.SIGCONT)
            done.wait(run_s)

    staller = threading.Thread(target=stall, daemon=True)
    staller.start()
    try:
        a, b = _runs([f16, q4], 16, seed=11, output="16")
    finally:
        done.set()
        staller.join(timeout=5)
        os.kill(pid, signal.SIGCONT)
    rows = {r.metric: r for r in compare(a, b)}
    tpot = rows["tpot"]
    assert tpot.verdict is Verdict.FASTER, tpot
    assert tpot.ci_high_ms < 0 < tpot.a_mean_ms


def test_compare_finds_no_difference_between_runs_of_one_variant(smollm2_servers) -> None:
    q4 = Target(smollm2_servers["Q4_K_M"].base, "bench-model")
    a, b = _runs([q4, q4], 12, seed=12)
    rows = {r.metric: r for r in compare(a, b)}
    for metric in ("tpot", "e2el"):
        row = rows[metric]
        assert row.verdict is Verdict.SAME, row
        # either the interval spans zero, or the whole-run shift is under the material effect
        assert row.ci_low_ms < 0 < row.ci_high_ms or abs(row.relative) < MIN_EFFECT, row
