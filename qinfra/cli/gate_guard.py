"""The quality gate in front of `qinfra up` and `qinfra rollout`: no quantized traffic without a
passing gate report for the pinned artifacts, unless `--skip-gate` records the skip in the stack
file (so it shows in the pull request's diff and in every later update's recorded config)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click

from qinfra.core.errors import DeployError

if TYPE_CHECKING:
    from qinfra.core.spec import StackSpec

SKIP_FLAG = "--skip-gate"  # qinfra.quality.gate_check names it in its fixes (not imported here:
# that module reads the spec, and the CLI's start-up stays light)
skip_gate_option = click.option(
    SKIP_FLAG, "skip_gate", is_flag=True,
    help="Give the quantized variant traffic without a passing gate report; recorded as "
         "qinfra:gate.skip in the stack file and in the update's history.")


def gate_updates(spec: StackSpec, skip: bool, refuse: bool = True) -> dict[str, str]:
    """Nothing when the gate lets the stack's quantized share through (a passing report for
    exactly its pins, a recorded skip of this artifact, or 0% quantized: a rollback is never
    held back). Else, with `skip`, the stack-file edit that records the skip; without it,
    DeployError with the one line that says what is wrong and the fix (`refuse=False`, for an
    edit only left for review: that line as a warning)."""
    from qinfra.quality.gate_check import check_gate

    check = check_gate(spec)
    if not check.refuses:
        return {}
    if skip:
        click.echo(f"skipping the quality gate ({SKIP_FLAG}), recorded as qinfra:gate.skip in "
                   f"{spec.path}", err=True)
        return check.skip_updates(spec)
    if refuse:
        raise DeployError(str(check.problem))
    click.echo(f"warning: {check.problem}", err=True)
    return {}


def edit_with_gate(path: Path, stack: str, updates: Mapping[str, object], skip: bool,
                   refuse: bool = True) -> str:
    """Apply `updates` to the stack file, then ask the gate about the stack as edited; a skip
    is written together with them, so the diff (returned) shows both. The caller holds the
    file's old bytes (`_until_consent`): a refusal raised here leaves it to put them back."""
    from qinfra.core.fileio import write_atomic
    from qinfra.core.spec import load_stack
    from qinfra.deploy.stackfile import update_stack_file

    before = path.read_bytes()
    diff = update_stack_file(path, updates)
    extra = gate_updates(load_stack(stack), skip, refuse)
    if extra:
        write_atomic(path, before)
        diff = update_stack_file(path, {**updates, **extra})
    return diff
