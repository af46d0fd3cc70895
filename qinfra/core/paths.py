"""Where a qinfra project is: the folder holding Pulumi.yaml, found the one way every layer uses."""

from __future__ import annotations

from pathlib import Path

PROJECT_FILE = "Pulumi.yaml"


def project_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above `start` (default: the working directory) that holds
    Pulumi.yaml; None when there is none. A dynamic provider runs in the program's folder, the
    CLI wherever the user is: both find the same project this way."""
    here = (start or Path.cwd()).resolve()
    return next((folder for folder in (here, *here.parents) if (folder / PROJECT_FILE).is_file()),
                None)
