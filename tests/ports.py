"""Ports for the servers the tests start: below the kernel's ephemeral range, so that no
outgoing connection (Pulumi's gRPC, an HTTP client) takes a port between the moment a test picks
it and the moment its server binds it (a stack file holds its ports for a whole module)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000


def ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int = 1) -> int:
    """A port p with p .. p + count - 1 free, outside the ephemeral range."""
    top = ephemeral_start() - count
    if top <= LOWEST:
        raise RuntimeError(f"the ephemeral range starts at {top + count}: no room below it")
    for _ in range(200):
        port = random.randrange(LOWEST, top)
        if all(_free(port + offset) for offset in range(count)):
            return port
    raise RuntimeError(f"no {count} free ports in a row below {top + count}")


def free_port() -> int:
    return free_ports(1)
