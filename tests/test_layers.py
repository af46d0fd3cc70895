"""The layer contracts in pyproject.toml hold: the real `lint-imports` passes on the package, and
fails on a copy with one forbidden import, so a contract that matches nothing cannot pass silently."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACTS = {
    c["type"]: c["name"]
    for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
}


def _lint_imports(project: Path) -> tuple[int, str]:
    """(exit code, report with whitespace folded) of `lint-imports` on project/qinfra."""
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"lint-imports not found at {LINT_IMPORTS}: run scripts/setup.sh", pytrace=False)
    env = {**os.environ, "PYTHONPATH": str(project), "COLUMNS": "200"}
    done = subprocess.run(
        [str(LINT_IMPORTS), "--config", str(project / "pyproject.toml"), "--no-cache"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def test_layer_contracts_hold() -> None:
    assert set(CONTRACTS) == {"layers", "forbidden"}
    code, report = _lint_imports(ROOT)
    assert code == 0, f"lint-imports failed:\n{report}"
    for name in CONTRACTS.values():
        assert f"{name} KEPT" in report, report


@pytest.mark.parametrize(
    ("module", "imported", "contract"),
    [
        # planning reaching up into the CLI breaks the one-way layers
        ("planning/planner.py", "qinfra.cli.main", "layers"),
        # core pulling in click (the old error root) breaks purity
        ("core/formats.py", "click", "forbidden"),
        # planning rendering with jinja2 breaks purity
        ("planning/sizing.py", "jinja2", "forbidden"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, imported: str, contract: str
) -> None:
    shutil.copytree(ROOT / "qinfra", tmp_path / "qinfra", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "qinfra" / module
    target.write_text(f"import {imported}  # noqa\n{target.read_text()}")
    code, report = _lint_imports(tmp_path)
    assert code == 1, f"lint-imports should fail:\n{report}"
    assert f"{CONTRACTS[contract]} BROKEN" in report, report
    # the report names the injected import, so it linted the copy, not the checkout
    importer = "qinfra." + module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {imported} (l.1)" in report, report
