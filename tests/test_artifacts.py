"""Artifacts end to end: manifest, hashing, push/resume/verify against moto S3 and file://, CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner

from qinfra.artifacts.fetch import CACHE_DIR_ENV, HUB_SERVING_FILES, Fetched, fetch, hub_patterns
from qinfra.artifacts.hashing import Hasher, SourceFile
from qinfra.artifacts.listing import ArtifactState, list_artifacts
from qinfra.artifacts.manifest import FileEntry, Manifest
from qinfra.artifacts.progress import NO_PROGRESS
from qinfra.artifacts.push import push, push_stack
from qinfra.artifacts.s3store import S3Store
from qinfra.artifacts.store_open import open_store
from qinfra.artifacts.stores import MIB, Store
from qinfra.artifacts.verify import verify
from qinfra.cli.artifacts import artifacts as artifacts_cli
from qinfra.core.artifact_uri import artifact_uri
from qinfra.core.errors import ArtifactError
from qinfra.core.formats import Format
from qinfra.core.spec import load_stack
from qinfra.deploy.stackfile import update_stack_file
from qinfra.serving.llamacpp import QuantizeRecipe, find_binary
from tests.local_stack import local_stack
from tests.s3server import SMALL_PARTS

# A checkpoint-shaped folder: config, tokenizer, two weight shards (one multipart), and a
# hidden folder that huggingface-hub leaves in a local_dir and that must not be pushed.
MODEL_FILES = {
    "config.json": b'{"model_type": "llama"}',
    "tokenizer.json": b'{"version": "1.0"}' * 100,
    "model-00001-of-00002.safetensors": 6 * MIB,
    "model-00002-of-00002.safetensors": 2 * MIB + 7,
    ".cache/huggingface/download/x.metadata": b"not part of the model",
}


def _write_model(root: Path, seed: int = 0) -> Path:
    for name, content in MODEL_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, int):
            block = hashlib.sha256(f"{seed}{name}".encode()).digest()
            content = (block * (content // 32 + 1))[:content]
        path.write_bytes(content)
    return root


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return _write_model(tmp_path / "model")


class Recorder:
    """A Progress that counts bytes per step and can run a hook as bytes arrive."""

    visible = False

    def __init__(self, hooks: dict[str, Callable[[int], None]] | None = None) -> None:
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = defaultdict(int)
        self._hooks = hooks or {}
        self._lock = threading.Lock()

    def start(self, description: str, total_bytes: int) -> Callable[[int], None]:
        self.totals[description] = total_bytes

        def advance(n: int) -> None:
            with self._lock:
                self.done[description] += n
                done = self.done[description]
            if hook := self._hooks.get(description):
                hook(done)

        return advance


class Interrupted(Exception):
    """Stands in for a dropped connection or Ctrl-C in the middle of an upload."""


def _tamper(store: Store, key: str, data: bytes) -> None:
    if isinstance(store, S3Store):
        boto3.client("s3").put_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}", Body=data)
    else:
        (Path(store.uri.removeprefix("file://")) / key).write_bytes(data)


# --- manifest ---------------------------------------------------------------------------------


def test_manifest_bytes_are_canonical_and_name_the_artifact() -> None:
    a = FileEntry("b.bin", 2, "b" * 64)
    b = FileEntry("a.json", 1, "a" * 64)
    manifest = Manifest((a, b))
    assert manifest.to_bytes() == Manifest((b, a)).to_bytes()
    assert manifest.to_bytes() == (
        b'{"files":[{"path":"a.json","sha256":"' + b"a" * 64 + b'","size":1},'
        b'{"path":"b.bin","sha256":"' + b"b" * 64 + b'","size":2}],"version":1}'
    )
    assert manifest.artifact_id == "sha256-" + hashlib.sha256(manifest.to_bytes()).hexdigest()
    recipe = QuantizeRecipe(tool="llama-quantize", version="b1-abc", type="Q4_K_M")
    with_recipe = Manifest((a, b), recipe)
    assert with_recipe.artifact_id != manifest.artifact_id  # how it was made is part of it
    assert Manifest.from_bytes(with_recipe.to_bytes(), "m") == Manifest((a, b), recipe)


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",  # absolute
        "../outside",  # escapes the artifact
        "a//b",  # empty segment
        "manifest.json",  # reserved: written last, marks the artifact complete
        "dir\\file",  # a Windows separator would mean different things on different stores
    ],
)
def test_manifest_refuses_unsafe_paths(path: str) -> None:
    with pytest.raises(ArtifactError, match="cannot be stored in an artifact"):
        Manifest((FileEntry(path, 1, "0" * 64),))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"not json", "Expecting value"),
        (b'{"version": 2, "files": []}', "version 2"),
        (b'{"version": 1}', "files"),
    ],
)
def test_manifest_from_bytes_rejects_foreign_documents(data: bytes, problem: str) -> None:
    with pytest.raises(ArtifactError, match=problem):
        Manifest.from_bytes(data, "s3://b/sha256-x/manifest.json")


# --- sources ----------------------------------------------------------------------------------


def test_fetch_local_dir_skips_hidden_files(model_dir: Path) -> None:
    fetched = fetch(str(model_dir))
    assert [f.path for f in fetched.files] == sorted(
        name for name in MODEL_FILES if not name.startswith(".")
    )


def test_fetch_single_file(model_dir: Path) -> None:
    path = model_dir / "config.json"
    assert fetch(str(path)).files == (SourceFile("config.json", path),)


def test_fetch_refuses_what_is_neither_path_nor_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="neither an existing file or directory nor a hub id"):
        fetch(str(tmp_path / "missing"))


def _hub_cache(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Point huggingface-hub at `folder` (it reads HF_HUB_CACHE once, at import; conftest has
    set HF_HUB_OFFLINE, which it reads on every call)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(folder))


def test_fetch_hub_offline_and_uncached_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hub_cache(monkeypatch, tmp_path / "hub")
    with pytest.raises(ArtifactError, match="not cached and the hub cannot be reached"):
        fetch("acme/tiny-model", revision="main")


def test_fetch_hub_takes_only_serving_files_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, snapshot_download answers from the cache, where a snapshot also holds what
    earlier downloads of that revision fetched; only the serving files are taken."""
    repo = tmp_path / "hub" / "models--acme--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "pytorch_model.bin",
        "README.md",
        "model-Q4_K_M.gguf",
    ):
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text(name)
    _hub_cache(monkeypatch, tmp_path / "hub")
    safetensors = fetch("acme/tiny", fmt=Format.BF16, revision="main")
    assert [f.path for f in safetensors.files] == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    gguf = fetch("acme/tiny", fmt=Format.GGUF_Q4_K_M, revision="main")
    assert [f.path for f in gguf.files] == ["model-Q4_K_M.gguf"]
    with pytest.raises(ArtifactError, match="has no files matching"):
        fetch("acme/tiny", fmt=Format.GGUF_Q8_0, revision="main")


@pytest.mark.parametrize(
    ("fmt", "patterns"),
    [
        (Format.GGUF_Q4_K_M, ("*Q4_K_M*.gguf", "*q4_k_m*.gguf")),  # one GGUF of many in a repo
        (Format.AWQ, HUB_SERVING_FILES),  # config, tokenizer, safetensors
        (None, HUB_SERVING_FILES),
    ],
)
def test_hub_patterns(fmt: Format | None, patterns: tuple[str, ...]) -> None:
    assert hub_patterns(fmt) == patterns


def test_file_changed_while_hashing_is_detected(model_dir: Path) -> None:
    shard = model_dir / "model-00001-of-00002.safetensors"

    def grow(_: int) -> None:
        with open(shard, "ab") as f:
            f.write(b"appended by another process")

    hasher = Hasher(workers=1, buffer_bytes=1 * MIB)
    fetched = Fetched("m", (SourceFile(shard.name, shard),))
    with pytest.raises(ArtifactError, match="changed while it was being hashed"):
        hasher.hash_files(fetched.files, Recorder({"hashing": grow}))


# --- push -------------------------------------------------------------------------------------


def test_push_lays_out_content_addressed_artifact(store: Store, model_dir: Path) -> None:
    result = push(fetch(str(model_dir)), store)
    manifest_bytes = store.read(f"{result.artifact_id}/manifest.json")
    assert manifest_bytes is not None
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    assert result.uri == f"{store.uri}/sha256-{digest}/"
    entries = {e.path: e for e in result.manifest.files}
    assert set(entries) == {name for name in MODEL_FILES if not name.startswith(".")}
    for path, entry in entries.items():
        data = (model_dir / path).read_bytes()
        assert (entry.size, entry.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert result.uploaded_bytes == sum(e.size for e in entries.values())
    assert verify(result.uri, settings=SMALL_PARTS).ok


def test_repush_is_idempotent_and_hashes_nothing_twice(store: Store, model_dir: Path) -> None:
    hasher = Hasher()
    first = push(fetch(str(model_dir)), store, hasher=hasher)
    again = push(fetch(str(model_dir)), store, hasher=hasher)
    assert (again.uri, again.uploaded_bytes) == (first.uri, 0)
    assert again.skipped_files == len(first.manifest.files)
    assert hasher.hashed_bytes == first.manifest.size_bytes  # second push hashed nothing


def test_interrupted_push_leaves_no_manifest_and_resumes(store: Store, model_dir: Path) -> None:
    fetched = fetch(str(model_dir))
    total = sum(f.source.stat().st_size for f in fetched.files)
    first_file = fetched.files[0].source.stat().st_size  # config.json, sent first

    def cut(done: int) -> None:
        if done > first_file + 1 * MIB:
            raise Interrupted

    with pytest.raises(Interrupted):
        push(fetched, store, progress=Recorder({"uploading": cut}))
    aid = Manifest(
        tuple(h.entry for h in Hasher().hash_files(fetched.files, NO_PROGRESS))
    ).artifact_id
    assert store.read(f"{aid}/manifest.json") is None  # incomplete by definition
    assert not verify(artifact_uri(store.uri, aid), settings=SMALL_PARTS).ok
    complete = sum(
        f.source.stat().st_size for f in fetched.files if store.stat(f"{aid}/{f.path}") is not None
    )
    # parallel copies may all be cut before one finishes: what matters is what resume sends
    assert complete < total
    if isinstance(store, S3Store):  # the cut multipart upload was aborted, not left to bill
        uploads = boto3.client("s3").list_multipart_uploads(Bucket=store.bucket)
        assert uploads.get("Uploads", []) == []
    resumed = push(fetched, store)
    assert resumed.uploaded_bytes == total - complete  # only the rest
    assert verify(resumed.uri, settings=SMALL_PARTS).ok


def test_push_to_missing_bucket_is_reported(s3_endpoint: str, model_dir: Path) -> None:
    with pytest.raises(ArtifactError) as err:
        push(fetch(str(model_dir)), open_store("s3://qinfra-missing/models"))
    assert err.value.message == (
        f"bucket 'qinfra-missing' does not exist at endpoint {s3_endpoint}; create it or fix "
        "qinfra:artifacts.store"
    )


# --- verify -----------------------------------------------------------------------------------


def test_verify_names_each_tampered_or_missing_file(store: Store, model_dir: Path) -> None:
    result = push(fetch(str(model_dir)), store)
    _tamper(store, f"{result.artifact_id}/tokenizer.json", b"{}")
    _tamper(store, f"{result.artifact_id}/config.json", b'{"model_type": "LLAMA"}')
    report = verify(result.uri, settings=SMALL_PARTS)
    assert {c.path for c in report.bad} == {"tokenizer.json", "config.json"}
    assert "size 2 bytes" in next(c.problem for c in report.bad if c.path == "tokenizer.json")
    assert "sha256" in next(c.problem for c in report.bad if c.path == "config.json")


def test_verify_refuses_an_altered_manifest(store: Store, model_dir: Path) -> None:
    result = push(fetch(str(model_dir)), store)
    _tamper(store, f"{result.artifact_id}/manifest.json", b'{"version":1,"files":[]}')
    [check] = verify(result.uri).checks
    assert check.path == "manifest.json" and "altered" in (check.problem or "")


@pytest.mark.parametrize(
    "uri", ["s3://bucket/models/", "file:///x/sha256-abc/", "sha256-" + "0" * 64]
)
def test_verify_refuses_non_artifact_uris(uri: str) -> None:
    with pytest.raises(ArtifactError, match="is not an artifact URI"):
        verify(uri)


# --- CLI --------------------------------------------------------------------------------------


def test_cli_adhoc_push_json_and_verify(s3_bucket: str, model_dir: Path) -> None:
    runner = CliRunner()
    store_uri = f"s3://{s3_bucket}/adhoc"
    first = runner.invoke(artifacts_cli, ["push", str(model_dir), "--to", store_uri, "--json"])
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    assert set(out) == {"uri", "artifact_id", "files", "uploaded_bytes"}
    assert out["uri"] == f"{store_uri}/{out['artifact_id']}/"
    assert {f["path"] for f in out["files"]} >= {"config.json", "tokenizer.json"}
    assert set(out["files"][0]) == {"path", "size", "sha256"}
    again = json.loads(
        runner.invoke(artifacts_cli, ["push", str(model_dir), "--to", store_uri, "--json"]).stdout
    )
    assert (again["uri"], again["uploaded_bytes"]) == (out["uri"], 0)

    ok = runner.invoke(artifacts_cli, ["verify", out["uri"]])
    assert ok.exit_code == 0 and "intact" in ok.stdout
    boto3.client("s3").put_object(
        Bucket=s3_bucket, Key=f"adhoc/{out['artifact_id']}/tokenizer.json", Body=b"{}"
    )
    bad = runner.invoke(artifacts_cli, ["verify", out["uri"]])
    assert bad.exit_code == 1
    assert "tokenizer.json: size 2 bytes" in bad.output
    assert "config.json" not in bad.output  # only the bad file is named
    as_json = runner.invoke(artifacts_cli, ["verify", out["uri"], "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["ok"] is False


@pytest.mark.parametrize(
    "args",
    [
        ["push"],  # nothing to push
        ["push", "some/dir"],  # SRC without --to
        ["push", "some/dir", "--to", "file:///x", "--stack", "prod"],  # both forms at once
    ],
)
def test_cli_push_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(artifacts_cli, args)
    assert result.exit_code == 2
    assert "--stack NAME" in result.output


def _vllm_stack(stacks: Path, tmp_path: Path) -> Path:
    """The prod example, pointed at local checkpoints and a file:// store."""
    baseline = _write_model(tmp_path / "baseline", seed=1)
    quantized = _write_model(tmp_path / "awq", seed=2)
    path = stacks / "Pulumi.t.yaml"
    shutil.copy(stacks / "Pulumi.prod.yaml", path)
    update_stack_file(
        path,
        {
            "qinfra:model.id": str(baseline),
            "qinfra:artifacts.store": f"file://{tmp_path}/store",
            "qinfra:variants.quantized.source": str(quantized),
        },
    )
    return path


def test_cli_push_stack_pins_uris_keeping_comments(stacks: Path, tmp_path: Path) -> None:
    path = _vllm_stack(stacks, tmp_path)
    before = path.read_text()
    runner = CliRunner()
    result = runner.invoke(artifacts_cli, ["push", "--stack", "t"])
    assert result.exit_code == 0, result.output
    spec = load_stack("t")
    for name in ("baseline", "quantized"):
        uri = getattr(spec.variants, name).artifact
        assert uri is not None and uri.startswith(f"file://{tmp_path}/store/sha256-")
        assert f"+      artifact: {uri}" in result.stdout  # the diff is printed
        assert verify(uri).ok
    after = path.read_text()
    assert after.splitlines()[0] == before.splitlines()[0]  # the header comment is kept
    assert sorted(set(after.splitlines()) - set(before.splitlines())) == sorted(
        f"      artifact: {getattr(spec.variants, n).artifact}" for n in ("baseline", "quantized")
    )
    again = runner.invoke(artifacts_cli, ["push", "--stack", "t", "--json"])
    assert again.exit_code == 0, again.output
    out = json.loads(again.stdout)
    assert out["diff"] == "" and out["variants"]["baseline"]["uploaded_bytes"] == 0
    assert path.read_text() == after

    listed = runner.invoke(artifacts_cli, ["ls", "--stack", "t", "--json"])
    assert listed.exit_code == 0, listed.output
    states = {tuple(item["pinned_by"]): item["state"] for item in json.loads(listed.stdout)}
    assert states == {("baseline",): "complete", ("quantized",): "complete"}
    table = runner.invoke(artifacts_cli, ["ls", "--stack", "t"])
    assert table.exit_code == 0 and "complete" in table.stdout


def test_ls_marks_incomplete_and_missing(stacks: Path, tmp_path: Path) -> None:
    path = _vllm_stack(stacks, tmp_path)
    missing = f"file://{tmp_path}/store/sha256-{'0' * 64}/"
    update_stack_file(path, {"qinfra:variants.baseline.artifact": missing})
    half = tmp_path / "store" / f"sha256-{'1' * 64}"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    listing = {item.uri: item for item in list_artifacts(load_stack("t"))}
    assert listing[missing].state is ArtifactState.MISSING
    assert listing[missing].pinned_by == ("baseline",)
    assert listing[f"file://{half}/"].state is ArtifactState.INCOMPLETE


# --- quantize from the baseline (real llama-quantize) --------------------------------------------


def _llama_quantize() -> None:
    try:
        find_binary("llama-quantize")
    except ArtifactError as exc:
        pytest.fail(f"the llama.cpp part, llama-quantize, is missing: {exc}", pytrace=False)


def test_gguf_variant_without_source_is_quantized_from_baseline(
    stacks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _llama_quantize()
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    (stacks / "Pulumi.local.yaml").write_text(local_stack(8080, f"file://{tmp_path}/store"))
    spec = load_stack("local")
    hasher = Hasher()
    first = push_stack(spec, hasher=hasher)
    recipe = first["quantized"].manifest.recipe
    assert recipe is not None and (recipe.tool, recipe.type) == ("llama-quantize", "Q4_K_M")
    assert [e.path for e in first["quantized"].manifest.files] == ["qinfra-demo-Q4_K_M.gguf"]
    sizes = [r.manifest.size_bytes for r in first.values()]
    assert hasher.hashed_bytes == sum(sizes)  # the baseline GGUF was hashed once, not twice
    again = push_stack(spec)  # a fresh hasher: nothing re-quantized, nothing re-sent
    assert {n: (r.uri, r.uploaded_bytes) for n, r in again.items()} == {
        n: (r.uri, 0) for n, r in first.items()
    }
