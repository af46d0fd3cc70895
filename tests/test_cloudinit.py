"""aws target: cloud-init user-data passes cloud-init's own schema validator, and the artifact
check it runs before any engine starts really refuses a tampered artifact."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from qinfra.artifacts.manifest import FileEntry, Manifest
from qinfra.serving.render import (
    USER_DATA_MAX_BYTES,
    ArtifactContext,
    environment,
    render_stack,
    render_template,
)
from tests.render_helpers import example, load_yaml, plan_for, vllm_stack, with_api_key

CLOUD_INIT = shutil.which("cloud-init")
INSTALL = "apt-get install -y --no-install-recommends cloud-init"


@pytest.fixture(scope="session")
def cloud_init() -> str:
    """cloud-init's own schema validator, or a failure naming it: CI installs every part."""
    if CLOUD_INIT is None:
        pytest.fail(f"cloud-init not found: run scripts/setup.sh (or `{INSTALL}`)", pytrace=False)
    return CLOUD_INIT


def _user_data() -> dict[str, str]:
    """Every user-data variant worth validating: the example, with an API key, TP 2 x 2 engines."""
    cases: dict[str, str] = {}
    spec, plan = example("prod")
    keyed = with_api_key(spec)
    multi = vllm_stack("aws", "fp16", "gptq", ["t4"])
    for label, s in (("prod", spec), ("prod-api-key", keyed), ("t4-tp2", multi)):
        for rel, text in render_stack(s, plan if s is spec else plan_for(s)).items():
            cases[f"{label}/{rel}"] = text
    return cases


CASES = _user_data()


@pytest.mark.parametrize("name", sorted(CASES))
def test_cloud_init_schema_accepts_user_data(tmp_path, cloud_init, name):
    path = tmp_path / "user-data.yaml"
    path.write_text(CASES[name])
    done = subprocess.run([cloud_init, "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Valid cloud-config" in done.stdout


def test_cloud_init_schema_rejects_a_broken_file(tmp_path, cloud_init):
    """The validator is live: a wrong key inside write_files fails it."""
    text = CASES["prod/baseline/user-data.yaml"].replace("    owner: root:root", "    ownr: root:root", 1)
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    done = subprocess.run([cloud_init, "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert done.returncode != 0


@pytest.fixture(scope="module")
def cloud_config_keys(cloud_init: str) -> set[str]:
    """Top-level keys cloud-init's own schema knows, read with the Python that runs cloud-init."""
    python = Path(cloud_init).read_text().splitlines()[0].removeprefix("#!").split()[0]
    code = ("import json; from cloudinit.config.schema import get_schema; "
            "print(json.dumps(sorted({k for d in get_schema()['$defs'].values() "
            "for k in d.get('properties', {})})))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("name", sorted(CASES))
def test_top_level_keys_are_cloud_init_modules(cloud_config_keys, name):
    """cloud-init ignores unknown top-level keys; a typo (`runcmds`) would silently do nothing."""
    assert {"runcmd", "write_files", "package_update"} <= cloud_config_keys
    assert set(load_yaml(CASES[name])) <= cloud_config_keys


ENGINE_CASES = sorted(n for n in CASES if "/router/" not in n)
ROUTER_CASES = sorted(n for n in CASES if "/router/" in n)


@pytest.mark.parametrize("name", ENGINE_CASES)
def test_user_data_shape(name):
    text = CASES[name]
    assert text.startswith("#cloud-config\n")
    assert len(text.encode()) <= USER_DATA_MAX_BYTES
    doc = load_yaml(text)
    assert doc["package_update"] is False and doc["package_upgrade"] is False
    assert "packages" not in doc  # installs nothing
    files = {e["path"]: e for e in doc["write_files"]}
    unit = files["/etc/systemd/system/qinfra-engine@.service"]["content"]
    assert "Restart=on-failure" in unit and "Requires=docker.service qinfra-artifact.service" in unit
    assert "ExecStartPost=/bin/sh /opt/qinfra/bin/warmup.sh" in unit
    assert "vllm/vllm-openai:v0.33.0" in unit
    fetch = files["/opt/qinfra/bin/fetch-artifact.sh"]["content"]
    assert "aws s3 sync --only-show-errors --delete --region" in fetch and "/sha256-" in fetch
    assert fetch.rstrip().endswith("exec /bin/sh /opt/qinfra/bin/verify-artifact.sh")


@pytest.mark.parametrize("name", ROUTER_CASES)
def test_router_user_data_shape(name):
    """The router machine: pinned wheels fetched, verified, installed offline; the config copied
    from SSM by a timer; the router's own command line is one its parser accepts."""
    import shlex

    from qinfra.serving.router.__main__ import main

    text = CASES[name]
    assert text.startswith("#cloud-config\n") and len(text.encode()) <= USER_DATA_MAX_BYTES
    doc = load_yaml(text)
    assert doc["package_update"] is False and "packages" not in doc
    files = {e["path"]: e["content"] for e in doc["write_files"]}
    fetch = files["/opt/qinfra/bin/fetch-router.sh"]
    assert "aws s3 sync --only-show-errors --delete" in fetch and "/sha256-" in fetch
    install = files["/opt/qinfra/bin/install-router.sh"]
    assert "--no-index" in install and "verify-router.sh" in install  # nothing from an index
    assert "/pip\" install --no-index" in install and "https://" not in install
    sync = files["/opt/qinfra/bin/sync-router-config.sh"]
    assert "--name /qinfra/" in sync and "mv " in sync  # replaced by a rename only
    timer = files["/etc/systemd/system/qinfra-router-config.timer"]
    assert "OnUnitActiveSec=15s" in timer
    unit = files["/etc/systemd/system/qinfra-router.service"]
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[1:3] == ["-m", "qinfra.serving.router"]
    with pytest.raises(SystemExit) as done:  # the router's own parser: --help after valid flags
        main([*argv[3:], "--help"])
    assert done.value.code == 0
    assert doc["runcmd"][-1][-2:] == ["qinfra-router-config.timer", "qinfra-router.service"]


# --- the verification step, run for real against an artifact on disk ---------------------------


def _artifact(root: Path, tokenizer: bytes = b'{"v": 1}') -> tuple[Path, str]:
    """A two-file artifact laid out as a store holds it: files, then manifest.json."""
    import hashlib

    files = {"model.gguf": b"GGUF" + bytes(range(256)) * 64, "sub/tokenizer.json": tokenizer}
    entries = []
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append(FileEntry(rel, len(data), hashlib.sha256(data).hexdigest()))
    manifest = Manifest(tuple(entries))
    (root / "manifest.json").write_bytes(manifest.to_bytes())
    return root, manifest.artifact_id


def _verify(tmp_path: Path, root: Path, artifact_id: str) -> subprocess.CompletedProcess[str]:
    ctx = ArtifactContext(
        stack="t",
        variant="baseline",
        uri=f"s3://b/{artifact_id}/",
        artifact_id=artifact_id,
        manifest_sha256=artifact_id.removeprefix("sha256-"),
        directory=str(root),
        region=None,
        estimate_bytes=0,
    )
    script = tmp_path / "verify.sh"
    script.write_text(render_template(environment(), "artifact/verify.sh.j2", ctx, "baseline"))
    return subprocess.run(["sh", str(script)], capture_output=True, text=True)


def test_verify_accepts_an_intact_artifact(tmp_path):
    root, aid = _artifact(tmp_path / "a")
    done = _verify(tmp_path, root, aid)
    assert done.returncode == 0, done.stderr
    assert f"artifact {aid} verified" in done.stdout


@pytest.mark.parametrize("tamper", ["flip a byte", "extra file", "missing file", "other manifest"])
def test_verify_refuses_a_tampered_artifact(tmp_path, tamper):
    root, aid = _artifact(tmp_path / "a")
    if tamper == "flip a byte":
        data = bytearray((root / "model.gguf").read_bytes())
        data[100] ^= 1
        (root / "model.gguf").write_bytes(bytes(data))
    elif tamper == "extra file":
        (root / "sub" / "extra.safetensors").write_bytes(b"x")
    elif tamper == "missing file":
        (root / "sub" / "tokenizer.json").unlink()
    else:
        _, other = _artifact(tmp_path / "b", tokenizer=b'{"v": 2}')
        aid = other  # the stack pins another artifact than the one on disk
    done = _verify(tmp_path, root, aid)
    assert done.returncode != 0, done.stdout
