"""Parts around the engine: error classification (operations and state reads), backend choice,
rollout stages and the one traffic rule, history rows and numbers, the preview report against the
recorded deployed plan (secrets masked, the PR-comment size limit), and what the engine knows from
files without starting the CLI (its version, which stacks a file backend holds)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from qinfra.core import modelinfo
from qinfra.core.errors import DeployError, SpecError
from qinfra.core.hardware import catalog
from qinfra.core.spec import Stage, Variant, load_stack, traffic_percent
from qinfra.deploy.engine import (
    BACKEND_ENV,
    Change,
    Deployer,
    HistoryEntry,
    Project,
    UpdateKind,
    UpdateResult,
    classify,
    history_entries,
)
from qinfra.deploy.history import entries, paged
from qinfra.deploy.preview import (
    FIGURES,
    MARKDOWN_LIMIT,
    SECRET_SIG,
    SECRET_SIG_KEY,
    DeployedState,
    build_report,
    deployed_plan,
    plan_record,
    read_deployed,
    to_markdown,
)
from qinfra.deploy.project import VERSION_CACHE, cli_version, holds_stack
from qinfra.deploy.rollout import rollback, rollout
from qinfra.planning.sizing import plan_stack, sized_for_percent


def test_classify_maps_a_lock_to_an_actionable_error(tmp_path):
    text = ("error: the stack is currently locked by 1 lock(s). Either wait for the other "
            "process(es) to end or delete the lock file with `pulumi cancel`.\n  file://x: "
            "created by alice@host (pid 42) at 2026-11-27T05:00:00Z")
    err = classify(text, tmp_path / "log")
    assert "pid 42" in err.format_message() and "pulumi cancel" in err.format_message()
    assert str(tmp_path / "log") in err.format_message()


# The diagnostics of a real `up` whose ArtifactCheck provider raised (trimmed, paths shortened).
PROVIDER_FAILURE = """\
 +  pulumi-python:dynamic/qinfra:ArtifactCheck local-baseline-artifact **creating failed** error: \
Traceback (most recent call last):
Diagnostics:
  pulumi:pulumi:Stack (qinfra-local):
    error: update failed

  pulumi-python:dynamic/qinfra:ArtifactCheck (local-baseline-artifact):
    error: Traceback (most recent call last):
      File "/venv/lib/python3.11/site-packages/pulumi/dynamic/__main__.py", line 170, in Create
        result = provider.create(props)
                 ^^^^^^^^^^^^^^^^^^^^^^
      File "/work/qinfra/deploy/targets/local.py", line 320, in _verified
        raise RuntimeError(f"artifact {props['uri']} failed verification: "
    RuntimeError: artifact file:///s/sha256-d049/ failed verification: a.gguf: sha256 d8de, manifest says 1d6b

  pulumi-python:dynamic/qinfra:LlamaServer (local-quantized):
    error: Traceback (most recent call last):
      File "/work/qinfra/deploy/targets/local.py", line 137, in _start
    RuntimeError: llama-server for quantized did not become healthy and warm (exited); \
last lines of /r/server.log:
    bind: address already in use

Resources:
    2 errored
"""


def test_a_provider_failure_is_a_line_per_resource_without_its_traceback(tmp_path):
    message = classify(PROVIDER_FAILURE, tmp_path / "log").format_message()
    assert message.splitlines() == [
        "local-baseline-artifact failed: artifact file:///s/sha256-d049/ failed verification: "
        "a.gguf: sha256 d8de, manifest says 1d6b",
        "local-quantized failed: llama-server for quantized did not become healthy and warm "
        "(exited); last lines of /r/server.log:",
        f"Full log: {tmp_path / 'log'}",
    ]


def test_an_unknown_failure_shows_no_traceback_lines():
    text = 'error: Traceback (most recent call last):\n  File "/x/local.py", line 137\nboom'
    message = classify(text, None).format_message()
    assert "File " not in message and "Traceback" not in message and "boom" in message


@pytest.mark.parametrize("error", [
    "error: could not deserialize deployment: unexpected end of JSON input",
    "error: invalid character '}' looking for beginning of object key string",
])
def test_a_damaged_state_file_points_at_the_backup(tmp_path, error):
    state = tmp_path / "local.json"
    state.with_name("local.json.bak").write_text("{}")
    message = classify(error, None, state).format_message()
    assert message.startswith("the stack's state file is damaged (")
    assert f"cp {tmp_path / 'local.json.bak'} {state}" in message
    state.with_name("local.json.bak").unlink()
    assert "has no backup beside it" in classify(error, None, state).format_message()


def test_history_pages_count_from_the_newest():
    rows = [{"version": v} for v in range(45, 0, -1)]
    first = paged(rows, 20)
    assert [r["version"] for r in first.rows] == list(range(45, 25, -1))
    assert first.describe() == "entries 1-20 of 45 (newest first); --page 2 for older ones"
    last = paged(rows, 20, 3)
    assert [r["version"] for r in last.rows] == [5, 4, 3, 2, 1]
    assert last.describe() == "entries 41-45 of 45 (newest first)"
    assert paged(rows, 0, 1).rows == rows  # 0: every entry
    assert paged(rows, 20, 4).rows == [] and "no entries on page 4" in paged(rows, 20, 4).describe()


def test_classify_unknown_failure_keeps_the_last_lines():
    err = classify("\n".join(f"line {i}" for i in range(40)), None)
    assert "line 39" in err.format_message() and "line 10" not in err.format_message()


@pytest.mark.parametrize(
    ("env", "stack_setting", "expected"),
    [
        (None, None, "file:///p/.qinfra/state"),  # the project's own state folder
        (None, "s3://team-state/qinfra", "s3://team-state/qinfra"),  # qinfra:backend
        ("s3://from-env", "s3://team-state/qinfra", "s3://from-env"),  # the environment wins
    ],
)
def test_backend_choice(monkeypatch, env, stack_setting, expected):
    if env is None:
        monkeypatch.delenv(BACKEND_ENV, raising=False)
    else:
        monkeypatch.setenv(BACKEND_ENV, env)
    deployer = Deployer("prod", project=Project(Path("/p")), backend=stack_setting)
    assert deployer.env()[BACKEND_ENV] == expected


def test_backend_setting_is_validated(stacks):
    path = stacks / "Pulumi.prod.yaml"
    path.write_text(path.read_text() + "  qinfra:backend: gs://nope\n")
    with pytest.raises(SpecError, match=r"qinfra:backend: got 'gs://nope'"):
        load_stack("prod")


@pytest.mark.parametrize(
    ("current", "percent", "stage", "expected"),
    [
        (Stage.ROLLBACK, 10, None, (Stage.AB_TEST, 10)),  # back out of a rollback: A/B first
        (Stage.AB_TEST, 30, None, (Stage.AB_TEST, 30)),
        (Stage.GRADUAL, 60, None, (Stage.GRADUAL, 60)),
        (Stage.AB_TEST, 60, Stage.GRADUAL, (Stage.GRADUAL, 60)),
        (Stage.GRADUAL, 100, None, (Stage.FULL, 100)),
        (Stage.FULL, 0, None, (Stage.BASELINE_ONLY, 0)),
    ],
)
def test_rollout_stages(stacks, current, percent, stage, expected):
    spec = load_stack("prod")
    spec = spec.model_copy(update={"rollout": spec.rollout.model_copy(
        update={"stage": current, "quantized_percent": 0 if current is Stage.ROLLBACK else 50})})
    edit = rollout(spec, percent, stage)
    assert (edit.stage, edit.quantized_percent) == expected


def test_rollout_refuses_a_stage_that_contradicts_the_percent(stacks):
    with pytest.raises(SpecError, match="does not go with 100%"):
        rollout(load_stack("prod"), 100, Stage.AB_TEST)


def test_rollback_is_two_keys():
    assert rollback().updates() == {"qinfra:rollout.stage": "rollback",
                                    "qinfra:rollout.quantized_percent": 0}


def test_history_rows_read_stage_weights_and_artifacts():
    config = {
        "qinfra:rollout": json.dumps({"stage": "gradual", "quantized_percent": 25}),
        "qinfra:variants": json.dumps({"baseline": {"format": "bf16", "artifact": "s3://b/sha256-1/"},
                                       "quantized": {"format": "awq", "artifact": "s3://b/sha256-2/"}}),
    }
    rows = entries("prod", [HistoryEntry(3, UpdateKind.UPDATE, UpdateResult.SUCCEEDED, "t0", "t1",
                                         config, {"update": 2})])
    assert rows[0]["stage"] == "gradual"
    assert rows[0]["traffic_percent"] == {"baseline": 75, "quantized": 25}
    assert rows[0]["artifacts"] == {"baseline": "s3://b/sha256-1/", "quantized": "s3://b/sha256-2/"}


def _plans(reference_models: Path, stacks: Path):
    spec = load_stack("prod")
    spec = spec.model_copy(update={"model": spec.model.model_copy(
        update={"id": str(reference_models / "llama-3.1-8b")})})
    info = modelinfo.load(spec.model.id)
    after_spec = spec.model_copy(update={"rollout": spec.rollout.model_copy(
        update={"stage": Stage.ROLLBACK, "quantized_percent": 0})})
    # the before side is what `up` recorded in the stack's `plan` output
    deployed = read_deployed({"plan": plan_record(plan_stack(spec, info, catalog()))})
    return spec.name, deployed, plan_stack(after_spec, info, catalog())


def test_report_shows_script_lines_that_changed_and_the_plan_delta(reference_models, stacks):
    name, before, after = _plans(reference_models, stacks)
    change = Change("update", "urn:x::srv", "pulumi-python:dynamic/qinfra:LlamaServer", "srv",
                    ("server_sh",), {"server_sh": "a\n--threads 2\nb\n"},
                    {"server_sh": "a\n--threads 1\nb\n"})
    report = build_report(name, [change], {"update": 1, "same": 4}, before, after)
    assert report.summary == {"update": 1}
    prop = report.resources[0].properties[0]
    assert (prop.key, prop.old, prop.new) == ("server_sh", "--threads 2", "--threads 1")
    quantized = next(v for v in report.variants if v.variant == "quantized")
    assert quantized.before["engines"] > 0 and quantized.after["engines"] == 0
    assert report.usd_per_hour_after < report.usd_per_hour_before
    text = to_markdown(report)
    assert "--threads 1" in text and "→ 0" in text


def test_markdown_stays_under_the_comment_limit(reference_models, stacks):
    name, before, after = _plans(reference_models, stacks)
    big = "x" * 2000
    changes = [Change("update", f"urn:x::r{i}", "t", f"r{i}", ("script",),
                      {"script": f"{big}\n{i}"}, {"script": f"{big}\n{i + 1}"}) for i in range(3000)]
    text = to_markdown(build_report(name, changes, {"update": 3000}, before, after))
    assert len(text) <= MARKDOWN_LIMIT < 65_536
    assert "summarised" in text or "resources changed" in text


@pytest.mark.parametrize(
    ("stage", "percent", "baseline", "quantized"),
    [
        (Stage.BASELINE_ONLY, 0, 100, 0),
        (Stage.AB_TEST, 10, 90, 10),
        (Stage.GRADUAL, 25, 75, 25),
        (Stage.FULL, 100, 0, 100),
        (Stage.ROLLBACK, 0, 100, 0),
        (Stage.ROLLBACK, 30, 100, 0),  # a recorded rollback with a stale percent sends nothing
    ],
)
def test_one_traffic_rule_for_targets_history_and_sizing(stage, percent, baseline, quantized):
    assert traffic_percent(stage, percent) == {Variant.BASELINE: baseline, Variant.QUANTIZED: quantized}
    config = {"qinfra:rollout": json.dumps({"stage": stage.value, "quantized_percent": percent})}
    (row,) = entries("s", [HistoryEntry(1, UpdateKind.UPDATE, UpdateResult.SUCCEEDED, "t", None,
                                        config, {})])
    assert row["traffic_percent"] == {"baseline": baseline, "quantized": quantized}
    # fleets: the baseline sized for all traffic, the quantized one for its live share
    assert sized_for_percent(stage, percent) == {"baseline": 100, "quantized": quantized}


def test_local_ports_side_by_side(stacks):
    serving = load_stack("local").serving
    # behind the router on serving.port
    assert [serving.local_port(v) for v in Variant] == [serving.port + 1, serving.port + 2]


def _summary(kind: str, result: str, version: int | None) -> Any:
    from pulumi.automation import UpdateSummary

    return UpdateSummary(
        kind=kind, start_time=datetime(2026, 1, 2, 3, 4, 5), message="", environment={},
        config={"qinfra:api_key": {"secret": True},  # as `stack history` without --show-secrets
                "qinfra:rollout": {"value": '{"stage": "ab_test", "quantized_percent": 5}',
                                   "secret": False}},
        result=result, version=version, resource_changes={"same": 3})


def test_history_numbers_every_update_when_the_backend_records_none():
    """The file backend writes version 0 for every update: number them, failures included."""
    got = history_entries([_summary("update", "failed", 0), _summary("destroy", "succeeded", 0),
                           _summary("update", "succeeded", None)])
    assert [h.version for h in got] == [3, 2, 1]
    assert (got[0].kind, got[0].result) == (UpdateKind.UPDATE, UpdateResult.FAILED)
    assert got[1].kind is UpdateKind.DESTROY and got[2].result is UpdateResult.SUCCEEDED
    assert got[0].config["qinfra:api_key"] == "[secret]"
    rows = entries("prod", got)
    assert [r["version"] for r in rows] == [3, 2, 1]
    assert json.loads(json.dumps(rows))[0]["result"] == "failed"


def test_history_keeps_the_numbers_a_backend_records():
    got = history_entries([_summary("update", "succeeded", 12), _summary("refresh", "in-progress", 11),
                           _summary("some-new-kind", "some-new-result", 10)])
    assert [h.version for h in got] == [12, 11, 10]
    assert (got[2].kind, got[2].result) == (UpdateKind.OTHER, UpdateResult.OTHER)


def test_a_failed_state_read_goes_through_the_classifier(tmp_path):
    """outputs() and history() read state through the same classifier as up: no raw CommandError."""
    from pulumi.automation import CommandError
    from pulumi.automation._cmd import CommandResult

    deployer = Deployer("prod", project=Project(tmp_path))
    stderr = "error: getting stack outputs: incorrect passphrase"

    def fail() -> None:
        raise CommandError(CommandResult(stdout="", stderr=stderr, code=255))

    with pytest.raises(DeployError) as caught:
        deployer._read("outputs", fail)
    message = caught.value.format_message()
    assert message.startswith("secrets passphrase problem: incorrect passphrase")
    assert "CommandError" not in message and "PULUMI_CONFIG_PASSPHRASE" in message
    (log,) = (tmp_path / ".qinfra" / "logs").glob("prod-outputs-*.log")
    assert stderr in log.read_text() and str(log) in message


def test_preview_compares_with_the_recorded_plan(reference_models, stacks):
    name, deployed, after = _plans(reference_models, stacks)
    assert deployed.state is DeployedState.RECORDED
    report = build_report(name, [], {}, deployed, after)
    plan = report.to_json()["plan"]
    assert plan["deployed"] == {"state": "recorded", "problem": None}
    baseline = plan["variants"]["baseline"]
    # the baseline fleet is sized for all traffic whatever share of it it takes
    assert baseline["before"]["sized_for_percent"] == 100 == baseline["after"]["sized_for_percent"]
    text = to_markdown(report)
    assert "sized_for_percent" in text and "share_percent" not in text
    assert "sized_for_percent" in FIGURES and "share_percent" not in FIGURES


@pytest.mark.parametrize(
    ("outputs", "reason"),
    [
        ({"variants": {}, "stage": "ab_test"}, "no `plan`"),  # deployed before plans were recorded
        ({"variants": {}, "plan": "[secret]"}, "is a secret"),
        ({"plan": {"schema": 99, "usd_per_hour": 1.0, "variants": {}}}, "schema 1"),
        ({"plan": ["not", "a", "record"]}, "schema 1"),
    ],
)
def test_an_unreadable_deployed_plan_says_so(reference_models, stacks, outputs, reason):
    deployed = read_deployed(outputs)
    assert deployed.state is DeployedState.UNREADABLE and reason in deployed.problem
    name, _, after = _plans(reference_models, stacks)
    report = build_report(name, [], {}, deployed, after)
    assert report.usd_per_hour_before is None and all(v.before is None for v in report.variants)
    text = to_markdown(report)
    assert f"deployed plan: unreadable ({deployed.problem})" in text
    assert "nothing deployed" not in text
    assert report.to_json()["plan"]["deployed"]["state"] == "unreadable"


def test_a_failed_outputs_read_is_unreadable_not_nothing_deployed():
    def fail() -> dict[str, Any]:
        raise DeployError("secrets passphrase problem: incorrect passphrase.\nFull log: /x.log")

    got = deployed_plan(fail)
    assert got.state is DeployedState.UNREADABLE
    assert got.describe() == ("deployed plan: unreadable (secrets passphrase problem: incorrect "
                              "passphrase. Full log: /x.log)")
    assert deployed_plan(dict).describe() == "nothing deployed"  # a stack with no outputs


def test_secrets_show_as_secret_in_every_view(reference_models, stacks):
    name, deployed, after = _plans(reference_models, stacks)

    def secret(text: str) -> dict[str, str]:  # a secret input as the engine reports it
        return {SECRET_SIG_KEY: SECRET_SIG, "plaintext": json.dumps(text)}

    change = Change("update", "urn:x::srv", "pulumi-python:dynamic/qinfra:LlamaServer", "srv",
                    ("api_key", "headers"), {"api_key": secret("sk-old-1"), "headers": {"a": 1}},
                    {"api_key": secret("sk-new-2"), "headers": {"a": 2, "auth": secret("sk-new-3")}})
    report = build_report(name, [change], {"update": 1}, deployed, after)
    props = {p.key: (p.old, p.new) for p in report.resources[0].properties}
    assert props["api_key"] == ("[secret]", "[secret]")
    assert props["headers"] == ('{"a": 1}', '{"a": 2, "auth": "[secret]"}')
    for view in (to_markdown(report), json.dumps(report.to_json())):
        assert "sk-" not in view and "[secret]" in view


# -- what the engine knows from files, without starting the CLI (issue 11, preview speed) ------

def _pulumi_binary() -> Path:
    own = Path(__file__).resolve().parents[1] / ".tools" / "pulumi" / "bin" / "pulumi"
    found = own if own.is_file() else shutil.which("pulumi")
    assert found, "the Pulumi CLI is missing: scripts/setup.sh installs it into .tools/pulumi/bin"
    return Path(found)


def test_the_cli_version_is_asked_once_per_build_of_the_binary(tmp_path):
    binary = _pulumi_binary()
    cache = tmp_path / "cache" / VERSION_CACHE
    env = {**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"}
    real = subprocess.run([binary, "version"], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()
    assert cli_version(binary, cache) == real
    key = str(binary.resolve())
    entry = json.loads(cache.read_text())[key]
    # While the binary's identity holds the answer is trusted: a planted one proves no run.
    cache.write_text(json.dumps({key: {**entry, "version": "v0.0.1-planted"}}))
    assert cli_version(binary, cache) == "v0.0.1-planted"
    # Another build (any of device, inode, size, mtime_ns, ctime_ns differs) is asked again.
    changed = [*entry["identity"][:-1], entry["identity"][-1] - 1]
    cache.write_text(json.dumps({key: {"identity": changed, "version": "v0.0.1-planted"}}))
    assert cli_version(binary, cache) == real
    cache.write_text("{damaged")  # a damaged cache is ignored, then rewritten whole
    assert cli_version(binary, cache) == real
    assert json.loads(cache.read_text())[key]["version"] == real


@pytest.mark.parametrize(
    ("meta", "checkpoint", "expected"),
    [
        ("version: 1\n", "qinfra/prod.json", True),  # the project-scoped layout
        ("version: 1\n", "qinfra/prod.json.gz", True),  # PULUMI_DIY_BACKEND_GZIP
        ("version: 1\n", "other/prod.json", False),  # another project's stack of that name
        ("version: 1\n", "qinfra/prod.json.bak", False),  # what `stack rm` leaves behind
        (None, "prod.json", True),  # the legacy layout: no meta.yaml
        ("version: 0\n", "prod.json", True),  # the legacy layout, said so
        ("version: 2\n", "qinfra/prod.json", None),  # a layout this does not know: ask the CLI
    ],
)
def test_the_file_backend_shows_which_stacks_it_holds(tmp_path, meta, checkpoint, expected):
    folder = tmp_path / "state"
    path = folder / ".pulumi" / "stacks" / checkpoint
    path.parent.mkdir(parents=True)
    path.write_text("{}")
    if meta is not None:
        (folder / ".pulumi" / "meta.yaml").write_text(meta)
    assert holds_stack(folder, "qinfra", "prod") is expected


def test_only_the_cli_knows_other_backends():
    assert holds_stack(None, "qinfra", "prod") is None  # s3://, the Pulumi Cloud
    assert holds_stack(Path("relative/state"), "qinfra", "prod") is None
    assert holds_stack(Path("/nonexistent/state"), "qinfra", "prod") is False  # never written


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("name: qinfra\nruntime: python\n", "qinfra"),
        ("runtime: python\nname: 'my-app'  # quoted, with a comment\n", "my-app"),
        ("runtime:\n  name: python\n", None),  # a nested `name:` is not the project's
        (None, None),  # no Pulumi.yaml
    ],
)
def test_the_project_name_is_read_from_pulumi_yaml(tmp_path, text, name):
    if text is not None:
        (tmp_path / "Pulumi.yaml").write_text(text)
    assert Project(tmp_path).name == name


def test_a_stack_the_backend_holds_is_used_without_stack_select(tmp_path, monkeypatch):
    """The real CLI on a file backend: `stack init` once; a later Deployer knows the stack from
    its checkpoint and reads it without `stack select` or `pulumi version`; a look at a stack
    never deployed removes what it had to create."""
    from pulumi import automation as auto

    (tmp_path / "Pulumi.yaml").write_text("name: qinfra\nruntime: python\n")
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / ".pulumi-home"))
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    calls: list[list[str]] = []
    run = auto.PulumiCommand.run

    def recorded(self: Any, args: list[str], *rest: Any, **kw: Any) -> Any:
        calls.append([a for a in args if not a.startswith("--non-interactive")])
        return run(self, args, *rest, **kw)

    monkeypatch.setattr(auto.PulumiCommand, "run", recorded)
    Deployer("unit", project=Project(tmp_path)).stack()
    assert [c[:2] for c in calls] == [["stack", "init"]]  # no select that fails first
    calls.clear()
    later = Deployer("unit", project=Project(tmp_path))
    assert later.exists() and calls == []
    assert later.outputs() == {}
    # the SDK reads outputs twice (masked, then with secrets), each naming the stack
    assert {(*c[:2], *c[-2:]) for c in calls} == {("stack", "output", "--stack", "unit")}
    assert (tmp_path / ".qinfra" / "cache" / VERSION_CACHE).is_file()
    look = Deployer("look", project=Project(tmp_path))
    with look.transient():
        assert holds_stack(tmp_path / ".qinfra" / "state", "qinfra", "look")
    assert holds_stack(tmp_path / ".qinfra" / "state", "qinfra", "look") is False
    assert not Deployer("look", project=Project(tmp_path)).exists()


# The diagnostics of a real `up` against the local Kubernetes control plane whose baseline
# Deployment never became available (tests/kube/test_kube_target.py; trimmed): the provider's
# await error has no traceback, and the program's RPC then fails with a traceback of its own.
KUBE_AWAIT_FAILURE = """\
Diagnostics:
  kubernetes:apps/v1:Deployment (qinfra-k8s-local-baseline):
    error: 3 errors occurred:
    \t* the Kubernetes API server reported that "qinfra-local/qinfra-k8s-local-baseline" \
failed to fully initialize or become live: 'qinfra-k8s-local-baseline' timed out waiting to be Ready
    \t* [MinimumReplicasUnavailable] Deployment does not have minimum availability.
    \t* Minimum number of live Pods was not attained

  pulumi:pulumi:Stack (qinfra-k8s-local):
    warning: using pulumi-resource-kubernetes from $PATH at /t/pulumi-resource-kubernetes
    error: update failed

    Traceback (most recent call last):
      File "/venv/lib/python3.11/site-packages/pulumi/runtime/resource.py", line 1340, in do_rpc_call
    grpc._channel._InactiveRpcError: <_InactiveRpcError of RPC that terminated with:
    pulumi.errors.RunError: Resource monitor has terminated, shutting down

Resources:
    2 errored
"""


def test_a_native_provider_failure_names_its_resource_not_the_programs_rpc_error():
    # Fault: a Kubernetes await timeout; the message used to be the program's consequent
    # "qinfra-k8s-local failed: Resource monitor has terminated, shutting down".
    message = classify(KUBE_AWAIT_FAILURE, None).format_message()
    assert message == (
        "qinfra-k8s-local-baseline failed: the Kubernetes API server reported that "
        "\"qinfra-local/qinfra-k8s-local-baseline\" failed to fully initialize or become live: "
        "'qinfra-k8s-local-baseline' timed out waiting to be Ready; [MinimumReplicasUnavailable] "
        "Deployment does not have minimum availability.; Minimum number of live Pods was not "
        "attained")
    # with nothing else to name, the program's RPC error still does (as before)
    alone = "  pulumi:pulumi:Stack" + KUBE_AWAIT_FAILURE.split("  pulumi:pulumi:Stack")[1]
    assert classify(alone, None).format_message().startswith("qinfra-k8s-local failed: ")
