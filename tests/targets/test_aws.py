"""The aws target under Pulumi mocks: fleets, weights, IAM scope, and rollback as a diff."""

from __future__ import annotations

import base64
import fnmatch
import json
from functools import cache
from typing import Any

import pytest
from click.testing import CliRunner

from qinfra.core.errors import NoFitError
from qinfra.core.spec import PULUMI_HELD, StackSpec, parse_config
from qinfra.deploy.targets.aws import AMI_NAME, _short, target_group_weights
from qinfra.serving.contexts import generation_s
from tests.render_helpers import PINS, launch_command, load_yaml, plan_for
from tests.targets.mocks import (
    AMI_ID,
    AMI_ROOT_GIB,
    API_KEY,
    SUBNETS,
    Run,
    changed,
    changes,
    run_program,
    stack_config,
    walk,
)

ASG = "aws:autoscaling/group:Group"
LT = "aws:ec2/launchTemplate:LaunchTemplate"
TG = "aws:lb/targetGroup:TargetGroup"
LISTENER = "aws:lb/listener:Listener"
POLICY = "aws:iam/rolePolicy:RolePolicy"
PARAMETER = "aws:ssm/parameter:Parameter"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
BUCKET_PARTS = ("aws:s3/bucket:Bucket", "aws:s3/bucketVersioning:BucketVersioning",
                "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
STORE = "s3://acme-models/llama-3.1-8b"
# Loading every pulumi_aws module under mocks warns about the provider's own deprecated types.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")

STAGES = [
    ("baseline_only", 0),  # quantized fleet exists at zero, takes nothing
    ("ab_test", 10),       # the shipped example
    ("gradual", 25),
    ("full", 100),         # all traffic quantized; the baseline stays sized for a rollback
    ("rollback", 0),       # back to the baseline, quantized kept at zero
]

# Every resource kind the prod stack makes, and how many, at any stage.
INVENTORY = {
    **dict.fromkeys(BUCKET_PARTS, 1),
    PARAMETER: 1,
    "aws:iam/role:Role": 1,
    POLICY: 1,
    "aws:iam/instanceProfile:InstanceProfile": 1,
    "aws:ec2/securityGroup:SecurityGroup": 2,
    INGRESS: 2,
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": 2,
    LT: 2,
    TG: 2,
    ASG: 2,
    "aws:lb/loadBalancer:LoadBalancer": 1,
    LISTENER: 1,
}


def _config(stage: str, percent: int, **overrides: Any) -> dict[str, Any]:
    return {**stack_config("prod", stage, percent), "qinfra:api_key": API_KEY, **overrides}


@cache
def prod(stage: str, percent: int) -> Run:
    return run_program("prod", _config(stage, percent), ("qinfra:api_key",))


def spec_of(stage: str, percent: int) -> StackSpec:
    """The spec the program sees (the secret only as set, not its value)."""
    return parse_config({**stack_config("prod", stage, percent), "qinfra:api_key": PULUMI_HELD}, "prod")


def expected_machines(stage: str, percent: int) -> dict[str, int]:
    plan = plan_for(spec_of(stage, percent))
    return {v.name: v.chosen.machines for v in plan.variants if v.chosen is not None}


def user_data(run: Run, variant: str) -> dict[str, Any]:
    text = base64.b64decode(run.one(LT, variant).inputs["userData"]).decode()
    assert text.startswith("#cloud-config\n")
    return load_yaml(text)


def written(run: Run, variant: str, name: str) -> str:
    files = {f["path"].rsplit("/", 1)[-1]: f["content"] for f in user_data(run, variant)["write_files"]}
    return files[name]


def listener_weights(run: Run) -> dict[str, int]:
    """Weight per variant, summed over its target groups (by the ARN the mocks give them)."""
    forward = run.one(LISTENER).inputs["defaultActions"][0]["forward"]
    assert forward["stickiness"] == {"enabled": True, "duration": 86400}
    out = {"baseline": 0, "quantized": 0}
    for group in forward["targetGroups"]:
        out[next(v for v in out if f"-{v}-" in group["arn"])] += int(group["weight"])
    return out


@pytest.mark.parametrize(("stage", "percent"), STAGES)
def test_resources_per_stage(stage: str, percent: int) -> None:
    run = prod(stage, percent)
    assert {t: len(run.of(t)) for t in INVENTORY} == INVENTORY
    assert {r.typ for r in run.resources} == set(INVENTORY)
    machines = expected_machines(stage, percent)
    for variant, count in machines.items():
        group = run.one(ASG, f"-{variant}").inputs
        assert (group["minSize"], group["maxSize"], group["desiredCapacity"]) == (count,) * 3
        assert group["targetGroupArns"] == [f"arn:aws:lb:us-east-1:123456789012:qinfra-prod-{variant}-0"]
        assert group["vpcZoneIdentifiers"] == SUBNETS and group["healthCheckType"] == "ELB"
        assert run.one(LT, variant).inputs["instanceType"] == "g6.xlarge"
        assert f"{STORE}/{PINS[variant]}/" in written(run, variant, "fetch-artifact.sh")
    assert "--quantization awq_marlin" in written(run, "quantized", "serve.sh")
    # The baseline is always sized for all traffic; the quantized group is empty but kept.
    # 4 sequences of 8192 tokens per bf16 engine on an L4 at vLLM 0.33.0's default utilization
    # 0.92 (3 at the 0.9 the stack schema used to default to: 22 machines)
    assert machines["baseline"] == 16
    assert (machines["quantized"] == 0) == (percent == 0)
    assert listener_weights(run) == {"baseline": 100 - percent, "quantized": percent}
    variants = run.exports["variants"]
    assert {v: variants[v]["weight_percent"] for v in variants} == listener_weights(run)
    assert variants["quantized"]["replicas"] == machines["quantized"]
    assert run.exports["stage"] == stage
    assert run.exports["endpoint"] == "http://qinfra-prod-lb-1234567890.us-east-1.elb.amazonaws.com"


@pytest.mark.parametrize(("variant", "quantization", "dtype"), [
    ("baseline", None, "bfloat16"),     # bf16 weights, no quantization kernel
    ("quantized", "awq_marlin", "float16"),  # AWQ INT4 through vLLM's Marlin kernels
])
def test_user_data_launches_the_pinned_artifact_with_its_flags(variant: str, quantization: str | None,
                                                               dtype: str) -> None:
    run = prod("ab_test", 10)
    uri = f"{STORE}/{PINS[variant]}/"
    fetch = written(run, variant, "fetch-artifact.sh")
    assert f"aws s3 sync --only-show-errors --delete --region us-east-1 {uri} " in fetch
    argv = launch_command(written(run, variant, "serve.sh"), "vllm")
    assert argv[2] == f"/opt/qinfra/models/{PINS[variant]}"
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert flags.get("--quantization") == quantization and flags["--dtype"] == dtype
    assert run.exports["variants"][variant]["artifact_uri"] == uri
    # The API key is fetched at boot from the parameter this stack writes, never embedded.
    assert "--name /qinfra/prod/api-key" in written(run, variant, "fetch-api-key.sh")
    assert API_KEY not in json.dumps(user_data(run, variant))


def test_launch_template_hardening() -> None:
    run = prod("ab_test", 10)
    image = next(args for token, args in run.calls if token == "aws:ec2/getAmi:getAmi")
    assert image["owners"] == ["amazon"] and image["mostRecent"] is True
    assert {"name": "name", "values": [AMI_NAME]} in image["filters"]
    for variant, weights_gib in (("baseline", 16), ("quantized", 6)):
        template = run.one(LT, variant).inputs
        assert template["imageId"] == AMI_ID
        assert template["metadataOptions"]["httpTokens"] == "required"  # IMDSv2 only
        assert template["metadataOptions"]["httpPutResponseHopLimit"] == 1
        assert template["vpcSecurityGroupIds"] == ["qinfra-prod-engine-id"]
        (root,) = template["blockDeviceMappings"]
        assert root["deviceName"] == "/dev/sda1" and root["ebs"]["encrypted"] == "true"
        # the AMI's snapshot + the engine image + the artifact + headroom
        assert root["ebs"]["volumeSize"] >= AMI_ROOT_GIB + weights_gib + 40


def test_target_groups_drain_and_warm_slowly() -> None:
    run = prod("ab_test", 10)
    spec = spec_of("ab_test", 10)
    for group in run.of(TG):
        inputs = group.inputs
        assert inputs["port"] == 8000 and inputs["protocol"] == "HTTP"
        assert inputs["healthCheck"]["path"] == "/health"
        assert inputs["healthCheck"]["port"] == "traffic-port"
        assert 30 <= inputs["slowStart"] <= 900
        # in-flight generations finish: max_model_len tokens at the slowest rate (8192 / 10 tok/s)
        assert inputs["deregistrationDelay"] == generation_s(spec) == 820
    assert run.one("aws:lb/loadBalancer:LoadBalancer").inputs["idleTimeout"] == 820


def test_iam_allows_only_the_artifact_prefix_and_the_api_key() -> None:
    run = prod("ab_test", 10)
    policy = json.loads(run.one(POLICY).inputs["policy"])
    by_action = {s["Action"]: s for s in policy["Statement"]}
    assert set(by_action) == {"s3:GetObject", "s3:ListBucket", "ssm:GetParameter", "kms:Decrypt"}
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    objects = by_action["s3:GetObject"]["Resource"]
    assert objects == "arn:aws:s3:::acme-models/llama-3.1-8b/*"
    for variant in PINS:  # both pinned artifacts are readable, nothing outside the prefix is
        key = run.exports["variants"][variant]["artifact_uri"].removeprefix("s3://") + "config.json"
        assert fnmatch.fnmatch(f"arn:aws:s3:::{key}", objects)
    assert not fnmatch.fnmatch("arn:aws:s3:::acme-models/other-model/config.json", objects)
    listing = by_action["s3:ListBucket"]
    assert listing["Resource"] == "arn:aws:s3:::acme-models"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["llama-3.1-8b", "llama-3.1-8b/*"]}}
    parameter = run.one(PARAMETER).inputs
    assert parameter["name"] == "/qinfra/prod/api-key" and parameter["type"] == "SecureString"
    assert by_action["ssm:GetParameter"]["Resource"].endswith(":qinfra-prod-api-key")
    assert by_action["kms:Decrypt"]["Condition"] == {
        "StringEquals": {"kms:ViaService": "ssm.us-east-1.amazonaws.com"}}
    role = json.loads(run.one("aws:iam/role:Role").inputs["assumeRolePolicy"])
    assert role["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_api_key_stays_a_secret() -> None:
    run = prod("ab_test", 10)
    value = run.one(PARAMETER).inputs["value"]
    assert isinstance(value, dict) and value["value"] == API_KEY and len(value) == 2  # secret-wrapped
    others = [r for r in run.resources if r.typ != PARAMETER]
    assert not any(API_KEY in str(leaf) for r in others for leaf in walk(r.inputs))


def test_only_the_load_balancer_reaches_the_engines() -> None:
    run = prod("ab_test", 10)
    rules = {r.name: r.inputs for r in run.of(INGRESS)}
    assert rules["qinfra-prod-lb-http"]["cidrIpv4"] == "0.0.0.0/0"
    assert rules["qinfra-prod-lb-http"]["fromPort"] == rules["qinfra-prod-lb-http"]["toPort"] == 80
    engine = rules["qinfra-prod-engine-from-lb"]
    assert engine["securityGroupId"] == "qinfra-prod-engine-id"
    assert engine["referencedSecurityGroupId"] == "qinfra-prod-lb-id" and "cidrIpv4" not in engine
    assert (engine["fromPort"], engine["toPort"]) == (8000, 8000)


def test_bucket_is_private_versioned_encrypted_and_kept() -> None:
    run = prod("ab_test", 10)
    assert run.one(BUCKET_PARTS[0]).inputs["bucket"] == "acme-models"
    assert run.one(BUCKET_PARTS[1]).inputs["versioningConfiguration"] == {"status": "Enabled"}
    rule = run.one(BUCKET_PARTS[2]).inputs["rules"][0]
    assert rule["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "AES256"}
    block = run.one(BUCKET_PARTS[3]).inputs
    assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                          "restrictPublicBuckets"))


def test_an_existing_bucket_is_used_as_it_is() -> None:
    config = _config("ab_test", 10, **{"qinfra:artifacts": {"store": STORE, "create_bucket": False}})
    run = run_program("prod", config, ("qinfra:api_key",))
    assert not any(r.typ in BUCKET_PARTS for r in run.resources)
    assert "acme-models/llama-3.1-8b/*" in run.one(POLICY).inputs["policy"]


def test_rollback_is_only_traffic_and_capacity() -> None:
    """ab_test -> rollback: the listener's weights and the quantized group's size, nothing else;
    the launch templates (user-data, flags, artifacts) stay byte for byte."""
    before, after = prod("ab_test", 10), prod("rollback", 0)
    groups = ".defaultActions[0].forward.targetGroups"
    assert changed(before, after) == {
        (LISTENER, "qinfra-prod-http"): [f"{groups}[0].weight", f"{groups}[1].weight"],
        (ASG, "qinfra-prod-quantized"): [".desiredCapacity", ".maxSize", ".minSize", ".waitForElbCapacity"],
    }
    assert listener_weights(after) == {"baseline": 100, "quantized": 0}
    assert after.one(ASG, "quantized").inputs["desiredCapacity"] == 0
    assert before.one(ASG, "baseline").inputs == after.one(ASG, "baseline").inputs  # already 100%
    exported = changes(before.exports, after.exports)
    assert [c for c in exported if not c.startswith(".plan.")] == [
        ".stage", ".variants.baseline.weight_percent", ".variants.quantized.replicas",
        ".variants.quantized.weight_percent"]
    # the recorded plan (what a later preview compares with): the quantized fleet sized for none
    assert [c for c in exported if c.startswith(".plan.")] == [
        ".plan.usd_per_hour", *(f".plan.variants.quantized.{k}" for k in (
            "engines", "gpus", "machines", "sized_for_percent", "usd_per_hour"))]


def test_several_engines_per_machine_get_a_target_group_each() -> None:
    """On an L40S the quantized AWQ model runs three engines per GPU (ports 8000-8002): each port
    is a target group, and the weights still split traffic 90/10 between the variants."""
    run = run_program("prod", _config("ab_test", 10, **{"qinfra:fleet": {"gpus": ["l40s"]}}),
                      ("qinfra:api_key",))
    ports = {g.name: g.inputs["port"] for g in run.of(TG)}
    assert ports == {"qinfra-prod-baseline-0": 8000, "qinfra-prod-quantized-0": 8000,
                     "qinfra-prod-quantized-1": 8001, "qinfra-prod-quantized-2": 8002}
    assert len(run.one(ASG, "quantized").inputs["targetGroupArns"]) == 3
    weights = listener_weights(run)
    assert weights["baseline"] * 10 == weights["quantized"] * 90
    rule = run.one(INGRESS, "engine-from-lb").inputs
    assert (rule["fromPort"], rule["toPort"]) == (8000, 8002)


def test_more_engine_ports_than_one_listener_forwards_to_is_refused() -> None:
    """p5.48xlarge: 8 GPUs x several engines each is more target groups than a forward action takes."""
    with pytest.raises(NoFitError, match=r"at most 5\. To fix"):
        run_program("prod", _config("ab_test", 10, **{"qinfra:fleet": {"gpus": ["h100-80gb"]}}),
                    ("qinfra:api_key",))


@pytest.mark.parametrize(("traffic", "groups", "want"), [
    ({"baseline": 90, "quantized": 10}, {"baseline": 1, "quantized": 1}, {"baseline": 90, "quantized": 10}),
    # 2 baseline groups at 90 each vs 1 quantized at 20: 180:20 is still 90:10
    ({"baseline": 90, "quantized": 10}, {"baseline": 2, "quantized": 1}, {"baseline": 90, "quantized": 20}),
    # rollback across 3 + 2 groups: lcm 6
    ({"baseline": 100, "quantized": 0}, {"baseline": 3, "quantized": 2}, {"baseline": 200, "quantized": 0}),
    # full rollout, 4 + 1 groups: the largest weight any 5 groups need stays under 999
    ({"baseline": 0, "quantized": 100}, {"baseline": 4, "quantized": 1}, {"baseline": 0, "quantized": 400}),
])
def test_target_group_weights(traffic: dict[str, int], groups: dict[str, int], want: dict[str, int]) -> None:
    assert target_group_weights(traffic, groups) == want


def test_long_stack_names_fit_the_load_balancer_limits() -> None:
    name = _short("qinfra-a-very-long-production-stack", "quantized", "3")
    assert len(name) <= 24 and name.endswith("-quantized-3")


def test_preview_without_aws_credentials_says_what_is_missing(stacks, monkeypatch, tmp_path) -> None:
    from qinfra.cli.main import cli

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role either
    result = CliRunner().invoke(cli, ["preview", "--stack", "prod"])
    assert result.exit_code == 1, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("Error: stack prod targets aws, but no AWS credentials: set AWS_PROFILE")
    assert "Traceback" not in result.output
