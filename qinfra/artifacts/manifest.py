"""The manifest: every file of an artifact with its size and sha256; its hash names the artifact."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from qinfra.artifacts.provenance import MadeRecipe
from qinfra.core.artifact_uri import ARTIFACT_URI_SHAPE, ArtifactUri, parse_artifact_uri
from qinfra.core.errors import ArtifactError
from qinfra.serving.llamacpp import QuantizeRecipe

# llama-quantize over the baseline (the older record: tool, version, type), or a recipe's.
Recipe = QuantizeRecipe | MadeRecipe

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class FileEntry:
    """One manifest line: a file's path relative to the artifact root, size and sha256 (hex)."""

    path: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """Everything an artifact is; its canonical bytes' sha256 is the artifact's name."""

    files: tuple[FileEntry, ...]
    recipe: Recipe | None = None

    def __post_init__(self) -> None:
        # Files in path order: equal content gives equal manifests, whatever order they came in.
        object.__setattr__(self, "files", tuple(sorted(self.files, key=lambda e: e.path)))
        seen: set[str] = set()
        for entry in self.files:
            _check_relative_path(entry.path)
            if entry.path in seen:
                raise ArtifactError(f"two files at '{entry.path}' in one artifact")
            seen.add(entry.path)

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys and files, no whitespace): equal content, equal bytes."""
        doc: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "files": [e.to_json() for e in self.files],
        }
        if self.recipe is not None:
            doc["recipe"] = self.recipe.to_json()
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @property
    def artifact_id(self) -> str:
        return artifact_id_of(self.to_bytes())

    @property
    def size_bytes(self) -> int:
        return sum(e.size for e in self.files)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Manifest:
        """Parse a stored manifest; ArtifactError naming `where` when it is not one of ours."""
        try:
            doc = json.loads(data)
            if doc.get("version") != MANIFEST_VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {MANIFEST_VERSION}")
            files = tuple(
                FileEntry(path=str(f["path"]), size=int(f["size"]), sha256=str(f["sha256"]))
                for f in doc["files"]
            )
            recipe = _recipe(doc["recipe"]) if "recipe" in doc else None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArtifactError(
                f"{where} is not a qinfra manifest ({exc}). To fix: push the artifact again"
            ) from None
        return cls(files=files, recipe=recipe)


def _recipe(doc: dict[str, Any]) -> Recipe:
    return MadeRecipe.from_json(doc) if "steps" in doc else QuantizeRecipe(**doc)


def artifact_id_of(manifest_bytes: bytes) -> str:
    """The artifact id that stored manifest bytes must hash to (`sha256-<hex>`)."""
    return "sha256-" + hashlib.sha256(manifest_bytes).hexdigest()


def split_artifact_uri(uri: str) -> ArtifactUri:
    """The store and id of `<store>/sha256-<hex>/`; ArtifactError for anything else."""
    try:
        return parse_artifact_uri(uri)
    except ValueError:
        raise ArtifactError(
            f"'{uri}' is not an artifact URI. To fix: give {ARTIFACT_URI_SHAPE} as printed by "
            "`qinfra artifacts push`"
        ) from None


def _check_relative_path(path: str) -> None:
    parts = path.split("/")
    if (
        path == MANIFEST_NAME
        or "\\" in path
        or path.startswith("/")
        or any(part in {"", ".", ".."} for part in parts)
    ):
        raise ArtifactError(
            f"file path '{path}' cannot be stored in an artifact (absolute, '..', or the "
            f"reserved name {MANIFEST_NAME}). To fix: rename or remove it in the source"
        )
