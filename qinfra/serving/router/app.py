"""The router as a bare ASGI app: OpenAI-compatible pass-through to the variant a request is
assigned, plus /health and /metrics. Bodies pass through untouched; every proxied response carries
x-qinfra-variant and x-qinfra-cohort.

Live weights: the app polls its config file's (mtime, size, inode) every `poll_s` and reloads on
change or on SIGHUP. A file, not an admin endpoint, because the file is the deployment's record of
the weights (a restarted router comes back with the same split), a writer needs no port, token or
pid (a local rollout, a systemd unit, a Kubernetes ConfigMap mount all just write the file), and a
stat() every 200 ms costs nothing. A reload swaps one reference: requests in flight finish on the
replica they hold. A file that fails to load, for whatever reason (not UTF-8, nested past the
parser's limit, invalid), leaves the last good config live; it is logged, counted
(qinfra_router_config_reloads_total{result="error"}, qinfra_router_config_error 1) and named in
/health until a later write loads. The poller itself never stops.

A dead variant: every replica is marked up or down by its last connect (a request's, or a TCP
probe every `probe_s`), exported as qinfra_router_upstream_up{variant} and in /health. A request
whose assigned variant accepts no connection was never sent, so it is answered by the other
variant if the live weights give that one traffic (never onto a variant at 0%: a rollback or a
hold is not undone by an outage), counted in qinfra_router_failovers_total{variant=<assigned>},
and the answer's x-qinfra-variant names who answered (x-qinfra-failover-from the assigned one);
its requests_total, latency and token series count under the answering variant. A variant whose
replicas are all marked down is skipped without a connect while the other has an up replica.
Keys keep their bucket, so users go back to their own variant as soon as it accepts again. A
failure after the request was sent is never retried elsewhere (it may have run): 502/504, or in
a stream an SSE error event.

/health answers 200 with status "degraded" and its `problems` when the config on disk did not
load or a variant with traffic has no replica up: the router still serves (the last good config,
failover), and a 503 would make a load balancer drop every router at once, each seeing the same
engines. HTTP/1.0 clients get every answer whole with content-length: uvicorn's httptools
protocol would otherwise frame it chunked, which HTTP/1.0 lacks, so a stream to them arrives at
its end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from qinfra.core.spec import Variant
from qinfra.serving.router.asgi import (
    Message,
    Receive,
    Scope,
    Send,
    disconnected,
    error_doc,
    query_string,
    read_request,
    send_json,
    whole_body,
)
from qinfra.serving.router.assign import Assignment, assign
from qinfra.serving.router.balance import Pool
from qinfra.serving.router.config import RouterConfig, RouterConfigError, load_config
from qinfra.serving.router.keys import request_key
from qinfra.serving.router.metrics import RouterMetrics
from qinfra.serving.router.shadow import Mirror, Shadow, is_greedy
from qinfra.serving.router.tally import Tally
from qinfra.serving.router.upstream import (
    Sessions,
    Unreachable,
    UpstreamError,
    accepts,
    cancel,
    for_stream,
    forward_headers,
    read_body,
    response_headers,
    upstream_response,
)

log = logging.getLogger(__name__)
COMPLETIONS = frozenset({"/v1/completions", "/v1/chat/completions"})
MODELS = "/v1/models"
POLL_S = 0.2
# Seconds between TCP probes of every replica: how soon a dead engine with no traffic is marked
# down, and a restarted one up again.
PROBE_S = 1.0
# Status recorded when the client hangs up before its answer is complete (nginx's convention).
CLIENT_CLOSED = 499
_SSE = "text/event-stream"


class Router:
    """One router process's state: the live config, replicas' load, metrics and the shadow queue."""

    def __init__(
        self, config_path: Path, *, poll_s: float = POLL_S, probe_s: float = PROBE_S,
        seed: int | None = None,
    ) -> None:
        """Raises RouterConfigError when the file cannot be loaded: a router never starts blind."""
        self.config_path = Path(config_path)
        self.config = load_config(self.config_path)
        # Why the file on disk is not the live config; None while it is.
        self.config_error: str | None = None
        self._stamp = _stamp(self.config_path)
        self.metrics = RouterMetrics()
        self.metrics.quantized_percent.set(self.config.quantized_percent)
        self.pool = Pool()
        for variant in Variant:  # read at each scrape, so it is never staler than the marks
            self.metrics.upstream_up.labels(variant).set_function(
                lambda v=variant: float(self.pool.any_up(self.config.replicas_of(v))))
        self.rng = random.Random(seed)
        self.in_flight = 0
        self._poll_s = poll_s
        self._probe_s = probe_s
        self._timeout = _timeout(self.config)
        self._session: Sessions | None = None
        self._shadow: Shadow | None = None
        self._poller: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    def reload(self) -> bool:
        """Load the config file again; True when the new one is live. Never raises: whatever
        fails keeps the last good config serving (a router that stopped following its file would
        ignore every later rollback)."""
        self._stamp = _stamp(self.config_path)
        try:
            config = load_config(self.config_path)
        except RouterConfigError as exc:
            return self._rejected(exc.message)
        except Exception as exc:  # a loader bug must not end the poller either
            log.exception("loading %s failed", self.config_path)
            return self._rejected(f"router config {self.config_path}: {type(exc).__name__}: {exc}")
        self.config, self._timeout = config, _timeout(config)
        self.config_error = None
        self.metrics.config_error.set(0)
        self.metrics.quantized_percent.set(config.quantized_percent)
        self.metrics.reloads.labels("ok").inc()
        log.info("config reloaded: quantized_percent %s", config.quantized_percent)
        return True

    def _rejected(self, message: str) -> bool:
        log.error("%s; keeping the last good config (quantized_percent %s)", message,
                  self.config.quantized_percent)
        self.config_error = message
        self.metrics.config_error.set(1)
        self.metrics.reloads.labels("error").inc()
        return False

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start(self) -> None:
        self._session = Sessions.open()
        self._shadow = Shadow(self._session, self.pool, self.metrics, lambda: self.config,
                              self.config.shadow_queue)
        self._shadow.start(self.config.shadow_workers)
        self._poller = asyncio.create_task(self._poll())
        self._prober = asyncio.create_task(self._probe())
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)

    async def _stop(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in (self._poller, self._prober):
            if task is not None:
                await cancel(task)
        if self._shadow is not None:
            await self._shadow.stop()
        if self._session is not None:
            await self._session.close()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                if _stamp(self.config_path) != self._stamp:
                    self.reload()
            except Exception:  # reload() raises nothing; this loop outlives even a bug in it
                log.exception("config poll failed; polling on")

    async def _probe(self) -> None:
        """Mark every replica of the live config up or down by a TCP connect, so a dead variant
        shows (and is skipped) without a request having to fail first."""
        while True:
            await asyncio.sleep(self._probe_s)
            try:
                config = self.config
                replicas = self.pool.replicas(dict.fromkeys(
                    url for variant in Variant for url in config.replicas_of(variant)))
                results = await asyncio.gather(
                    *(accepts(r.url, config.connect_timeout_s) for r in replicas))
                for replica, up in zip(replicas, results, strict=True):
                    replica.mark(up)
            except Exception:
                log.exception("upstream probe failed; probing on")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if scope.get("http_version") == "1.0":
            send = whole_body(send)
        if path in COMPLETIONS or path == MODELS:
            if method != ("GET" if path == MODELS else "POST"):
                await send_json(send, 405, error_doc(f"{method} is not allowed on {path}",
                                                     "invalid_request"))
                return
            await self._route(scope, receive, send)
        elif path == "/health" and method == "GET":
            await send_json(send, 200, self._health())
        elif path == "/metrics" and method == "GET":
            body = self.metrics.exposition()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]})
            await send({"type": "http.response.body", "body": body})
        else:
            await send_json(send, 404, error_doc(f"no route for {method} {path}", "not_found"))

    def _health(self) -> dict[str, Any]:
        """Always 200 while the process serves (see the module docstring); `status` is
        "degraded" with its `problems` when the file did not load or a variant with traffic has
        no replica up."""
        config = self.config
        problems = []
        if self.config_error is not None:
            problems.append(f"the config file did not load, the last good one serves: "
                            f"{self.config_error}")
        upstreams = {}
        for variant in Variant:
            replicas = self.pool.replicas(config.replicas_of(variant))
            up = any(r.up for r in replicas)
            upstreams[variant.value] = {"up": up, "down": [r.url for r in replicas if not r.up]}
            if replicas and not up and _gets_traffic(config, variant):
                problems.append(f"no {variant} replica accepts connections")
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "config_error": self.config_error,
            "quantized_percent": config.quantized_percent,
            "shadow_percent": config.shadow_percent,
            "replicas": {v.value: list(config.replicas_of(v)) for v in Variant},
            "upstreams": upstreams,
            "in_flight": self.in_flight,
        }

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Assign, bound, then proxy while watching for the client to hang up."""
        started = time.perf_counter()
        config = self.config  # one config for the whole request, whatever a reload does meanwhile
        body = await read_request(receive)
        raw_headers = scope["headers"]
        headers = {k.decode("latin-1").lower(): v.decode("utf-8", "replace") for k, v in raw_headers}
        doc, refusal = _parse_body(body)
        assignment = assign(request_key(headers, doc, config.key_header, config.cookie),
                            config.quantized_percent, config.salt, self.rng)
        variant, path = assignment.variant, scope["path"]
        endpoint = path.removeprefix("/v1/")
        if path in COMPLETIONS:
            self.metrics.assignments.labels(variant, assignment.cohort).inc()
        if refusal is not None:
            await send_json(send, 400, error_doc(refusal, "invalid_request", variant))
            self.metrics.requests.labels(variant, endpoint, "400").inc()
            return
        if self.in_flight >= config.max_in_flight:
            retry = str(config.retry_after_s).encode()
            await send_json(send, 429, error_doc(f"the router has {self.in_flight} requests in flight, "
                                                 f"its bound; retry after {config.retry_after_s} s",
                                                 "overloaded", variant), [(b"retry-after", retry)])
            self.metrics.requests.labels(variant, endpoint, "429").inc()
            return
        forwarded = forward_headers(raw_headers)
        if isinstance(doc, dict) and doc.get("stream") is True:
            forwarded = for_stream(forwarded)
        request = (scope["method"], path + query_string(scope), forwarded, body)
        served = _Served(variant)
        self.in_flight += 1
        self.metrics.in_flight.labels(variant).inc()
        try:
            code = await self._watch(receive, send, lambda out: self._proxy(
                config, assignment, request, doc, out, started, served))
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.labels(served.variant).dec()
        self.metrics.requests.labels(served.variant, endpoint, str(code)).inc()

    async def _watch(
        self, receive: Receive, send: Send, proxy: Callable[[Send], Awaitable[int]]
    ) -> int:
        """Run `proxy`; a client that disconnects first cancels it, and with it the upstream
        request (its connection is closed, which makes llama-server stop generating). uvicorn
        also reports a disconnect once the response is complete, so that one is told apart."""
        complete = False

        async def tracked(message: Message) -> None:
            nonlocal complete
            await send(message)
            complete = message["type"] == "http.response.body" and not message.get("more_body")

        task = asyncio.ensure_future(proxy(tracked))
        watcher = asyncio.ensure_future(disconnected(receive))
        try:
            await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and complete:
                await task
        finally:
            if not task.done():
                await cancel(task)
            if not watcher.done():
                watcher.cancel()
        if task.cancelled():
            return CLIENT_CLOSED
        return task.result()

    async def _proxy(
        self,
        config: RouterConfig,
        assignment: Assignment,
        request: tuple[str, str, list[tuple[str, str]], bytes],
        doc: Any,
        send: Send,
        started: float,
        served: _Served,
    ) -> int:
        """Forward `request` to the assigned variant, or to the other one when the assigned one
        accepts no connection and the weights let the other take traffic (module docstring);
        the answer goes back to the client. Returns the status sent; `served` names who sent it."""
        assigned = assignment.variant
        order = [assigned]
        other = _failover_target(config, assigned)
        if other is not None:
            known_down = (not self.pool.any_up(config.replicas_of(assigned))
                          and self.pool.any_up(config.replicas_of(other)))
            order = [other] if known_down else [assigned, other]
        tally = Tally()
        failures: list[UpstreamError] = []
        for variant in order:
            if variant is not served.variant:
                self._fail_over(served, variant)
            try:
                status = await self._answer(config, variant, assignment, request, send, tally)
            except Unreachable as exc:
                failures.append(exc)
                continue
            except UpstreamError as exc:
                failures.append(exc)
                break
            if status == 200 and request[1].split("?")[0] in COMPLETIONS:
                self.metrics.completed(variant, tally, started, time.perf_counter())
                if variant is assigned:
                    self._maybe_mirror(config, assignment, request, doc, tally)
            return status
        last = failures[-1]
        message = "; then ".join(f.message for f in failures)
        log.warning("%s (%s)", message, last.__cause__ or last.status)
        await send_json(send, last.status, error_doc(message, "upstream_error", last.variant),
                        _tags(last.variant, assignment))
        return last.status

    def _fail_over(self, served: _Served, to: Variant) -> None:
        """Move a request that nothing was sent for yet onto `to`, and count it."""
        log.debug("failover: a %s request goes to %s", served.variant, to)
        self.metrics.failovers.labels(served.variant).inc()
        self.metrics.in_flight.labels(served.variant).dec()
        self.metrics.in_flight.labels(to).inc()
        served.variant = to

    async def _answer(
        self,
        config: RouterConfig,
        variant: Variant,
        assignment: Assignment,
        request: tuple[str, str, list[tuple[str, str]], bytes],
        send: Send,
        tally: Tally,
    ) -> int:
        """One variant's answer to `request`, sent on; raises UpstreamError before anything was
        sent to the client (Unreachable: nor to the engine)."""
        tags = _tags(variant, assignment)
        assert self._session is not None, "requests arrive only after lifespan startup"
        retried = self.metrics.retries.labels(variant).inc
        async with upstream_response(self._session, self.pool, variant, config.replicas_of(variant),
                                     request, self._timeout, retried) as response:
            status = response.status
            if status >= 500:
                detail = (await read_body(response, variant, config.read_timeout_s))[:300]
                raise UpstreamError(502, variant, f"the {variant} replica answered {status}: "
                                    f"{detail.decode('utf-8', 'replace')}")
            if response.content_type == _SSE:
                return await _stream(response, send, tags, tally, variant, config.read_timeout_s)
            data = await read_body(response, variant, config.read_timeout_s)
            if status == 200:
                tally.read_body(data)
            await send({"type": "http.response.start", "status": status,
                        "headers": response_headers(response) + tags})
            await send({"type": "http.response.body", "body": data})
        return status

    def _maybe_mirror(
        self,
        config: RouterConfig,
        assignment: Assignment,
        request: tuple[str, str, list[tuple[str, str]], bytes],
        doc: Any,
        tally: Tally,
    ) -> None:
        if (assignment.variant is Variant.BASELINE and config.shadow_percent > 0
                and self._shadow is not None and self.rng.random() * 100 < config.shadow_percent):
            _, path, headers, body = request
            self._shadow.offer(Mirror(path, headers, body, tally.output, is_greedy(doc)))


async def _stream(
    response: aiohttp.ClientResponse,
    send: Send,
    tags: list[tuple[bytes, bytes]],
    tally: Tally,
    variant: Variant,
    read_timeout_s: float,
) -> int:
    """Pass a server-sent-event stream on chunk by chunk as it arrives. The status is sent
    already, so a stream the engine cuts short (its connection breaks, it goes silent, or a 200
    stream ends without `data: [DONE]`) ends with an SSE error event, which OpenAI clients raise
    as an error, and counts as 502 (504 when silent)."""
    await send({"type": "http.response.start", "status": response.status,
                "headers": response_headers(response) + tags})
    status, problem = response.status, ""
    try:
        async for chunk in response.content.iter_any():
            tally.feed(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except TimeoutError:  # before ClientError: aiohttp's read timeout is both
        status, problem = 504, f"the {variant} replica sent nothing for {read_timeout_s} s mid-stream"
    except aiohttp.ClientError as exc:
        status, problem = 502, f"the {variant} replica cut its stream short: {str(exc) or type(exc).__name__}"
    else:
        if status == 200 and not tally.done:
            status, problem = 502, f"the {variant} replica ended its stream without data: [DONE]"
    tail = b""
    if problem:
        log.warning("%s", problem)
        # Blank lines first end whatever event the engine left unfinished, so the error is an
        # event of its own.
        tail = b"\n\ndata: " + json.dumps(error_doc(problem, "upstream_error", variant)).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": tail})
    return status


@dataclass
class _Served:
    """Which variant is answering a request: the assigned one, or the other after a failover."""

    variant: Variant


def _tags(variant: Variant, assignment: Assignment) -> list[tuple[bytes, bytes]]:
    """The headers naming who answered and why: its cohort, and the assigned variant after a
    failover."""
    tags = [(b"x-qinfra-variant", variant.value.encode()),
            (b"x-qinfra-cohort", assignment.cohort.value.encode())]
    if variant is not assignment.variant:
        tags.append((b"x-qinfra-failover-from", assignment.variant.value.encode()))
    return tags


def _gets_traffic(config: RouterConfig, variant: Variant) -> bool:
    """Whether the live weights send `variant` any client (or, quantized, shadow) traffic."""
    if variant is Variant.QUANTIZED:
        return config.quantized_percent > 0 or config.shadow_percent > 0
    return config.quantized_percent < 100


def _failover_target(config: RouterConfig, variant: Variant) -> Variant | None:
    """The variant that may answer for an unreachable `variant`: the other one, only when its
    weight is above 0 (so an outage never serves a variant the operator rolled back)."""
    other = Variant.BASELINE if variant is Variant.QUANTIZED else Variant.QUANTIZED
    share = config.quantized_percent if other is Variant.QUANTIZED else 100 - config.quantized_percent
    return other if share > 0 and config.replicas_of(other) else None


def _parse_body(body: bytes) -> tuple[Any, str | None]:
    """The body's JSON (None when empty or not JSON: forwarded as it is, the engine gives the
    client its own 400) and why the router refuses it, if it does: JSON nested past the parser's
    recursion limit cannot be read for its key, and is not handed to an engine's parser either."""
    if not body:
        return None, None
    try:
        return json.loads(body), None
    except ValueError:
        return None, None
    except RecursionError:
        return None, ("the request body is JSON nested too deeply to parse (Python's recursion "
                      f"limit, about {sys.getrecursionlimit()} levels); send a flatter body")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is rewritten in place or replaced by a rename."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _timeout(config: RouterConfig) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_s,
                                 sock_read=config.read_timeout_s)
