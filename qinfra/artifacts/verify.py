"""Verifying a stored artifact: every object re-hashed against its manifest, the manifest
against the artifact id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qinfra.artifacts.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    artifact_id_of,
    split_artifact_uri,
)
from qinfra.artifacts.progress import NO_PROGRESS, Progress
from qinfra.artifacts.stores import StoredObject, TransferSettings, open_store
from qinfra.core.errors import ArtifactError


@dataclass(frozen=True)
class FileCheck:
    """One file of a verified artifact; `problem` is None when it matched its manifest entry."""

    path: str
    problem: str | None = None


@dataclass(frozen=True)
class VerifyReport:
    """Every file's check, so a caller can name each bad one rather than stop at the first."""

    uri: str
    checks: tuple[FileCheck, ...]

    @property
    def bad(self) -> tuple[FileCheck, ...]:
        return tuple(c for c in self.checks if c.problem is not None)

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "ok": self.ok,
            "files": [{"path": c.path, "problem": c.problem} for c in self.checks],
        }


def verify(
    uri: str, *, settings: TransferSettings | None = None, progress: Progress = NO_PROGRESS
) -> VerifyReport:
    """Re-hash every stored object (streamed, never saved) against the manifest, and the
    manifest against the artifact id. Store-level failures raise ArtifactError."""
    parsed = split_artifact_uri(uri)
    store = open_store(parsed.store, settings)
    store.check()
    uri, aid = str(parsed), parsed.artifact_id
    data = store.read(f"{aid}/{MANIFEST_NAME}")
    if data is None:
        problem = "missing: the artifact is incomplete (its push never finished); push it again"
        return VerifyReport(uri, (FileCheck(MANIFEST_NAME, problem),))
    actual = artifact_id_of(data)
    if actual != aid:
        problem = f"hashes to {actual}, not the artifact id: it was altered; push it again"
        return VerifyReport(uri, (FileCheck(MANIFEST_NAME, problem),))
    manifest = Manifest.from_bytes(data, f"{uri}{MANIFEST_NAME}")
    found = store.rehash(
        [f"{aid}/{e.path}" for e in manifest.files],
        progress.start("verifying", manifest.size_bytes),
    )
    checks = [FileCheck(MANIFEST_NAME)]
    checks += [FileCheck(e.path, _problem(e, found[f"{aid}/{e.path}"])) for e in manifest.files]
    return VerifyReport(uri, tuple(checks))


def _problem(entry: FileEntry, found: StoredObject | None) -> str | None:
    if found is None:
        return "missing"
    if found.size != entry.size:
        return f"size {found.size} bytes, manifest says {entry.size}"
    if found.sha256 != entry.sha256:
        return f"sha256 {found.sha256}, manifest says {entry.sha256}"
    return None


def read_manifest(uri: str, settings: TransferSettings | None = None) -> Manifest:
    """The manifest of a complete artifact (what a target needs to find its files in it)."""
    parsed = split_artifact_uri(uri)
    data = open_store(parsed.store, settings).read(f"{parsed.artifact_id}/{MANIFEST_NAME}")
    if data is None or artifact_id_of(data) != parsed.artifact_id:
        raise ArtifactError(
            f"{uri} has no intact manifest.json. To fix: run `qinfra artifacts verify {uri}`, "
            "then push it again"
        )
    return Manifest.from_bytes(data, f"{uri}{MANIFEST_NAME}")
