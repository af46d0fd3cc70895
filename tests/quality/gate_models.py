"""SmolLM2-135M-Instruct as the gate tests measure it: an F16 baseline made from the shipped Q4_1
file (`llama-quantize --allow-requantize`, as the local stack makes it) and quantized variants
made from that F16, once per test session; plus the cache the gate keeps its logits in."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from qinfra.serving.llamacpp import QUANTIZE, find_binary

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = ROOT / ".tools" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _quantize(src: Path, dst: Path, gguf_type: str) -> Path:
    if not dst.is_file():
        argv = [str(find_binary(QUANTIZE)), "--allow-requantize", str(src), str(dst), gguf_type]
        subprocess.run(argv, check=True, capture_output=True)
    return dst


@pytest.fixture(scope="session")
def smollm2_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`get("F16")`, `get("Q4_K_M")`...: the SmolLM2 GGUF of that type, made on first use."""
    if not SMOLLM2.is_file():
        pytest.fail(f"SmolLM2 is missing at {SMOLLM2}: run scripts/setup.sh", pytrace=False)
    folder = tmp_path_factory.mktemp("smollm2")
    f16 = _quantize(SMOLLM2, folder / "SmolLM2-135M-Instruct-F16.gguf", "F16")

    def get(gguf_type: str) -> Path:
        if gguf_type == "F16":
            return f16
        return _quantize(f16, folder / f"SmolLM2-135M-Instruct-{gguf_type}.gguf", gguf_type)

    return get


@pytest.fixture(scope="session")
def gate_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session, so the baseline's logits are computed once."""
    return tmp_path_factory.mktemp("gate-cache")
