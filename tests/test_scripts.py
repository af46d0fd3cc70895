"""The sources scripts/install-pulumi.sh builds are real files that pass the Go tools: gofmt prints
nothing and `go vet` is clean with the committed go.mod and go.sum (read-only: they are whole)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
# Modules with Go sources; the tool-only wrappers of scripts/kube-build (kubernetes, kwok:
# `tool` lines, no package of their own) have nothing to vet, and install-kube.sh builds them
# with -mod=readonly, which fails on an incomplete go.sum.
GO_MODULES = sorted(mod.parent for mod in SCRIPTS.rglob("go.mod") if any(mod.parent.glob("*.go")))
SHELL_SCRIPTS = [*sorted(SCRIPTS.glob("*.sh")), SCRIPTS / "pulumi-resource-pulumi-python"]
# A cold module cache downloads the Pulumi SDK's dependency tree from the Go module proxy.
GO_TIMEOUT_S = 900


def _go_tool(name: str) -> Path:
    """`go`/`gofmt` on PATH or where the Go installer puts them, or a failure naming the part."""
    found = shutil.which(name) or shutil.which(name, path="/usr/local/go/bin")
    if found is None:
        pytest.fail(f"{name} not found: install Go >= 1.26 (scripts/install-pulumi.sh builds with it)")
    return Path(found)


def _go_env() -> dict[str, str]:
    """As the install script builds (no cgo, no VCS stamping), but go.mod and go.sum read-only."""
    return {**os.environ, "GOFLAGS": "-mod=readonly -buildvcs=false", "CGO_ENABLED": "0"}


def test_go_modules_are_found() -> None:
    assert [m.name for m in GO_MODULES] == ["etcd", "pulumi-language-python"]


@pytest.mark.parametrize("module", GO_MODULES, ids=lambda m: m.name)
def test_gofmt_is_clean(module: Path) -> None:
    done = subprocess.run(
        [str(_go_tool("gofmt")), "-l", "."], cwd=module, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", f"not gofmt-formatted (run gofmt -w):\n{done.stdout}"


@pytest.mark.parametrize("module", GO_MODULES, ids=lambda m: m.name)
def test_go_vet_is_clean(module: Path) -> None:
    done = subprocess.run(
        [str(_go_tool("go")), "vet", "./..."],
        cwd=module,
        env=_go_env(),
        capture_output=True,
        text=True,
        timeout=GO_TIMEOUT_S,
    )
    assert done.returncode == 0, f"go vet ./... in {module}:\n{done.stdout}\n{done.stderr[-4000:]}"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda s: s.name)
def test_shell_scripts_parse(script: Path) -> None:
    shell = "bash" if script.suffix == ".sh" else "sh"
    done = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_install_script_builds_sources_rather_than_embedding_them() -> None:
    text = (SCRIPTS / "install-pulumi.sh").read_text()
    assert "package main" not in text and "-m pulumi.dynamic" not in text
    assert os.access(SCRIPTS / "pulumi-resource-pulumi-python", os.X_OK)
