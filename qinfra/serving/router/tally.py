"""What an OpenAI-style response said, read from the bytes the router passes on: the text, the token
counts, the finish reasons and when each token arrived. The bytes themselves are never changed.

Token counts come from `usage` (a non-streamed body, or a stream's final chunk when the server sends
one: llama-server's /v1/completions always does, vLLM when the client asked with
stream_options.include_usage); else from llama-server's `timings` (predicted_n; prompt_n + cache_n);
else, for completion tokens only, from the number of chunks that carried text. The router does not
add include_usage to a client's body: bodies pass through untouched.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

_DATA = b"data:"


@dataclass
class Tally:
    """Facts gathered from one response; `token_times` are time.perf_counter() stamps of each chunk
    that carried text (a streamed response), the basis of TTFT and inter-token latency."""

    text: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # A stream's `data: [DONE]` arrived: an OpenAI-style stream that ends without it was cut.
    done: bool = False
    _pending: bytes = b""

    @property
    def output(self) -> str:
        return "".join(self.text)

    @property
    def completion_count(self) -> int:
        """Completion tokens: the server's count, else the text-bearing chunks seen."""
        return self.completion_tokens if self.completion_tokens is not None else len(self.token_times)

    def read_body(self, body: bytes) -> None:
        """A whole non-streamed JSON response."""
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):  # an engine's garbage is passed on, never fatal here
            return
        if isinstance(doc, dict):
            self._read(doc, streamed=False)

    def feed(self, chunk: bytes) -> None:
        """Part of a server-sent-event stream; lines split across chunks are joined first."""
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        now = time.perf_counter()
        for line in lines:
            line = line.strip()
            if not line.startswith(_DATA):
                continue
            data = line[len(_DATA) :].strip()
            if data == b"[DONE]":
                self.done = True
                continue
            try:
                doc = json.loads(data)
            except (ValueError, RecursionError):
                continue
            if isinstance(doc, dict) and self._read(doc, streamed=True):
                self.token_times.append(now)

    def _read(self, doc: dict[str, Any], *, streamed: bool) -> bool:
        """Take what `doc` says; True when it carried text."""
        carried = False
        choices = doc.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            piece = _choice_text(choice, streamed)
            if piece and choice.get("index", 0) == 0:
                self.text.append(piece)
            carried = carried or bool(piece)
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self.finish_reasons.append(reason)
        self._counts(doc)
        return carried

    def _counts(self, doc: dict[str, Any]) -> None:
        usage = doc.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = _int(usage.get("prompt_tokens"), self.prompt_tokens)
            self.completion_tokens = _int(usage.get("completion_tokens"), self.completion_tokens)
            return
        timings = doc.get("timings")  # llama-server's own, on its final chunk or body
        if isinstance(timings, dict):
            prompt = _int(timings.get("prompt_n"), None)
            if prompt is not None and self.prompt_tokens is None:
                self.prompt_tokens = prompt + (_int(timings.get("cache_n"), 0) or 0)
            if self.completion_tokens is None:
                self.completion_tokens = _int(timings.get("predicted_n"), None)


def _choice_text(choice: dict[str, Any], streamed: bool) -> str:
    """The text one choice carries: `text` (completions), else the chat message or delta content."""
    text = choice.get("text")
    if isinstance(text, str):
        return text
    message = choice.get("delta" if streamed else "message")
    if isinstance(message, dict):
        content = message.get("content")
        if isinstance(content, str):
            return content
    return ""


def _int(value: Any, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default
