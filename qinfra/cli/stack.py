"""Stack commands that change a stack (preview, up, rollback, rollout, destroy): parse, call,
print. The read-only ones (status, history) are in qinfra/cli/observe.py."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from qinfra.cli.command import Command
from qinfra.cli.gate_guard import edit_with_gate, gate_updates, skip_gate_option
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
    """Preview, and the deployed plan (the stack's `plan` output) as the preview's own Stack
    step reports it: no `stack output` calls beside the preview (they ran the CLI twice). The
    "after" plan is made while the engine previews (reading a GGUF model's facts takes seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    from qinfra.deploy.preview import build_report, deployed_plan
    from qinfra.planning.stack import plan_for

    with ThreadPoolExecutor(max_workers=1) as pool:
        after = pool.submit(plan_for, spec)
        outcome = deployer.preview()
        before = outcome.outputs_before
        deployed = deployed_plan(lambda: before if before is not None
                                 else deployer.outputs(mask_secrets=True))
        return build_report(spec.name, outcome.changes, outcome.summary, deployed, after.result())


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
    router = Table(title="router (deployed → this stack file)", title_justify="left")
    router.add_column("")
    router.add_column("router", overflow="fold")
    for figure, change in report.router.rows():
        router.add_row(figure, change)
    console.print(router)
    console.print(f"cost: ${report.usd_per_hour_after:,.2f}/hour ({report.deployed.describe()})")


def _require_terminal(yes: bool, unchanged: str = "") -> None:
    """A question needs someone to answer it: without --yes and a terminal, stop now."""
    if not yes and not sys.stdin.isatty():
        raise click.UsageError(f"not a terminal: pass --yes to apply without asking{unchanged}")


def _confirm(yes: bool, question: str) -> None:
    _require_terminal(yes)
    if not yes and not click.confirm(question, default=False):
        raise click.Abort()


class _Consent:
    """Whether the user agreed to apply an edited stack file (see `_until_consent`)."""

    given = False


@contextmanager
def _until_consent(path: Path, restored: Any = None) -> Iterator[_Consent]:
    """The stack file's exact bytes, put back if the block ends before the user agreed (a
    "no", a failed preview, a lock, Ctrl-C). The engine previews from the file, so the edit has
    to be on disk while the question is asked; after consent it stays, failed or not.
    `restored()` runs after a put-back (the local router is told the old weights again)."""
    from qinfra.core.fileio import write_atomic

    before = path.read_bytes()
    consent = _Consent()
    try:
        yield consent
    except BaseException:
        if not consent.given and path.read_bytes() != before:
            write_atomic(path, before)
            click.echo(f"{path} left as it was: the change was not applied", err=True)
            if restored is not None:
                with contextlib.suppress(Exception):  # the original failure is what to report
                    restored()
        raise


def _tell_router(stack: str) -> None:
    """Hand the stack file's weights to a running local router at once (it polls its config
    file), ahead of the engine run that records and reconciles them: a rollback takes effect in
    well under a second, and a failed apply still leaves file and router agreeing, which the
    next `up` brings the state to. Other targets and stopped routers: nothing to do here."""
    from qinfra.core.spec import Target, load_stack

    spec = load_stack(stack)
    if spec.target is not Target.LOCAL:
        return
    from qinfra.deploy.engine import Project
    from qinfra.deploy.targets.local import RUN_DIR_ENV
    from qinfra.deploy.targets.router_process import tell_router

    run_dir = os.environ.get(RUN_DIR_ENV) or str(Project.find().run_dir)
    tell_router(spec, Path(run_dir))


def _ensure_artifacts(spec: Any, quiet: bool) -> Any:
    """Push and pin what the stack file does not pin; push a pinned artifact the store lacks
    only when its source makes exactly that pin (else ArtifactError: never re-pinned here)."""
    from qinfra.artifacts import push as art
    from qinfra.artifacts import router_wheels
    from qinfra.core.spec import load_stack
    from qinfra.deploy.stackfile import update_stack_file

    state = art.pin_state(spec)
    router = router_wheels.wanted(spec)  # pinned to the qinfra running now, every time
    if not state.to_push and not router:
        return spec
    from qinfra.cli.artifacts import progress_bars

    with progress_bars(quiet=quiet) as progress:
        results = art.push_stack(
            spec, progress=progress, only=state.to_push, restore=state.not_held
        ) if state.to_push else {}
        wheels = router_wheels.push_router(spec, progress=progress) if router else None
    diff = update_stack_file(spec.path, {**art.pins(results), **router_wheels.pins(wheels)})
    if diff and not quiet:
        click.echo(diff.rstrip("\n"), err=True)
    return load_stack(spec.name)


def _end_orphans(deployer: Any) -> None:
    """End what a killed update left running (its dynamic provider, its program), and say so."""
    from qinfra.deploy.processes import end_orphans, engine_records

    for ended in end_orphans(engine_records(Path(deployer.env()["QINFRA_RUN_DIR"]))):
        click.echo(f"ended the {ended.role} (pid {ended.process.pid}) an interrupted update left "
                   "running", err=True)


def _apply(spec: Any, yes: bool, as_json: bool, consent: _Consent | None = None,
           agreed: Any = None, ask: bool = False) -> None:
    """Preview, ask, apply. A lock another update holds fails here, before the preview.
    `agreed()` runs once the user has said yes, before the engine applies."""
    from qinfra.deploy.engine import Deployer

    deployer = Deployer(spec.name, backend=spec.backend)
    deployer.check_unlocked()
    _end_orphans(deployer)
    if not yes or not as_json:
        with deployer.transient() as scratch:  # a "no" to a first deployment leaves no stack
            report = _preview_with_deployed(deployer, spec)
            if not as_json:
                _print_report(report, False, False)
            _confirm(yes, f"Apply these changes to stack {spec.name}?")
            scratch.keep = True
    if consent is not None:
        consent.given = True
    if agreed is not None:
        agreed()
    if not as_json:
        _console(stderr=True).print("[dim]applying; servers count once healthy and warm…[/]")
    outcome = deployer.up()
    if as_json:
        echo_json({"stack": spec.name, "summary": outcome.summary, "outputs": outcome.outputs})
        return
    from qinfra.cli.observe import print_endpoints

    print_endpoints(spec.name, outcome.outputs)
    if ask and outcome.outputs.get("endpoint"):
        _ask(spec, str(outcome.outputs["endpoint"]))


QUESTION = "What is the capital of France?"


def _ask(spec: Any, endpoint: str) -> None:
    """Ask the served model one question through the front door, once per variant that takes
    traffic (a sticky key the router sends there), and show the curl that does the same: a
    local `up` ends with real answers from both sides of the A/B test, not only a table."""
    import json
    import shlex

    from qinfra.core.spec import Variant
    from qinfra.serving.router.assign import bucket_of, variant_of

    percent = spec.rollout.traffic_percent()
    body = {"model": spec.model.served_name or "model", "max_tokens": 32, "temperature": 0,
            "messages": [{"role": "user", "content": QUESTION}]}
    click.echo(f"\n{QUESTION}")
    for variant in (v for v in Variant if percent[v] > 0):
        key = next(k for k in (f"you-{i}" for i in range(10_000)) if variant_of(
            bucket_of(spec.router.salt, k), percent[Variant.QUANTIZED]) is variant)
        click.echo(f"  {variant:9} -> {_answer(endpoint, body, spec.router.key_header, key)}")
    curl = (f"curl -s {endpoint}/v1/chat/completions -H 'Content-Type: application/json' "
            f"-H '{spec.router.key_header}: you-0' -d {shlex.quote(json.dumps(body))}")
    click.echo(f"ask it yourself (the header keeps you in one variant):\n  {curl}")


def _answer(endpoint: str, body: dict[str, Any], header: str, key: str) -> str:
    import json
    import urllib.request

    request = urllib.request.Request(f"{endpoint}/v1/chat/completions",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", header: key})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = json.loads(response.read())["choices"][0]["message"]["content"]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        return f"(asking {endpoint} failed: {exc})"
    return " ".join(str(text).split())


@click.command(cls=Command)
@_stack_option
@_json_option
@click.option("--markdown", is_flag=True, help="Print a pull-request comment (under 65,536 chars).")
def preview(stack: str, as_json: bool, markdown: bool) -> None:
    """Show what `up` would change: per resource, then GPUs, memory and cost before -> after."""
    from qinfra.deploy.engine import Deployer

    spec = _load(stack)
    deployer = Deployer(stack, backend=spec.backend)
    if deployer.policy_packs() is None:  # else the pack denies it; the engine only logs it
        gate_updates(spec, skip=False, refuse=False)
    with deployer.transient():  # a stack never deployed is previewed, and not left behind
        report = _preview_with_deployed(deployer, spec)
    _print_report(report, as_json, markdown)


@click.command(cls=Command)
@_stack_option
@_yes_option
@_json_option
@skip_gate_option
def up(stack: str, yes: bool, as_json: bool, skip_gate: bool) -> None:
    """Push and pin missing artifacts, preview, apply, wait until every server is healthy.

    Fails at once, before pushing or previewing, while another update holds the stack's lock;
    after pinning, before the engine, while the quality gate refuses the quantized share.
    """
    from qinfra.deploy.bootstrap import create_store, store_pass_needed
    from qinfra.deploy.engine import Deployer

    spec = _load(stack)
    deployer = Deployer(stack, backend=spec.backend)
    deployer.check_unlocked()
    if store_pass_needed(spec, deployer.exists()):  # a first up: the bucket before the push
        if not as_json:
            click.echo(f"creating {spec.artifacts.store.split('/')[2]} for the artifacts first",
                       err=True)
        create_store(spec)
    spec = _ensure_artifacts(spec, quiet=as_json)
    with _until_consent(spec.path) as consent:  # a recorded --skip-gate stays only if applied
        if (diff := edit_with_gate(spec.path, stack, {}, skip_gate)) and not as_json:
            click.echo(diff.rstrip("\n"), err=True)
        _apply(_load(stack), yes, as_json, consent, ask=spec.target.value == "local")


def _edit_and_apply(stack: str, updates: dict[str, object], yes: bool, no_apply: bool,
                    as_json: bool, skip_gate: bool = False) -> None:
    """Rewrite the stack file, then preview and apply it; without consent (no terminal, a
    "no", a failure before the question) the file ends byte for byte as it began."""
    from qinfra.core.spec import load_stack

    spec = _load(stack)
    if not no_apply:
        _require_terminal(yes, f"; {spec.path} was not changed")
    with _until_consent(spec.path, restored=lambda: _tell_router(stack)) as consent:
        diff = edit_with_gate(spec.path, stack, updates, skip_gate, refuse=not no_apply)
        if yes and not no_apply:
            _tell_router(stack)  # agreed already: the router takes the weights before the engine runs
        if not as_json:
            click.echo(diff.rstrip("\n") if diff else f"{spec.path} already says so")
        if no_apply:
            if as_json:
                echo_json({"stack": stack, "diff": diff, "applied": False})
            elif diff:
                click.echo("left for review: commit the stack file and let `pulumi preview` show "
                           "the change in the pull request")
            return
        _apply(load_stack(stack), yes, as_json, consent,
               agreed=None if yes else lambda: _tell_router(stack))


@click.command(cls=Command)
@_stack_option
@_yes_option
@click.option("--no-apply", is_flag=True, help="Only rewrite the stack file (for a pull request).")
@_json_option
def rollback(stack: str, yes: bool, no_apply: bool, as_json: bool) -> None:
    """Send all traffic back to the baseline: rewrite the stack file, preview, apply.

    The change is two lines of stacks/Pulumi.<NAME>.yaml (stage: rollback, quantized_percent: 0);
    the quantized fleet is kept at zero replicas so rolling forward again is fast. Answered "no"
    (or with no terminal and no --yes) the stack file is left exactly as it was.
    """
    from qinfra.deploy.rollout import rollback as rollback_edit

    _edit_and_apply(stack, rollback_edit().updates(), yes, no_apply, as_json)


@click.command(cls=Command)
@_stack_option
@click.option("--percent", type=click.IntRange(0, 100), default=None,
              help="Quantized traffic share: 0 baseline_only, 1-99 ab_test/gradual, 100 full.")
@click.option("--stage", type=click.Choice(["ab_test", "gradual"]), default=None,
              help="Stage for 1-99% [default: the current one, else ab_test].")
@_yes_option
@click.option("--no-apply", is_flag=True, help="Only rewrite the stack file (for a pull request).")
@_json_option
@skip_gate_option
@click.option("--auto", is_flag=True, help="Walk qinfra:rollout.steps judged by qinfra:analysis: "
              "exit 0 promoted to full, 1 rolled back, 3 held (inconclusive).")
@click.option("--commit", is_flag=True, help="With --auto: commit each stack-file change to Git.")
def rollout(stack: str, percent: int | None, stage: str | None, yes: bool, no_apply: bool,
            as_json: bool, skip_gate: bool, auto: bool, commit: bool) -> None:
    """Move the quantized variant's traffic share: rewrite the stack file, preview, apply."""
    from qinfra.core.spec import Stage, load_stack
    from qinfra.deploy.rollout import rollout as rollout_edit

    if auto or percent is None:  # the automatic, metric-gated walk (qinfra/cli/auto_rollout.py)
        if not auto or percent is not None or no_apply or stage:
            raise click.UsageError("give --percent, or --auto (without --percent, --stage, "
                                   "--no-apply)")
        from qinfra.cli.auto_rollout import run_auto

        click.get_current_context().exit(run_auto(stack, commit, as_json, skip_gate))

    edit = rollout_edit(load_stack(stack), percent, Stage(stage) if stage else None)
    _edit_and_apply(stack, edit.updates(), yes, no_apply, as_json, skip_gate)


@click.command(cls=Command)
@_stack_option
@_yes_option
def destroy(stack: str, yes: bool) -> None:
    """Stop and delete everything the stack runs; artifacts in the store are kept."""
    from qinfra.deploy.engine import Deployer

    spec = _load(stack)
    _confirm(yes, f"Destroy every resource of stack {stack}?")
    deployer = Deployer(stack, backend=spec.backend)
    _end_orphans(deployer)
    outcome = deployer.destroy()
    click.echo(f"destroyed: {outcome.summary.get('delete', 0)} resources")


COMMANDS = (preview, up, rollback, rollout, destroy)
__all__ = ["COMMANDS", "DeployError"]
