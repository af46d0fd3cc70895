"""Within a variant: send each request to the replica with the fewest requests outstanding."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Replica:
    """One engine's base URL and how many requests the router has in flight to it. Kept across
    config reloads by URL, so a reload never forgets the load already sent."""

    url: str
    outstanding: int = 0


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
        """The least-loaded replica among `urls` not in `exclude`; None when none is left."""
        candidates = [r for r in self.replicas(urls) if r.url not in exclude]
        if not candidates:
            return None
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda r: r.outstanding)
