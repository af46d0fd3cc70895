"""The router's code pinned like a model artifact (issue 13): qinfra's wheel and the router's
dependency wheels for CPython 3.11 manylinux x86_64, pushed content-addressed to the real moto S3
server by `qinfra artifacts push --stack`, verified, pinned as `qinfra:router.artifact`, and
installable offline into a bare virtualenv that then imports the router."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qinfra.artifacts.fetch import cache_dir
from qinfra.artifacts.manifest import split_artifact_uri
from qinfra.artifacts.router_wheels import (
    PIN_KEY,
    ROUTER_DISTRIBUTIONS,
    build,
    copy_sources,
    source_root,
)
from qinfra.artifacts.verify import verify
from qinfra.cli.artifacts import artifacts as artifacts_cli
from qinfra.core.spec import load_stack
from qinfra.deploy.stackfile import update_stack_file
from tests.test_artifacts import _write_model

pytestmark = pytest.mark.real
# The repository's own cache: wheel sets are kept by source hash, so reruns reuse them.
CACHE = cache_dir(source_root() / "stacks" / "Pulumi.local.yaml")
TIMEOUT_S = 300


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_listed_distributions_cover_what_the_router_imports() -> None:
    # what importing the router's app and its entry point adds to a fresh interpreter
    probe = (
        "import sys, json, importlib.metadata as md\n"
        "before = set(sys.modules)\n"
        "import qinfra.serving.router.app, qinfra.serving.router.__main__\n"
        "tops = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "pd = md.packages_distributions()\n"
        "print(json.dumps(sorted({d for t in tops for d in pd.get(t, [])})))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    imported = {_normal(d) for d in json.loads(out)} - {"qinfra"}
    assert imported <= {_normal(d) for d in ROUTER_DISTRIBUTIONS}, imported


@pytest.fixture(scope="module")
def wheels() -> Path:
    return build(CACHE)


def test_a_rebuild_of_the_same_sources_is_the_same_bytes(tmp_path: Path) -> None:
    # one snapshot of the sources (the checkout may change under a long test run)
    snapshot = tmp_path / "src"
    copy_sources(source_root(), snapshot)
    first, again = build(tmp_path / "one", snapshot), build(tmp_path / "two", snapshot)
    assert first.name == again.name  # the same source hash
    ours = sorted(p.name for p in first.glob("*.whl"))
    assert ours == sorted(p.name for p in again.glob("*.whl"))
    (wheel,) = first.glob("qinfra-*.whl")
    assert (again / wheel.name).read_bytes() == wheel.read_bytes()
    # a second build of unchanged sources is the cached folder itself, not rebuilt
    stamp = (again / wheel.name).stat().st_mtime_ns
    assert build(tmp_path / "two", snapshot) == again
    assert (again / wheel.name).stat().st_mtime_ns == stamp


def test_the_wheels_install_offline_and_import_the_router(wheels: Path, tmp_path: Path) -> None:
    # what templates/router/install.sh.j2 does on a router machine, with this python3.11
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True,
                   timeout=TIMEOUT_S)
    python = venv / "bin" / "python"
    (pip,) = wheels.glob("pip-*.whl")
    done = subprocess.run(
        [python, f"{pip}/pip", "install", "--no-index", "--no-deps", "--no-compile", "--quiet",
         *sorted(wheels.glob("*.whl"))], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    check = subprocess.run(
        [python, "-c", "import qinfra.serving.router.app, qinfra.serving.router.__main__, uvloop,"
         " httptools; import qinfra; print(qinfra.__file__)"],
        capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.startswith(str(venv))  # the installed wheel, not the checkout


def _aws_stack(stacks: Path, tmp_path: Path, bucket: str) -> Path:
    """The prod example with local checkpoints and its store in the moto S3 server."""
    path = stacks / "Pulumi.t.yaml"
    path.write_text((stacks / "Pulumi.prod.yaml").read_text())
    update_stack_file(path, {
        "qinfra:model.id": str(_write_model(tmp_path / "baseline", seed=1)),
        "qinfra:variants.quantized.source": str(_write_model(tmp_path / "awq", seed=2)),
        "qinfra:artifacts.store": f"s3://{bucket}/models",
    })
    return path


def test_push_stack_pushes_verifies_and_pins_the_router_wheels(
        stacks: Path, tmp_path: Path, s3_bucket: str, wheels: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QINFRA_CACHE_DIR", str(CACHE))
    path = _aws_stack(stacks, tmp_path, s3_bucket)
    result = CliRunner().invoke(artifacts_cli, ["push", "--stack", "t"])
    assert result.exit_code == 0, result.output
    uri = load_stack("t").router.artifact
    assert uri is not None and uri.startswith(f"s3://{s3_bucket}/models/sha256-")
    assert re.search(rf"^router: {re.escape(uri)}  {len(list(wheels.glob('*.whl')))} files",
                     result.output, re.M), result.output
    assert f"+    artifact: {uri}" in result.output  # the pin's diff
    report = verify(uri)
    assert report.ok
    names = {c.path for c in report.checks} - {"manifest.json"}
    assert names == {p.name for p in wheels.glob("*.whl")}
    assert any(n.startswith("qinfra-") for n in names) and any(n.startswith("pip-") for n in names)
    # pushed again: nothing sent, the same pin, no diff
    again = CliRunner().invoke(artifacts_cli, ["push", "--stack", "t", "--json"])
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert doc["diff"] == "" and doc["router"]["uploaded_bytes"] == 0
    assert doc["router"]["uri"] == uri
    assert PIN_KEY.split(":")[1].split(".")[0] in path.read_text()
    assert split_artifact_uri(uri).artifact_id == doc["router"]["artifact_id"]
