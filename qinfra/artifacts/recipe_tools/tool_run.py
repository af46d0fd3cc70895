"""What qinfra's recipe tool scripts share: the one-line refusal, the fresh output folder, the
ordinary file modes, and the run that ends with the JSON report qinfra reads. Imported by name:
a script's own folder is first on sys.path when the llm-compressor venv's python runs it (it
must not import qinfra, which that venv does not have)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class ToolError(Exception):
    """An expected failure: reported as one line on stderr, exit status 1, no traceback."""


def check_out(out: Path) -> None:
    """OUT is the caller's fresh folder: never write over or beside something already there."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ToolError(f"--out {out} exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)


def ordinary_modes(folder: Path) -> None:
    """mkdtemp makes 0700 and safetensors writes 0600: give the umask's ordinary modes instead,
    so the artifact reads the same to every user of the store."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def run(tag: str, tool: str, versioned: Sequence[str], work: Callable[[], None]) -> int:
    """Run `work` offline and quietly; an expected failure is one `tag: error:` line and exit 1,
    success the last stdout line: {"tool", "versions" (those that decide the bytes), "seconds"}."""
    # Read when transformers and tqdm are imported: no hub access, no progress bars on stderr.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TQDM_DISABLE", "1")
    start = time.monotonic()
    try:
        work()
    except ToolError as e:
        print(f"{tag}: error: {e}", file=sys.stderr)
        return 1
    versions = {name: importlib.metadata.version(name) for name in versioned}
    print(json.dumps({"tool": tool, "versions": versions,
                      "seconds": round(time.monotonic() - start, 3)}, sort_keys=True))
    return 0
