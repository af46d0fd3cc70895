"""What an operation tells its caller and asks it: the one channel between qinfra's operations
and whatever front end runs them (the CLI, a test, a future HTTP API). Nothing under deploy/
prints; it calls these."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from qinfra.artifacts.progress import NO_PROGRESS, Progress

if TYPE_CHECKING:
    from qinfra.deploy.preview import PreviewReport


class Events:
    """Says nothing and agrees to nothing: a caller that cannot answer questions passes
    `yes=True` to the operation (or subclasses this and answers them)."""

    #: whether `confirm` can reach someone; an operation that would ask stops early without
    can_ask: bool = False

    def progress(self, message: str) -> None:
        """A step under way or done (the CLI prints it on stderr)."""

    def warning(self, message: str) -> None:
        """Something the user should know that does not stop the operation."""

    def edited(self, path: Path, diff: str) -> None:
        """The stack file was just rewritten (diff "" : it already said so)."""

    def pinned(self, diff: str) -> None:
        """Artifact pins or a recorded gate skip were written to the stack file."""

    def previewed(self, report: PreviewReport) -> None:
        """What the apply that follows will change, before the question."""

    def confirm(self, question: str) -> bool:
        return False

    def push_progress(self) -> AbstractContextManager[Progress]:
        """Where artifact pushes report their bytes."""
        return nullcontext(NO_PROGRESS)


SILENT = Events()
