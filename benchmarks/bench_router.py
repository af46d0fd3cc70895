"""The router's cost: added latency against calling llama-server directly, and its request rate.

Run: .venv/bin/python benchmarks/bench_router.py [--requests 300] [--seconds 5] [--concurrency 32]
Starts a real llama-server on the demo model, a stub upstream and a router in front of each, all on
loopback. Prints p50/p99 of a non-streamed completion (max_tokens 1) and of the first streamed
chunk, direct and through the router (requests interleaved, so drift hits both sides alike), the
difference and the ratio; then requests/s through the router to the stub against the stub alone.
Aims (issue 12): at most 1 ms added at p50 and 5 ms at p99; at least 1,500 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qinfra.core.demomodel import write_demo_model  # noqa: E402
from qinfra.serving.llamacpp import SERVER, find_binary  # noqa: E402
from tests.router.processes import (  # noqa: E402
    free_port,
    start_llama_server,
    start_router,
    start_stub,
    stop,
)

BODY = {"prompt": "Hello", "max_tokens": 1, "temperature": 0}


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def timed(session: aiohttp.ClientSession, url: str, streamed: bool) -> float:
    """Seconds to the whole body (plain) or to the first body chunk (streamed)."""
    start = time.perf_counter()
    async with session.post(url, json={**BODY, "stream": streamed, "max_tokens": 4 if streamed else 1}
                            ) as resp:
        if streamed:
            await resp.content.readany()
            took = time.perf_counter() - start
            await resp.read()
            return took
        await resp.read()
        assert resp.status == 200, resp.status
        return time.perf_counter() - start


async def latency(direct: str, routed: str, n: int) -> None:
    async with aiohttp.ClientSession() as session:
        for streamed in (False, True):
            label = "first streamed chunk" if streamed else "non-streamed (1 token)"
            times: dict[str, list[float]] = {"direct": [], "router": []}
            for _ in range(10):  # warm both paths
                await timed(session, direct + "/v1/completions", streamed)
                await timed(session, routed + "/v1/completions", streamed)
            for _ in range(n):
                times["direct"].append(await timed(session, direct + "/v1/completions", streamed))
                times["router"].append(await timed(session, routed + "/v1/completions", streamed))
            for q in (50, 99):
                d, r = pct(times["direct"], q) * 1000, pct(times["router"], q) * 1000
                print(f"{label:24} p{q}: direct {d:7.2f} ms  router {r:7.2f} ms  "
                      f"added {r - d:6.2f} ms  ratio {r / d:5.2f}")


async def rate(url: str, seconds: float, concurrency: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    payload = json.dumps({"prompt": "x", "user": "bench"}).encode()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.post(url, data=payload) as resp:
                    await resp.read()
                    done += resp.status == 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="requests per latency series")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the rate run")
    parser.add_argument("--concurrency", type=int, default=32, help="clients in the rate run")
    args = parser.parse_args()
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        try:
            model = folder / "demo.gguf"
            write_demo_model(model)
            llama_port, stub_port = free_port(), free_port()
            procs.append(start_llama_server(find_binary(SERVER), model, llama_port, "demo",
                                            folder / "llama.log"))
            procs.append(start_stub(stub_port, "stub", folder / "stub.log"))
            routed = {}
            for name, port in (("llama", llama_port), ("stub", stub_port)):
                config = folder / f"{name}.json"
                config.write_text(json.dumps({"replicas": {"baseline": [f"http://127.0.0.1:{port}"]},
                                              "max_in_flight": 4096}))
                router_port = free_port()
                procs.append(start_router(config, router_port, folder / f"router-{name}.log"))
                routed[name] = f"http://127.0.0.1:{router_port}"
            asyncio.run(latency(f"http://127.0.0.1:{llama_port}", routed["llama"], args.requests))
            stub = asyncio.run(rate(f"http://127.0.0.1:{stub_port}/v1/completions", args.seconds,
                                    args.concurrency))
            through = asyncio.run(rate(routed["stub"] + "/v1/completions", args.seconds,
                                       args.concurrency))
            print(f"request rate (stub upstream, {args.concurrency} clients): stub alone "
                  f"{stub:7.0f} req/s  through the router {through:7.0f} req/s  "
                  f"ratio {through / stub:4.2f}")
        finally:
            for proc in procs:
                stop(proc)


if __name__ == "__main__":
    main()
