"""Artifacts: fetch weights, hash them into a manifest, push them content-addressed to a store."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from qinfra.core.errors import ArtifactError
from qinfra.core.formats import Format, format_info
from qinfra.core.hub import hub_errors
from qinfra.serving.llamacpp import QuantizeRecipe
from qinfra.core.modelinfo import DEMO_MODEL_ID
from qinfra.artifacts.stores import (
    READ_BUFFER_BYTES,
    ProgressFn,
    Store,
    StoredObject,
    TransferSettings,
    Upload,
    open_store,
    sha256_matches,
)

if TYPE_CHECKING:
    from qinfra.core.spec import StackSpec

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
ARTIFACT_ID = re.compile(r"sha256-[0-9a-f]{64}")
CACHE_DIR_ENV = "QINFRA_CACHE_DIR"
VARIANTS = ("baseline", "quantized")
# What a server needs from a safetensors hub repo: config, tokenizer, weights; never optimizer
# state, .bin duplicates of the weights, or the README's images.
HUB_SERVING_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.tiktoken",
    "chat_template.*",
    "preprocessor_config.json",
    "quant_config.json",
    "quantize_config.json",
)
_STAT_THREADS = 8


class Progress(Protocol):
    """Where long steps report bytes done: the CLI draws rich bars, tests count, --json drops."""

    @property
    def visible(self) -> bool: ...

    def start(self, description: str, total_bytes: int) -> ProgressFn: ...


class NoProgress:
    """Reports nothing (--json, library use)."""

    visible = False

    def start(self, description: str, total_bytes: int) -> ProgressFn:
        return _ignore


def _ignore(_: int) -> None:
    return None


NO_PROGRESS = NoProgress()


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
    recipe: QuantizeRecipe | None = None

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
            doc["recipe"] = asdict(self.recipe)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @property
    def artifact_id(self) -> str:
        return "sha256-" + hashlib.sha256(self.to_bytes()).hexdigest()

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
            recipe = QuantizeRecipe(**doc["recipe"]) if "recipe" in doc else None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArtifactError(
                f"{where} is not a qinfra manifest ({exc}). To fix: push the artifact again"
            ) from None
        return cls(files=files, recipe=recipe)


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


@dataclass(frozen=True)
class SourceFile:
    """A local file and the relative path it takes inside the artifact."""

    path: str
    source: Path


@dataclass(frozen=True)
class Fetched:
    """The local files that make up one artifact, wherever they came from."""

    description: str
    files: tuple[SourceFile, ...]


@dataclass(frozen=True)
class FileStamp:
    """What identifies a file's content without reading it; any change means re-hash."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class HashedFile:
    entry: FileEntry
    source: Path
    stamp: FileStamp


class Hasher:
    """Hashes files on a thread pool (hashlib releases the GIL on large updates) and remembers
    every digest by stamp, so one push never reads a file twice to hash it."""

    def __init__(self, workers: int | None = None, buffer_bytes: int = READ_BUFFER_BYTES) -> None:
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.buffer_bytes = buffer_bytes
        self.hashed_bytes = 0
        self._memo: dict[FileStamp, str] = {}
        self._lock = threading.Lock()

    def hash_files(self, files: Sequence[SourceFile], progress: Progress) -> list[HashedFile]:
        stamps = [FileStamp.of(_stat(f.source)) for f in files]
        todo = {s: f.source for f, s in zip(files, stamps, strict=True) if s not in self._memo}
        if not todo:
            return self._results(files, stamps)
        report = progress.start("hashing", sum(s.size for s in todo))
        with ThreadPoolExecutor(self.workers) as pool:
            digests = pool.map(lambda item: self._hash(item[1], item[0], report), todo.items())
            for stamp, digest in zip(todo, digests, strict=True):
                self._memo[stamp] = digest
        return self._results(files, stamps)

    def _results(self, files: Sequence[SourceFile], stamps: list[FileStamp]) -> list[HashedFile]:
        return [
            HashedFile(FileEntry(f.path, s.size, self._memo[s]), f.source, s)
            for f, s in zip(files, stamps, strict=True)
        ]

    def _hash(self, path: Path, before: FileStamp, progress: ProgressFn) -> str:
        digest, read = hashlib.sha256(), 0
        buf = bytearray(self.buffer_bytes)
        view = memoryview(buf)
        with open(path, "rb", buffering=0) as f:
            # Read no further than the size it had: a file that keeps growing must not keep
            # this loop going; the stamps below catch the growth.
            while read < before.size and (n := f.readinto(view[: before.size - read])):
                digest.update(view[:n])
                read += n
                progress(n)
            during = FileStamp.of(os.fstat(f.fileno()))
        after = FileStamp.of(_stat(path))
        if not before == during == after or read != before.size:
            raise ArtifactError(
                f"{path} changed while it was being hashed (size {before.size} -> {after.size} "
                f"bytes, {read} read; mtime_ns {before.mtime_ns} -> {after.mtime_ns}). To fix: "
                "wait for whatever writes it to finish, then push again"
            )
        with self._lock:
            self.hashed_bytes += read
        return digest.hexdigest()


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror}") from None


def cache_dir(stack_path: Path | None = None) -> Path:
    """Where generated inputs (the demo model, quantized GGUFs) live: $QINFRA_CACHE_DIR, else
    .qinfra/cache beside the project's stacks/ folder (or the current directory)."""
    if env := os.environ.get(CACHE_DIR_ENV):
        return Path(env)
    root = stack_path.resolve().parent.parent if stack_path else Path.cwd()
    return root / ".qinfra" / "cache"


def hub_patterns(fmt: Format | None) -> tuple[str, ...]:
    """allow_patterns for a hub download: the one GGUF type asked for, or the serving files."""
    gguf_type = format_info(fmt).gguf_type if fmt is not None else None
    if gguf_type:
        return (f"*{gguf_type}*.gguf", f"*{gguf_type.lower()}*.gguf")
    return HUB_SERVING_FILES


def fetch(
    source: str,
    *,
    fmt: Format | None = None,
    revision: str | None = None,
    cache: Path | None = None,
    progress: Progress = NO_PROGRESS,
) -> Fetched:
    """Local files for `source`: the demo model, a local file or directory, or a hub repo id.

    Raises ArtifactError when the source is none of these or cannot be downloaded.
    """
    if source == DEMO_MODEL_ID:
        return _demo_model(fmt, cache or cache_dir())
    path = Path(source).expanduser()
    if path.is_file():
        return Fetched(str(path), (SourceFile(path.name, path),))
    if path.is_dir():
        return Fetched(str(path), _walk(path, str(path)))
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ArtifactError(
            f"source '{source}' is neither an existing file or directory nor a hub id "
            "(owner/name). To fix: correct the path, or give a hub repo id"
        )
    from huggingface_hub.utils import filter_repo_objects

    where = f"{source}@{revision or 'main'}"
    patterns = hub_patterns(fmt)
    folder = _download(source, revision, patterns, progress)
    # A cached snapshot also holds whatever earlier downloads of that revision fetched.
    files = tuple(
        filter_repo_objects(
            _walk(folder, where), allow_patterns=list(patterns), key=lambda f: f.path
        )
    )
    if not files:
        raise ArtifactError(
            f"{where} has no files matching {', '.join(patterns)}. To fix: check the repo "
            "holds this format, or set the variant's format or source"
        )
    return Fetched(where, files)


def _demo_model(fmt: Format | None, cache: Path) -> Fetched:
    if fmt not in (None, Format.GGUF_F16):
        raise ArtifactError(
            f"the demo model '{DEMO_MODEL_ID}' is a GGUF F16 file, not {fmt}. To fix: use "
            f"format gguf-f16 for it, or give this variant a source"
        )
    path = cache / "demo" / f"{DEMO_MODEL_ID}-F16.gguf"
    if not path.is_file():
        from qinfra.core.demomodel import write_demo_model

        path.parent.mkdir(parents=True, exist_ok=True)
        write_demo_model(path)
    return Fetched(DEMO_MODEL_ID, (SourceFile(path.name, path),))


def _walk(root: Path, description: str) -> tuple[SourceFile, ...]:
    """Every regular file under `root`, skipping hidden ones (.git, .cache/huggingface)."""
    files: list[SourceFile] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(folder) / name
            if not name.startswith(".") and path.is_file():
                files.append(SourceFile(path.relative_to(root).as_posix(), path))
    if not files:
        raise ArtifactError(f"{description} holds no files to push. To fix: check the source")
    return tuple(files)


def _download(
    repo_id: str, revision: str | None, patterns: tuple[str, ...], progress: Progress
) -> Path:
    """snapshot_download of only the serving files; HF_TOKEN, HF_HUB_OFFLINE and HF_HOME apply."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    silence = not progress.visible and not are_progress_bars_disabled()
    if silence:
        disable_progress_bars()
    try:
        with hub_errors(repo_id, revision, ArtifactError, "the serving files"):
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns)))
    finally:
        if silence:
            enable_progress_bars()


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


def artifact_uri(store_uri: str, artifact_id: str) -> str:
    """`<store>/sha256-<hex>/`: the trailing slash marks a prefix, not an object."""
    return f"{store_uri.rstrip('/')}/{artifact_id}/"


def split_artifact_uri(uri: str) -> tuple[str, str]:
    """(store URI, artifact id) of `<store>/sha256-<hex>/`; ArtifactError for anything else."""
    store_uri, _, last = uri.rstrip("/").rpartition("/")
    if not ARTIFACT_ID.fullmatch(last) or "://" not in store_uri:
        raise ArtifactError(
            f"'{uri}' is not an artifact URI. To fix: give <store>/sha256-<64 hex digits>/ as "
            "printed by `qinfra artifacts push`"
        )
    return store_uri, last


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
    with ThreadPoolExecutor(_STAT_THREADS) as pool:
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
        if FileStamp.of(_stat(h.source)) != h.stamp:
            raise ArtifactError(
                f"{h.source} changed during the push; {artifact_uri(store.uri, aid)} was left "
                "without a manifest. To fix: wait for whatever writes it, then push again"
            )
    data = manifest.to_bytes()
    if store.read(f"{aid}/{MANIFEST_NAME}") != data:
        store.write(f"{aid}/{MANIFEST_NAME}", data)
    return PushResult(artifact_uri(store.uri, aid), manifest, uploaded, len(hashed) - len(todo))


def quantize_baseline(
    baseline: Fetched, target: Format, cache: Path, hasher: Hasher, progress: Progress
) -> tuple[Fetched, QuantizeRecipe]:
    """The baseline GGUF quantized to `target` by real llama-quantize, cached by the baseline's
    sha256 and type so a second push neither re-quantizes nor re-hashes the baseline."""
    gguf_type = format_info(target).gguf_type
    ggufs = [f for f in baseline.files if f.path.endswith(".gguf")]
    if gguf_type is None or len(ggufs) != 1:
        raise ArtifactError(
            f"cannot make the {target} variant from the baseline {baseline.description}: it "
            f"needs exactly one .gguf file there (found {len(ggufs)}). To fix: use a gguf-f16 "
            "baseline, or set qinfra:variants.quantized.source"
        )
    [base] = hasher.hash_files(ggufs, progress)
    stem = re.sub(r"[-_.](b?f16|f32)$", "", Path(base.entry.path).stem, flags=re.IGNORECASE)
    dst = cache / "quantized" / base.entry.sha256 / f"{stem}-{gguf_type}.gguf"
    recipe_path = dst.with_name(dst.name + ".recipe.json")
    recipe = _cached_recipe(recipe_path) if dst.is_file() else None
    if recipe is None:
        from qinfra.serving.llamacpp import quantize

        recipe = quantize(base.source, dst, gguf_type)
        _write_atomic(recipe_path, json.dumps(asdict(recipe)).encode())
    return Fetched(f"{baseline.description} as {gguf_type}", (SourceFile(dst.name, dst),)), recipe


def _cached_recipe(path: Path) -> QuantizeRecipe | None:
    try:
        return QuantizeRecipe(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def push_stack(
    spec: StackSpec,
    *,
    settings: TransferSettings | None = None,
    progress: Progress = NO_PROGRESS,
    hasher: Hasher | None = None,
) -> dict[str, PushResult]:
    """Push both variants of a stack; a gguf-* quantized variant without a source is made from
    the baseline. Returns each variant's result; the caller pins the URIs in the stack file."""
    store = open_store(spec.artifacts.store, settings)
    cache = cache_dir(spec.path)
    hasher = hasher or Hasher()
    results: dict[str, PushResult] = {}
    fetched: dict[str, Fetched] = {}
    for name in VARIANTS:
        variant = getattr(spec.variants, name)
        recipe = None
        if name == "quantized" and variant.source is None and format_info(variant.format).gguf_type:
            fetched[name], recipe = quantize_baseline(
                fetched["baseline"], variant.format, cache, hasher, progress
            )
        else:
            source = variant.source or spec.model.id
            revision = spec.model.revision if source == spec.model.id else None
            fetched[name] = fetch(
                source, fmt=variant.format, revision=revision, cache=cache, progress=progress
            )
        results[name] = push(fetched[name], store, recipe=recipe, hasher=hasher, progress=progress)
    return results


def pins(results: dict[str, PushResult]) -> dict[str, str]:
    """The stack-file updates that pin pushed artifacts (`qinfra:variants.<v>.artifact`)."""
    return {f"qinfra:variants.{name}.artifact": r.uri for name, r in results.items()}


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
    store_uri, aid = split_artifact_uri(uri)
    store = open_store(store_uri, settings)
    store.check()
    uri = artifact_uri(store_uri, aid)
    data = store.read(f"{aid}/{MANIFEST_NAME}")
    if data is None:
        problem = "missing: the artifact is incomplete (its push never finished); push it again"
        return VerifyReport(uri, (FileCheck(MANIFEST_NAME, problem),))
    actual = "sha256-" + hashlib.sha256(data).hexdigest()
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
    store_uri, aid = split_artifact_uri(uri)
    data = open_store(store_uri, settings).read(f"{aid}/{MANIFEST_NAME}")
    if data is None or "sha256-" + hashlib.sha256(data).hexdigest() != aid:
        raise ArtifactError(
            f"{uri} has no intact manifest.json. To fix: run `qinfra artifacts verify {uri}`, "
            "then push it again"
        )
    return Manifest.from_bytes(data, f"{uri}{MANIFEST_NAME}")


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
    recipe: QuantizeRecipe | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "artifact_id": self.artifact_id,
            "state": self.state.value,
            "pinned_by": list(self.pinned_by),
            "files": self.file_count,
            "size_bytes": self.size_bytes,
            "recipe": asdict(self.recipe) if self.recipe else None,
        }


def list_artifacts(
    spec: StackSpec, settings: TransferSettings | None = None
) -> list[ArtifactListing]:
    """Every artifact in the stack's store plus any pinned elsewhere, pinned ones first."""
    store = open_store(spec.artifacts.store, settings)
    store.check()
    pinned: dict[str, list[str]] = {}
    for name in VARIANTS:
        if uri := getattr(spec.variants, name).artifact:
            store_uri, aid = split_artifact_uri(uri)
            pinned.setdefault(artifact_uri(store_uri, aid), []).append(name)
    listed = {artifact_uri(store.uri, d) for d in store.list_dirs() if ARTIFACT_ID.fullmatch(d)}
    uris = sorted(listed | pinned.keys(), key=lambda u: (u not in pinned, u))

    def describe(uri: str) -> ArtifactListing:
        store_uri, aid = split_artifact_uri(uri)
        where = store if store_uri == store.uri else open_store(store_uri, settings)
        by = tuple(pinned.get(uri, ()))
        data = where.read(f"{aid}/{MANIFEST_NAME}")
        if data is None:
            state = ArtifactState.INCOMPLETE if uri in listed else ArtifactState.MISSING
            return ArtifactListing(uri, aid, state, by)
        if "sha256-" + hashlib.sha256(data).hexdigest() != aid:
            return ArtifactListing(uri, aid, ArtifactState.ALTERED, by)
        m = Manifest.from_bytes(data, f"{uri}{MANIFEST_NAME}")
        return ArtifactListing(
            uri, aid, ArtifactState.COMPLETE, by, len(m.files), m.size_bytes, m.recipe
        )

    with ThreadPoolExecutor(_STAT_THREADS) as pool:
        return list(pool.map(describe, uris))
