"""Atomic replacement: readers see the old file or the whole new one; nothing is left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from qinfra.core.fileio import open_atomic, replacing, write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomic_text_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    write_atomic(path, "a: \u00e9\n")
    assert path.read_bytes() == "a: \u00e9\n".encode()  # UTF-8, newline untouched
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(tmp_path) == ["f.yaml"]


def test_mode_is_set_or_kept(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    write_atomic(script, "#!/bin/sh\n", mode=0o755)
    assert _mode(script) == 0o755
    stack = tmp_path / "Pulumi.prod.yaml"
    stack.write_text("old")
    stack.chmod(0o640)
    write_atomic(stack, "new")  # no mode given: the replaced file's mode is kept
    assert (stack.read_text(), _mode(stack)) == ("new", 0o640)


def test_new_file_gets_the_umask_default_not_mkstemps_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "new.json", "{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new.json") == 0o644


def test_failure_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), open_atomic(path) as out:
        out.write(b"half of the new")
        raise Boom
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]

    def refuse(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


def test_replacing_hands_out_a_path_for_another_writer(tmp_path: Path) -> None:
    dst = tmp_path / "model.gguf"
    with replacing(dst) as tmp:
        assert tmp.parent == tmp_path and not tmp.exists()  # same filesystem, not yet created
        tmp.write_bytes(b"GGUF")
        assert not dst.exists()  # nothing at the final path until the block succeeds
    assert dst.read_bytes() == b"GGUF" and os.listdir(tmp_path) == ["model.gguf"]
    with pytest.raises(RuntimeError), replacing(tmp_path / "other.gguf") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("llama-quantize failed")
    assert os.listdir(tmp_path) == ["model.gguf"]
