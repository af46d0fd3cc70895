"""How commands print for scripts: one JSON form (rich tables for people live with each view)."""

from __future__ import annotations

import json
from typing import Any

import click


def console(stderr: bool = False) -> Any:
    """A rich console (imported on use: rich costs start-up time a JSON run need not pay)."""
    from rich.console import Console

    return Console(stderr=stderr)


def echo_json(data: Any) -> None:
    """One JSON document on stdout, indented; values JSON lacks (paths, enums) as their text."""
    click.echo(json.dumps(data, indent=2, default=str))
