"""A benchmark run: open loop (requests sent on a schedule, whatever the responses do, as
`vllm bench serve` sends them) or closed loop (C requests in flight, the next one sent when one
ends); a sweep from one request at a time to saturation; results kept under .qinfra/bench/."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from qinfra.core.fileio import write_atomic
from qinfra.quality.bench_client import RequestResult, Target, send
from qinfra.quality.bench_stats import Slo, client_report, summarize
from qinfra.quality.bench_workload import Arrival, BenchError, BenchRequest, arrival_offsets

# Seconds a request may take end to end before it counts as failed.
REQUEST_TIMEOUT_S = 600.0
# A sweep doubles concurrency from 1 until output throughput rises by less than this share
# (saturation), a request fails, or it reaches SWEEP_MAX_CONCURRENCY.
SWEEP_MIN_GAIN = 0.10
SWEEP_MAX_CONCURRENCY = 256

OnDone = Callable[[RequestResult], None]


@dataclass(frozen=True)
class Load:
    """How requests are sent: `concurrency` requests in flight (closed loop), or `rate`
    requests/s (open loop; inf sends all at once), optionally capped at `concurrency`."""

    rate: float | None = None
    concurrency: int | None = None
    arrival: Arrival = Arrival.POISSON
    burstiness: float = 1.0

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    def describe(self) -> str:
        if not self.open_loop:
            return f"closed loop, concurrency {self.concurrency}"
        kind = (self.arrival.value if self.burstiness == 1 or self.arrival is Arrival.CONSTANT
                else f"gamma, burstiness {self.burstiness:g}")
        cap = f", at most {self.concurrency} in flight" if self.concurrency else ""
        return f"open loop, {self.rate:g} req/s ({kind}){cap}"


@dataclass(frozen=True)
class BenchRun:
    """Everything one run needs; `labels` go into the result as they are (target, variant...)."""

    target: Target
    requests: tuple[BenchRequest, ...]
    load: Load
    seed: int = 0
    slo: Slo | None = None
    labels: tuple[tuple[str, Any], ...] = ()


def run(bench: BenchRun, on_done: OnDone | None = None) -> dict[str, Any]:
    """Run the benchmark and return its summary (bench_stats.summarize's keys)."""
    return asyncio.run(_run(bench, on_done))


async def _run(bench: BenchRun, on_done: OnDone | None) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    # One connection per request: llama-server (cpp-httplib) announces keep-alive but a
    # connection reused after a streamed response failed every write here, so reuse would turn
    # into errors; the TCP connect is then part of each TTFT, as for a fresh client.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        cpu0, t0 = time.process_time(), time.perf_counter()
        if bench.load.open_loop:
            offsets = arrival_offsets(len(bench.requests), bench.load.rate or math.inf,
                                      bench.load.arrival, bench.load.burstiness, bench.seed)
            results = await _open_loop(session, bench, offsets, t0, on_done)
        else:
            results = await _closed_loop(session, bench, t0, on_done)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    gaps = _mean_gap(bench)
    extra = {
        "date": datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        "backend": "openai-chat" if any(r.chat for r in bench.requests) else "openai",
        "model_id": bench.target.model,
        "base_url": bench.target.base_url,
        "num_prompts": len(bench.requests),
        "request_rate": bench.load.rate if bench.load.open_loop else None,
        "burstiness": bench.load.burstiness,
        "max_concurrency": bench.load.concurrency,
        "load": bench.load.describe(),
        "seed": bench.seed,
        **dict(bench.labels),
        "client": client_report(results, cpu, wall, gaps),
    }
    return summarize(results, wall, bench.slo, extra)


def _mean_gap(bench: BenchRun) -> float | None:
    rate = bench.load.rate
    if not bench.load.open_loop or rate is None or math.isinf(rate):
        return None
    return 1.0 / rate


async def _open_loop(session: aiohttp.ClientSession, bench: BenchRun, offsets: Sequence[float],
                     t0: float, on_done: OnDone | None) -> list[RequestResult]:
    """Each request leaves at its offset; a cap on concurrency makes late ones wait (and the
    wait shows as schedule lag, which the client report counts)."""
    cap = asyncio.Semaphore(bench.load.concurrency) if bench.load.concurrency else None

    async def one(request: BenchRequest, offset: float) -> RequestResult:
        result = RequestResult(request.index, scheduled_s=offset)
        if cap is None:
            await send(session, bench.target, request, result, t0)
        else:
            async with cap:
                await send(session, bench.target, request, result, t0)
        if on_done:
            on_done(result)
        return result

    tasks = []
    for request, offset in zip(bench.requests, offsets, strict=True):
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(request, offset)))
    return list(await asyncio.gather(*tasks))


async def _closed_loop(session: aiohttp.ClientSession, bench: BenchRun, t0: float,
                       on_done: OnDone | None) -> list[RequestResult]:
    """`concurrency` workers, each sending its next request as soon as its last one ends."""
    queue = list(reversed(bench.requests))
    results: list[RequestResult] = []

    async def worker() -> None:
        while queue:
            request = queue.pop()
            result = RequestResult(request.index, scheduled_s=time.perf_counter() - t0)
            results.append(await send(session, bench.target, request, result, t0))
            if on_done:
                on_done(result)

    workers = max(1, min(bench.load.concurrency or 1, len(bench.requests)))
    await asyncio.gather(*(worker() for _ in range(workers)))
    return sorted(results, key=lambda r: r.index)


def sweep(bench: BenchRun, on_level: Callable[[int, dict[str, Any]], None] | None = None,
          on_done: OnDone | None = None) -> list[dict[str, Any]]:
    """Closed-loop runs at concurrency 1, 2, 4, ... until throughput stops rising (gain under
    SWEEP_MIN_GAIN), a request fails, or SWEEP_MAX_CONCURRENCY; each level sends the same
    requests. Returns every level's summary, lowest concurrency first."""
    levels: list[dict[str, Any]] = []
    concurrency = 1
    while concurrency <= SWEEP_MAX_CONCURRENCY:
        level = run(replace(bench, load=Load(concurrency=concurrency)), on_done)
        levels.append(level)
        if on_level:
            on_level(concurrency, level)
        if level["failed"] or _saturated(levels):
            break
        concurrency *= 2
    return levels


def _saturated(levels: Sequence[dict[str, Any]]) -> bool:
    if len(levels) < 2:
        return False
    before, now = levels[-2]["output_throughput"], levels[-1]["output_throughput"]
    return before > 0 and (now - before) / before < SWEEP_MIN_GAIN


def knee(levels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The level with the best output throughput: where the server saturates."""
    return max(levels, key=lambda level: level["output_throughput"])


# --- results on disk -------------------------------------------------------------------------


def results_dir(project: Path) -> Path:
    return project / ".qinfra" / "bench"


def save(result: dict[str, Any], folder: Path, label: str) -> Path:
    """Write the result as <label>-<date>.json under `folder` (atomic); returns its path."""
    stamp = result.get("date") or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = folder / f"{label}-{stamp}.json"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{label}-{stamp}-{n}.json"
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result, indent=1) + "\n")
    return path


def save_to(document: dict[str, Any], path: Path) -> None:
    """Write a result (or a sweep) exactly where the user asked (--out), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(document, indent=1) + "\n")


def load(path: Path) -> dict[str, Any]:
    """A saved run. BenchError when it is missing, not JSON, or not a single run's result."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path} is not JSON: {exc.msg}") from exc
    if not isinstance(data, dict) or "ttfts" not in data or "e2els" not in data:
        raise BenchError(f"{path} is not the result of one `qinfra bench` run (no per-request "
                         "ttfts/e2els). To fix: pass a run's JSON, not a sweep's")
    return data


def summary_line(result: dict[str, Any]) -> str:
    """One line for logs and sweeps: throughput and the medians."""
    tpots = [t for t in result.get("tpots", []) if t is not None]
    return (f"{result['request_throughput']:.2f} req/s, {result['output_throughput']:.1f} tok/s, "
            f"TTFT p50 {result['median_ttft_ms']:.1f} ms, TPOT p50 "
            f"{statistics.median(tpots) * 1000 if tpots else 0:.2f} ms")
