"""Faults injected into the real router process (issue 26): a config file it cannot decode or
parse, an engine killed by its pid, an HTTP/1.0 client, a request body nested too deeply, the
compression the engines are asked for, and a stream cut by an engine that dies mid-answer."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import urllib.parse
from typing import Any

import pytest

from tests.router.client import call, sample, wait_for

pytestmark = pytest.mark.real

KEY = "X-Qinfra-User"


def _health(base: str) -> dict[str, Any]:
    status, _, doc = call(base, "/health")
    assert status == 200, doc  # degraded or not, the router answers 200 while it serves
    return doc


def test_an_undecodable_or_too_deep_config_keeps_the_last_good_and_polling_goes_on(stubs, router):
    good = {"replicas": {"baseline": [stubs("b")], "quantized": [stubs("q")]}, "quantized_percent": 10}
    r = router(good)
    r.config.write_bytes(b"\xff\xfe{}")  # as `printf '\xff\xfe{}' > config.json` does: in place
    wait_for(lambda: sample(r.base, "qinfra_router_config_reloads_total", result="error") == 1,
             what="the undecodable file counted")
    doc = _health(r.base)
    assert doc["status"] == "degraded" and doc["quantized_percent"] == 10
    assert "not UTF-8" in doc["config_error"] and any("did not load" in p for p in doc["problems"])
    assert sample(r.base, "qinfra_router_config_error") == 1

    r.config.write_bytes(b"[" * 100_000)
    wait_for(lambda: sample(r.base, "qinfra_router_config_reloads_total", result="error") == 2,
             what="the too-deep file counted")
    assert "nested too deeply" in _health(r.base)["config_error"]
    status, headers, _ = call(r.base, "/v1/completions", {"prompt": "x"}, {KEY: "still-served"})
    assert status == 200 and headers["x-qinfra-variant"] in ("baseline", "quantized")

    r.write({**good, "quantized_percent": 20})  # the poller is alive: a valid write is taken
    wait_for(lambda: _health(r.base)["quantized_percent"] == 20, what="the valid config live")
    doc = _health(r.base)
    assert doc["status"] == "ok" and doc["config_error"] is None and doc["problems"] == []
    assert sample(r.base, "qinfra_router_config_error") == 0
    assert sample(r.base, "qinfra_router_config_reloads_total", result="ok") == 1
    assert r.log.read_text().count("keeping the last good config") == 2


def test_a_killed_engine_fails_over_to_the_other_variant_and_health_says_so(stub_process, router):
    b_url, _ = stub_process("b")
    q_url, q_proc = stub_process("q")
    settings = {"replicas": {"baseline": [b_url], "quantized": [q_url]}, "quantized_percent": 50,
                "salt": "kill"}
    r = router(settings)
    users: dict[str, str] = {}
    for i in range(30):
        status, headers, reply = call(r.base, "/v1/completions", {"prompt": "x"}, {KEY: f"k{i}"})
        assert status == 200 and reply["model"] == headers["x-qinfra-variant"][0]
        users[f"k{i}"] = headers["x-qinfra-variant"]
    quantized = [u for u, v in users.items() if v == "quantized"]
    assert quantized and len(quantized) < len(users)

    os.kill(q_proc.pid, signal.SIGKILL)  # the quantized engine dies
    q_proc.wait(timeout=10)
    for user, variant in users.items():
        status, headers, reply = call(r.base, "/v1/completions", {"prompt": "x"}, {KEY: user})
        assert status == 200, reply  # nobody gets a 502: nothing had been sent, so it moved
        assert headers["x-qinfra-variant"] == "baseline" and reply["model"] == "b"
        assert headers.get("x-qinfra-failover-from") == (None if variant == "baseline" else "quantized")
    assert sample(r.base, "qinfra_router_failovers_total", variant="quantized") == len(quantized)
    assert sample(r.base, "qinfra_router_failovers_total", variant="baseline") == 0
    assert sample(r.base, "qinfra_router_requests_total", variant="quantized", endpoint="completions",
                  code="502") == 0
    assert sample(r.base, "qinfra_router_upstream_up", variant="quantized") == 0
    assert sample(r.base, "qinfra_router_upstream_up", variant="baseline") == 1
    doc = _health(r.base)
    assert doc["status"] == "degraded" and doc["upstreams"]["quantized"] == {"up": False, "down": [q_url]}
    assert "no quantized replica accepts connections" in doc["problems"]

    # Restarted on its port, the engine is probed up again and its users come back to it.
    _, q2_proc = stub_process("Q", port=urllib.parse.urlsplit(q_url).port)
    wait_for(lambda: _health(r.base)["upstreams"]["quantized"]["up"], what="quantized probed up")
    for user in quantized:
        status, headers, reply = call(r.base, "/v1/completions", {"prompt": "x"}, {KEY: user})
        assert status == 200 and headers["x-qinfra-variant"] == "quantized" and reply["model"] == "Q"
    assert _health(r.base)["status"] == "ok"

    # With the baseline at 0% there is nowhere to fail over to: a rollout at 100% stays where it is.
    r.write({**settings, "quantized_percent": 100})
    wait_for(lambda: _health(r.base)["quantized_percent"] == 100, what="100% live")
    os.kill(q2_proc.pid, signal.SIGKILL)
    q2_proc.wait(timeout=10)
    status, headers, reply = call(r.base, "/v1/completions", {"prompt": "x"}, {KEY: quantized[0]})
    assert status == 502 and headers["x-qinfra-variant"] == "quantized", reply
    assert "no quantized replica accepted the connection" in reply["error"]["message"]


def _raw_http10(base: str, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send `request` as it is and read until the router closes: (status line, headers, body)."""
    parts = urllib.parse.urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return status, headers, body


def _http10_post(base: str, path: str, doc: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    body = json.dumps(doc).encode()
    head = (f"POST {path} HTTP/1.0\r\nHost: router\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return _raw_http10(base, head + body)


def test_http10_clients_get_content_length_never_chunked(stubs, router):
    r = router({"replicas": {"baseline": [stubs("b")]}, "quantized_percent": 0})
    answers = {
        "plain": _http10_post(r.base, "/v1/completions", {"prompt": "x"}),
        "stream": _http10_post(r.base, "/v1/completions", {"prompt": "x", "stream": True}),
        "health": _raw_http10(r.base, b"GET /health HTTP/1.0\r\n\r\n"),
        "404": _raw_http10(r.base, b"GET /nothing HTTP/1.0\r\n\r\n"),
    }
    for name, (status, headers, body) in answers.items():
        assert "transfer-encoding" not in headers, (name, headers)
        assert headers["content-length"] == str(len(body)), (name, headers)
        assert status.split()[1] == ("404" if name == "404" else "200"), (name, status)
    assert json.loads(answers["plain"][2])["model"] == "b"
    stream = answers["stream"][2]
    assert stream.startswith(b"data: {") and stream.endswith(b"data: [DONE]\n\n")  # no chunk sizes


def test_a_request_body_nested_too_deeply_is_a_counted_400(stubs, router):
    r = router({"replicas": {"baseline": [stubs("b")]}, "quantized_percent": 0})
    parts = urllib.parse.urlsplit(r.base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("POST", "/v1/completions", b"[" * 100_000, {"Content-Type": "application/json"})
    response = conn.getresponse()
    status, reply = response.status, json.loads(response.read())
    conn.close()
    assert status == 400, reply
    assert reply["error"]["type"] == "invalid_request" and "nested too deeply" in reply["error"]["message"]
    assert sample(r.base, "qinfra_router_requests_total", variant="baseline", endpoint="completions",
                  code="400") == 1
    assert call(r.base, "/v1/completions", {"prompt": "x"})[0] == 200  # and the router serves on


def test_engine_requests_ask_for_identity_encoding_whatever_the_client_accepts(stubs, router):
    r = router({"replicas": {"baseline": [stubs("b")]}, "quantized_percent": 0})
    for accept in ({"Accept-Encoding": "gzip, br"}, {}):
        status, _, reply = call(r.base, "/v1/completions", {"prompt": "echo-headers"}, accept)
        assert status == 200, reply
        assert reply["request_headers"]["accept-encoding"] == "identity", reply["request_headers"]


def _raw_stream(base: str, doc: dict[str, Any]) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps(doc), {"Content-Type": "application/json"})
    response = conn.getresponse()
    status, body = response.status, response.read()  # raises IncompleteRead if framing broke
    conn.close()
    return status, body


def test_a_stream_cut_by_a_dying_engine_ends_with_an_error_event_and_counts_as_502(stubs, router):
    r = router({"replicas": {"baseline": [stubs("b")]}, "quantized_percent": 0})
    status, body = _raw_stream(r.base, {"prompt": "x", "stream": True})
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")  # a whole stream is left alone
    assert b"error" not in body

    status, body = _raw_stream(r.base, {"prompt": "please die", "stream": True})
    assert status == 200  # sent before the engine died
    events = [line[5:].strip() for line in body.split(b"\n") if line.startswith(b"data:")]
    assert b"[DONE]" not in events
    texts = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert texts == ["one", " two"]
    error = json.loads(events[-1])["error"]
    assert error["type"] == "upstream_error" and error["variant"] == "baseline"
    assert "cut its stream short" in error["message"]
    assert sample(r.base, "qinfra_router_requests_total", variant="baseline", endpoint="completions",
                  code="502") == 1
    assert sample(r.base, "qinfra_router_requests_total", variant="baseline", endpoint="completions",
                  code="200") == 1
