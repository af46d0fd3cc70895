"""The router as a bare ASGI app: OpenAI-compatible pass-through to the variant a request is
assigned, plus /health and /metrics. Bodies pass through untouched; every proxied response carries
x-qinfra-variant and x-qinfra-cohort.

Live weights: the app polls its config file's (mtime, size, inode) every `poll_s` and reloads on
change or on SIGHUP. A file, not an admin endpoint, because the file is the deployment's record of
the weights (a restarted router comes back with the same split), a writer needs no port, token or
pid (a local rollout, a systemd unit, a Kubernetes ConfigMap mount all just write the file), and a
stat() every 200 ms costs nothing. A reload swaps one reference: requests in flight finish on the
replica they hold. A file that fails to load leaves the last good config live and is counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp

from qinfra.core.spec import Variant
from qinfra.serving.router.assign import Assignment, assign
from qinfra.serving.router.balance import Pool
from qinfra.serving.router.config import RouterConfig, RouterConfigError, load_config
from qinfra.serving.router.keys import request_key
from qinfra.serving.router.metrics import RouterMetrics
from qinfra.serving.router.shadow import Mirror, Shadow, is_greedy
from qinfra.serving.router.tally import Tally
from qinfra.serving.router.upstream import (
    Sessions,
    UpstreamError,
    cancel,
    for_stream,
    forward_headers,
    read_body,
    response_headers,
    upstream_response,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger(__name__)
COMPLETIONS = frozenset({"/v1/completions", "/v1/chat/completions"})
MODELS = "/v1/models"
POLL_S = 0.2
# Status recorded when the client hangs up before its answer is complete (nginx's convention).
CLIENT_CLOSED = 499
_JSON = [(b"content-type", b"application/json")]
_SSE = "text/event-stream"


class Router:
    """One router process's state: the live config, replicas' load, metrics and the shadow queue."""

    def __init__(self, config_path: Path, *, poll_s: float = POLL_S, seed: int | None = None) -> None:
        """Raises RouterConfigError when the file cannot be loaded: a router never starts blind."""
        self.config_path = Path(config_path)
        self.config = load_config(self.config_path)
        self._stamp = _stamp(self.config_path)
        self.metrics = RouterMetrics()
        self.metrics.quantized_percent.set(self.config.quantized_percent)
        self.pool = Pool()
        self.rng = random.Random(seed)
        self.in_flight = 0
        self._poll_s = poll_s
        self._timeout = _timeout(self.config)
        self._session: Sessions | None = None
        self._shadow: Shadow | None = None
        self._poller: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    def reload(self) -> bool:
        """Load the config file again; True when the new one is live."""
        self._stamp = _stamp(self.config_path)
        try:
            config = load_config(self.config_path)
        except RouterConfigError as exc:
            log.error("%s; keeping the last good config", exc.message)
            self.metrics.reloads.labels("error").inc()
            return False
        self.config, self._timeout = config, _timeout(config)
        self.metrics.quantized_percent.set(config.quantized_percent)
        self.metrics.reloads.labels("ok").inc()
        log.info("config reloaded: quantized_percent %s", config.quantized_percent)
        return True

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
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)

    async def _stop(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._poller is not None:
            await cancel(self._poller)
        if self._shadow is not None:
            await self._shadow.stop()
        if self._session is not None:
            await self._session.close()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            if _stamp(self.config_path) != self._stamp:
                self.reload()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path in COMPLETIONS or path == MODELS:
            if method != ("GET" if path == MODELS else "POST"):
                await _json(send, 405, _error(f"{method} is not allowed on {path}", "invalid_request"))
                return
            await self._route(scope, receive, send)
        elif path == "/health" and method == "GET":
            await _json(send, 200, self._health())
        elif path == "/metrics" and method == "GET":
            body = self.metrics.exposition()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]})
            await send({"type": "http.response.body", "body": body})
        else:
            await _json(send, 404, _error(f"no route for {method} {path}", "not_found"))

    def _health(self) -> dict[str, Any]:
        config = self.config
        return {
            "status": "ok",
            "quantized_percent": config.quantized_percent,
            "shadow_percent": config.shadow_percent,
            "replicas": {v.value: list(config.replicas_of(v)) for v in Variant},
            "in_flight": self.in_flight,
        }

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Assign, bound, then proxy while watching for the client to hang up."""
        started = time.perf_counter()
        config = self.config  # one config for the whole request, whatever a reload does meanwhile
        body = await _read_request(receive)
        raw_headers = scope["headers"]
        headers = {k.decode("latin-1").lower(): v.decode("utf-8", "replace") for k, v in raw_headers}
        doc = _json_or_none(body)
        assignment = assign(request_key(headers, doc, config.key_header, config.cookie),
                            config.quantized_percent, config.salt, self.rng)
        variant, path = assignment.variant, scope["path"]
        endpoint = path.removeprefix("/v1/")
        if path in COMPLETIONS:
            self.metrics.assignments.labels(variant, assignment.cohort).inc()
        if self.in_flight >= config.max_in_flight:
            retry = str(config.retry_after_s).encode()
            await _json(send, 429, _error(f"the router has {self.in_flight} requests in flight, its "
                                          f"bound; retry after {config.retry_after_s} s", "overloaded",
                                          variant), [(b"retry-after", retry)])
            self.metrics.requests.labels(variant, endpoint, "429").inc()
            return
        forwarded = forward_headers(raw_headers)
        if isinstance(doc, dict) and doc.get("stream") is True:
            forwarded = for_stream(forwarded)
        request = (scope["method"], path + _query(scope), forwarded, body)
        gauge = self.metrics.in_flight.labels(variant)
        self.in_flight += 1
        gauge.inc()
        try:
            code = await self._watch(receive, send, lambda out: self._proxy(
                config, assignment, request, doc, out, started))
        finally:
            self.in_flight -= 1
            gauge.dec()
        self.metrics.requests.labels(variant, endpoint, str(code)).inc()

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
        watcher = asyncio.ensure_future(_disconnected(receive))
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
    ) -> int:
        """Forward `request` to the assigned variant and the answer back; returns the status sent."""
        variant = assignment.variant
        tags = [(b"x-qinfra-variant", variant.value.encode()),
                (b"x-qinfra-cohort", assignment.cohort.value.encode())]
        assert self._session is not None, "requests arrive only after lifespan startup"
        retried = self.metrics.retries.labels(variant).inc
        tally = Tally()
        try:
            async with upstream_response(self._session, self.pool, variant,
                                         config.replicas_of(variant), request, self._timeout,
                                         retried) as response:
                status = response.status
                if status >= 500:
                    detail = (await read_body(response, variant, config.read_timeout_s))[:300]
                    raise UpstreamError(502, variant, f"the {variant} replica answered {status}: "
                                        f"{detail.decode('utf-8', 'replace')}")
                if response.content_type == _SSE:
                    status = await _stream(response, send, tags, tally)
                else:
                    data = await read_body(response, variant, config.read_timeout_s)
                    if status == 200:
                        tally.read_body(data)
                    await send({"type": "http.response.start", "status": status,
                                "headers": response_headers(response) + tags})
                    await send({"type": "http.response.body", "body": data})
        except UpstreamError as exc:
            log.warning("%s (%s)", exc.message, exc.__cause__ or exc.status)
            await _json(send, exc.status, _error(exc.message, "upstream_error", variant), tags)
            return exc.status
        if status == 200 and request[1].split("?")[0] in COMPLETIONS:
            self.metrics.completed(variant, tally, started, time.perf_counter())
            self._maybe_mirror(config, assignment, request, doc, tally)
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
    response: aiohttp.ClientResponse, send: Send, tags: list[tuple[bytes, bytes]], tally: Tally
) -> int:
    """Pass a server-sent-event stream on chunk by chunk as it arrives. A stream the engine cuts
    short ends here too (the client sees no [DONE]) and counts as 502."""
    await send({"type": "http.response.start", "status": response.status,
                "headers": response_headers(response) + tags})
    status = response.status
    try:
        async for chunk in response.content.iter_any():
            tally.feed(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("upstream stream cut short: %s", exc)
        status = 502
    await send({"type": "http.response.body", "body": b""})
    return status


async def _read_request(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(parts)


async def _disconnected(receive: Receive) -> None:
    """Return once the client is gone (uvicorn also says so once the response is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _json(
    send: Send, status: int, doc: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON + (extra or [])})
    await send({"type": "http.response.body", "body": json.dumps(doc).encode()})


def _error(message: str, kind: str, variant: Variant | None = None) -> dict[str, Any]:
    """An OpenAI-style error body; `variant` names the side that failed."""
    error: dict[str, Any] = {"message": message, "type": kind}
    if variant is not None:
        error["variant"] = variant.value
    return {"error": error}


def _json_or_none(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None  # forwarded as it is: the engine gives the client its own 400


def _query(scope: Scope) -> str:
    query = scope.get("query_string", b"")
    return "?" + query.decode("latin-1") if query else ""


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
