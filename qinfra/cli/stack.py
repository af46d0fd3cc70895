"""Stack commands that change a stack (preview, up, rollback, rollout, destroy): parse the
options, call one operation of qinfra.deploy.operations, present its result. The read-only ones
(status, history) are in qinfra/cli/observe.py."""

from __future__ import annotations

from typing import Any

import click

from qinfra.cli.command import Command
from qinfra.cli.options import (
    json_option,
    no_apply_option,
    skip_gate_option,
    stack_option,
    yes_option,
)
from qinfra.cli.output import echo_json
from qinfra.cli.terminal import open_stack
from qinfra.core.errors import DeployError


def _present(result: Any, handle: Any, as_json: bool, ask: bool = False) -> None:
    """An applied change: JSON, or the front door and variants (and, for a local `up`, the
    demo question through the router; an unanswered question fails the command)."""
    applied = result.applied
    if as_json:
        echo_json({"stack": applied.stack, "summary": applied.summary, "outputs": applied.outputs})
        return
    from qinfra.cli.observe import print_endpoints

    print_endpoints(applied.stack, applied.outputs)
    if ask and applied.outputs.get("endpoint"):
        _ask(handle, str(applied.outputs["endpoint"]))


def _ask(stack: Any, endpoint: str) -> None:
    from qinfra.deploy.demo_question import api_key, ask, gate_line

    asked = ask(stack.spec, endpoint, api_key(stack.project.run_dir, stack.name))
    click.echo(f"\n{asked.question}")
    for answer in asked.answers:
        click.echo(f"  {answer.variant:9} -> {answer.text}")
    if (measured := gate_line(stack.spec)) is not None:
        click.echo(f"one answer is an anecdote; the {measured}")
    click.echo(f"ask it yourself (the header keeps you in one variant):\n  {asked.curl}")
    if asked.failed:
        raise DeployError("deployed, but " + ", ".join(a.variant.value for a in asked.failed)
                          + f" did not answer through {endpoint} (above); see `qinfra status "
                          f"--stack {stack.name}` and the servers' logs")


@click.command(cls=Command)
@stack_option
@json_option
@click.option("--markdown", is_flag=True, help="Print a pull-request comment (under 65,536 chars).")
def preview(stack: str, as_json: bool, markdown: bool) -> None:
    """Show what `up` would change: per resource, then GPUs, memory and cost before -> after."""
    from qinfra.cli.preview_view import print_report

    print_report(open_stack(stack, as_json).preview(), as_json, markdown)


@click.command(cls=Command)
@stack_option
@yes_option
@json_option
@skip_gate_option
def up(stack: str, yes: bool, as_json: bool, skip_gate: bool) -> None:
    """Push and pin missing artifacts, preview, apply, wait until every server is healthy.

    Fails at once, before pushing or previewing, while another update holds the stack's lock;
    after pinning, before the engine, while the quality gate refuses the quantized share.
    """
    handle = open_stack(stack, as_json)
    result = handle.up(yes=yes, skip_gate=skip_gate, preview=not (yes and as_json))
    _present(result, handle, as_json, ask=handle.spec.target.value == "local")


def _present_change(result: Any, handle: Any, as_json: bool) -> None:
    if result.applied is not None:
        _present(result, handle, as_json)
    elif as_json:
        echo_json({"stack": result.stack, "diff": result.diff, "applied": False})
    elif result.diff:
        click.echo("left for review: commit the stack file and let `pulumi preview` show the "
                   "change in the pull request")


@click.command(cls=Command)
@stack_option
@yes_option
@no_apply_option
@json_option
def rollback(stack: str, yes: bool, no_apply: bool, as_json: bool) -> None:
    """Send all traffic back to the baseline: rewrite the stack file, preview, apply.

    The change is two lines of stacks/Pulumi.<NAME>.yaml (stage: rollback, quantized_percent: 0);
    the quantized fleet is kept at zero replicas so rolling forward again is fast. Answered "no"
    (or with no terminal and no --yes) the stack file is left exactly as it was. While another
    change of the stack is applying (an automatic rollout's step), it waits for it, then stops
    that rollout.
    """
    handle = open_stack(stack, as_json)
    result = handle.rollback(yes=yes, no_apply=no_apply, preview=not (yes and as_json))
    _present_change(result, handle, as_json)


@click.command(cls=Command)
@stack_option
@click.option("--percent", type=click.IntRange(0, 100), default=None,
              help="Quantized traffic share: 0 baseline_only, 1-99 ab_test/gradual, 100 full.")
@click.option("--stage", type=click.Choice(["ab_test", "gradual"]), default=None,
              help="Stage for 1-99% [default: the current one, else ab_test].")
@yes_option
@no_apply_option
@json_option
@skip_gate_option
@click.option("--auto", is_flag=True, help="Walk qinfra:rollout.steps judged by qinfra:analysis: "
              "exit 0 promoted to full, 1 rolled back, 3 held (inconclusive), 4 stopped (the "
              "stack file was changed meanwhile), 130 interrupted.")
@click.option("--commit", is_flag=True, help="With --auto: commit each stack-file change to Git.")
def rollout(stack: str, percent: int | None, stage: str | None, yes: bool, no_apply: bool,
            as_json: bool, skip_gate: bool, auto: bool, commit: bool) -> None:
    """Move the quantized variant's traffic share: rewrite the stack file, preview, apply."""
    if auto or percent is None:  # the automatic, metric-gated walk (qinfra/deploy/auto_rollout.py)
        if not auto or percent is not None or no_apply or stage:
            raise click.UsageError("give --percent, or --auto (without --percent, --stage, "
                                   "--no-apply)")
        click.get_current_context().exit(_auto(stack, commit, as_json, skip_gate))
    from qinfra.core.spec import Stage

    handle = open_stack(stack, as_json)
    result = handle.rollout(percent, Stage(stage) if stage else None, yes=yes, no_apply=no_apply,
                            skip_gate=skip_gate, preview=not (yes and as_json))
    _present_change(result, handle, as_json)


def _auto(stack: str, commit: bool, as_json: bool, skip_gate: bool) -> int:
    """Run the automatic rollout, print its outcome (JSON with --json); the exit code."""
    from qinfra.deploy.auto_rollout import AutoRollout

    run = AutoRollout(open_stack(stack, as_json), commit)(skip_gate)
    if as_json:
        echo_json(run.to_json())
    else:
        click.echo(run.message)
    return run.exit_code


@click.command(cls=Command)
@stack_option
@yes_option
def destroy(stack: str, yes: bool) -> None:
    """Stop and delete everything the stack runs; artifacts in the store are kept."""
    outcome = open_stack(stack).destroy(yes=yes)
    click.echo(f"destroyed: {outcome.summary.get('delete', 0)} resources")


COMMANDS = (preview, up, rollback, rollout, destroy)
__all__ = ["COMMANDS", "DeployError"]
