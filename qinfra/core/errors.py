"""One error root for everything qinfra reports to a user, each kind with its exit code.

The root is a plain Exception so that core and planning import no CLI framework; the CLI
(`qinfra.cli.main`) maps these errors to `Error: ...` lines and exit codes in one place.
"""

from __future__ import annotations

from collections.abc import Iterable


class QinfraError(Exception):
    """A failure the user can act on: the message says what failed and how to fix it.

    `exit_code` is what the CLI exits with (1 runtime, 2 usage, as click does).
    """

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def format_message(self) -> str:
        """The text after `Error: `; a method so callers format apart from printing."""
        return self.message

    def __str__(self) -> str:
        return self.message


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


class RenderError(QinfraError):
    """Launch files that cannot be rendered from this stack and plan; nothing was written."""


class DeployError(QinfraError):
    """A Pulumi operation (preview, up, destroy, a state read) or its preflight that failed."""


class NeverDeployedError(DeployError):
    """A read (status, history) of a stack the state backend does not hold; nothing was
    created to answer it. Exit 3, so scripts can tell "never deployed" from a failure."""

    exit_code = 3


class Declined(QinfraError):
    """The user answered "no" to a question; nothing was applied (the CLI prints `Aborted!`)."""


class NeedsConsent(QinfraError):
    """A change that would ask, with nobody to ask (no terminal, no --yes): a usage error."""

    exit_code = 2


def suggest(value: str, allowed: Iterable[str]) -> str:
    """`Did you mean 'x'?` for a near miss, else the empty string."""
    import difflib  # here, not at the top: every command imports this module, few suggest

    names = list(allowed)
    prefixed = [name for name in names if name.startswith(value) or value.startswith(name)]
    close = prefixed or difflib.get_close_matches(value, names, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close and value else ""
