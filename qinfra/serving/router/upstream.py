"""Sending one request to a replica of one variant: least outstanding first, one retry on another
replica of the same variant when the connection is refused, and errors that name the variant.

When no replica of the variant accepts the connection, `Unreachable` says so: nothing was sent, so
the caller may answer from the other variant (app.py decides when, and counts it). Each connect's
outcome marks the replica up or down, and `accepts` is the light probe that keeps that fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from qinfra.core.spec import Variant
from qinfra.serving.router.balance import Pool

# RFC 9110 7.6.1 (Connection) and RFC 9112: hop-by-hop headers, never forwarded. Host and
# content-length are set again by the client library for the new connection and body.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})
# Router to engine stays uncompressed, so the router can read usage from the bytes it passes on:
# the client's Accept-Encoding is dropped and `identity` said instead. Saying it matters: aiohttp
# otherwise adds its own `gzip, deflate`, and no header at all means any coding is acceptable
# (RFC 9110 12.5.3).
_REQUEST_DROP = HOP_BY_HOP | {"accept-encoding"}
_IDENTITY = ("Accept-Encoding", "identity")
# Attempts per request: the first replica, then one other of the same variant.
ATTEMPTS = 2


class UpstreamError(Exception):
    """No usable answer from `variant`: `status` is what the client gets (502 or 504)."""

    def __init__(self, status: int, variant: Variant, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.variant = variant
        self.message = message


class Unreachable(UpstreamError):
    """No replica of the variant accepted the connection (refused, or no connect in time): the
    request was never sent, so answering it from elsewhere cannot run it twice."""


@dataclass(frozen=True)
class Sessions:
    """The client sessions to the engines: `pooled` keeps connections alive (the common path);
    `fresh` opens a new one per request, for the retry after a pooled connection went stale."""

    pooled: aiohttp.ClientSession
    fresh: aiohttp.ClientSession

    @classmethod
    def open(cls) -> Sessions:
        # Unlimited: the in-flight bound is the router's own, answered with 429. Idle connections
        # are dropped after 4 s, before llama-server's (cpp-httplib's) 5 s keep-alive timeout
        # (it sends `Keep-Alive: timeout=5`), so a pooled connection is rarely found closed.
        pooled = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4), auto_decompress=False)
        fresh = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True), auto_decompress=False)
        return cls(pooled, fresh)

    async def close(self) -> None:
        await self.pooled.close()
        await self.fresh.close()


def forward_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The client's request headers an engine should see (its Authorization among them), and
    `Accept-Encoding: identity`."""
    return [
        *((name.decode("latin-1"), value.decode("latin-1"))
          for name, value in headers
          if name.lower().decode("latin-1") not in _REQUEST_DROP),
        _IDENTITY,
    ]


def for_stream(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers for a streamed request: its connection is closed after the stream, because
    llama-server closes a connection that carried a stream soon after, whatever its Keep-Alive
    header says (measured: about half of reused connections failed)."""
    return [*headers, ("Connection", "close")]


def response_headers(upstream: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    """The engine's response headers the client should see, as ASGI byte pairs."""
    return [
        (name.lower(), value)
        for name, value in upstream.raw_headers
        if name.lower().decode("latin-1") not in HOP_BY_HOP
    ]


@asynccontextmanager
async def upstream_response(
    sessions: Sessions,
    pool: Pool,
    variant: Variant,
    urls: tuple[str, ...],
    request: tuple[str, str, list[tuple[str, str]], bytes],
    timeout: aiohttp.ClientTimeout,
    on_retry: Callable[[], None],
) -> AsyncIterator[aiohttp.ClientResponse]:
    """The response of the least-loaded replica of `variant` to `request` (method, path, headers,
    body), held open for the block; the replica counts as loaded until the block ends.

    A refused connection (or none made in time) marks the replica down and moves to another
    replica of the variant (once); an accepted one marks it up. A pooled connection the engine had
    already closed (it fails before any answer) is sent again, once, on a fresh one.
    Raises Unreachable (502) when no replica accepts the connection, UpstreamError 502 when one
    fails mid-request and 504 when it does not answer in time.
    """
    method, path, headers, body = request
    refused: list[str] = []
    stale_retried = False
    attempt = 0
    while attempt < ATTEMPTS:
        replica = pool.pick(urls, frozenset(refused))
        if replica is None:
            break
        session = sessions.fresh if stale_retried else sessions.pooled
        replica.outstanding += 1
        try:
            try:
                response = await session.request(
                    method, replica.url + path, headers=headers, data=body or None, timeout=timeout
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
                replica.mark(False)
                refused.append(replica.url)
                attempt += 1
                if attempt < ATTEMPTS and len(refused) < len(urls):
                    on_retry()
                continue
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if stale_retried:
                    raise UpstreamError(502, variant, f"the {variant} replica {replica.url} "
                                        f"closed the connection: {exc}") from exc
                stale_retried = True
                continue
            except TimeoutError as exc:
                raise UpstreamError(504, variant, f"the {variant} replica {replica.url} did not "
                                    f"answer within {timeout.sock_read} s") from exc
            except aiohttp.ClientError as exc:
                raise UpstreamError(502, variant, f"the {variant} replica {replica.url} failed: "
                                    f"{exc}") from exc
            replica.mark(True)
            try:
                yield response
            finally:
                response.close()  # a response not read to its end is cut, not pooled
            return
        finally:
            replica.outstanding -= 1
    tried = ", ".join(refused) or "none configured"
    raise Unreachable(502, variant, f"no {variant} replica accepted the connection (tried: {tried})")


async def accepts(url: str, timeout_s: float) -> bool:
    """Whether the replica at base URL `url` accepts a TCP connection within `timeout_s`: the
    probe behind the up/down marks. A connect, not a request: it needs no API key and costs an
    engine nothing, and refused connects are exactly what failover keys on."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):  # a reset on close still means it accepted
        await writer.wait_closed()
    return True


async def read_body(response: aiohttp.ClientResponse, variant: Variant, read_timeout_s: float) -> bytes:
    """The whole body; a stall maps to 504 and a cut connection to 502, naming the variant."""
    try:
        return await response.read()
    except TimeoutError as exc:
        raise UpstreamError(504, variant, f"the {variant} replica did not finish its answer within "
                            f"{read_timeout_s} s of silence") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(502, variant, f"the {variant} replica cut its answer short: {exc}") from exc


async def cancel(task: asyncio.Task[object]) -> None:
    """Cancel `task` and wait until it has unwound (closing its upstream connection)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)  # its own end, whatever it was, is expected
