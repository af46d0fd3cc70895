"""Read-only stack commands (status, history): what a stack runs and how it got there, as
qinfra.deploy.observe reads it. Apart from qinfra/cli/stack.py, whose commands change a stack."""

from __future__ import annotations

from typing import Any

import click

from qinfra.cli.command import Command
from qinfra.cli.options import json_option, stack_option
from qinfra.cli.output import console, echo_json
from qinfra.cli.terminal import open_stack

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
    out = console()
    if outputs.get("endpoint"):
        out.print(f"endpoint: {outputs['endpoint']}", highlight=False)
    out.print(endpoints_table(stack, outputs))


@click.command(cls=Command)
@stack_option
@json_option
def status(stack: str, as_json: bool) -> None:
    """The stack's outputs: stage, and per variant its traffic, replicas and endpoint; on
    target local also each engine's memory, planned against what it allocated.

    On target local, exits 1 when the front door or a variant that takes traffic does not
    answer its /health (so a monitor or a script can act on it); 3 when the stack was never
    deployed.
    """
    from qinfra.cli.allocation import print_allocation
    from qinfra.deploy.observe import status as read_status

    now = read_status(open_stack(stack))
    if as_json:
        echo_json(now.to_json())
    elif not now.outputs:
        click.echo(f"stack {stack} has nothing deployed; run `qinfra up --stack {stack}`")
    else:
        print_endpoints(stack, now.outputs)
        front = {} if now.front is None else {"endpoint": now.front}
        for name, state in {**front, **now.health}.items():
            colour = "green" if state == "ok" else "red"
            console().print(f"{name}: [{colour}]{state}[/]")
        print_allocation(console(), stack, now.allocation)
    if now.down:
        if not as_json:
            click.echo(f"down: {', '.join(now.down)}", err=True)
        click.get_current_context().exit(1)


@click.command(cls=Command)
@stack_option
@click.option("--limit", type=click.IntRange(min=0), default=DEFAULT_PAGE, show_default=True,
              help="Entries per page; 0 for every entry.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True,
              help="Which page, 1 the newest.")
@json_option
def history(stack: str, limit: int, page: int, as_json: bool) -> None:
    """Every update of the stack, newest first and paged, with its number, result, stage,
    traffic and artifact URIs; failed updates included."""
    from qinfra.deploy.history import paged
    from qinfra.deploy.observe import history as read_history

    shown = paged(read_history(open_stack(stack)), limit, page)
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
    console().print(table)


COMMANDS = (status, history)
