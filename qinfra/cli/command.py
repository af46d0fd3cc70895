"""The click classes every qinfra command uses: the one place a QinfraError becomes output.

qinfra's errors are plain exceptions (core and planning import no click). Here they turn into
click's own `Error: ...` line and exit code, whether a command runs under `qinfra` or is invoked
on its own (as tests and the lazy command groups do).
"""

from __future__ import annotations

from typing import Any

import click
import click.formatting

from qinfra.cli.helptext import help_width
from qinfra.core.errors import Declined, NeedsConsent, QinfraError


class UserError(click.ClickException):
    """A failure as click prints it: `Error: <message>` on stderr, then exit with exit_code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Context(click.Context):
    """click's context with the help width measured by qinfra.cli.helptext (no shutil)."""

    def make_formatter(self) -> click.HelpFormatter:
        width = self.terminal_width
        if width is None and click.formatting.FORCED_WIDTH is None:  # CliRunner forces a width
            width = help_width(self.max_content_width)  # HelpFormatter's own rule
        return self.formatter_class(width=width, max_width=self.max_content_width)


class Command(click.Command):
    """A click command whose QinfraErrors print as `Error: ...` and exit with their exit_code."""

    context_class = Context

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Declined:
            raise click.Abort() from None
        except NeedsConsent as exc:
            raise click.UsageError(exc.message, ctx) from None
        except QinfraError as exc:
            raise UserError(exc.message, exc.exit_code) from exc


class Group(Command, click.Group):
    """A command group that maps errors the same way, and whose subcommands are `Command`s."""

    command_class = Command
    group_class = type  # a subgroup is built with the class of its parent
