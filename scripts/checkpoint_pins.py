"""What the SmolLM2 checkpoint maker (make-smollm2-16bit.py) keeps apart from its model code:
hashing a checkpoint's files and saying, file by file, how it differs from its pinned hashes.
Imported by file name: a script's own folder is first on sys.path when Python runs it."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


class MakeError(Exception):
    """A wrong input or a result that differs from the pinned hashes."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_of(p) for p in sorted(folder.iterdir()) if p.is_file()}


def differences(got: dict[str, str], want: dict[str, str]) -> list[str]:
    """One line per file that is missing, extra or different; empty when they are the same."""
    lines = []
    for name in sorted(set(got) | set(want)):
        if name not in got:
            lines.append(f"{name}: missing (expected sha256 {want[name]})")
        elif name not in want:
            lines.append(f"{name}: not expected (sha256 {got[name]})")
        elif got[name] != want[name]:
            lines.append(f"{name}: sha256 {got[name]}, expected {want[name]}")
    return lines


def versions(names: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each package, recorded beside the hashes it produced."""
    return {name: importlib.metadata.version(name) for name in sorted(names)}


def drop_load_options(path: Path) -> None:
    """tokenizer_config.json records how this run loaded the tokenizer (`is_local`,
    `local_files_only`), which says nothing about the tokenizer and differs between runs; drop
    those keys, keep the rest as transformers wrote it."""
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):
        data.pop(key, None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")


def build(out: Path, make: Callable[[Path], None], expected_path: Path,
          expected: dict[str, Any] | None, record: Callable[[dict[str, str]], dict[str, Any]] | None,
          tools: Callable[[], dict[str, str]], tag: str) -> int:
    """Make the checkpoint in a temporary folder beside `out`, then either record its hashes in
    `expected_path` (`record` builds that document from them) or check them against `expected`:
    a difference keeps the result as <out>.rejected and raises MakeError naming every file. The
    result takes `out`'s name whole or not at all. Returns its number of files."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        make(tmp)
        got = file_hashes(tmp)
        if record is not None:
            expected_path.write_text(json.dumps(record(got), indent=2, sort_keys=True) + "\n",
                                     encoding="utf-8")
            print(f"[{tag}] recorded {len(got)} hashes in {expected_path}")
        else:
            assert expected is not None
            if wrong := differences(got, expected["files"]):
                rejected = out.with_name(out.name + ".rejected")
                shutil.rmtree(rejected, ignore_errors=True)
                os.replace(tmp, rejected)
                raise MakeError(
                    f"the checkpoint differs from {expected_path.name} (tools now: {tools()}, "
                    f"pinned: {expected['tools']}); kept in {rejected}:\n  " + "\n  ".join(wrong))
        # Whole or nothing: the old folder goes aside, the new one takes its name, the old goes.
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(got)
