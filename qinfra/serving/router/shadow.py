"""Shadow comparison: a share of baseline-assigned requests is sent again to the quantized variant,
off the client's path, and greedy outputs are compared, the online quality signal of the rollout.

The mirror is queued after the client has its answer, into a bounded queue: when the queue is full
the mirror is dropped and counted, so shadow traffic can never slow or fail a client request.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from qinfra.core.spec import Variant
from qinfra.serving.router.balance import Pool
from qinfra.serving.router.config import RouterConfig
from qinfra.serving.router.metrics import RouterMetrics
from qinfra.serving.router.tally import Tally
from qinfra.serving.router.upstream import Sessions, UpstreamError, read_body, upstream_response

log = logging.getLogger(__name__)
# difflib's ratio is quadratic in the worst case (two unrelated 2,000-character outputs: ~170 ms
# here, measured); it reads the first 1,000 characters (~45 ms at worst) in a worker thread, so
# the event loop keeps serving clients meanwhile.
COMPARE_CHARS = 1000


@dataclass(frozen=True)
class Mirror:
    """A finished baseline request to replay on the quantized variant."""

    path: str
    headers: list[tuple[str, str]]
    body: bytes
    baseline_output: str
    greedy: bool


@dataclass(frozen=True)
class Comparison:
    exact: bool
    prefix_fraction: float
    similarity: float


def is_greedy(doc: Any) -> bool:
    """Temperature 0 makes both outputs deterministic, so a difference is the quantization's."""
    if not isinstance(doc, dict):
        return False
    temperature = doc.get("temperature")
    return isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0


def compare(baseline: str, quantized: str) -> Comparison:
    """Exact match, common-prefix length over the longer output, and difflib's ratio."""
    if baseline == quantized:
        return Comparison(True, 1.0, 1.0)
    a, b = baseline[:COMPARE_CHARS], quantized[:COMPARE_CHARS]
    prefix = next((i for i, (x, y) in enumerate(zip(baseline, quantized, strict=False)) if x != y),
                  min(len(baseline), len(quantized)))
    return Comparison(
        False,
        prefix / max(len(baseline), len(quantized)),
        difflib.SequenceMatcher(None, a, b, autojunk=False).ratio(),
    )


class Shadow:
    """The bounded queue and its workers; `offer` never waits."""

    def __init__(
        self,
        session: Sessions,
        pool: Pool,
        metrics: RouterMetrics,
        config: Callable[[], RouterConfig],
        queue_size: int,
    ) -> None:
        self._session, self._pool, self._metrics, self._config = session, pool, metrics, config
        self._queue: asyncio.Queue[Mirror] = asyncio.Queue(maxsize=queue_size)
        self._workers: list[asyncio.Task[None]] = []

    def start(self, workers: int) -> None:
        self._workers = [asyncio.create_task(self._work()) for _ in range(workers)]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    def offer(self, mirror: Mirror) -> None:
        try:
            self._queue.put_nowait(mirror)
        except asyncio.QueueFull:
            self._metrics.shadow_dropped.inc()

    async def _work(self) -> None:
        while True:
            mirror = await self._queue.get()
            try:
                await self._replay(mirror)
            except (UpstreamError, aiohttp.ClientError, TimeoutError) as exc:
                log.info("shadow request failed: %s", exc)
                self._metrics.shadow_requests.labels("error").inc()
            finally:
                self._queue.task_done()

    async def _replay(self, mirror: Mirror) -> None:
        config = self._config()
        timeout = aiohttp.ClientTimeout(sock_connect=config.connect_timeout_s,
                                        sock_read=config.read_timeout_s)
        request = ("POST", mirror.path, mirror.headers, mirror.body)
        tally = Tally()
        async with upstream_response(self._session, self._pool, Variant.QUANTIZED,
                                     config.replicas_of(Variant.QUANTIZED), request, timeout,
                                     lambda: None) as response:
            if response.status != 200:
                raise UpstreamError(502, Variant.QUANTIZED, f"status {response.status}")
            if response.content_type == "text/event-stream":
                async for chunk in response.content.iter_any():
                    tally.feed(chunk)
            else:
                tally.read_body(await read_body(response, Variant.QUANTIZED, config.read_timeout_s))
        if not mirror.greedy:
            self._metrics.shadow_requests.labels("not_greedy").inc()
            return
        result = await asyncio.to_thread(compare, mirror.baseline_output, tally.output)
        self._metrics.shadow_requests.labels("compared").inc()
        if result.exact:
            self._metrics.shadow_exact.inc()
        self._metrics.shadow_prefix.observe(result.prefix_fraction)
        self._metrics.shadow_similarity.observe(result.similarity)
