"""The router's code as a content-addressed artifact (issue 13): qinfra's own wheel, built from
the checkout that renders the stack, and the wheels of every distribution the router imports, at
the versions installed here (the ones the tests ran), for CPython 3.11 on manylinux x86_64 (Amazon
Linux 2023's python3.11). The router machines install exactly these, offline, so they run the
qinfra that rendered them; `qinfra:router.artifact` pins the set like a model artifact.

Building needs pip and, once per set of versions, the package index; the result is cached under
.qinfra/cache/router-wheels/ by a hash of the sources and versions, so a second push is quick.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import qinfra
from qinfra.artifacts.fetch import Fetched, cache_dir, project_hash_cache
from qinfra.artifacts.hashing import Hasher, SourceFile
from qinfra.artifacts.progress import NO_PROGRESS, Progress
from qinfra.artifacts.push import PushResult, push
from qinfra.artifacts.store_open import open_store
from qinfra.artifacts.stores import TransferSettings
from qinfra.core.errors import ArtifactError
from qinfra.core.stack_keys import ROUTER_ARTIFACT
from qinfra.planning.targets import target_plan

if TYPE_CHECKING:
    from qinfra.core.spec import StackSpec

PIN_KEY = ROUTER_ARTIFACT
# What `import qinfra.serving.router` and `python -m qinfra.serving.router` load, by distribution
# (tests/test_router_artifact.py holds this to the real import closure), plus h11 (uvicorn's
# required HTTP parser) and pip itself (templates/router/install.sh.j2 installs with it).
ROUTER_DISTRIBUTIONS = (
    "aiohappyeyeballs", "aiohttp", "aiosignal", "annotated-types", "attrs", "click", "frozenlist",
    "h11", "httptools", "idna", "multidict", "prometheus-client", "propcache", "pydantic",
    "pydantic-core", "ruamel.yaml", "typing-extensions", "typing-inspection", "uvicorn", "uvloop",
    "yarl", "pip",
)
# The router machines' interpreter and platform (templates/router/install.sh.j2: AL2023 python3.11).
PLATFORM = ("--platform", "manylinux2014_x86_64", "--python-version", "3.11",
            "--implementation", "cp", "--abi", "cp311")
# What the qinfra wheel is built from (pyproject.toml's package data and readme included).
SOURCES = ("pyproject.toml", "README.md", "qinfra", "templates")
# Wheel zip entries take this time (wheel and setuptools honour SOURCE_DATE_EPOCH), so a rebuild
# of the same sources is the same bytes: 1980-01-01, the earliest a zip can say.
SOURCE_DATE_EPOCH = "315532800"
PIP_TIMEOUT_S = 600


def wanted(spec: StackSpec) -> bool:
    """Target aws with an S3 store: its router machines install from wheels pinned there (a
    file:// store cannot reach a machine, and other targets run the router otherwise)."""
    return target_plan(spec.target).router_wheels and spec.artifacts.store.startswith("s3://")


def requirements() -> tuple[str, ...]:
    """`name==version` of each router distribution as installed here; ArtifactError naming
    one that is missing (the router could not run here either)."""
    out = []
    for name in ROUTER_DISTRIBUTIONS:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise ArtifactError(f"the router needs {name}, which is not installed here. To fix: "
                                "bash scripts/setup.sh") from None
    return tuple(out)


def source_root() -> Path:
    """The checkout qinfra runs from; ArtifactError when it is an installed wheel without one."""
    root = Path(qinfra.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise ArtifactError(f"the router's wheel is built from a qinfra source checkout, and {root} "
                            "has no pyproject.toml. To fix: run qinfra from its checkout")
    return root


def _source_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for name in SOURCES:
        path = root / name
        if path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                      and p.suffix not in (".pyc", ".pyo")]
        else:
            files.append(path)
    return sorted(files)


def source_hash(root: Path, pins: tuple[str, ...]) -> str:
    """sha256 over the sources' paths and bytes, the pinned versions and the platform."""
    digest = hashlib.sha256("\n".join((*pins, *PLATFORM, "")).encode())
    for path in _source_files(root):
        digest.update(f"{path.relative_to(root)}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _pip(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    try:
        done = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"pip {args[0]} took over {PIP_TIMEOUT_S} s building the router's "
                            "wheels. To fix: check the package index is reachable") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise ArtifactError(f"pip {args[0]} failed building the router's wheels:\n{tail}\nTo fix: "
                            "check the package index is reachable (PIP_INDEX_URL) and retry")


def _download_dependencies(pins: tuple[str, ...], folder: Path) -> Path:
    """The dependency wheels, once per set of versions (the only step that needs the index)."""
    key = hashlib.sha256("\n".join((*pins, *PLATFORM)).encode()).hexdigest()[:16]
    done = folder / f"deps-{key}"
    if not done.is_dir():
        work = Path(tempfile.mkdtemp(prefix=".deps-", dir=folder))
        _pip(["download", "--only-binary=:all:", *PLATFORM, "--dest", str(work), *pins], folder)
        work.rename(done)
    return done


def copy_sources(root: Path, src: Path) -> None:
    """A snapshot of the sources: what is hashed is what is built (an edit during a build
    cannot slip in between), and the checkout gets no build/ or egg-info folders."""
    src.mkdir(parents=True)
    for name in SOURCES:
        if (root / name).is_dir():
            shutil.copytree(root / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
        else:
            shutil.copy2(root / name, src / name)


def build(cache: Path, root: Path | None = None) -> Path:
    """The folder of the router's wheels for the sources at `root` (default: the running
    checkout), built or taken from `cache`/router-wheels/<hash>/. A folder appears whole (built
    aside, then renamed), so an interrupted build is redone."""
    pins = requirements()
    folder = cache / "router-wheels"
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=folder))
    try:
        src = work / "src"
        copy_sources(root or source_root(), src)
        done = folder / source_hash(src, pins)[:32]
        if done.is_dir():
            return done
        deps = _download_dependencies(pins, folder)
        wheels = work / "wheels"
        _pip(["wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir",
              str(wheels), str(src)], work)
        for wheel in deps.glob("*.whl"):
            shutil.copy2(wheel, wheels / wheel.name)
        wheels.rename(done)
        return done
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fetched(folder: Path) -> Fetched:
    """The wheel folder as an artifact: one file per wheel, by its name."""
    files = tuple(SourceFile(p.name, p) for p in sorted(folder.glob("*.whl")))
    if not any(f.path.startswith("qinfra-") for f in files):
        raise ArtifactError(f"{folder} holds no qinfra wheel. To fix: delete it and push again")
    return Fetched(f"the router's wheels ({len(files)})", files)


def push_router(spec: StackSpec, *, settings: TransferSettings | None = None,
                progress: Progress = NO_PROGRESS, hasher: Hasher | None = None) -> PushResult:
    """Build (or reuse) the wheel set and push it to the stack's store like a model artifact."""
    hasher = hasher or Hasher(cache=project_hash_cache(spec.path))
    store = open_store(spec.artifacts.store, settings, hasher.cache)
    return push(fetched(build(cache_dir(spec.path))), store, hasher=hasher, progress=progress)


def pins(result: PushResult | None) -> dict[str, str]:
    """The stack-file update that pins the pushed wheels (nothing when none were pushed)."""
    return {PIN_KEY: result.uri} if result is not None else {}
