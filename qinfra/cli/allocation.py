"""`qinfra status`'s plan against actual (issue 14): on target local, each running llama-server's
own accounting held to the stack's plan, as JSON and as a side-by-side table."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from qinfra.core.spec import StackSpec, Target, Variant

# Rows of the table: (label, figure key, format of one value)
_ROWS = (("weights GiB", "weights_gib", "{:.4g}"), ("KV cache GiB", "kv_cache_gib", "{:.4g}"),
         ("KV cache tokens", "kv_cache_tokens", "{:,}"), ("compute GiB", "compute_gib", "{:.4g}"))


def _run_dir() -> Path:
    """The local target's run folder, as `qinfra up` used it ($QINFRA_RUN_DIR wins)."""
    from qinfra.deploy.engine import Project
    from qinfra.deploy.targets.local import RUN_DIR_ENV

    return Path(os.environ.get(RUN_DIR_ENV) or str(Project.find().run_dir))


def _api_key(folders: list[Path]) -> str | None:
    """The key the local engines were started with: the 0600 file qinfra keeps beside them
    while they run (llama-server's /props and /slots need it when the stack sets one)."""
    from qinfra.deploy.targets.local import KEY_FILE

    for folder in folders:
        with contextlib.suppress(OSError):
            return (folder / KEY_FILE).read_text().splitlines()[0].strip() or None
    return None


def allocation(spec: StackSpec, outputs: dict[str, Any]) -> dict[str, Any] | None:
    """Per variant with a running engine: planned (the stack file's plan) against actual (its
    llama-server's log, /props and /slots). None where nothing is deployed or the target is not
    local (the cloud engines' logs are on their machines)."""
    if spec.target is not Target.LOCAL or not outputs.get("variants"):
        return None
    from qinfra.planning.stack import plan_for
    from qinfra.quality.allocation import local_allocations

    plan = plan_for(spec)
    variants = outputs["variants"]
    running = [v for v in Variant if (variants.get(v.value) or {}).get("endpoint")]
    plans = {v.value: plan.variant(v).chosen.engine_plan if plan.variant(v).chosen else None
             for v in running}
    folder = _run_dir() / spec.name
    endpoints = {v.value: variants[v.value]["endpoint"] for v in running}
    logs = {v.value: folder / v.value / "server.log" for v in running}
    return local_allocations(plans, endpoints, logs, _api_key([folder / v.value for v in running]))


def kv_warnings(doc: dict[str, Any] | None) -> list[str]:
    """Every variant's warnings (an actual KV capacity more than 10% below plan), in order."""
    return [w for entry in (doc or {}).values() for w in entry.get("warnings", ())]


def _cell(entry: dict[str, Any], key: str, form: str) -> str:
    planned = entry["planned"].get(key)
    actual = (entry.get("actual") or {}).get(key)
    error = entry["relative_error"].get(key)

    def show(value: Any) -> str:
        return "-" if value is None else form.format(value)

    return f"{show(planned)} / {show(actual)}" + (f" ({error:+.1%})" if error is not None else "")


def table(stack: str, doc: dict[str, Any]) -> Any:
    """Planned / actual (relative error) per figure, one column per variant."""
    from rich.table import Table

    table = Table(title=f"{stack}: memory per engine, planned / actual", title_justify="left")
    table.add_column("")
    for variant in doc:
        table.add_column(variant, no_wrap=True)
    for label, key, form in _ROWS:
        table.add_row(label, *(_cell(entry, key, form) for entry in doc.values()))
    table.add_row("read from", *(entry.get("source") or "-" for entry in doc.values()))
    return table


def print_allocation(console: Any, stack: str, doc: dict[str, Any] | None) -> None:
    """The table, each variant's note (what could not be read), then the warnings in yellow."""
    if not doc:
        return
    console.print(table(stack, doc))
    for variant, entry in doc.items():
        if entry.get("note"):
            console.print(f"{variant}: {entry['note']}", highlight=False, soft_wrap=True)
    for warning in kv_warnings(doc):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
