"""`qinfra status`'s plan against actual as a side-by-side table (the figures come from
qinfra.deploy.observe.allocation: each running local engine's own accounting held to the plan)."""

from __future__ import annotations

from typing import Any

from qinfra.deploy.observe import kv_warnings

# Rows of the table: (label, figure key, format of one value)
_ROWS = (("weights GiB", "weights_gib", "{:.4g}"), ("KV cache GiB", "kv_cache_gib", "{:.4g}"),
         ("KV cache tokens", "kv_cache_tokens", "{:,}"), ("compute GiB", "compute_gib", "{:.4g}"))


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
