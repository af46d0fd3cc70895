"""Model-hub access (huggingface-hub): one short request decides, failures say what to do."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from qinfra.core.errors import QinfraError

HUB_TIMEOUT_S = 5.0
"""Seconds the one reachability request may take. huggingface-hub alone, when the hub cannot be
reached and nothing is cached, retries five times with backoff (~23 s of warnings) before failing."""

OFFLINE_FIX = (
    "To fix: point the model id at a local directory holding config.json, or fetch it once "
    "online and set HF_HUB_OFFLINE=1 to plan from the local cache"
)


def is_hub_id(name: str) -> bool:
    """`owner/name`, and not a relative, absolute or home path (the one hub-id rule)."""
    return not name.startswith((".", "/", "~")) and name.count("/") == 1


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
            f"{what} of {where} is not cached and the hub cannot be reached (offline?). {OFFLINE_FIX}"
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


def hub_file(repo_id: str, filename: str, revision: str, error: type[QinfraError]) -> Path:
    """One file of a hub repo, from the hub when it answers one short request, else from the
    local cache; raises `error` naming the fix. HF_HUB_OFFLINE and HF_TOKEN are honoured by
    huggingface-hub (offline: cache only, no request at all)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    with hub_errors(repo_id, revision, error, filename):
        if constants.HF_HUB_OFFLINE:
            return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=True))
        why = unreachable(repo_id, filename, revision)
        if why is None:
            return Path(hf_hub_download(repo_id, filename, revision=revision))
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=True))
        except LocalEntryNotFoundError:
            raise error(
                f"the model hub at {constants.ENDPOINT} cannot be reached ({why}) and {filename} of "
                f"{repo_id}@{revision} is not cached. {OFFLINE_FIX}"
            ) from None


def unreachable(repo_id: str, filename: str, revision: str) -> str | None:
    """Why the hub did not answer one HEAD request for the file, or None when it did.

    An HTTP error status is an answer: a missing repo or a gated one raises huggingface-hub's
    error here, so that an unknown id fails after this one request. Anything else (refused
    connection, timeout, proxy, TLS, a non-hub endpoint) is reported as unreachable; the
    exception types differ between huggingface-hub's HTTP stacks, hence the broad catch.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    url = hf_hub_url(repo_id, filename, revision=revision)
    try:
        get_hf_file_metadata(url, timeout=HUB_TIMEOUT_S)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status is not None and status < 500 and status != 429:
            raise
        return f"HTTP {status}"
    except Exception as exc:  # broad on purpose: see the docstring
        return f"{type(exc).__name__}: {exc}"
    return None
