"""Shared fixtures: the reference model configs and an isolated stacks folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
