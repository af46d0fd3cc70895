"""`qinfra analysis`: the saved windows of a stack's automatic rollouts, the audit trail."""

from __future__ import annotations

from pathlib import Path

import click

from qinfra.cli.command import Command
from qinfra.cli.output import echo_json


@click.command(cls=Command)
@click.option("--stack", "stack", required=True, metavar="NAME",
              help="The stack: stacks/Pulumi.<NAME>.yaml.")
@click.option("--json", "as_json", is_flag=True,
              help="Print every window's full record (queries, raw values, thresholds).")
def analysis(stack: str, as_json: bool) -> None:
    """The analysis windows of `rollout --auto`, oldest first, with each check's verdict.

    Each window is kept as JSON under .qinfra/analysis/<NAME>/ with its PromQL queries, the raw
    value per variant, the thresholds and the verdict; `qinfra history` links updates to them.
    """
    from qinfra.core.spec import load_stack
    from qinfra.quality.analysis_audit import audit_dir, windows

    spec = load_stack(stack)
    records = windows(audit_dir(spec.root or Path.cwd(), stack))
    if as_json:
        echo_json(records)
        return
    if not records:
        click.echo(f"stack {stack} has no analysis windows yet; run `qinfra rollout --stack "
                   f"{stack} --auto`")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{stack}: analysis windows", title_justify="left")
    for col in ("analysis", "window", "step", "verdict", "checks", "why"):
        table.add_column(col, overflow="fold")
    for r in records:
        checks = r.get("checks", [])
        shown = ", ".join(f"{c['check']} {c['verdict']}{' (dry run)' if c['dry_run'] else ''}"
                          for c in checks)
        # the reasons behind a window that did not pass, each once (a thin window gives every
        # check the same one)
        why = dict.fromkeys(c["reason"] for c in checks
                            if c["verdict"] in ("fail", "inconclusive") and not c["dry_run"])
        table.add_row(r["analysis_id"], str(r["window"]), f"{r['step_percent']}%",
                      r["verdict"], shown, "\n".join(why) or (r.get("error") or ""))
    Console().print(table)
