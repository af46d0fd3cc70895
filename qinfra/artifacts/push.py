"""Pushing artifacts: upload what the store lacks, manifest.json last, and pin stacks to them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qinfra.artifacts.fetch import Fetched, cache_dir, fetch, quantize_baseline
from qinfra.artifacts.hashing import FileStamp, Hasher, stat_source
from qinfra.artifacts.manifest import MANIFEST_NAME, Manifest
from qinfra.artifacts.progress import NO_PROGRESS, Progress
from qinfra.artifacts.stores import (
    STAT_THREADS,
    Store,
    StoredObject,
    TransferSettings,
    Upload,
    open_store,
    sha256_matches,
)
from qinfra.core.artifact_uri import artifact_uri
from qinfra.core.errors import ArtifactError
from qinfra.core.formats import format_info
from qinfra.core.spec import Variant
from qinfra.serving.llamacpp import QuantizeRecipe

if TYPE_CHECKING:
    from qinfra.core.spec import StackSpec

@dataclass(frozen=True)
class PushResult:
    """What one push made: the artifact's URI and manifest, and what it had to send."""

    uri: str
    manifest: Manifest
    # Bytes of the artifact's files sent by this push (the small manifest.json not counted).
    uploaded_bytes: int
    skipped_files: int

    @property
    def artifact_id(self) -> str:
        return self.manifest.artifact_id

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "artifact_id": self.artifact_id,
            "files": [e.to_json() for e in self.manifest.files],
            "uploaded_bytes": self.uploaded_bytes,
        }


def push(
    fetched: Fetched,
    store: Store,
    *,
    recipe: QuantizeRecipe | None = None,
    hasher: Hasher | None = None,
    progress: Progress = NO_PROGRESS,
) -> PushResult:
    """Hash, upload what the store lacks, verify it, and write manifest.json last.

    An interrupted push leaves no manifest, and the next push skips every object already there
    with the right size and sha256, so it resumes. Raises ArtifactError on any mismatch.
    """
    hashed = (hasher or Hasher()).hash_files(fetched.files, progress)
    manifest = Manifest(tuple(h.entry for h in hashed), recipe)
    aid = manifest.artifact_id
    store.check()
    with ThreadPoolExecutor(STAT_THREADS) as pool:
        present: list[StoredObject | None] = list(
            pool.map(store.stat, [f"{aid}/{h.entry.path}" for h in hashed])
        )
    todo = [
        h
        for h, obj in zip(hashed, present, strict=True)
        if not sha256_matches(obj, h.entry.size, h.entry.sha256)
    ]
    uploaded = sum(h.entry.size for h in todo)
    if todo:
        store.upload(
            [Upload(h.source, f"{aid}/{h.entry.path}", h.entry.size, h.entry.sha256) for h in todo],
            progress.start("uploading", uploaded),
        )
    for h in todo:
        if FileStamp.of(stat_source(h.source)) != h.stamp:
            raise ArtifactError(
                f"{h.source} changed during the push; {artifact_uri(store.uri, aid)} was left "
                "without a manifest. To fix: wait for whatever writes it, then push again"
            )
    data = manifest.to_bytes()
    if store.read(f"{aid}/{MANIFEST_NAME}") != data:
        store.write(f"{aid}/{MANIFEST_NAME}", data)
    return PushResult(artifact_uri(store.uri, aid), manifest, uploaded, len(hashed) - len(todo))


def push_stack(
    spec: StackSpec,
    *,
    settings: TransferSettings | None = None,
    progress: Progress = NO_PROGRESS,
    hasher: Hasher | None = None,
) -> dict[Variant, PushResult]:
    """Push both variants of a stack; a gguf-* quantized variant without a source is made from
    the baseline. Returns each variant's result; the caller pins the URIs in the stack file."""
    store = open_store(spec.artifacts.store, settings)
    cache = cache_dir(spec.path)
    hasher = hasher or Hasher()
    results: dict[Variant, PushResult] = {}
    fetched: dict[Variant, Fetched] = {}
    for name, variant in spec.variants.pairs():
        recipe = None
        from_baseline = variant.source is None and format_info(variant.format).gguf_type
        if name is Variant.QUANTIZED and from_baseline:
            fetched[name], recipe = quantize_baseline(
                fetched[Variant.BASELINE], variant.format, cache, hasher, progress
            )
        else:
            source = variant.source or spec.model.id
            revision = spec.model.revision if source == spec.model.id else None
            fetched[name] = fetch(
                source, fmt=variant.format, revision=revision, cache=cache, progress=progress
            )
        results[name] = push(fetched[name], store, recipe=recipe, hasher=hasher, progress=progress)
    return results


def pins(results: dict[Variant, PushResult]) -> dict[str, str]:
    """The stack-file updates that pin pushed artifacts (`qinfra:variants.<v>.artifact`)."""
    return {f"qinfra:variants.{name.value}.artifact": r.uri for name, r in results.items()}
