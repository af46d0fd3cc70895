"""A plain HTTP client for the router tests: stdlib only, so what is tested is the router."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families


def call(
    base: str, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str], Any]:
    """(status, lower-cased headers, parsed JSON or text) of one request."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, got = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        status, raw, got = exc.code, exc.read(), exc.headers
    text = raw.decode("utf-8", "replace")
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = text
    return status, {k.lower(): v for k, v in got.items()}, parsed


def stream(base: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
           ) -> tuple[int, dict[str, str], list[dict[str, Any]]]:
    """A streamed request read to its end: (status, headers, the JSON events)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json",
                                                  **(headers or {})})
    resp = conn.getresponse()
    raw = resp.read().decode()
    conn.close()
    events = [json.loads(line[5:]) for line in raw.split("\n")  # not splitlines(): U+2028 in text
              if line.startswith("data:") and line[5:].strip() != "[DONE]"]
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, events


def metrics(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the router's /metrics, keyed by (name, labels)."""
    _, _, text = call(base, "/metrics")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(base: str, name: str, **labels: str) -> float:
    return metrics(base).get((name, frozenset(labels.items())), 0.0)


def wait_for(predicate: Any, timeout: float = 10, what: str = "condition") -> float:
    """Poll `predicate` until true; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout} s")
