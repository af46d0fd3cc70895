"""The `qinfra` command line: the root group, which imports a command's module only when it runs.

`qinfra --help` lists every command from the summaries below without importing any of them, so
it costs little more than importing click (tests/test_cli_startup.py checks each summary against
its command's help).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import click

from qinfra import __version__
from qinfra.cli.command import Group, UserError
from qinfra.core.errors import QinfraError


class LazyCommand(NamedTuple):
    """Where a command lives, and the first paragraph of its help for the root's listing (a
    NamedTuple: dataclasses is one import more than `qinfra --help` needs)."""

    module: str
    attr: str
    summary: str


_STACK = "qinfra.cli.stack"
_OBSERVE = "qinfra.cli.observe"

# Every command, imported when named. A summary is the first paragraph of the command's help, as
# `qinfra --help` shortens it; tests/test_cli_startup.py fails when one drifts from its command.
COMMANDS: dict[str, LazyCommand] = {
    "analysis": LazyCommand("qinfra.cli.analysis", "analysis", "The analysis windows of "
                            "`rollout --auto`, oldest first, with each check's verdict."),
    "artifacts": LazyCommand("qinfra.cli.artifacts", "artifacts",
                             "Push, verify and list the weight artifacts a stack deploys."),
    "bench": LazyCommand("qinfra.cli.bench", "bench", "Latency and throughput of a stack or any "
                         "OpenAI-compatible URL, as `vllm bench serve` measures them."),
    "destroy": LazyCommand(_STACK, "destroy", "Stop and delete everything the stack runs; "
                                              "artifacts in the store are kept."),
    "gate": LazyCommand("qinfra.cli.gate", "gate", "Quality gate: measure the quantized variant's "
                        "drift from the baseline and judge it."),
    "history": LazyCommand(_OBSERVE, "history", "Every update of the stack, newest first and "
                                                "paged, with its number, result, stage, traffic "
                                                "and artifact URIs; failed updates included."),
    "plan": LazyCommand("qinfra.cli.plan", "plan", "Memory plan: GPUs, tensor parallelism, "
                                                   "replicas, engine flags and cost."),
    "preview": LazyCommand(_STACK, "preview", "Show what `up` would change: per resource, then "
                                              "GPUs, memory and cost before -> after."),
    "render": LazyCommand("qinfra.cli.render", "render", "Write what the stack's target runs: launch "
                          "scripts (local), cloud-init user-data (aws) or manifests (kubernetes), "
                          "one folder per variant."),
    "rollback": LazyCommand(_STACK, "rollback", "Send all traffic back to the baseline: rewrite the "
                                                "stack file, preview, apply."),
    "rollout": LazyCommand(_STACK, "rollout", "Move the quantized variant's traffic share: rewrite "
                                              "the stack file, preview, apply."),
    "status": LazyCommand(_OBSERVE, "status", "The stack's outputs: stage, and per variant its "
                                              "traffic, replicas and endpoint; on target local "
                                              "also each engine's memory, planned against what "
                                              "it allocated."),
    "up": LazyCommand(_STACK, "up", "Push and pin missing artifacts, preview, apply, wait until "
                                    "every server is healthy."),
}


class _Group(Group):
    """The `qinfra` group: commands imported when named (click's lazy-group pattern); tracebacks
    only with --debug, every other failure one `Error:` line and an exit code (see
    qinfra.cli.command)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        lazy = COMMANDS.get(name)
        if lazy is None:
            return super().get_command(ctx, name)
        import importlib

        command = getattr(importlib.import_module(lazy.module), lazy.attr)
        assert isinstance(command, click.Command), lazy
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing, with a stand-in per lazy command so that none is imported; click
        shortens a stand-in's help exactly as it shortens the command's own."""
        stand_ins = {name: click.Command(name, help=lazy.summary) for name, lazy in COMMANDS.items()}
        group = click.Group(self.name, commands={**stand_ins, **self.commands})
        group.format_commands(ctx, formatter)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # Group.invoke: a QinfraError is a UserError by now
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as exc:
            if ctx.find_root().params.get("debug"):
                raise
            raise UserError(f"{type(exc).__name__}: {exc} (run with --debug for a traceback)",
                            QinfraError.exit_code) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qinfra")
@click.option("--debug", is_flag=True, help="Show tracebacks for unexpected errors.")
def cli(debug: bool) -> None:
    """Deploy an LLM as a 16-bit baseline and a quantized variant, sized by a GPU-memory planner.

    The stack file stacks/Pulumi.<stack>.yaml is the single source of truth; `qinfra plan`
    shows what it costs in GPUs and money before anything is provisioned.
    """


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
