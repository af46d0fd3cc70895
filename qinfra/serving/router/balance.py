"""Within a variant: send each request to the replica with the fewest requests outstanding, among
those last seen accepting connections."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Replica:
    """One engine's base URL and how many requests the router has in flight to it. Kept across
    config reloads by URL, so a reload never forgets the load already sent."""

    url: str
    outstanding: int = 0
    # Whether its last connection (a request's or the probe's) was accepted. Optimistic at first:
    # a replica is tried before anything is known, and a refused connect marks it at once.
    up: bool = True

    def mark(self, up: bool) -> None:
        """Record a connection outcome; a change is logged, since it moves traffic."""
        if up != self.up:
            if up:
                log.warning("replica %s accepts connections again", self.url)
            else:
                log.warning("replica %s refuses connections: marked down", self.url)
        self.up = up


class Pool:
    """The replicas the router knows, by URL; `pick` is least-outstanding with ties taken in turn so
    idle replicas share the load instead of the first one taking it all."""

    def __init__(self) -> None:
        self._replicas: dict[str, Replica] = {}
        self._turn = itertools.count()

    def replicas(self, urls: Iterable[str]) -> list[Replica]:
        out = []
        for url in urls:
            replica = self._replicas.get(url)
            if replica is None:
                replica = self._replicas[url] = Replica(url)
            out.append(replica)
        return out

    def pick(self, urls: tuple[str, ...], exclude: frozenset[str] = frozenset()) -> Replica | None:
        """The least-loaded replica among `urls` not in `exclude`, up ones first (a down one is
        still tried when no up one is left: a refused connect is cheap and the freshest news);
        None when none is left."""
        candidates = [r for r in self.replicas(urls) if r.url not in exclude]
        if not candidates:
            return None
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda r: (not r.up, r.outstanding))

    def any_up(self, urls: Iterable[str]) -> bool:
        """Whether some replica among `urls` was last seen accepting connections."""
        return any(r.up for r in self.replicas(urls))
