"""A stack's update history as rows: per update its stage, traffic weights and artifact URIs,
read from the config the engine recorded with the update."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from qinfra.deploy.engine import HistoryEntry
from qinfra.planning.sizing import traffic_share
from qinfra.core.spec import Stage


def _object(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}


def entries(stack: str, history: Iterable[HistoryEntry]) -> list[dict[str, Any]]:
    rows = []
    for h in history:
        rollout = _object(h.config.get("qinfra:rollout"))
        variants = _object(h.config.get("qinfra:variants"))
        stage = rollout.get("stage")
        weights = None
        if stage in Stage.__members__.values() and "quantized_percent" in rollout:
            quantized = traffic_share(Stage(stage), int(rollout["quantized_percent"]))["quantized"]
            weights = {"baseline": 100 - quantized, "quantized": quantized}
        rows.append({
            "stack": stack,
            "version": h.version,
            "kind": h.kind,
            "result": h.result,
            "start_time": h.start_time,
            "end_time": h.end_time,
            "stage": stage,
            "quantized_percent": rollout.get("quantized_percent"),
            "weights": weights,
            "artifacts": {name: (v or {}).get("artifact") for name, v in variants.items()},
            "resource_changes": dict(h.resource_changes),
        })
    return rows
