"""A built wheel, installed into a fresh virtualenv, renders and plans from a project folder that has
Pulumi.yaml and stacks/ but no templates/: the templates travel as package data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from qinfra.core.spec import STACKS_DIR_ENV

ROOT = Path(__file__).resolve().parents[1]
# What the build reads: the package, the top-level templates/ it maps in, the metadata.
SOURCES = ("pyproject.toml", "README.md", "qinfra", "templates")
TIMEOUT_S = 300


def _run(argv: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, f"{argv} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built offline from a copy of the sources (the checkout gets no build/ folder)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    _run([*pip, "--wheel-dir", dist, src], cwd=src)
    (built,) = dist.glob("qinfra-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A fresh virtualenv holding the wheel; qinfra's dependencies come from the test's own
    site-packages through a .pth line, which adds that folder without running its .pth files,
    so the checkout's editable install is not on the path."""
    root = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root)
    python = root / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python]
    _run([*pip, "install", "--no-deps", "--no-index", wheel], cwd=root)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([python, "-c", purelib], cwd=root).strip())
    (site / "qinfra_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project folder: Pulumi.yaml and stacks/, no templates/ and no qinfra/."""
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copytree(ROOT / "stacks", tmp_path / "stacks")
    # The local stack's model (scripts/setup.sh places it), named relative to the project root.
    (tmp_path / ".tools").mkdir()
    (tmp_path / ".tools" / "models").symlink_to(ROOT / ".tools" / "models")
    return tmp_path


def _env() -> dict[str, str]:
    """No PYTHONPATH or stacks-folder override from the caller: the venv and the cwd decide."""
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", STACKS_DIR_ENV}}


def _shipped(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_wheel_ships_every_package_file_and_the_templates(wheel: Path) -> None:
    """Every file under qinfra/ (modules and data tables) and templates/, where the package
    reads them; a miss means a package or data pattern to add in pyproject.toml."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = [p.relative_to(ROOT).as_posix() for p in _shipped(ROOT / "qinfra")]
    expected += [f"qinfra/{p.relative_to(ROOT).as_posix()}" for p in _shipped(ROOT / "templates")]
    assert [name for name in expected if name not in names] == [], "list them in pyproject.toml"


def test_installed_wheel_is_the_one_imported(venv: Path, project: Path) -> None:
    code = "import qinfra.serving.render as r; print(r.__file__); print(r.templates_dir())"
    module, templates = _run([venv / "bin" / "python", "-c", code], cwd=project, env=_env()).split()
    assert Path(module).is_relative_to(venv), module
    assert Path(templates) == Path(module).parents[1] / "templates", templates  # package data


def test_installed_wheel_renders_the_local_stack(venv: Path, project: Path) -> None:
    out = project / "rendered"
    _run([venv / "bin" / "qinfra", "render", "--stack", "local", "--out", out], cwd=project, env=_env())
    rendered = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert "baseline/server.sh" in rendered and "quantized/server.sh" in rendered, rendered


def test_installed_wheel_plans_the_local_stack(venv: Path, project: Path) -> None:
    text = _run([venv / "bin" / "qinfra", "plan", "--stack", "local", "--json"], cwd=project, env=_env())
    assert set(json.loads(text)["variants"]) == {"baseline", "quantized"}, text  # exit 0: it fits
