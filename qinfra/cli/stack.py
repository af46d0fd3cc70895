"""Stack commands (preview, up, rollback, rollout, status, history, destroy): parse, call, print."""

from __future__ import annotations

import sys
from typing import Any

import click

from qinfra.cli.command import Command
from qinfra.cli.output import echo_json
from qinfra.core.errors import DeployError

_stack_option = click.option("--stack", "stack", required=True, metavar="NAME",
                             help="The stack: stacks/Pulumi.<NAME>.yaml.")
_yes_option = click.option("--yes", "-y", is_flag=True,
                           help="Apply without asking (for scripts and CI).")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


def _load(stack: str) -> Any:
    """The validated spec; a broken stack file stops here, before the engine starts."""
    from qinfra.core.spec import load_stack
    from qinfra.deploy.targets import preflight

    spec = load_stack(stack)
    preflight(spec)
    return spec


def _preview_with_deployed(deployer: Any, spec: Any) -> Any:
    """Preview and read the deployed plan (the stack's `plan` output) side by side."""
    from concurrent.futures import ThreadPoolExecutor

    from qinfra.deploy.preview import build_report, deployed_plan
    from qinfra.planning.stack import plan_for

    deployer.stack()  # select (or create) the stack once, before the two calls share it
    with ThreadPoolExecutor(max_workers=1) as pool:
        before = pool.submit(deployed_plan, lambda: deployer.outputs(mask_secrets=True))
        outcome = deployer.preview()
        return build_report(spec.name, outcome.changes, outcome.summary, before.result(),
                            plan_for(spec))


def _print_report(report: Any, as_json: bool, markdown: bool) -> None:
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

    console = _console()
    counts = ", ".join(f"{n} to {op}" for op, n in sorted(report.summary.items())) or "no changes"
    console.print(f"[bold]{report.stack}[/]: {counts}")
    for r in report.resources:
        colour = {"create": "green", "delete": "red"}.get(r.op, "yellow")
        console.print(f"  [{colour}]{r.op:>8}[/] {r.type} [bold]{r.name}[/]")
        for p in r.properties:
            console.print(f"           {p.key}:")
            for line in p.old.splitlines():
                console.print(f"             [red]- {line}[/]", markup=True, highlight=False)
            for line in p.new.splitlines():
                console.print(f"             [green]+ {line}[/]", markup=True, highlight=False)
    table = Table(title="plan (deployed → this stack file)", title_justify="left")
    table.add_column("")
    for v in report.variants:
        table.add_column(v.variant, overflow="fold")
    for k in FIGURES:
        table.add_row(k, *(arrow((v.before or {}).get(k), (v.after or {}).get(k))
                           for v in report.variants))
    console.print(table)
    console.print(f"cost: ${report.usd_per_hour_after:,.2f}/hour ({report.deployed.describe()})")


def _confirm(yes: bool, question: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError("not a terminal: pass --yes to apply without asking")
    if not click.confirm(question, default=False):
        raise click.Abort()


def _ensure_artifacts(spec: Any, quiet: bool) -> Any:
    """Push and pin whatever the stack file does not pin or the store does not hold."""
    from qinfra.artifacts import push as art
    from qinfra.core.spec import load_stack
    from qinfra.deploy.stackfile import update_stack_file

    uris = [variant.artifact for _, variant in spec.variants.pairs()]
    if all(uri is not None and _stored(uri) for uri in uris):
        return spec
    from qinfra.cli.artifacts import progress_bars

    with progress_bars(quiet=quiet) as progress:
        results = art.push_stack(spec, progress=progress)
    diff = update_stack_file(spec.path, art.pins(results))
    if diff and not quiet:
        click.echo(diff.rstrip("\n"), err=True)
    return load_stack(spec.name)


def _stored(uri: str) -> bool:
    """A pinned artifact is usable when its manifest (written last) is in the store."""
    from qinfra.artifacts.manifest import MANIFEST_NAME, split_artifact_uri
    from qinfra.artifacts.stores import open_store

    parsed = split_artifact_uri(uri)
    return open_store(parsed.store).read(f"{parsed.artifact_id}/{MANIFEST_NAME}") is not None


def _apply(spec: Any, yes: bool, as_json: bool) -> None:
    from qinfra.deploy.engine import Deployer

    deployer = Deployer(spec.name, backend=spec.backend)
    if not yes or not as_json:
        report = _preview_with_deployed(deployer, spec)
        if not as_json:
            _print_report(report, False, False)
        _confirm(yes, f"Apply these changes to stack {spec.name}?")
    if not as_json:
        _console(stderr=True).print("[dim]applying; servers count once healthy and warm…[/]")
    outcome = deployer.up()
    if as_json:
        echo_json({"stack": spec.name, "summary": outcome.summary, "outputs": outcome.outputs})
        return
    _print_endpoints(spec.name, outcome.outputs)


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


def _print_endpoints(stack: str, outputs: dict[str, Any]) -> None:
    console = _console()
    console.print(endpoints_table(stack, outputs))
    if outputs.get("endpoint"):
        console.print(f"endpoint: {outputs['endpoint']}")


@click.command(cls=Command)
@_stack_option
@_json_option
@click.option("--markdown", is_flag=True, help="Print a pull-request comment (under 65,536 chars).")
def preview(stack: str, as_json: bool, markdown: bool) -> None:
    """Show what `up` would change: per resource, then GPUs, memory and cost before -> after."""
    from qinfra.deploy.engine import Deployer

    spec = _load(stack)
    _print_report(_preview_with_deployed(Deployer(stack, backend=spec.backend), spec), as_json, markdown)


@click.command(cls=Command)
@_stack_option
@_yes_option
@_json_option
def up(stack: str, yes: bool, as_json: bool) -> None:
    """Push and pin missing artifacts, preview, apply, wait until every server is healthy."""
    spec = _ensure_artifacts(_load(stack), quiet=as_json)
    _apply(spec, yes, as_json)


def _edit_and_apply(stack: str, updates: dict[str, object], yes: bool, no_apply: bool,
                    as_json: bool) -> None:
    from qinfra.core.spec import load_stack
    from qinfra.deploy.stackfile import update_stack_file

    spec = _load(stack)
    diff = update_stack_file(spec.path, updates)
    if not as_json:
        click.echo(diff.rstrip("\n") if diff else f"{spec.path} already says so")
    if no_apply:
        if as_json:
            echo_json({"stack": stack, "diff": diff, "applied": False})
        elif diff:
            click.echo("left for review: commit the stack file and let `pulumi preview` show the "
                       "change in the pull request")
        return
    _apply(load_stack(stack), yes, as_json)


@click.command(cls=Command)
@_stack_option
@_yes_option
@click.option("--no-apply", is_flag=True, help="Only rewrite the stack file (for a pull request).")
@_json_option
def rollback(stack: str, yes: bool, no_apply: bool, as_json: bool) -> None:
    """Send all traffic back to the baseline: rewrite the stack file, preview, apply.

    The change is two lines of stacks/Pulumi.<NAME>.yaml (stage: rollback, quantized_percent: 0);
    the quantized fleet is kept at zero replicas so rolling forward again is fast.
    """
    from qinfra.deploy.rollout import rollback as rollback_edit

    _edit_and_apply(stack, rollback_edit().updates(), yes, no_apply, as_json)


@click.command(cls=Command)
@_stack_option
@click.option("--percent", type=click.IntRange(0, 100), required=True,
              help="Quantized traffic share: 0 baseline_only, 1-99 ab_test/gradual, 100 full.")
@click.option("--stage", type=click.Choice(["ab_test", "gradual"]), default=None,
              help="Stage for 1-99% [default: the current one, else ab_test].")
@_yes_option
@click.option("--no-apply", is_flag=True, help="Only rewrite the stack file (for a pull request).")
@_json_option
def rollout(stack: str, percent: int, stage: str | None, yes: bool, no_apply: bool,
            as_json: bool) -> None:
    """Move the quantized variant's traffic share: rewrite the stack file, preview, apply."""
    from qinfra.core.spec import Stage, load_stack
    from qinfra.deploy.rollout import rollout as rollout_edit

    edit = rollout_edit(load_stack(stack), percent, Stage(stage) if stage else None)
    _edit_and_apply(stack, edit.updates(), yes, no_apply, as_json)


@click.command(cls=Command)
@_stack_option
@_json_option
def status(stack: str, as_json: bool) -> None:
    """The stack's outputs: stage, and per variant its traffic, replicas and endpoint."""
    from qinfra.deploy.engine import Deployer

    spec = _load(stack)
    outputs = Deployer(stack, backend=spec.backend).outputs()
    health = _health(outputs)
    if as_json:
        echo_json({"stack": stack, "outputs": outputs, "health": health})
    elif not outputs:
        click.echo(f"stack {stack} has nothing deployed; run `qinfra up --stack {stack}`")
    else:
        _print_endpoints(stack, outputs)
        for name, state in health.items():
            colour = "green" if state == "ok" else "red"
            _console().print(f"{name}: [{colour}]{state}[/]")


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
@_json_option
def history(stack: str, as_json: bool) -> None:
    """Every update of the stack, newest first, with its stage, traffic and artifact URIs."""
    from qinfra.deploy.engine import Deployer
    from qinfra.deploy.history import entries

    spec = _load(stack)
    rows = entries(stack, Deployer(stack, backend=spec.backend).history())
    if as_json:
        echo_json(rows)
        return
    from rich.table import Table

    table = Table(title=f"{stack}: history", title_justify="left")
    for col in ("version", "kind", "result", "started", "stage", "traffic", "artifacts"):
        table.add_column(col, overflow="fold")
    for row in rows:
        w = row["traffic_percent"] or {}
        table.add_row(str(row["version"]), row["kind"], row["result"], row["start_time"],
                      str(row["stage"]), " / ".join(f"{k} {v}%" for k, v in w.items()),
                      "\n".join(f"{k}: {v}" for k, v in (row["artifacts"] or {}).items()))
    _console().print(table)


@click.command(cls=Command)
@_stack_option
@_yes_option
def destroy(stack: str, yes: bool) -> None:
    """Stop and delete everything the stack runs; artifacts in the store are kept."""
    from qinfra.deploy.engine import Deployer

    spec = _load(stack)
    _confirm(yes, f"Destroy every resource of stack {stack}?")
    outcome = Deployer(stack, backend=spec.backend).destroy()
    click.echo(f"destroyed: {outcome.summary.get('delete', 0)} resources")


COMMANDS = (preview, up, rollback, rollout, status, history, destroy)
__all__ = ["COMMANDS", "DeployError"]
