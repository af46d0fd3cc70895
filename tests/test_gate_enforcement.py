"""The quality gate enforced, with the real Pulumi engine, policy pack and llama-servers on the
demo model: `up` and `rollout` refuse quantized traffic on a missing, stale or failed report with
the fix, before the engine runs; `qinfra preview` runs the policy pack through the real Pulumi
CLI; a rollback is never held back; `--skip-gate` is recorded in the stack file and history.

One scenario in order (module scope): each step builds on the state the previous one left.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qinfra.core.errors import DeployError
from qinfra.core.spec import Variant, load_stack
from qinfra.deploy.engine import Deployer, HistoryEntry, UpdateKind, UpdateResult
from qinfra.deploy.history import entries
from qinfra.deploy.stackfile import update_stack_file
from qinfra.quality.gate_report import GateReport, Method, Subject, Verdict, write_report
from tests.local_stack import entered, listening, qinfra, write_project

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[1]
GATE_PIN = "qinfra:variants.quantized.gate"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A throwaway project with qinfra's policy pack (policies/ and the .venv it names beside
    it) and the local stack on the demo model, its gate not skipped."""
    root = tmp_path_factory.mktemp("gate-project")
    port = write_project(root, skip_gate=False, policies=True)
    with entered(root):
        yield {"root": root, "port": port, "path": root / "stacks" / "Pulumi.local.yaml",
               "store": f"file://{root}/store"}


def _pin_report(project: dict[str, Any], verdict: Verdict, quantized_id: str | None = None) -> str:
    """Write a gate report for the stack's pinned artifacts (or another quantized id) into the
    stack's store, as `qinfra gate` lays it out, and pin it in the stack file."""
    spec = load_stack("local")

    def side(v: Variant, artifact_id: str | None = None) -> Subject:
        pinned = str(spec.variants.of(v).artifact).rstrip("/").rpartition("/")[2]
        return Subject("demo.gguf", artifact_id or pinned, None, spec.variants.of(v).format.value)

    report = GateReport(Method.KLD, verdict, side(Variant.BASELINE),
                        side(Variant.QUANTIZED, quantized_id), "c" * 64, {},
                        {"mean_kld": 0.4 if verdict is Verdict.FAIL else 0.01},
                        reasons=("mean_kld 0.4 > 0.15 (acceptance)",) if verdict is Verdict.FAIL
                        else ())
    uri = write_report(report, project["store"])
    update_stack_file(project["path"], {GATE_PIN: uri})
    return uri


def _refused(result: Any, why: str) -> None:
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: stack local gives the quantized variant"), result.output
    assert why in line and "--skip-gate" in line, line


def test_up_refuses_a_missing_report_before_the_engine_with_the_fix(project):
    result = qinfra("up", "--stack", "local", "--yes")
    _refused(result, "pins no gate report (qinfra:variants.quantized.gate). To fix: run "
                     "`qinfra gate --stack local`")
    assert not Deployer("local").exists()  # the engine never ran
    assert not listening(project["port"])


def test_skip_gate_without_consent_leaves_the_stack_file_as_it_was(project):
    before = project["path"].read_bytes()
    result = qinfra("up", "--stack", "local", "--skip-gate")  # no terminal, no --yes
    assert result.exit_code == 2 and "pass --yes" in result.output, result.output
    assert project["path"].read_bytes() == before


@pytest.mark.parametrize(
    ("verdict", "other", "why"),
    [
        # a passing report, but made for another quantized artifact
        (Verdict.PASS, "sha256-" + "9" * 64, "was made for other artifacts: quantized sha256-999"),
        # a report for exactly these artifacts that failed
        (Verdict.FAIL, None, "failed (mean_kld 0.4 > 0.15 (acceptance))"),
    ],
)
def test_up_and_rollout_refuse_a_stale_or_failed_report(project, verdict, other, why):
    _pin_report(project, verdict, other)
    _refused(qinfra("up", "--stack", "local", "--yes"), why)
    before = project["path"].read_bytes()
    _refused(qinfra("rollout", "--stack", "local", "--percent", "25", "--yes"), why)
    assert project["path"].read_bytes() == before  # byte for byte
    assert not Deployer("local").exists()


def test_the_engine_refuses_an_update_that_bypasses_the_cli(project):
    # the policy pack denies it (the project has one, as `pulumi up --policy-pack` would run it)
    with pytest.raises(DeployError, match=r"^policy qinfra-quality-gate denied it: .*failed "
                                          r"\(mean_kld 0\.4"):
        Deployer("local").up()
    # without the pack the program itself refuses, as under plain `pulumi up`
    pack = project["root"] / "policies"
    pack.unlink()
    try:
        with pytest.raises(DeployError, match=r"^DeployError: stack local .*failed \(mean_kld"):
            Deployer("local").up()
    finally:
        pack.symlink_to(ROOT / "policies")
    assert not listening(project["port"] + 2)


def test_qinfra_preview_runs_the_policy_pack_through_the_real_cli(project):
    result = qinfra("preview", "--stack", "local")
    assert result.exit_code == 1, result.output
    assert "Error: policy qinfra-quality-gate denied it: stack local gives" in result.output
    # a compliant gate but a secret-named config key in plain text: the pack's other rule
    text = project["path"].read_text().replace("config:\n", "config:\n  aws:secretKey: plain\n")
    (project["root"] / "stacks" / "Pulumi.plain.yaml").write_text(
        text.replace("stage: ab_test", "stage: baseline_only").replace(
            "quantized_percent: 50", "quantized_percent: 0"))
    result = qinfra("preview", "--stack", "plain")
    assert result.exit_code == 1, result.output
    assert ("policy no-plaintext-secrets denied it: config key aws:secretKey holds a secret in "
            "plain text") in result.output, result.output
    (project["root"] / "stacks" / "Pulumi.plain.yaml").unlink()


def test_a_rollback_is_never_held_back_by_the_gate(project):
    update_stack_file(project["path"], {GATE_PIN: None})  # no report at all
    result = qinfra("rollback", "--stack", "local", "--yes")
    assert result.exit_code == 0, result.output
    assert listening(project["port"]) and listening(project["port"] + 1)  # router, baseline
    assert not listening(project["port"] + 2)
    _refused(qinfra("rollout", "--stack", "local", "--percent", "50", "--yes"),
             "pins no gate report")


def test_skip_gate_is_recorded_in_the_stack_file_and_the_history(project):
    quantized = load_stack("local").variants.quantized.artifact
    result = qinfra("rollout", "--stack", "local", "--percent", "50", "--yes", "--skip-gate")
    assert result.exit_code == 0, result.output
    assert "+  qinfra:gate:" in result.output and f"+    skip: {quantized}" in result.output
    assert load_stack("local").gate.skip == quantized
    assert listening(project["port"] + 2)  # the quantized engine serves
    rows = json.loads(qinfra("history", "--stack", "local", "--json").output)
    assert [r["gate_skipped"] for r in rows[:2]] == [quantized, None]  # newest first
    # the recorded skip stands for this artifact: a later up needs no flag
    assert qinfra("up", "--stack", "local", "--yes").exit_code == 0


def test_history_rows_say_whether_the_gate_was_skipped():
    def row(skip: str | None) -> dict[str, Any]:
        config = {"qinfra:variants": json.dumps({"quantized": {"artifact": "s3://b/sha256-2/"}}),
                  "qinfra:gate": json.dumps({"skip": skip} if skip else {})}
        entry = HistoryEntry(1, UpdateKind.UPDATE, UpdateResult.SUCCEEDED, "t", None, config, {})
        return entries("s", [entry])[0]

    assert row("s3://b/sha256-2/")["gate_skipped"] == "s3://b/sha256-2/"
    assert row(None)["gate_skipped"] is None
    # a skip recorded for an older artifact did not let this one through
    assert row("s3://b/sha256-1/")["gate_skipped"] is None


def test_the_aws_targets_program_complies_with_the_pack_and_its_evidence_holds_the_gate():
    sys.path.insert(0, str(ROOT / "policies"))
    import qinfra_rules as rules

    from tests.targets.mocks import API_KEY, run_program, stack_config

    config = {**stack_config("prod", "ab_test", 10), "qinfra:api_key": API_KEY}
    run = run_program("prod", config, ("qinfra:api_key",))
    (evidence,) = run.evidence
    assert evidence.inputs["gate"]["skipped"] is True and evidence.inputs["gate"]["problem"]
    assert evidence.inputs["artifact_store"] == config["qinfra:artifacts"]["store"]
    seen = [rules.Seen(r.typ, r.name, r.inputs) for r in [*run.resources, *run.evidence]]
    assert rules.violations(seen) == []
    # the same key in plain text is named, and denied
    run = run_program("prod", config)
    assert run.evidence[0].inputs["plaintext_secret_keys"] == ["qinfra:api_key"]
