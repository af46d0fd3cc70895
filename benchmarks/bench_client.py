"""The bench harness's own cost: client time per request, and the request rate it sustains
before it, not the server, limits a run (issue 14: "the client must not be the bottleneck").

Run: .venv/bin/python benchmarks/bench_client.py [--requests 2000] [--tokens 16]
Starts a stub OpenAI server on loopback that streams `--tokens` chunks per request at once (so
the server costs next to nothing), then: a closed loop at concurrency 1 and 32 (client ms per
request: its own chunk handling, and its CPU time over requests); open-loop runs at rising rates,
each reporting the rate achieved, the schedule lag p99 and whether the client said it limited
the run. The stub runs in its own process, so on two cores client and server each have one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qinfra.quality.bench_client import Target  # noqa: E402
from qinfra.quality.bench_runner import BenchRun, Load, run  # noqa: E402
from qinfra.quality.bench_workload import parse_distribution, synthetic  # noqa: E402
from tests.router.processes import free_port, stop, wait_ready  # noqa: E402

RATES = (250, 500, 1000, 2000, 4000)


def stub_app(tokens: int) -> Any:
    """An ASGI app answering every POST with `tokens` SSE chunks, usage and [DONE]."""
    chunk = b"data: " + json.dumps({"choices": [{"index": 0, "text": "x"}]}).encode() + b"\n\n"
    tail = (b"data: " + json.dumps({"choices": [{"index": 0, "text": "", "finish_reason": "length"}],
                                    "usage": {"prompt_tokens": 8, "completion_tokens": tokens}}
                                   ).encode() + b"\n\ndata: [DONE]\n\n")
    models = json.dumps({"data": [{"id": "stub"}]}).encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["method"] == "GET":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": models})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for _ in range(tokens):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": tail})

    return app


def serve_stub(port: int, tokens: int) -> None:
    import uvicorn

    uvicorn.run(stub_app(tokens), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


def _bench(base: str, n: int, tokens: int, load: Load) -> dict[str, Any]:
    requests = synthetic(n, parse_distribution("-", "8"), parse_distribution("-", str(tokens)), 0)
    return run(BenchRun(Target(base, "stub"), tuple(requests), load))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--serve-stub", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stub:
        serve_stub(args.serve_stub, args.tokens)
        return
    port = free_port()
    log = Path("/tmp") / f"bench-client-stub-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, __file__, "--serve-stub", str(port), "--tokens",
                                 str(args.tokens)], stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{base}/v1/models", log)
        _bench(base, 200, args.tokens, Load(concurrency=8))  # warm up
        print(f"stub streams {args.tokens} chunks per request; {args.requests} requests per run")
        for concurrency in (1, 32):
            r = _bench(base, args.requests, args.tokens, Load(concurrency=concurrency))
            c = r["client"]
            cpu_ms = c["cpu_fraction"] * r["duration"] / r["num_prompts"] * 1000
            print(f"closed loop c={concurrency:>2}: {r['request_throughput']:7.0f} req/s, client "
                  f"{c['overhead_ms_per_request']:.3f} ms/request on chunks, {cpu_ms:.3f} ms CPU "
                  f"per request, {c['cpu_fraction']:.0%} of a core")
        for rate in RATES:
            r = _bench(base, min(args.requests, rate * 4), args.tokens, Load(rate=float(rate)))
            c = r["client"]
            print(f"open loop {rate:>5} req/s: achieved {r['request_throughput']:7.0f} req/s, lag "
                  f"p99 {c['schedule_lag_p99_ms']:6.2f} ms, failed {r['failed']}, client-limited: "
                  f"{c['limited']}{' (' + c['why'] + ')' if c['limited'] else ''}")
    finally:
        stop(proc)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
