"""The operations' events as a terminal shows them: progress and diffs on stderr, questions
through click, artifact pushes as rich bars; with --json only warnings, on stderr."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from qinfra.cli.output import console
from qinfra.deploy.events import Events


class TerminalEvents(Events):
    """`as_json`: stdout carries one JSON document, so only warnings are shown (on stderr)."""

    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        self.can_ask = sys.stdin.isatty()

    def progress(self, message: str) -> None:
        if self.as_json:
            return
        if message.startswith("applying"):
            console(stderr=True).print(f"[dim]{message}[/]")
        else:
            click.echo(message, err=True)

    def warning(self, message: str) -> None:
        click.echo(message, err=True)

    def edited(self, path: Path, diff: str) -> None:
        if not self.as_json:
            click.echo(diff.rstrip("\n") if diff else f"{path} already says so")

    def pinned(self, diff: str) -> None:
        if not self.as_json:
            click.echo(diff.rstrip("\n"), err=True)

    def previewed(self, report: Any) -> None:
        if not self.as_json:
            from qinfra.cli.preview_view import print_report

            print_report(report)

    def confirm(self, question: str) -> bool:
        return bool(click.confirm(question, default=False))

    @contextmanager
    def push_progress(self) -> Iterator[Any]:
        from qinfra.cli.artifacts import progress_bars

        with progress_bars(quiet=self.as_json) as progress:
            yield progress


def open_stack(name: str, as_json: bool = False, check: bool = True) -> Any:
    """The stack, opened with its events shown on this terminal (see Stack.open's `check`)."""
    from qinfra.deploy.operations import Stack

    return Stack.open(name, TerminalEvents(as_json), check=check)
