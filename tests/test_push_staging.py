"""A first push to a file:// store hashes each file while it writes it (one read of each byte),
publishes under the artifact id only once every file is whole, and leaves nothing published when
it is cut; an S3 push hashes first (publishing there would be a server-side copy)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qinfra.artifacts.fetch import fetch
from qinfra.artifacts.hashing import Hasher
from qinfra.artifacts.push import push
from qinfra.artifacts.store_open import open_store
from qinfra.artifacts.stores import (
    MIB,
    STAGING_DIR,
    StagingStore,
    Store,
)
from qinfra.artifacts.verify import verify
from qinfra.core.artifact_uri import is_artifact_id
from qinfra.core.errors import ArtifactError
from tests.s3server import SMALL_PARTS
from tests.test_artifacts import Interrupted, Recorder, _write_model


def _file_store(tmp_path: Path) -> StagingStore:
    store = open_store(f"file://{tmp_path}/store")
    assert isinstance(store, StagingStore)
    return store


def _published(store: Store) -> list[str]:
    return [d for d in store.list_dirs() if is_artifact_id(d)]


def _staging_left(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "store" / STAGING_DIR
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_first_push_to_a_file_store_reads_each_byte_once(tmp_path: Path) -> None:
    model = _write_model(tmp_path / "model")
    store = _file_store(tmp_path)
    record, hasher = Recorder(), Hasher()
    result = push(fetch(str(model)), store, hasher=hasher, progress=record)
    total = result.manifest.size_bytes
    # no hashing pass: every byte was hashed as it was written, then renamed into place
    assert "hashing" not in record.totals
    assert (record.totals["uploading"], record.done["uploading"]) == (total, total)
    assert result.uploaded_bytes == hasher.hashed_bytes == total
    assert verify(result.uri, settings=SMALL_PARTS).ok
    assert _published(store) == [result.artifact_id] and _staging_left(tmp_path) == []
    again = push(fetch(str(model)), store)  # a new process: hashes, finds it all, sends nothing
    assert (again.uri, again.uploaded_bytes) == (result.uri, 0)


def test_s3_push_hashes_before_it_uploads(s3_bucket: str, tmp_path: Path) -> None:
    model = _write_model(tmp_path / "model")
    store = open_store(f"s3://{s3_bucket}/models", SMALL_PARTS)
    assert not isinstance(store, StagingStore)
    record = Recorder()
    result = push(fetch(str(model)), store, progress=record)
    assert record.totals["hashing"] == record.totals["uploading"] == result.manifest.size_bytes
    assert verify(result.uri, settings=SMALL_PARTS).ok


def test_interrupted_staging_publishes_nothing_and_the_next_push_completes(tmp_path: Path) -> None:
    model = _write_model(tmp_path / "model")
    store = _file_store(tmp_path)

    def cut(done: int) -> None:
        if done > 3 * MIB:  # inside the 6 MiB shard
            raise Interrupted

    with pytest.raises(Interrupted):
        push(fetch(str(model)), store, progress=Recorder({"uploading": cut}))
    assert _published(store) == []  # no artifact folder at all, so no half artifact to trust
    assert _staging_left(tmp_path) == []  # and the staged files were removed
    resumed = push(fetch(str(model)), store)
    assert resumed.uploaded_bytes == resumed.manifest.size_bytes
    assert verify(resumed.uri, settings=SMALL_PARTS).ok


@pytest.mark.parametrize("change", ["rewrite", "truncate"])
def test_a_file_changed_while_staged_publishes_nothing(tmp_path: Path, change: str) -> None:
    model = _write_model(tmp_path / "model")
    shard = model / "model-00001-of-00002.safetensors"
    store = _file_store(tmp_path)
    changed: list[bool] = []

    def edit(done: int) -> None:
        if done > 1 * MIB and not changed:
            changed.append(True)
            if change == "truncate":
                os.truncate(shard, 2 * MIB)
            else:  # same size, new bytes: only the file's ctime tells
                with open(shard, "r+b") as f:
                    f.seek(5 * MIB)
                    f.write(b"\xff" * 1024)

    with pytest.raises(ArtifactError, match="changed while it was being sent"):
        push(fetch(str(model)), store, progress=Recorder({"uploading": edit}))
    assert changed and _published(store) == [] and _staging_left(tmp_path) == []


def test_files_the_store_may_hold_are_hashed_first_and_not_sent_again(tmp_path: Path) -> None:
    # The artifact's files are in the store but its manifest is gone (a push cut at the very
    # end), and a new process has no hash cache: files of a held path and size are hashed and
    # checked in place, not staged and sent again.
    model = _write_model(tmp_path / "model")
    store = _file_store(tmp_path)
    first = push(fetch(str(model)), store)
    (tmp_path / "store" / first.artifact_id / "manifest.json").unlink()
    record = Recorder()
    again = push(fetch(str(model)), store, progress=record)
    assert record.totals == {"hashing": first.manifest.size_bytes}  # nothing staged or sent
    assert (again.uri, again.uploaded_bytes) == (first.uri, 0)
    assert verify(again.uri, settings=SMALL_PARTS).ok
