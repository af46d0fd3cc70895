"""`qinfra artifacts ls`: every artifact of a stack's store and its state, pinned ones first."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from qinfra.artifacts.manifest import (
    MANIFEST_NAME,
    Manifest,
    Recipe,
    artifact_id_of,
    split_artifact_uri,
)
from qinfra.artifacts.store_open import open_store
from qinfra.artifacts.stores import STAT_THREADS, TransferSettings
from qinfra.core.artifact_uri import artifact_uri, is_artifact_id

if TYPE_CHECKING:
    from qinfra.core.spec import StackSpec


class ArtifactState(StrEnum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"  # files without a manifest: an interrupted push
    MISSING = "missing"  # pinned in the stack file, absent from the store
    ALTERED = "altered"  # manifest.json does not hash to the artifact id


@dataclass(frozen=True)
class ArtifactListing:
    """One artifact of a store as `qinfra artifacts ls` shows it."""

    uri: str
    artifact_id: str
    state: ArtifactState
    pinned_by: tuple[str, ...]
    file_count: int | None = None
    size_bytes: int | None = None
    recipe: Recipe | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "artifact_id": self.artifact_id,
            "state": self.state.value,
            "pinned_by": list(self.pinned_by),
            "files": self.file_count,
            "size_bytes": self.size_bytes,
            "recipe": self.recipe.to_json() if self.recipe else None,
        }


def list_artifacts(
    spec: StackSpec, settings: TransferSettings | None = None
) -> list[ArtifactListing]:
    """Every artifact in the stack's store plus any pinned elsewhere, pinned ones first."""
    store = open_store(spec.artifacts.store, settings)
    store.check()
    pinned: dict[str, list[str]] = {}
    for name, variant in spec.variants.pairs():
        if variant.artifact:
            pinned.setdefault(str(split_artifact_uri(variant.artifact)), []).append(name.value)
    listed = {artifact_uri(store.uri, d) for d in store.list_dirs() if is_artifact_id(d)}
    uris = sorted(listed | pinned.keys(), key=lambda u: (u not in pinned, u))

    def describe(uri: str) -> ArtifactListing:
        parsed = split_artifact_uri(uri)
        aid = parsed.artifact_id
        where = store if parsed.store == store.uri else open_store(parsed.store, settings)
        by = tuple(pinned.get(uri, ()))
        data = where.read(f"{aid}/{MANIFEST_NAME}")
        if data is None:
            state = ArtifactState.INCOMPLETE if uri in listed else ArtifactState.MISSING
            return ArtifactListing(uri, aid, state, by)
        if artifact_id_of(data) != aid:
            return ArtifactListing(uri, aid, ArtifactState.ALTERED, by)
        m = Manifest.from_bytes(data, f"{uri}{MANIFEST_NAME}")
        return ArtifactListing(
            uri, aid, ArtifactState.COMPLETE, by, len(m.files), m.size_bytes, m.recipe
        )

    with ThreadPoolExecutor(STAT_THREADS) as pool:
        return list(pool.map(describe, uris))
