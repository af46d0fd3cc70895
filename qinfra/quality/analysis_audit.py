"""The analysis audit trail under .qinfra/analysis/<stack>/: one JSON file per window (queries,
raw values per variant, thresholds, verdict) and `updates.jsonl`, one line per stack-file change
an automatic rollout applied, naming the analysis that decided it, so `qinfra history` can link
each update to its evidence (flagger#1815: query results are otherwise lost)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qinfra.core.fileio import write_atomic

UPDATES_FILE = "updates.jsonl"


def audit_dir(root: Path, stack: str) -> Path:
    return root / ".qinfra" / "analysis" / stack


def new_analysis_id(stack: str, percent: int, now: float | None = None) -> str:
    """`<stack>-<UTC time>-q<percent>`: sortable, and names the step it judged."""
    stamp = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    return f"{stack}-{stamp.strftime('%Y%m%dT%H%M%S%fZ')}-q{percent}"


def save_window(folder: Path, record: dict[str, Any]) -> Path:
    """Write one window's record as `<analysis id>-w<index>.json` (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['analysis_id']}-w{record['window']:03d}.json"
    write_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


@dataclass(frozen=True)
class AppliedUpdate:
    """A stack-file change an automatic rollout applied, and why."""

    started: float
    finished: float
    stage: str
    quantized_percent: int
    reason: str  # step | promoted | rollback
    analysis_id: str | None
    verdict: str | None
    commit: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def record_update(folder: Path, update: AppliedUpdate) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / UPDATES_FILE, "a") as out:
        out.write(json.dumps(update.to_json(), sort_keys=True) + "\n")


def applied_updates(folder: Path) -> list[dict[str, Any]]:
    path = folder / UPDATES_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a killed process
    return rows


def windows(folder: Path) -> list[dict[str, Any]]:
    """Every saved window, oldest first."""
    out = []
    for path in sorted(folder.glob("*-w[0-9][0-9][0-9].json")):
        try:
            out.append(json.loads(path.read_text()))
        except ValueError:
            continue
    return sorted(out, key=lambda r: (r.get("end", 0), r.get("window", 0)))


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# Pulumi records update times in whole seconds: the window a row may match is widened by this.
_SLACK_S = 2.0


def link(rows: list[dict[str, Any]], updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History rows with `analysis_id` (and `analysis_verdict`) set where an automatic rollout
    applied that update: its time lies within the apply and its stage and percent match."""
    out = []
    for row in rows:
        start, found = _epoch(row.get("start_time")), None
        for u in updates:
            if (start is not None and u["started"] - _SLACK_S <= start <= u["finished"] + _SLACK_S
                    and row.get("stage") == u["stage"]
                    and str(row.get("quantized_percent")) == str(u["quantized_percent"])):
                found = u
        out.append({**row, "analysis_id": found and found.get("analysis_id"),
                    "analysis_verdict": found and found.get("verdict")})
    return out
