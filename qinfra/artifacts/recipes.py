"""Running a variant's recipe: its source's files in, a made artifact's files and its provenance
out. Outputs are cached under the project's cache by everything that decides their bytes (the
source's content, the recipe, the format, the calibration text, the tools' pinned installs), so
a second push runs nothing; a run writes into a temporary folder renamed into place when whole.

Byte-determinism (benchmarks/bench_recipes.py on this machine): convert_hf_to_gguf and
llama-quantize, llm-compressor's schemes (rtn and gptq) and the dequantizer give the same bytes
in fresh caches; a different CPU or torch build may round differently."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qinfra.artifacts.fetch import Fetched, walk
from qinfra.artifacts.hashing import Hasher
from qinfra.artifacts.progress import UNKNOWN, Progress
from qinfra.artifacts.provenance import MadeRecipe, Step
from qinfra.artifacts.toolchain import CONVERT_SCRIPT, TOOL_SCRIPTS, Toolchain
from qinfra.core.errors import ArtifactError
from qinfra.core.fileio import write_atomic
from qinfra.core.formats import Format, format_info
from qinfra.core.recipes import CompressorRecipe, DequantizeRecipe, GgufRecipe, RecipeSpec

CALIBRATION = TOOL_SCRIPTS / "calibration.txt"  # the English text that ships with qinfra
PROVENANCE = "provenance.json"
OUT = "out"
# A checkpoint folder's precision or scheme suffix, left off the made file's name.
_SUFFIX = re.compile(r"[-_.](b?f16|fp16|f32|fp32|w\d+a\d+\w*|int8|fp8\w*|awq|gptq|dense)$",
                     re.IGNORECASE)


def make(recipe: RecipeSpec, source: Fetched, fmt: Format, *, name: str, cache: Path,
         hasher: Hasher, tools: Toolchain, progress: Progress,
         root: Path | None = None) -> tuple[Fetched, MadeRecipe]:
    """The artifact `recipe` makes of `source` in format `fmt` (cached), and its record. `name`
    is the model's (a GGUF's general.name and file name; the converter reads it from the
    folder's name, so it converts through a link of that name: same name, same bytes)."""
    folder = source_folder(source)
    source_id = source.artifact_id or hasher.manifest(source.files, progress).artifact_id
    calibration = _calibration(recipe, root)
    model = model_name(name)  # what of `name` reaches the bytes
    calibration_sha = hashlib.sha256(calibration.read_bytes()).hexdigest() if calibration else None
    key = hashlib.sha256(json.dumps({
        "recipe": recipe.model_dump(mode="json", exclude={"calibration"}), "format": fmt.value,
        "source": source_id, "calibration": calibration_sha, "tools": tools.fingerprint(),
        "name": model,
    }, sort_keys=True).encode()).hexdigest()
    done = cache / "made" / key
    record = _cached(done, hasher, progress)
    if record is None:
        done.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".making-", dir=done.parent))
        finished = progress.start(f"making {fmt} ({recipe.name})", UNKNOWN)
        try:
            steps = _RUNNERS[type(recipe)](recipe, folder, fmt, _Job(work, model),
                                           tools, calibration)
            record = MadeRecipe(recipe.name, source_id, steps, calibration_sha)
            _clear_scratch(work)
            hashed = hasher.hash_files(walk(work / OUT, recipe.name), progress)
            write_atomic(work / PROVENANCE, json.dumps({
                "recipe": record.to_json(),
                "files": {h.entry.path: h.entry.sha256 for h in hashed}}))
            work.rename(done)  # whole or absent: a later push trusts a folder that is there
            finished(1)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    made = done / OUT
    return Fetched(f"{source.description} made by {record.summary}", walk(made, str(made))), record


def source_folder(source: Fetched) -> Path:
    """The one folder all of `source`'s files are in (a checkpoint), or an ArtifactError."""
    roots = {Path(str(f.source)[: -len(f.path)]) for f in source.files
             if str(f.source).endswith(f.path)}
    if len(roots) != 1 or any(f.path.endswith(".gguf") for f in source.files):
        raise ArtifactError(
            f"{source.description} is not a checkpoint folder (config.json and safetensors): "
            "recipes start from one. To fix: set the variant's source to the 16-bit checkpoint's "
            "folder or hub id")
    return roots.pop()


def _cached(done: Path, hasher: Hasher, progress: Progress) -> MadeRecipe | None:
    """The record of an earlier run whose files are still the bytes it made (the hash cache
    makes this cheap); a folder that is not is removed, so the recipe runs again."""
    if not done.is_dir():
        return None
    try:
        doc = json.loads((done / PROVENANCE).read_text())
        hashed = hasher.hash_files(walk(done / OUT, str(done)), progress)
        if {h.entry.path: h.entry.sha256 for h in hashed} == doc["files"]:
            return MadeRecipe.from_json(doc["recipe"])
    except (OSError, ValueError, KeyError, TypeError, ArtifactError):
        pass
    stale = done.with_name(f".stale-{done.name}-{os.getpid()}")
    done.rename(stale)
    shutil.rmtree(stale, ignore_errors=True)
    return None


def _clear_scratch(work: Path) -> None:
    for path in work.iterdir():
        if path.name not in (OUT, PROVENANCE):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _calibration(recipe: RecipeSpec, root: Path | None) -> Path | None:
    if not isinstance(recipe, CompressorRecipe) or recipe.algorithm != "gptq":
        return None
    if recipe.calibration is None:
        return CALIBRATION
    path = Path(recipe.calibration).expanduser()
    path = path if path.is_absolute() else (root or Path.cwd()) / path
    if not path.is_file():
        raise ArtifactError(f"qinfra:variants.*.recipe.calibration: {path} is not a file. To "
                            "fix: name a UTF-8 text file, one sample per line")
    return path


def _checkpoint_config(folder: Path) -> dict[str, object]:
    try:
        return dict(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{folder} has no readable config.json ({exc}): recipes start from "
                            "a Hugging Face checkpoint folder") from None


def _needs_16_bit(folder: Path, recipe: str) -> None:
    quant = _checkpoint_config(folder).get("quantization_config")
    if isinstance(quant, dict):
        method = quant.get("quant_method", "unknown")
        raise ArtifactError(
            f"recipe {recipe} needs a 16-bit checkpoint; {folder} is quantized ({method}). To "
            "fix: use recipe dequantize with this folder as the source, or point the source at "
            "the 16-bit checkpoint")


def model_name(name: str) -> str:
    """A model id's last part without a precision or scheme suffix (`SmolLM2-135M-Instruct`)."""
    return _SUFFIX.sub("", name.rstrip("/").rsplit("/", 1)[-1]) or "model"


@dataclass(frozen=True)
class _Job:
    """A recipe run's scratch folder, its output folder inside, and the model's name."""

    work: Path
    name: str

    @property
    def out(self) -> Path:
        return self.work / OUT


def _to_gguf(folder: Path, fmt: Format, job: _Job, tools: Toolchain) -> tuple[Step, ...]:
    """convert_hf_to_gguf to F16, then llama-quantize to `fmt`'s type when that is not F16."""
    from qinfra.serving.llamacpp import quantize

    gguf_type = format_info(fmt).gguf_type
    assert gguf_type is not None
    job.out.mkdir()
    named = job.work / "named" / job.name
    named.parent.mkdir()
    named.symlink_to(folder.resolve(), target_is_directory=True)
    f16 = (job.out if gguf_type == "F16" else job.work) / f"{job.name}-F16.gguf"
    tools.convert(named, f16, "f16")
    steps = [Step(CONVERT_SCRIPT, tools.converter_version(), ("--outtype", "f16"))]
    if gguf_type != "F16":
        done = quantize(f16, job.out / f"{job.name}-{gguf_type}.gguf", gguf_type)
        steps.append(Step(done.tool, done.version, (*done.flags, done.type)))
    return tuple(steps)


def _gguf(recipe: GgufRecipe, folder: Path, fmt: Format, job: _Job, tools: Toolchain,
          calibration: Path | None) -> tuple[Step, ...]:
    _needs_16_bit(folder, recipe.name)
    return _to_gguf(folder, fmt, job, tools)


def _compress(recipe: CompressorRecipe, folder: Path, fmt: Format, job: _Job, tools: Toolchain,
              calibration: Path | None) -> tuple[Step, ...]:
    _needs_16_bit(folder, recipe.name)
    args = ["--scheme", recipe.scheme.value, "--algorithm", recipe.algorithm]
    if recipe.group is not None:
        args += ["--group-size", str(recipe.group)]
    args += ["--ignore", *recipe.ignore]
    if calibration is not None:
        args += ["--samples", str(recipe.samples), "--max-seq-len", str(recipe.max_seq_len)]
    paths = ["--model", str(folder), "--out", str(job.out)]
    paths += ["--calibration", str(calibration)] if calibration is not None else []
    report = tools.run_script("compress.py", [*paths, *args],
                              f"llm-compressor {recipe.scheme.value} over {folder.name}")
    return (Step("llmcompressor", _versions(report), tuple(args)),)


def _dequantize(recipe: DequantizeRecipe, folder: Path, fmt: Format, job: _Job,
                tools: Toolchain, calibration: Path | None) -> tuple[Step, ...]:
    quant = _checkpoint_config(folder).get("quantization_config")
    if not isinstance(quant, dict):
        raise ArtifactError(f"recipe dequantize needs a quantized checkpoint; {folder} has no "
                            "quantization_config. To fix: use recipe gguf over a 16-bit one")
    gguf = format_info(fmt).is_gguf
    dense = job.work / "dense" if gguf else job.out
    args = ["--dtype", recipe.dtype]
    report = tools.run_script("dequantize.py", ["--model", str(folder), "--out", str(dense), *args],
                              f"dequantize {folder.name}")
    steps = (Step("dequantize", _versions(report), tuple(args)),)
    return steps + _to_gguf(dense, fmt, job, tools) if gguf else steps


def _versions(report: dict[str, object]) -> str:
    versions = report.get("versions")
    if not isinstance(versions, dict):
        return "unknown"
    return " ".join(f"{k}=={v}" for k, v in sorted(versions.items()))


_RUNNERS = {GgufRecipe: _gguf, CompressorRecipe: _compress, DequantizeRecipe: _dequantize}
