"""Shared fixtures: the reference model configs, an isolated stacks folder, artifact stores."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qinfra.artifacts.store_open import open_store
from qinfra.artifacts.stores import Store

# The real moto S3 server and its fixtures (s3_server, s3_endpoint, s3_bucket), for every test.
# (Imported as a plugin, not above, so that pytest rewrites its asserts.)
pytest_plugins = ["tests.s3server"]

ROOT = Path(__file__).resolve().parents[1]
# Copies of ../shared/reference/models (public Hugging Face config.json files).
REFERENCE_MODELS = ROOT / "tests" / "data" / "models"


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach a model hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def reference_models() -> Path:
    assert REFERENCE_MODELS.is_dir(), f"reference models missing at {REFERENCE_MODELS}"
    return REFERENCE_MODELS


@pytest.fixture
def stacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped stacks/, pointed at by QINFRA_STACKS_DIR, free to edit."""
    folder = tmp_path / "stacks"
    shutil.copytree(ROOT / "stacks", folder)
    monkeypatch.setenv("QINFRA_STACKS_DIR", str(folder))
    return folder


@pytest.fixture(params=["s3", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Each test that takes it runs against both stores, a prefix in a fresh bucket of the moto
    S3 server and a file:// folder: the code above the Store interface is the same for both."""
    from tests.s3server import SMALL_PARTS

    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        return open_store(f"s3://{bucket}/models", SMALL_PARTS)
    return open_store(f"file://{tmp_path}/store")
