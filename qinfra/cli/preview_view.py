"""A preview report for people: per resource what changes, then the plan and the router before
and after, and the cost; JSON and the pull-request markdown are its other two views."""

from __future__ import annotations

from typing import Any

import click

from qinfra.cli.output import console, echo_json


def print_report(report: Any, as_json: bool = False, markdown: bool = False) -> None:
    from qinfra.deploy.preview import to_markdown

    if as_json:
        echo_json(report.to_json())
    elif markdown:
        click.echo(to_markdown(report), nl=False)
    else:
        _print_rich(report)


def _print_rich(report: Any) -> None:
    from rich.table import Table

    from qinfra.deploy.preview import FIGURES, arrow

    out = console()
    counts = ", ".join(f"{n} to {op}" for op, n in sorted(report.summary.items())) or "no changes"
    out.print(f"[bold]{report.stack}[/]: {counts}")
    for r in report.resources:
        colour = {"create": "green", "delete": "red"}.get(r.op, "yellow")
        out.print(f"  [{colour}]{r.op:>8}[/] {r.type} [bold]{r.name}[/]")
        for p in r.properties:
            out.print(f"           {p.key}:")
            for line in p.old.splitlines():
                out.print(f"             [red]- {line}[/]", markup=True, highlight=False)
            for line in p.new.splitlines():
                out.print(f"             [green]+ {line}[/]", markup=True, highlight=False)
    table = Table(title="plan (deployed → this stack file)", title_justify="left")
    table.add_column("")
    for v in report.variants:
        table.add_column(v.variant, overflow="fold")
    for k in FIGURES:
        table.add_row(k, *(arrow((v.before or {}).get(k), (v.after or {}).get(k))
                           for v in report.variants))
    out.print(table)
    router = Table(title="router (deployed → this stack file)", title_justify="left")
    router.add_column("")
    router.add_column("router", overflow="fold")
    for figure, change in report.router.rows():
        router.add_row(figure, change)
    out.print(router)
    out.print(f"cost: ${report.usd_per_hour_after:,.2f}/hour ({report.deployed.describe()})")
