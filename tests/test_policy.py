"""qinfra's policy pack (policies/): each rule on the properties the aws target and the program
register, and the pack itself denying a non-compliant preview through the real Pulumi CLI (whose
language host runs Python policy packs: scripts/pulumi-language-python RunPlugin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "policies"
PULUMI = ROOT / ".tools" / "pulumi" / "bin" / "pulumi"
sys.path.insert(0, str(PACK))

import qinfra_rules as rules  # noqa: E402

S3_STORE = "s3://acme-models/llama"
SCOPED = json.dumps({"Statement": [
    {"Sid": "ReadArtifacts", "Effect": "Allow", "Action": "s3:GetObject",
     "Resource": "arn:aws:s3:::acme-models/llama/*"},
    {"Sid": "ListArtifacts", "Effect": "Allow", "Action": "s3:ListBucket",
     "Resource": "arn:aws:s3:::acme-models"},
]})
GATE_FAILS = {"quantized_percent": 10, "problem": "stack s gives the quantized variant 10% of "
              "traffic, but pins no gate report", "skipped": False}


def _aws_stack(**change: object) -> list[rules.Seen]:
    """The resources the aws target registers for its artifact bucket and engine role."""
    seen = {
        "bucket": rules.Seen(rules.BUCKETS[0], "qinfra-prod-artifacts", {}),
        "block": rules.Seen(rules.PUBLIC_ACCESS_BLOCK, "qinfra-prod-artifacts",
                            dict.fromkeys(rules.BLOCK_FLAGS, True)),
        "sse": rules.Seen(rules.ENCRYPTION[0], "qinfra-prod-artifacts", {"rules": [{}]}),
        "policy": rules.Seen(rules.IAM_POLICIES[0], "qinfra-prod-engine", {"policy": SCOPED}),
        "evidence": rules.Seen(rules.EVIDENCE, "gate", {"artifact_store": S3_STORE, "gate": {
            "quantized_percent": 10, "problem": None, "skipped": False}}),
    }
    for key, value in change.items():
        if value is None:
            del seen[key]
        else:
            assert isinstance(value, rules.Seen)
            seen[key] = value
    return list(seen.values())


def test_the_aws_targets_resources_comply() -> None:
    assert rules.violations(_aws_stack()) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # a public access block with one flag off
        ({"block": rules.Seen(rules.PUBLIC_ACCESS_BLOCK, "qinfra-prod-artifacts",
                              {**dict.fromkeys(rules.BLOCK_FLAGS, True), "block_public_policy": False})},
         "leaves block_public_policy off"),
        # no public access block at all
        ({"block": None}, "has no public access block"),
        # no default encryption
        ({"sse": None}, "has no default encryption"),
        # a public-read ACL
        ({"acl": rules.Seen(rules.BUCKET_ACLS[1], "acl", {"acl": "public-read"})},
         "makes artifacts public"),
        # an engine role that reads every bucket
        ({"policy": rules.Seen(rules.IAM_POLICIES[0], "qinfra-prod-engine", {"policy": json.dumps(
            {"Statement": {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}})})},
         "grants S3 on ['*']"),
        # an engine role that reads another prefix of the bucket
        ({"policy": rules.Seen(rules.IAM_POLICIES[0], "qinfra-prod-engine", {"policy": json.dumps(
            {"Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"],
                            "Resource": "arn:aws:s3:::acme-models/other/*"}]})})},
         "beyond the artifact store s3://acme-models/llama"),
        # s3:* on the right prefix is still too much
        ({"policy": rules.Seen(rules.IAM_POLICIES[1], "p", {"policy": json.dumps(
            {"Statement": [{"Effect": "Allow", "Action": "s3:*",
                            "Resource": "arn:aws:s3:::acme-models/llama/*"}]})})},
         "allows ['s3:*']"),
        # an API key stored as a plain String parameter
        ({"ssm": rules.Seen(rules.SSM_PARAMETER, "k", {"name": "/qinfra/prod/api-key",
                                                       "type": "String"})},
         "not SecureString"),
        # a secret-looking config key in plain text
        ({"evidence": rules.Seen(rules.EVIDENCE, "gate", {"artifact_store": S3_STORE,
                                                          "plaintext_secret_keys": ["aws:secretKey"]})},
         "config key aws:secretKey holds a secret in plain text"),
        # quantized traffic without a gate report
        ({"evidence": rules.Seen(rules.EVIDENCE, "gate", {"artifact_store": S3_STORE,
                                                          "gate": GATE_FAILS})},
         "pins no gate report"),
    ],
)
def test_each_rule_denies_what_it_names(change: dict[str, rules.Seen | None], expected: str) -> None:
    found = rules.violations(_aws_stack(**change))
    assert len(found) == 1 and expected in found[0], found


def test_a_skipped_gate_or_no_quantized_traffic_passes() -> None:
    for gate in ({**GATE_FAILS, "skipped": True}, {**GATE_FAILS, "quantized_percent": 0}):
        evidence = rules.Seen(rules.EVIDENCE, "gate", {"gate": gate})
        assert rules.violations([evidence]) == []


PROGRAM = '''
import json, os
import pulumi

class GateEvidence(pulumi.ComponentResource):
    def __init__(self, props):
        super().__init__("qinfra:quality:GateEvidence", "gate", props)
        self.register_outputs({})

GateEvidence(json.loads(os.environ["EVIDENCE"]))
'''


@pytest.mark.real
@pytest.mark.parametrize(
    ("evidence", "denied"),
    [
        # quantized traffic with no gate report: the gate rule denies the preview
        ({"gate": GATE_FAILS}, "qinfra-quality-gate"),
        # a plain-text secret in config: denied too
        ({"gate": {**GATE_FAILS, "problem": None}, "plaintext_secret_keys": ["aws:secretKey"]},
         "no-plaintext-secrets"),
        # a compliant stack previews
        ({"gate": {**GATE_FAILS, "problem": None}}, None),
    ],
)
def test_the_pack_runs_under_the_real_pulumi_cli(tmp_path: Path, evidence: dict[str, object],
                                                 denied: str | None) -> None:
    if not PULUMI.is_file():
        pytest.fail(f"the Pulumi CLI is missing at {PULUMI}: run scripts/setup.sh", pytrace=False)
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text(
        f"name: policy-check\nruntime:\n  name: python\n  options:\n    virtualenv: {sys.prefix}\n")
    (project / "__main__.py").write_text(PROGRAM)
    (tmp_path / "state").mkdir()
    env = {**os.environ, "PATH": f"{PULUMI.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}", "PULUMI_CONFIG_PASSPHRASE": "test",
           "PULUMI_SKIP_UPDATE_CHECK": "true", "PULUMI_HOME": str(tmp_path / "home"),
           "EVIDENCE": json.dumps(evidence)}

    def pulumi(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(PULUMI), *args, "--non-interactive"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=300)

    assert pulumi("stack", "init", "dev").returncode == 0
    done = pulumi("preview", "--policy-pack", str(PACK))
    out = done.stdout + done.stderr
    if denied is None:
        assert done.returncode == 0, out
        assert "qinfra@v" in out  # the pack ran
        return
    assert done.returncode != 0, out
    assert f"[mandatory]  {denied}" in out, out
