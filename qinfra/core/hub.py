"""Model-hub failures (huggingface-hub) mapped to qinfra errors that say what to do."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from qinfra.core.errors import QinfraError


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None, error: type[QinfraError],
               what: str = "it") -> Iterator[None]:
    """Turn huggingface-hub's exceptions inside the block into `error` with a fix in words."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision or 'main'}"
    try:
        yield
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: must come first
        raise error(
            f"{what} of {where} is not cached and the hub cannot be reached (offline?). To fix: "
            "download it once online, or point at a local directory"
        ) from None
    except GatedRepoError:
        raise error(f"{repo_id} is gated: accept its licence on the hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise error(f"hub repo '{repo_id}' not found (or private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise error(f"{repo_id} has no revision '{revision}'") from None
    except EntryNotFoundError:
        raise error(f"{where} has no {what}") from None
    except HfHubHTTPError as exc:
        raise error(f"fetching {what} of {where} failed: {exc}") from None
