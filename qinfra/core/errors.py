"""One error root for everything qinfra reports to a user, each kind with its exit code."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import click


class QinfraError(click.ClickException):
    """A failure the user can act on; click prints it as `Error: ...` and exits with exit_code."""

    exit_code = 1


class SpecError(QinfraError):
    """A stack file or ad-hoc argument that is malformed; a usage error, so exit 2."""

    exit_code = 2


class ModelInfoError(QinfraError):
    """A model's config.json that cannot be found or read."""


class CompatibilityError(QinfraError):
    """An engine x format x GPU combination that cannot run."""


class NoFitError(QinfraError):
    """A plan that does not fit the memory it was given."""


class ArtifactError(QinfraError):
    """An artifact that cannot be fetched, hashed, pushed or verified."""


class EngineError(QinfraError):
    """A Pulumi engine operation that failed."""


def suggest(value: str, allowed: Iterable[str]) -> str:
    """`Did you mean 'x'?` for a near miss, else the empty string."""
    names = list(allowed)
    prefixed = [name for name in names if name.startswith(value) or value.startswith(name)]
    close = prefixed or difflib.get_close_matches(value, names, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close and value else ""
