"""The click options the stack commands share, spelled once."""

from __future__ import annotations

import click

SKIP_FLAG = "--skip-gate"  # qinfra.quality.gate_check names it in its fixes (not imported here:
# that module reads the spec, and the CLI's start-up stays light)

stack_option = click.option("--stack", "stack", required=True, metavar="NAME",
                            help="The stack: stacks/Pulumi.<NAME>.yaml.")
yes_option = click.option("--yes", "-y", is_flag=True,
                          help="Apply without asking (for scripts and CI).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
no_apply_option = click.option("--no-apply", is_flag=True,
                               help="Only rewrite the stack file (for a pull request).")
skip_gate_option = click.option(
    SKIP_FLAG, "skip_gate", is_flag=True,
    help="Give the quantized variant traffic without a passing gate report; recorded as "
         "qinfra:gate.skip in the stack file and in the update's history.")
