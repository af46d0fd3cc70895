"""A stack's update history: the engine's records as qinfra's types, and as rows per update with
its number, stage, traffic shares, artifact URIs and whether the quality gate was skipped, read
from the config the engine recorded with the update."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from qinfra.core.spec import Stage, Variant, traffic_percent
from qinfra.core.stack_keys import GATE, ROLLOUT, VARIANTS


class UpdateKind(StrEnum):
    """What a history entry did (Pulumi's apitype.UpdateKind); OTHER for kinds newer than this list."""

    UPDATE = "update"
    PREVIEW = "preview"
    REFRESH = "refresh"
    RENAME = "rename"
    DESTROY = "destroy"
    IMPORT = "import"
    RESOURCE_IMPORT = "resource-import"
    OTHER = "other"

    @classmethod
    def _missing_(cls, value: object) -> UpdateKind:
        return cls.OTHER


class UpdateResult(StrEnum):
    """How a history entry ended (Pulumi's apitype.UpdateResult); OTHER for newer results."""

    NOT_STARTED = "not-started"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    OTHER = "other"

    @classmethod
    def _missing_(cls, value: object) -> UpdateResult:
        return cls.OTHER


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded operation of a stack; secret config values read `[secret]`."""

    version: int
    kind: UpdateKind
    result: UpdateResult
    start_time: str
    end_time: str | None
    config: Mapping[str, Any]
    resource_changes: Mapping[str, int]


SECRET = "[secret]"  # what the Pulumi CLI shows in place of a secret value
# Entries per `pulumi stack history --page-size` call. The CLI's own default is 10, so an
# unpaged read saw only the newest 10 (and numbered them 1-10); this reads them all.
HISTORY_PAGE_SIZE = 100

_T = TypeVar("_T")


def every_page(read: Callable[[int, int], Sequence[_T]],
               page_size: int = HISTORY_PAGE_SIZE) -> list[_T]:
    """Every entry of a paged history, newest first: `read(page_size, page)` for page 1, 2, ...
    until a page comes back short. A history missing its older pages would number its entries
    from the wrong end (see history_entries)."""
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    found: list[_T] = []
    page = 1
    while True:
        chunk = list(read(page_size, page))
        found += chunk
        if len(chunk) < page_size:
            return found
        page += 1


def history_entries(summaries: Sequence[Any]) -> list[HistoryEntry]:
    """Pulumi's update summaries (newest first, the whole history: see every_page) as qinfra's
    entries, numbered by the engine's own update number (UpdateSummary.version).

    Where a backend records none (0 or missing), an entry is numbered by its place in the whole
    history, the oldest 1, as the Pulumi Cloud numbers them: stable while the history is whole,
    since a new update only adds a higher number.
    """
    return [
        HistoryEntry(
            version=h.version or len(summaries) - i,
            kind=UpdateKind(str(h.kind)),
            result=UpdateResult(str(h.result)),
            start_time=h.start_time.isoformat() if h.start_time else "",
            end_time=h.end_time.isoformat() if h.end_time else None,
            config={k: SECRET if v.secret else v.value for k, v in (h.config or {}).items()},
            resource_changes=dict(h.resource_changes or {}),
        )
        for i, h in enumerate(summaries)
    ]


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


def _gate_skipped(gate: dict[str, Any], variants: dict[str, Any]) -> str | None:
    """The quantized artifact URI the update let take traffic without a passing gate report
    (`--skip-gate` wrote it under qinfra:gate.skip); None when no skip applied to it."""
    skip = gate.get("skip")
    quantized = (variants.get(Variant.QUANTIZED.value) or {}).get("artifact")
    same = skip and quantized and str(skip).rstrip("/").rpartition("/")[2] == str(
        quantized).rstrip("/").rpartition("/")[2]  # by content id, as the gate compares them
    return str(skip) if same else None


def entries(stack: str, history: Iterable[HistoryEntry]) -> list[dict[str, Any]]:
    """One JSON-ready row per recorded operation, in the engine's order (newest first)."""
    rows = []
    for h in history:
        rollout = _object(h.config.get(ROLLOUT))
        variants = _object(h.config.get(VARIANTS))
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
            "gate_skipped": _gate_skipped(_object(h.config.get(GATE)), variants),
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
