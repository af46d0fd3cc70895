"""What both SmolLM2 checkpoint makers (make-smollm2-16bit.py, make-smollm2-w8a8.py) share:
hashing a checkpoint's files and saying, file by file, how it differs from its pinned hashes.
Imported by file name: a script's own folder is first on sys.path when Python runs it."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

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
