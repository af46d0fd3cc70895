"""Pushing artifacts: upload what the store lacks, manifest.json last, and pin stacks to them."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qinfra.artifacts.fetch import (
    Fetched,
    as_baseline,
    cache_dir,
    fetch,
    project_hash_cache,
    quantize_baseline,
)
from qinfra.artifacts.hashcache import FileStamp
from qinfra.artifacts.hashing import HashedFile, Hasher, SourceFile, stat_source
from qinfra.artifacts.manifest import (
    MANIFEST_NAME,
    Manifest,
    Recipe,
    artifact_id_of,
    split_artifact_uri,
)
from qinfra.artifacts.progress import NO_PROGRESS, Progress
from qinfra.artifacts.store_open import open_store
from qinfra.artifacts.stores import (
    STAGING_DIR,
    STAT_THREADS,
    Move,
    Staging,
    StagingStore,
    Store,
    StoredObject,
    TransferSettings,
    Upload,
    sha256_matches,
)
from qinfra.core.artifact_uri import artifact_uri
from qinfra.core.errors import ArtifactError
from qinfra.core.formats import format_info
from qinfra.core.spec import Variant
from qinfra.core.stack_keys import artifact_key

if TYPE_CHECKING:
    from pathlib import Path

    from qinfra.core.spec import StackSpec, VariantSpec


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


@dataclass(frozen=True)
class Pin:
    """A stack file's pin (`qinfra:variants.<v>.artifact`) that a push must reproduce."""

    stack: str
    variant: Variant
    uri: str

    def check(self, made: str) -> None:
        """ArtifactError unless the source made the pinned artifact: a pin is a reviewed
        statement of what runs, so it is restored as pinned or not at all."""
        if made != str(split_artifact_uri(self.uri)):
            raise ArtifactError(
                f"{artifact_key(self.variant.value)} pins {self.uri}, which its store "
                f"does not hold, and the variant's source now makes {made}. To fix: `qinfra "
                f"artifacts push --stack {self.stack}` pushes and re-pins (review the diff), or "
                "correct the pin"
            )


def push(
    fetched: Fetched,
    store: Store,
    *,
    recipe: Recipe | None = None,
    hasher: Hasher | None = None,
    progress: Progress = NO_PROGRESS,
    expect: Pin | None = None,
) -> PushResult:
    """Upload what the store lacks or holds wrongly, verify it, write manifest.json last.

    On a StagingStore (file://), a file the store cannot hold yet (no object of its path and size
    under any artifact id) is hashed while it is written, each byte read once: to a staging key,
    renamed under the artifact's id once every digest, and so the id, is known. Any other file
    (all of them on S3) is hashed first, or known by the hash cache, and sent only when the
    store lacks it or holds it wrongly, so a push resumes. Nothing appears under the id before
    every file is whole and checked, and the manifest last: an interrupted push leaves no
    manifest (and at most staging garbage). With `expect`, everything is hashed first and nothing
    is sent unless the source makes exactly the pinned artifact. Raises ArtifactError on any
    mismatch.
    """
    hasher = hasher or Hasher()
    staged = (_stage_new(fetched.files, store, hasher, progress)
              if expect is None and isinstance(store, StagingStore) else {})
    try:
        return _complete(fetched, store, recipe, hasher, progress, expect, staged)
    finally:
        if staged:  # what was not published (a duplicate, or all of it after a failure)
            assert isinstance(store, StagingStore)
            with contextlib.suppress(ArtifactError):  # garbage at worst, never the artifact
                store.discard([key for key, _ in staged.values()])


def _stage_new(files: Sequence[SourceFile], store: StagingStore, hasher: Hasher,
               progress: Progress) -> dict[FileStamp, tuple[str, int]]:
    """Send the files that neither the hasher knows nor the store can hold to staging keys,
    hashing them on the way; their digests go to the hasher (and its cache).
    {stamp: (staging key, bytes sent)}."""
    unknown = hasher.unknown(files)
    if not unknown:
        return {}
    store.check()
    held = store.held_files()
    new = {stamp: f for stamp, f in unknown.items() if (f.path, stamp.size) not in held}
    if not new:
        return {}
    folder = f"{STAGING_DIR}/{uuid.uuid4().hex}"
    keys = {stamp: f"{folder}/{i}" for i, stamp in enumerate(new)}
    report = progress.start("uploading", sum(stamp.size for stamp in new))
    try:
        digests = store.stage([Staging(f.source, keys[s], s.size) for s, f in new.items()], report)
        for (stamp, f), digest in zip(new.items(), digests, strict=True):
            if FileStamp.of(stat_source(f.source)) != stamp:
                raise ArtifactError(f"{f.source} changed while it was being sent. To fix: wait "
                                    "for whatever writes it to finish, then push again")
            hasher.remember(f.source, stamp, digest, stamp.size)
    except BaseException:
        with contextlib.suppress(ArtifactError):
            store.discard(list(keys.values()))
        raise
    if hasher.cache:
        hasher.cache.save()
    return {stamp: (keys[stamp], stamp.size) for stamp in new}


def _complete(fetched: Fetched, store: Store, recipe: Recipe | None, hasher: Hasher,
              progress: Progress, expect: Pin | None,
              staged: dict[FileStamp, tuple[str, int]]) -> PushResult:
    """The rest of a push once staged files are hashed: the manifest, what the store lacks
    (published from staging, or uploaded), verification, manifest.json last."""
    hashed = hasher.hash_files(fetched.files, progress)  # reads only what is neither staged nor known
    manifest = Manifest(tuple(h.entry for h in hashed), recipe)
    aid = manifest.artifact_id
    if expect is not None:
        expect.check(artifact_uri(store.uri, aid))
    store.check()
    with ThreadPoolExecutor(STAT_THREADS) as pool:
        present: list[StoredObject | None] = list(
            pool.map(store.stat, [f"{aid}/{h.entry.path}" for h in hashed])
        )
    todo = [h for h, obj in zip(hashed, present, strict=True)
            if not sha256_matches(obj, h.entry.size, h.entry.sha256)]
    moves: list[Move] = []
    uploads: list[HashedFile] = []
    unused = {stamp: key for stamp, (key, _) in staged.items()}
    for h in todo:
        if (key := unused.pop(h.stamp, None)) is not None:
            moves.append(Move(key, f"{aid}/{h.entry.path}", h.entry.size, h.entry.sha256))
        else:
            uploads.append(h)
    if moves:
        assert isinstance(store, StagingStore)  # only a StagingStore has staged files
        store.publish(moves, progress.start("publishing", sum(m.size for m in moves)))
    _upload(store, aid, uploads, progress)
    data = manifest.to_bytes()
    if store.read(f"{aid}/{MANIFEST_NAME}") != data:
        store.write(f"{aid}/{MANIFEST_NAME}", data)
    if hasher.cache:
        hasher.cache.save()
    sent = sum(size for _, size in staged.values()) + sum(h.entry.size for h in uploads)
    return PushResult(artifact_uri(store.uri, aid), manifest, sent, len(hashed) - len(todo))


def _upload(store: Store, aid: str, uploads: list[HashedFile], progress: Progress) -> None:
    """Send files hashed before the push, then check that none changed since its hash."""
    if not uploads:
        return
    store.upload(
        [Upload(h.source, f"{aid}/{h.entry.path}", h.entry.size, h.entry.sha256) for h in uploads],
        progress.start("uploading", sum(h.entry.size for h in uploads)),
    )
    for h in uploads:
        if FileStamp.of(stat_source(h.source)) != h.stamp:
            raise ArtifactError(
                f"{h.source} changed during the push; {artifact_uri(store.uri, aid)} was left "
                "without a manifest. To fix: wait for whatever writes it, then push again"
            )


def push_stack(
    spec: StackSpec,
    *,
    settings: TransferSettings | None = None,
    progress: Progress = NO_PROGRESS,
    hasher: Hasher | None = None,
    only: Collection[Variant] | None = None,
    restore: Collection[Variant] = (),
) -> dict[Variant, PushResult]:
    """Push the variants of a stack (all, or `only` these); a gguf-* quantized variant without
    a source is made from the baseline, which is then fetched even when not pushed. A variant in
    `restore` must make exactly its pinned artifact (see Pin). Returns each pushed variant's
    result; the caller pins the URIs in the stack file."""
    hasher = hasher or Hasher(cache=project_hash_cache(spec.path))
    store = open_store(spec.artifacts.store, settings, hasher.cache)
    cache = cache_dir(spec.path)
    wanted = set(Variant) if only is None else set(only)
    quantized = spec.variants.of(Variant.QUANTIZED)
    from_baseline = (quantized.source is None and quantized.recipe is None
                     and bool(format_info(quantized.format).gguf_type))
    # The baseline is fetched (not pushed) when the quantized variant is made from it.
    needed = wanted | ({Variant.BASELINE} if from_baseline and Variant.QUANTIZED in wanted else set())
    results: dict[Variant, PushResult] = {}
    fetched: dict[Variant, Fetched] = {}
    made: dict[Variant, Recipe | None] = {}
    for name, variant in spec.variants.pairs():
        if name not in needed:
            continue
        recipe: Recipe | None = None
        if variant.recipe is not None:
            fetched[name], recipe = _made(spec, variant, cache, hasher, progress)
        elif name is Variant.QUANTIZED and from_baseline:
            base = fetched[Variant.BASELINE]
            fetched[name], quantized_recipe = quantize_baseline(
                base, variant.format, cache, hasher, progress)
            base_id = hasher.manifest(base.files, progress, made[Variant.BASELINE]).artifact_id
            recipe = dataclasses.replace(quantized_recipe, source=base_id)
        else:
            source = variant.source or spec.model.id
            revision = spec.model.revision if source == spec.model.id else None
            fetched[name] = fetch(
                spec.local_source(source), fmt=variant.format, revision=revision, cache=cache,
                progress=progress,
            )
            if name is Variant.BASELINE:
                fetched[name], recipe = as_baseline(fetched[name], variant.format, cache, hasher,
                                                    progress)
        made[name] = recipe
        if name in wanted:
            pin = Pin(spec.name, name, variant.artifact or "") if name in restore else None
            results[name] = push(
                fetched[name], store, recipe=recipe, hasher=hasher, progress=progress, expect=pin
            )
    return results


def _made(spec: StackSpec, variant: VariantSpec, cache: Path, hasher: Hasher,
          progress: Progress) -> tuple[Fetched, Recipe]:
    """A variant with a recipe: its source (default model.id) fetched as a checkpoint, then
    made (or found made) by the recipe's tools."""
    from qinfra.artifacts.recipes import make
    from qinfra.artifacts.toolchain import Toolchain

    assert variant.recipe is not None
    source = variant.source or spec.model.id
    revision = spec.model.revision if source == spec.model.id else None
    checkpoint = fetch(spec.local_source(source), fmt=None, revision=revision, cache=cache,
                       progress=progress)
    return make(variant.recipe, checkpoint, variant.format, name=spec.model.id, cache=cache,
                hasher=hasher, tools=Toolchain.for_project(spec.root), progress=progress,
                root=spec.root)


@dataclass(frozen=True)
class PinState:
    """What `qinfra up` must push before it deploys: variants the stack file does not pin, and
    pinned ones whose store does not hold them (restored only as pinned)."""

    unpinned: tuple[Variant, ...]
    not_held: tuple[Variant, ...]

    @property
    def to_push(self) -> tuple[Variant, ...]:
        return self.unpinned + self.not_held


def pin_state(spec: StackSpec, settings: TransferSettings | None = None) -> PinState:
    """Which variants lack a pin, and which pins name content their store does not hold (no
    manifest.json there, or one that does not hash to the pinned id)."""
    unpinned: list[Variant] = []
    not_held: list[Variant] = []
    for name, variant in spec.variants.pairs():
        if variant.artifact is None:
            unpinned.append(name)
            continue
        parsed = split_artifact_uri(variant.artifact)
        data = open_store(parsed.store, settings).read(f"{parsed.artifact_id}/{MANIFEST_NAME}")
        if data is None or artifact_id_of(data) != parsed.artifact_id:
            not_held.append(name)
    return PinState(tuple(unpinned), tuple(not_held))


def pins(results: dict[Variant, PushResult]) -> dict[str, str]:
    """The stack-file updates that pin pushed artifacts (`qinfra:variants.<v>.artifact`)."""
    return {artifact_key(name.value): r.uri for name, r in results.items()}
