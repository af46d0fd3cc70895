"""A tiny OpenAI-shaped upstream, for what a real llama-server cannot do on cue or fast enough: the
share statistics over 2,000 keys, the benchmark's request rate, slow, failing and dead replicas.

Run: python tests/router/stub_upstream.py --port N --name NAME [--delay-s S]. It answers every
completion with `model: NAME` (so a test sees which replica served it) after S seconds
(/v1/models, the readiness probe, at once); a body
containing "fail" gets a 500.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import uvicorn


def make_app(name: str, delay_s: float) -> Any:
    reply = json.dumps({
        "object": "text_completion", "model": name,
        "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }).encode()
    models = json.dumps({"object": "list", "data": [{"id": name, "object": "model"}]}).encode()

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
        status, out = (500, b'{"error":"asked to fail"}') if b"fail" in body else (200, reply)
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
    args = parser.parse_args()
    uvicorn.run(make_app(args.name, args.delay_s), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)
