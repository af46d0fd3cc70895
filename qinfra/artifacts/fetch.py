"""Where an artifact's files come from: a local path, the hub, the demo model, or llama-quantize
run over the baseline."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from qinfra.artifacts.hashcache import HASH_CACHE_NAME, HashCache
from qinfra.artifacts.hashing import Hasher, SourceFile
from qinfra.artifacts.progress import NO_PROGRESS, Progress
from qinfra.core.errors import ArtifactError
from qinfra.core.fileio import write_atomic
from qinfra.core.formats import Format, format_info
from qinfra.core.hub import hub_errors, is_hub_id
from qinfra.core.modelinfo import DEMO_MODEL_ID
from qinfra.core.paths import project_root
from qinfra.serving.llamacpp import QuantizeRecipe

CACHE_DIR_ENV = "QINFRA_CACHE_DIR"
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


@dataclass(frozen=True)
class Fetched:
    """The local files that make up one artifact, wherever they came from."""

    description: str
    files: tuple[SourceFile, ...]
    # Set when the files are a pinned artifact's (checked against its manifest): a recipe
    # over them records this id as its source.
    artifact_id: str | None = None


def cache_dir(stack_path: Path | None = None) -> Path:
    """Where generated inputs (the demo model, quantized GGUFs) live: $QINFRA_CACHE_DIR, else
    .qinfra/cache beside the project's stacks/ folder (or the current directory)."""
    if env := os.environ.get(CACHE_DIR_ENV):
        return Path(env)
    # a dynamic provider runs in the program's folder: its cache is still the project's
    root = stack_path.resolve().parent.parent if stack_path else project_root() or Path.cwd().resolve()
    return root / ".qinfra" / "cache"


def project_hash_cache(stack_path: Path | None = None) -> HashCache:
    """The project's persistent hash cache, beside its other generated files."""
    return HashCache(cache_dir(stack_path) / HASH_CACHE_NAME)


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
    if source.startswith(("file://", "s3://")):
        return _pinned(source)
    path = Path(source).expanduser()
    if path.is_file():
        return Fetched(str(path), (SourceFile(path.name, path),))
    if path.is_dir():
        return Fetched(str(path), walk(path, str(path)))
    if not is_hub_id(source):
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
            walk(folder, where), allow_patterns=list(patterns), key=lambda f: f.path
        )
    )
    if not files:
        raise ArtifactError(
            f"{where} has no files matching {', '.join(patterns)}. To fix: check the repo "
            "holds this format, or set the variant's format or source"
        )
    return Fetched(where, files)


def _pinned(uri: str) -> Fetched:
    """A pinned artifact as a source (a recipe over another variant's made checkpoint): its
    files in the file:// store's folder, each checked against the manifest first."""
    from qinfra.artifacts.manifest import split_artifact_uri
    from qinfra.artifacts.verify import verify_before_serving

    parsed = split_artifact_uri(uri)
    if not parsed.store.startswith("file:///"):
        raise ArtifactError(f"source {uri}: an artifact is read as a source from a file:// "
                            "store only. To fix: name its file:// copy, or the checkpoint it "
                            "was pushed from")
    manifest = verify_before_serving(str(parsed), project_hash_cache())
    folder = Path(parsed.store.removeprefix("file://")) / parsed.artifact_id
    files = tuple(SourceFile(e.path, folder / e.path) for e in manifest.files)
    return Fetched(str(parsed), files, parsed.artifact_id)


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


def walk(root: Path, description: str) -> tuple[SourceFile, ...]:
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


def quantize_baseline(
    baseline: Fetched, target: Format, cache: Path, hasher: Hasher, progress: Progress
) -> tuple[Fetched, QuantizeRecipe]:
    """The baseline GGUF quantized to `target` by real llama-quantize, cached by the baseline's
    sha256 and type so a second push neither re-quantizes nor re-hashes the baseline."""
    return _convert(baseline, target, cache, hasher, progress, requantize=False)


def as_baseline(
    fetched: Fetched, fmt: Format, cache: Path, hasher: Hasher, progress: Progress
) -> tuple[Fetched, QuantizeRecipe | None]:
    """A baseline source that is one GGUF of another type than `fmt` (a Q4_1 file for a
    gguf-f16 baseline) converted with `llama-quantize --allow-requantize`, recorded in its
    recipe: the F16 carries the source's quality, no more. Any other source stays as it is."""
    gguf_type = format_info(fmt).gguf_type
    ggufs = [f for f in fetched.files if f.path.endswith(".gguf")]
    if gguf_type is None or len(fetched.files) != 1 or len(ggufs) != 1:
        return fetched, None
    from qinfra.serving.llamacpp import gguf_file_type

    held = gguf_file_type(ggufs[0].source)
    if held is None or held == gguf_type.upper():
        return fetched, None
    return _convert(fetched, fmt, cache, hasher, progress, requantize=True)


def _convert(
    source: Fetched, target: Format, cache: Path, hasher: Hasher, progress: Progress,
    requantize: bool,
) -> tuple[Fetched, QuantizeRecipe]:
    gguf_type = format_info(target).gguf_type
    ggufs = [f for f in source.files if f.path.endswith(".gguf")]
    if gguf_type is None or len(ggufs) != 1:
        raise ArtifactError(
            f"cannot make the {target} variant from the baseline {source.description}: it "
            f"needs exactly one .gguf file there (found {len(ggufs)}). To fix: use a gguf-f16 "
            "baseline, or set qinfra:variants.quantized.source"
        )
    [base] = hasher.hash_files(ggufs, progress)
    stem = _TYPE_SUFFIX.sub("", Path(base.entry.path).stem)
    dst = cache / "quantized" / base.entry.sha256 / f"{stem}-{gguf_type}.gguf"
    recipe_path = dst.with_name(dst.name + ".recipe.json")
    recipe = _cached_recipe(recipe_path) if dst.is_file() else None
    if recipe is None:
        from qinfra.serving.llamacpp import quantize

        recipe = quantize(base.source, dst, gguf_type, requantize=requantize)
        write_atomic(recipe_path, json.dumps(recipe.to_json()))
    return Fetched(f"{source.description} as {gguf_type}", (SourceFile(dst.name, dst),)), recipe


# A GGUF file name's type suffix (-F16, .Q4_1, _q8_0), left off the converted file's name.
_TYPE_SUFFIX = re.compile(r"[-_.](b?f16|f32|q\d\w*)$", re.IGNORECASE)


def _cached_recipe(path: Path) -> QuantizeRecipe | None:
    try:
        return QuantizeRecipe(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
