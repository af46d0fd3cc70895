"""`python -m qinfra.serving.router --config FILE --host 127.0.0.1 --port N`: run the router.

uvicorn serves the app with one worker: the in-flight bound, least-outstanding balancing and the
metrics are the process's own state, and one asyncio process passes the throughput aim on two
cores (benchmarks/bench_router.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn
from prometheus_client import disable_created_metrics

from qinfra.serving.router.app import POLL_S, PROBE_S, Router
from qinfra.serving.router.config import RouterConfigError

# On SIGTERM uvicorn stops accepting and lets requests in flight finish, up to this long.
GRACEFUL_S = 30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qinfra.serving.router", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="router config file (JSON/YAML)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--poll-s", type=float, default=POLL_S, help="config file poll interval")
    parser.add_argument("--probe-s", type=float, default=PROBE_S,
                        help="seconds between TCP probes of every replica (up/down, failover)")
    parser.add_argument("--log-level", default="warning", help="uvicorn and router log level")
    args = parser.parse_args(argv)
    disable_created_metrics()  # *_created series double the exposition and nothing reads them
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        app = Router(args.config, poll_s=args.poll_s, probe_s=args.probe_s)
    except RouterConfigError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    # The engines' own Server and Date headers pass through, so uvicorn adds none of its own.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                server_header=False, date_header=False, timeout_graceful_shutdown=GRACEFUL_S,
                lifespan="on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
