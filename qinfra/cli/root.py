"""The `qinfra` click group: commands imported only when named (click's lazy-group pattern).

qinfra.cli.main is the entry point; it prints the root help page itself and comes here for
everything else. The group's help text and option help live in main.py so both read one source.
"""

from __future__ import annotations

from typing import Any

import click

from qinfra import __version__
from qinfra.cli.command import Group, UserError
from qinfra.cli.main import COMMANDS, DEBUG_HELP, ROOT_HELP
from qinfra.core.errors import QinfraError


class _Group(Group):
    """The `qinfra` group: commands imported when named; tracebacks only with --debug, every
    other failure one `Error:` line and an exit code (see qinfra.cli.command)."""

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


@click.group(cls=_Group, help=ROOT_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qinfra")
@click.option("--debug", is_flag=True, help=DEBUG_HELP)
def cli(debug: bool) -> None:
    pass
