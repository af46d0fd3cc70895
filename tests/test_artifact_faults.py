"""Fault injection on the artifact path (issue 10, items 2 and 14): a push repairs what the store
holds wrongly, and a pin that names content the store does not hold is never silently re-pinned.

Against the real moto S3 server and a file:// store (the `store` fixture runs both)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner

from qinfra.artifacts.fetch import CACHE_DIR_ENV, fetch
from qinfra.artifacts.listing import ArtifactState, list_artifacts
from qinfra.artifacts.push import PinState, pin_state, pins, push, push_stack
from qinfra.artifacts.s3store import SHA256_METADATA_KEY, S3Store
from qinfra.artifacts.stores import MIB, Store
from qinfra.artifacts.verify import verify
from qinfra.cli.main import cli
from qinfra.core.artifact_uri import parse_artifact_uri, parse_store_uri
from qinfra.core.errors import ArtifactError, SpecError
from qinfra.core.spec import StackSpec, Variant, load_stack
from qinfra.deploy.stackfile import update_stack_file
from tests.s3server import SMALL_PARTS

SHARD = "model-00001-of-00002.safetensors"  # 6 MiB: three parts with SMALL_PARTS on S3
ZEROS = "sha256-" + "0" * 64


def _model(root: Path, seed: str = "") -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_bytes(b'{"model_type": "llama"}')
    block = hashlib.sha256(f"shard{seed}".encode()).digest()
    (root / SHARD).write_bytes((block * (6 * MIB // 32))[: 6 * MIB])
    (root / "tokenizer.json").write_bytes(b'{"version": "1.0"}' * 100)
    return root


def _corrupt(store: Store, key: str, *, keep_metadata: bool) -> None:
    """Flip the first byte of a stored object the way a faulty disk or a careless hand would:
    in place on the file store (mtime restored), overwritten on S3 (its recorded digest kept
    when `keep_metadata`)."""
    if isinstance(store, S3Store):
        client = boto3.client("s3")
        full = f"{store.prefix}/{key}"
        obj = client.get_object(Bucket=store.bucket, Key=full)
        data = bytearray(obj["Body"].read())
        data[0] ^= 0xFF
        metadata = obj["Metadata"] if keep_metadata else {}
        client.put_object(Bucket=store.bucket, Key=full, Body=bytes(data), Metadata=metadata)
        return
    path = Path(store.uri.removeprefix("file://")) / key
    before = os.stat(path)
    time.sleep(0.01)  # past the filesystem's timestamp tick
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _delete(store: Store, key: str) -> None:
    if isinstance(store, S3Store):
        boto3.client("s3").delete_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
    else:
        (Path(store.uri.removeprefix("file://")) / key).unlink()


# --- item 2: push repairs the store -----------------------------------------------------------


@pytest.mark.parametrize("keep_metadata", [False, True])
@pytest.mark.parametrize("name", [SHARD, "config.json"])  # multipart and single-part on S3
def test_push_reuploads_a_corrupted_object(
    store: Store, tmp_path: Path, name: str, keep_metadata: bool
) -> None:
    model = _model(tmp_path / "model")
    first = push(fetch(str(model)), store)
    _corrupt(store, f"{first.artifact_id}/{name}", keep_metadata=keep_metadata)
    assert not verify(first.uri, settings=SMALL_PARTS).ok
    again = push(fetch(str(model)), store)
    assert again.uri == first.uri
    assert again.uploaded_bytes == (model / name).stat().st_size  # that object, and only it
    assert verify(again.uri, settings=SMALL_PARTS).ok


def test_push_repairs_a_corrupt_object_without_manifest(store: Store, tmp_path: Path) -> None:
    model = _model(tmp_path / "model")
    first = push(fetch(str(model)), store)
    _corrupt(store, f"{first.artifact_id}/{SHARD}", keep_metadata=True)
    _delete(store, f"{first.artifact_id}/manifest.json")
    again = push(fetch(str(model)), store)
    assert again.uploaded_bytes == 6 * MIB
    assert verify(again.uri, settings=SMALL_PARTS).ok
    assert store.read(f"{first.artifact_id}/manifest.json") == first.manifest.to_bytes()


def test_ls_is_truthful_after_repair(stacks: Path, tmp_path: Path) -> None:
    spec = _vllm_stack(stacks, tmp_path)
    results = push_stack(spec)
    update_stack_file(spec.path, pins(results))
    uri = results[Variant.BASELINE].uri
    aid = results[Variant.BASELINE].artifact_id
    store_dir = tmp_path / "store" / aid
    (store_dir / "manifest.json").unlink()
    (store_dir / SHARD).write_bytes(b"corrupt")
    assert not verify(uri).ok
    push_stack(load_stack("t"))
    listed = {item.uri: item.state for item in list_artifacts(load_stack("t"))}
    assert listed[uri] is ArtifactState.COMPLETE and verify(uri).ok


# --- item 14: pins are reviewed statements --------------------------------------------------


def _vllm_stack(stacks: Path, tmp_path: Path) -> object:
    """The prod example, pointed at local checkpoints and a file:// store, nothing pinned."""
    path = stacks / "Pulumi.t.yaml"
    shutil.copy(stacks / "Pulumi.prod.yaml", path)
    update_stack_file(
        path,
        {
            "qinfra:model.id": str(_model(tmp_path / "baseline")),
            "qinfra:artifacts.store": f"file://{tmp_path}/store",
            "qinfra:variants.quantized.source": str(_model(tmp_path / "awq", seed="awq")),
        },
    )
    return load_stack("t")


def test_up_refuses_a_pin_the_store_does_not_hold(
    stacks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A made-up id is an error naming the key, the URI and the fix; nothing is pushed or
    re-pinned, and the engine is never started."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    path = stacks / "Pulumi.local.yaml"
    store = f"file://{tmp_path}/store"
    pinned = f"{store}/{ZEROS}/"
    update_stack_file(
        path,
        {
            "qinfra:artifacts.store": store,
            "qinfra:variants.baseline.artifact": pinned,
            "qinfra:variants.quantized.artifact": f"{store}/sha256-{'1' * 64}/",
        },
    )
    before = path.read_text()
    result = CliRunner().invoke(cli, ["up", "--stack", "local", "--yes"])
    assert result.exit_code == 1, result.output
    assert f"qinfra:variants.baseline.artifact pins {pinned}, which its store does not hold" in (
        result.output
    )
    assert "`qinfra artifacts push --stack local` pushes and re-pins" in result.output
    assert path.read_text() == before
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def _lost_baseline(stacks: Path, tmp_path: Path) -> tuple[StackSpec, str]:
    """The vLLM stack pushed and pinned, then its store lost the baseline's artifact: the
    reloaded spec and the baseline's pin."""
    spec = _vllm_stack(stacks, tmp_path)
    update_stack_file(spec.path, pins(push_stack(spec)))
    spec = load_stack("t")
    pinned = spec.variants.of(Variant.BASELINE).artifact
    assert pinned is not None
    shutil.rmtree(tmp_path / "store" / parse_artifact_uri(pinned).artifact_id)
    return spec, pinned


def test_up_restores_a_lost_pinned_artifact_without_repinning(
    stacks: Path, tmp_path: Path
) -> None:
    """A pin whose store lost it is pushed again only as exactly that pin."""
    spec, pinned = _lost_baseline(stacks, tmp_path)
    state = pin_state(spec)
    assert state == PinState(unpinned=(), not_held=(Variant.BASELINE,))
    results = push_stack(spec, only=state.to_push, restore=state.not_held)
    assert list(results) == [Variant.BASELINE]  # the held quantized artifact is left alone
    assert results[Variant.BASELINE].uri == pinned and verify(pinned).ok
    assert update_stack_file(spec.path, pins(results)) == ""  # no re-pin
    assert pin_state(load_stack("t")) == PinState((), ())


def test_restore_refuses_a_source_that_no_longer_makes_the_pin(
    stacks: Path, tmp_path: Path
) -> None:
    spec, pinned = _lost_baseline(stacks, tmp_path)
    (tmp_path / "baseline" / "config.json").write_text('{"model_type": "mistral"}')
    with pytest.raises(ArtifactError, match="the variant's source now makes file://"):
        push_stack(spec, only=(Variant.BASELINE,), restore=(Variant.BASELINE,))
    assert not (tmp_path / "store" / parse_artifact_uri(pinned).artifact_id).exists()
    assert json.loads(  # the explicit push re-pins, as the error says
        CliRunner().invoke(cli, ["artifacts", "push", "--stack", "t", "--json"]).stdout
    )["diff"]


@pytest.mark.parametrize(
    "uri",
    [
        f"file:///srv/store/../elsewhere/{ZEROS}/",  # climbs out of the declared store
        f"s3://bucket/models/../other/{ZEROS}/",
        f"file:///srv/store/%2e%2e/elsewhere/{ZEROS}/",  # the file store decodes %2e
        f"file:///srv/./store/{ZEROS}/",  # a second spelling of one artifact
    ],
)
def test_dot_segments_are_refused_by_the_parser(uri: str) -> None:
    with pytest.raises(ValueError, match=re.escape("without '.' or '..' path segments")):
        parse_artifact_uri(uri)
    with pytest.raises(ValueError, match=re.escape("without '.' or '..' path segments")):
        parse_store_uri(uri.removesuffix(f"{ZEROS}/"))


def test_dot_segments_in_a_pin_stop_the_stack_file(stacks: Path) -> None:
    update_stack_file(
        stacks / "Pulumi.local.yaml",
        {"qinfra:variants.baseline.artifact": f"file:///tmp/store/../x/{ZEROS}/"},
    )
    with pytest.raises(SpecError, match=re.escape("qinfra:variants.baseline.artifact")):
        load_stack("local")


def test_s3_object_without_our_checksum_is_not_trusted(s3_bucket: str, tmp_path: Path) -> None:
    """An object written by hand with a copied digest but no S3 checksum is sent again."""
    from qinfra.artifacts.store_open import open_store

    store = open_store(f"s3://{s3_bucket}/models", SMALL_PARTS)
    model = _model(tmp_path / "model")
    first = push(fetch(str(model)), store)
    key = f"models/{first.artifact_id}/config.json"
    sha = hashlib.sha256((model / "config.json").read_bytes()).hexdigest()
    boto3.client("s3").put_object(
        Bucket=s3_bucket, Key=key, Body=b"x" * 23, Metadata={SHA256_METADATA_KEY: sha}
    )
    assert push(fetch(str(model)), store).uploaded_bytes == 23
