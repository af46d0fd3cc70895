"""A tiny OpenAI-shaped upstream, for what a real llama-server cannot do on cue or fast enough: the
share statistics over 2,000 keys, the benchmark's request rate, slow, failing and dead replicas.

Run: python tests/router/stub_upstream.py --port N --name NAME [--delay-s S]. It answers every
completion with `model: NAME` (so a test sees which replica served it) after S seconds
(/v1/models, the readiness probe, at once); a body containing "fail" gets a 500, one containing
"echo-headers" also gets `request_headers` (what the router sent). A JSON body with
`"stream": true` gets a server-sent-event stream of three chunks and `data: [DONE]`; if the body
also contains "die", the stub sends two chunks and then kills itself with SIGKILL, as a crashing
engine would, mid-stream. `--text T` answers T instead of "ok" (streamed: one chunk per word),
for the output signals (a looping or refusing variant).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from typing import Any

import uvicorn


def make_app(name: str, delay_s: float, text: str | None = None) -> Any:
    models = json.dumps({"object": "list", "data": [{"id": name, "object": "model"}]}).encode()

    doc: dict[str, Any] = {
        "object": "text_completion", "model": name,
        "choices": [{"index": 0, "text": text or "ok", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": len((text or "ok").split()),
                  "total_tokens": 2 + len((text or "ok").split())},
    }
    plain = json.dumps(doc).encode()

    def reply(body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        if b"echo-headers" not in body:
            return plain
        seen = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
        return json.dumps({**doc, "request_headers": seen}).encode()

    def chunk(text: str, finish: str | None = None) -> bytes:
        doc = {"object": "text_completion", "model": name,
               "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
        return b"data: " + json.dumps(doc).encode() + b"\n\n"

    async def stream(send: Any, die: bool) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        words = ("one", " two", " three")
        if text:
            first, *rest = text.split(" ")
            words = (first, *(" " + w for w in rest))
        last = len(words) - 1
        for i, piece in enumerate(words):
            if die and i == 2:
                await asyncio.sleep(0.2)  # let the two chunks leave first
                os.kill(os.getpid(), signal.SIGKILL)
            await send({"type": "http.response.body", "body": chunk(piece, "stop" if i == last else None),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if delay_s and scope["path"] != "/v1/models":  # the readiness probe is never slowed:
            await asyncio.sleep(delay_s)  # a 2 s delay raced wait_ready's 2 s timeout under load
        try:
            request = json.loads(body) if body else None
        except ValueError:
            request = None
        if isinstance(request, dict) and request.get("stream") is True:
            await stream(send, b"die" in body)
            return
        if b"fail" in body:
            status, out = 500, b'{"error":"asked to fail"}'
        else:
            status, out = 200, reply(body, scope["headers"])
        if scope["path"] == "/v1/models":
            out = models
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--text", default=None)
    args = parser.parse_args()
    uvicorn.run(make_app(args.name, args.delay_s, args.text), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)
