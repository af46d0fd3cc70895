"""One streamed request, timed from the client's side: when the first token arrived, every gap
after it, the end, the server's token counts and its own `timings` where it sends them.

Times are `time.perf_counter()` seconds; the client's own work on each chunk (reading the line,
parsing its JSON) is summed apart, so a result says how much of what it measured was the client.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from qinfra.quality.bench_workload import BenchRequest

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
_DATA = b"data:"
_DONE = b"[DONE]"
_ERROR_BODY_CHARS = 300


@dataclass
class RequestResult:
    """What one request measured. Offsets are seconds from the start of the run; latencies are
    seconds; `itl_s` holds the gap before each content chunk after the first."""

    index: int
    scheduled_s: float = 0.0
    sent_s: float = 0.0
    ok: bool = False
    error: str = ""
    ttft_s: float = 0.0
    e2el_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    content_chunks: int = 0
    server_prompt_ms: float | None = None
    server_predicted_ms: float | None = None
    client_s: float = 0.0  # the client's own time on this request's chunks

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first, as vllm bench serve defines it."""
        if not self.ok or self.output_tokens < 2:
            return None
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "ok": self.ok, "error": self.error,
                "scheduled_s": self.scheduled_s, "sent_s": self.sent_s, "ttft_s": self.ttft_s,
                "tpot_s": self.tpot_s, "e2el_s": self.e2el_s, "itl_s": self.itl_s,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "server_prompt_ms": self.server_prompt_ms,
                "server_predicted_ms": self.server_predicted_ms, "client_s": self.client_s}


@dataclass(frozen=True)
class Target:
    """Where requests go: the server's base URL, the model name it serves, its API key."""

    base_url: str
    model: str
    api_key: str | None = None

    def url(self, request: BenchRequest) -> str:
        return self.base_url.rstrip("/") + (CHAT if request.chat else COMPLETIONS)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


async def send(session: aiohttp.ClientSession, target: Target, request: BenchRequest,
               result: RequestResult, t0: float) -> RequestResult:
    """Send `request` streamed and fill `result`; never raises for a failed request (the error
    text says what the server or the connection did)."""
    body = json.dumps(request.body(target.model)).encode()
    start = time.perf_counter()
    result.sent_s = start - t0
    try:
        async with session.post(target.url(request), data=body, headers=target.headers()) as resp:
            if resp.status != 200:
                text = (await resp.text(errors="replace"))[:_ERROR_BODY_CHARS]
                result.error = f"http {resp.status}: {text.strip()}"
                return result
            await _read_stream(resp, result, start)
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    except ValueError as exc:  # a chunk that is not JSON
        result.error = f"a streamed chunk is not JSON: {exc}"
        return result
    if not result.error and result.output_tokens == 0:
        result.error = "the stream ended without a token"
    result.ok = not result.error
    return result


async def _read_stream(resp: aiohttp.ClientResponse, result: RequestResult, start: float) -> None:
    """Server-sent events, one `data:` line per chunk; a chunk with text is a token arriving.
    Tokens that reach the client as no text at all (a character's first bytes held back, and
    the stream then ended) count as arriving with the last chunk."""
    last = last_data = start
    async for line in resp.content:
        now = time.perf_counter()
        payload = line[len(_DATA):].strip() if line.startswith(_DATA) else _DONE
        if payload != _DONE:
            last_data = now
            chunk = json.loads(payload)
            if _has_content(chunk):
                if result.content_chunks == 0:
                    result.ttft_s = now - start
                else:
                    result.itl_s.append(now - last)
                result.content_chunks += 1
                last = now
            _account(chunk, result)
        result.client_s += time.perf_counter() - now  # read on to the end: clean connections
    if result.content_chunks == 0 and result.output_tokens:
        last = last_data
        result.ttft_s = last_data - start
    result.e2el_s = last - start
    if not result.output_tokens:
        result.output_tokens = result.content_chunks


def _has_content(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


def _account(chunk: dict[str, Any], result: RequestResult) -> None:
    """Token counts from `usage`, llama-server's `timings`, and an error the stream carried."""
    if error := chunk.get("error"):
        result.error = f"the stream carried an error: {json.dumps(error)[:_ERROR_BODY_CHARS]}"
    if usage := chunk.get("usage"):
        result.input_tokens = int(usage.get("prompt_tokens") or 0)
        result.output_tokens = int(usage.get("completion_tokens") or 0)
    if timings := chunk.get("timings"):
        result.server_prompt_ms = timings.get("prompt_ms")
        result.server_predicted_ms = timings.get("predicted_ms")


async def served_model(session: aiohttp.ClientSession, base_url: str, api_key: str | None) -> str:
    """The first model id of GET /v1/models: what a bare URL target is asked for."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with session.get(base_url.rstrip("/") + "/v1/models", headers=headers) as resp:
        resp.raise_for_status()
        data = await resp.json(content_type=None)
    models = data.get("data") or []
    return str(models[0]["id"]) if models else ""
