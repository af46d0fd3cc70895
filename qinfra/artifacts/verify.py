"""Verifying a stored artifact: every object re-hashed against its manifest, the manifest
against the artifact id."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qinfra.artifacts.hashcache import HashCache
from qinfra.artifacts.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    Recipe,
    artifact_id_of,
    split_artifact_uri,
)
from qinfra.artifacts.progress import NO_PROGRESS, Progress
from qinfra.artifacts.store_open import open_store
from qinfra.artifacts.stores import STAT_THREADS, StoredObject, TransferSettings
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
    recipe: Recipe | None = None  # how the artifact was made, as its manifest says

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
            "recipe": self.recipe.to_json() if self.recipe else None,
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
    return VerifyReport(uri, tuple(checks), manifest.recipe)


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


def verify_local(artifact_dir: Path, manifest: Manifest, cache: HashCache, *, uri: str) -> None:
    """Check every file of an artifact folder a server is about to read against its manifest:
    from `cache` while a file's identity is unchanged, by content otherwise. Cheap enough to
    run at every server start, so weights changed after the push are never served.

    Raises ArtifactError naming the artifact, the file and both digests.
    """
    from qinfra.artifacts.filestore import FileStore

    store = FileStore(artifact_dir.parent.as_uri(), cache)
    keys = [f"{artifact_dir.name}/{e.path}" for e in manifest.files]
    with ThreadPoolExecutor(STAT_THREADS) as pool:
        found = list(pool.map(store.stat, keys))
    cache.save()
    for entry, obj in zip(manifest.files, found, strict=True):
        if _problem(entry, obj) is None:
            continue
        now = "is missing" if obj is None else f"has sha256 {obj.sha256} ({obj.size} bytes)"
        raise ArtifactError(
            f"artifact {uri} cannot be served: {artifact_dir / entry.path} {now}, its manifest "
            f"says sha256 {entry.sha256} ({entry.size} bytes); it changed after the push. To "
            "fix: push the artifact again from its source (`qinfra artifacts push --stack`), "
            f"then check it with `qinfra artifacts verify {uri}`"
        )


def verify_before_serving(uri: str, cache: HashCache) -> Manifest:
    """verify_local for a pinned file:// artifact (the local target serves from the store's
    folder itself), after checking its manifest against the artifact id."""
    parsed = split_artifact_uri(uri)
    if not parsed.store.startswith("file:///"):
        raise ArtifactError(
            f"artifact {uri} is not in a file:// store, so no local server can read it. To fix: "
            "push it to a file:// store with `qinfra artifacts push --stack`"
        )
    from qinfra.artifacts.filestore import FileStore

    manifest = read_manifest(uri)
    folder = FileStore(parsed.store).root / parsed.artifact_id
    verify_local(folder, manifest, cache, uri=str(parsed))
    return manifest
