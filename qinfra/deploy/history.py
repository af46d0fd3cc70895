"""A stack's update history as rows: per update its number, stage, traffic shares and artifact
URIs, read from the config the engine recorded with the update."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from qinfra.core.spec import Stage, traffic_percent
from qinfra.deploy.engine import HistoryEntry


def _object(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}


def _traffic(rollout: dict[str, Any]) -> dict[str, int] | None:
    """The traffic split the recorded rollout meant; None when the record is not one qinfra wrote."""
    stage = rollout.get("stage")
    try:
        percent = int(rollout["quantized_percent"])
    except (KeyError, TypeError, ValueError):
        return None
    if stage not in Stage.__members__.values():
        return None
    return {v.value: share for v, share in traffic_percent(Stage(stage), percent).items()}


def entries(stack: str, history: Iterable[HistoryEntry]) -> list[dict[str, Any]]:
    """One JSON-ready row per recorded operation, in the engine's order (newest first)."""
    rows = []
    for h in history:
        rollout = _object(h.config.get("qinfra:rollout"))
        variants = _object(h.config.get("qinfra:variants"))
        rows.append({
            "stack": stack,
            "version": h.version,
            "kind": h.kind.value,
            "result": h.result.value,
            "start_time": h.start_time,
            "end_time": h.end_time,
            "stage": rollout.get("stage"),
            "quantized_percent": rollout.get("quantized_percent"),
            "traffic_percent": _traffic(rollout),
            "artifacts": {name: (v or {}).get("artifact") for name, v in variants.items()},
            "resource_changes": dict(h.resource_changes),
        })
    return rows


@dataclass(frozen=True)
class Page:
    """One page of history rows (newest first) and where it sits in the whole history."""

    rows: list[dict[str, Any]]
    page: int
    limit: int  # rows per page; 0 means all of them on one page
    total: int

    def describe(self) -> str:
        """`entries 21-40 of 57 (newest first); --page 3 for older ones` for the table."""
        if not self.rows:
            return f"no entries on page {self.page} of {self.total} entries"
        first = (self.page - 1) * self.limit + 1 if self.limit else 1
        text = f"entries {first}-{first + len(self.rows) - 1} of {self.total} (newest first)"
        if first + len(self.rows) - 1 < self.total:
            text += f"; --page {self.page + 1} for older ones"
        return text


def paged(rows: Sequence[dict[str, Any]], limit: int, page: int = 1) -> Page:
    """Rows `limit * (page - 1)` up to the next `limit` (all when `limit` is 0). Paged here,
    after numbering: a backend that records no update numbers gets them from the whole history."""
    if limit < 0 or page < 1:
        raise ValueError(f"limit must be >= 0 and page >= 1, got {limit} and {page}")
    start = (page - 1) * limit
    chosen = list(rows) if limit == 0 else list(rows[start:start + limit])
    return Page(rows=chosen, page=page, limit=limit, total=len(rows))
