"""The ASGI plumbing the router's app stands on: reading a request, answering JSON and errors,
noticing a client that left, and sending whole bodies to HTTP/1.0 clients."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from qinfra.core.spec import Variant

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]


async def read_request(receive: Receive) -> bytes:
    """The whole request body (the router forwards it whole, and reads its key from it)."""
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(parts)


async def disconnected(receive: Receive) -> None:
    """Return once the client is gone (uvicorn also says so once the response is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_json(
    send: Send, status: int, doc: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": JSON_HEADERS + (extra or [])})
    await send({"type": "http.response.body", "body": json.dumps(doc).encode()})


def error_doc(message: str, kind: str, variant: Variant | None = None) -> dict[str, Any]:
    """An OpenAI-style error body; `variant` names the side that failed."""
    error: dict[str, Any] = {"message": message, "type": kind}
    if variant is not None:
        error["variant"] = variant.value
    return {"error": error}


def whole_body(send: Send) -> Send:
    """`send` for an HTTP/1.0 client: the response is held until its last part and sent whole
    with content-length, since HTTP/1.0 has no chunked coding and uvicorn's httptools protocol
    frames every body without a length as chunked, whatever the client's version."""
    start: Message | None = None
    parts: list[bytes] = []

    async def whole(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            await send(message)
            return
        parts.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(parts)
        headers = [(k, v) for k, v in start.get("headers", [])
                   if k.lower() not in (b"content-length", b"transfer-encoding")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return whole


def query_string(scope: Scope) -> str:
    query = scope.get("query_string", b"")
    return "?" + query.decode("latin-1") if query else ""
