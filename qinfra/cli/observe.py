"""Read-only stack commands (status, history): what a stack runs and how it got there.

Apart from qinfra/cli/stack.py, whose commands change a stack; they share its options and loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from qinfra.cli.command import Command
from qinfra.cli.output import echo_json
from qinfra.cli.stack import _console, _json_option, _load, _stack_option

DEFAULT_PAGE = 20  # history entries a page shows: a screenful
_ENDPOINT_COLUMNS = ("variant", "format", "traffic", "replicas", "gpu", "instance", "endpoint")


def endpoints_table(stack: str, outputs: dict[str, Any]) -> Any:
    """The stack's `variants` output as a table, one row per variant.

    Names and figures are never cut (no_wrap, at least as wide as their longest cell); only the
    endpoint folds onto more lines in a narrow terminal. A column that no variant fills (gpu and
    instance on target local, per-variant endpoints behind one front door) is left out.
    """
    from rich.table import Table

    rows = [(name, str(v.get("format")), f"{v.get('weight_percent')}%", str(v.get("replicas")),
             str(v.get("gpu") or "-"), str(v.get("instance_type") or "-"),
             str(v.get("endpoint") or "-"))
            for name, v in (outputs.get("variants") or {}).items()]
    shown = [i for i, _ in enumerate(_ENDPOINT_COLUMNS) if any(row[i] != "-" for row in rows)]
    table = Table(title=f"{stack}: stage {outputs.get('stage')}", title_justify="left")
    for i in shown:
        name = _ENDPOINT_COLUMNS[i]
        if name == "endpoint":
            table.add_column(name, overflow="fold", min_width=len(name))
        else:
            widest = max(len(name), *(len(row[i]) for row in rows))
            table.add_column(name, no_wrap=True, min_width=widest)
    for row in rows:
        table.add_row(*(row[i] for i in shown))
    return table


def print_endpoints(stack: str, outputs: dict[str, Any]) -> None:
    """The front door first (what a client calls), then the variants behind it."""
    console = _console()
    if outputs.get("endpoint"):
        console.print(f"endpoint: {outputs['endpoint']}", highlight=False)
    console.print(endpoints_table(stack, outputs))


@click.command(cls=Command)
@_stack_option
@_json_option
def status(stack: str, as_json: bool) -> None:
    """The stack's outputs: stage, and per variant its traffic, replicas and endpoint; on
    target local also each engine's memory, planned against what it allocated."""
    from qinfra.cli.allocation import allocation, print_allocation
    from qinfra.deploy.engine import Deployer

    spec = _load(stack)
    outputs = Deployer(stack, backend=spec.backend).outputs()
    health = _health(outputs)
    front = _health({"variants": {"endpoint": {"endpoint": outputs.get("endpoint")}}})
    memory = allocation(spec, outputs)
    if as_json:
        echo_json({"stack": stack, "outputs": outputs, "health": health,
                   "endpoint_health": front.get("endpoint"), "allocation": memory})
    elif not outputs:
        click.echo(f"stack {stack} has nothing deployed; run `qinfra up --stack {stack}`")
    else:
        print_endpoints(stack, outputs)
        for name, state in {**front, **health}.items():
            colour = "green" if state == "ok" else "red"
            _console().print(f"{name}: [{colour}]{state}[/]")
        print_allocation(_console(), stack, memory)


def _health(outputs: dict[str, Any]) -> dict[str, str]:
    """GET <endpoint>/health of each variant that has its own endpoint (2 s each, in parallel)."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    def probe(url: str) -> str:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=2) as response:
                return "ok" if response.status == 200 else f"http {response.status}"
        except OSError as exc:
            return f"unreachable ({getattr(exc, 'reason', exc)})"

    endpoints = {name: v["endpoint"] for name, v in (outputs.get("variants") or {}).items()
                 if isinstance(v, dict) and str(v.get("endpoint") or "").startswith("http")}
    with ThreadPoolExecutor(max_workers=max(1, len(endpoints))) as pool:
        return dict(zip(endpoints, pool.map(probe, endpoints.values()), strict=True))


@click.command(cls=Command)
@_stack_option
@click.option("--limit", type=click.IntRange(min=0), default=DEFAULT_PAGE, show_default=True,
              help="Entries per page; 0 for every entry.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True,
              help="Which page, 1 the newest.")
@_json_option
def history(stack: str, limit: int, page: int, as_json: bool) -> None:
    """Every update of the stack, newest first and paged, with its number, result, stage,
    traffic and artifact URIs; failed updates included."""
    from qinfra.deploy.engine import Deployer
    from qinfra.deploy.history import entries, paged

    spec = _load(stack)
    every = entries(stack, Deployer(stack, backend=spec.backend).history())
    from qinfra.quality.analysis_audit import applied_updates, audit_dir, link

    every = link(every, applied_updates(audit_dir(spec.root or Path.cwd(), stack)))  # rollout --auto
    shown = paged(every, limit, page)
    if as_json:
        echo_json(shown.rows)
        return
    from rich.table import Table

    table = Table(title=f"{stack}: history", title_justify="left", caption=shown.describe(),
                  caption_justify="left")
    for col in ("version", "kind", "result", "started", "stage", "traffic", "artifacts", "gate"):
        table.add_column(col, overflow="fold")
    for row in shown.rows:
        w = row["traffic_percent"] or {}
        kind = row["kind"] + (f"\nanalysis {row['analysis_id']}" if row["analysis_id"] else "")
        table.add_row(str(row["version"]), kind, row["result"], row["start_time"],
                      str(row["stage"]), " / ".join(f"{k} {v}%" for k, v in w.items()),
                      "\n".join(f"{k}: {v}" for k, v in (row["artifacts"] or {}).items()),
                      "skipped" if row["gate_skipped"] else "")
    _console().print(table)


COMMANDS = (status, history)
