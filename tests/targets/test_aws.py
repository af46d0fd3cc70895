"""The aws target under Pulumi mocks: fleets, the routers in front of them, weights, IAM and
security-group scope, and rollback as a diff."""

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
from qinfra.deploy.targets.aws import AMI_NAME, _short
from qinfra.serving.contexts import generation_s
from tests.render_helpers import PINS, ROUTER_PIN, launch_command, load_yaml, plan_for
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
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
SG = "aws:ec2/securityGroup:SecurityGroup"
LB = "aws:lb/loadBalancer:LoadBalancer"
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
    PARAMETER: 2,  # the API key, the router config
    "aws:iam/role:Role": 2,  # engines, routers
    POLICY: 2,
    "aws:iam/instanceProfile:InstanceProfile": 2,
    SG: 4,  # public load balancer, routers, internal load balancer, engines
    INGRESS: 4,
    EGRESS: 5,
    LT: 3,
    TG: 3,
    ASG: 3,
    LB: 2,  # public, internal
    LISTENER: 3,  # public :80 to the routers, internal :8100 / :8101 per variant
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


def variants_endpoint(run: Run, variant: str) -> str:
    return str(run.exports["variants"][variant]["endpoint"])


def user_data(run: Run, variant: str) -> dict[str, Any]:
    text = base64.b64decode(run.one(LT, variant).inputs["userData"]).decode()
    assert text.startswith("#cloud-config\n")
    return load_yaml(text)


def written(run: Run, variant: str, name: str) -> str:
    files = {f["path"].rsplit("/", 1)[-1]: f["content"] for f in user_data(run, variant)["write_files"]}
    return files[name]


def router_config(run: Run) -> dict[str, Any]:
    """The router config the stack writes to SSM (what the routers poll)."""
    parameter = run.one(PARAMETER, "router-config").inputs
    assert parameter["name"] == "/qinfra/prod/router-config" and parameter["type"] == "String"
    return json.loads(parameter["insecureValue"])  # plain, so a preview shows the weights


def listener_weights(run: Run) -> dict[str, int]:
    """Weight per variant: what the routers split by (the only split there is)."""
    percent = router_config(run)["quantized_percent"]
    return {"baseline": int(100 - percent), "quantized": int(percent)}


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
        # each variant behind its own internal listener, which is the router's replica URL
        (group_arn,) = [g["arn"] for g in run.one(LISTENER, f"prod-{variant}").inputs[
            "defaultActions"][0]["forward"]["targetGroups"]]
        assert group_arn.endswith(f"qinfra-prod-{variant}-0")
        internal = "http://qinfra-prod-in-1234567890.us-east-1.elb.amazonaws.com"
        port = 8100 + ["baseline", "quantized"].index(variant)
        assert router_config(run)["replicas"][variant] == [f"{internal}:{port}"]
        assert variants_endpoint(run, variant) == f"{internal}:{port}"
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
        template = run.one(LT, f"prod-{variant}").inputs
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
        if "rt" in group.name:  # the routers' group: see test_routers_*
            continue
        assert inputs["port"] == 8000 and inputs["protocol"] == "HTTP"
        assert inputs["healthCheck"]["path"] == "/health"
        assert inputs["healthCheck"]["port"] == "traffic-port"
        assert 30 <= inputs["slowStart"] <= 900
        # in-flight generations finish: max_model_len tokens at the slowest rate (8192 / 10 tok/s)
        assert inputs["deregistrationDelay"] == generation_s(spec) == 820
    assert {lb.inputs["idleTimeout"] for lb in run.of(LB)} == {820}


def test_iam_allows_only_the_artifact_prefix_and_the_api_key() -> None:
    run = prod("ab_test", 10)
    policy = json.loads(run.one(POLICY, "engine").inputs["policy"])
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
    parameter = run.one(PARAMETER, "api-key").inputs
    assert parameter["name"] == "/qinfra/prod/api-key" and parameter["type"] == "SecureString"
    assert by_action["ssm:GetParameter"]["Resource"].endswith(":qinfra-prod-api-key")
    assert by_action["kms:Decrypt"]["Condition"] == {
        "StringEquals": {"kms:ViaService": "ssm.us-east-1.amazonaws.com"}}
    role = json.loads(run.one("aws:iam/role:Role", "engine").inputs["assumeRolePolicy"])
    assert role["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_api_key_stays_a_secret() -> None:
    run = prod("ab_test", 10)
    value = run.one(PARAMETER, "api-key").inputs["value"]
    assert isinstance(value, dict) and value["value"] == API_KEY and len(value) == 2  # secret-wrapped
    others = [r for r in run.resources if r.name != "qinfra-prod-api-key"]
    assert not any(API_KEY in str(leaf) for r in others for leaf in walk(r.inputs))


def test_each_tier_is_reached_only_by_the_one_before_it() -> None:
    """world -> public LB :80 -> routers :8080 -> internal LB :8100-8101 -> engines :8000; every
    rule between tiers names the other tier's group, never an address range."""
    run = prod("ab_test", 10)
    ingress = {r.name.removeprefix("qinfra-prod-"): r.inputs for r in run.of(INGRESS)}
    egress = {r.name.removeprefix("qinfra-prod-"): r.inputs for r in run.of(EGRESS)}
    assert ingress["lb-http"]["cidrIpv4"] == "0.0.0.0/0"
    assert ingress["lb-http"]["fromPort"] == ingress["lb-http"]["toPort"] == 80
    hops = {  # rule: (group it opens, group it lets in, ports)
        "lb-router-in": ("router", "lb", (8080, 8080)),
        "router-internal-in": ("internal", "router", (8100, 8101)),
        "internal-engine-in": ("engine", "internal", (8000, 8000)),
    }
    for name, (opens, source, ports) in hops.items():
        rule = ingress[name]
        assert rule["securityGroupId"] == f"qinfra-prod-{opens}-id", name
        assert rule["referencedSecurityGroupId"] == f"qinfra-prod-{source}-id" and "cidrIpv4" not in rule
        assert (rule["fromPort"], rule["toPort"]) == ports
        out = egress[name.removesuffix("-in") + "-out"]
        assert out["securityGroupId"] == f"qinfra-prod-{source}-id"
        assert out["referencedSecurityGroupId"] == f"qinfra-prod-{opens}-id"
    assert set(ingress) == {"lb-http", *hops}  # nothing else lets anything in
    # routers go out only over HTTPS (S3, SSM, the package repository)
    https = egress["router-https"]
    assert (https["ipProtocol"], https["fromPort"], https["toPort"]) == ("tcp", 443, 443)
    assert run.one(LT, "router").inputs["vpcSecurityGroupIds"] == ["qinfra-prod-router-id"]
    lbs = {lb.name: lb.inputs for lb in run.of(LB)}
    assert lbs["qinfra-prod-lb"]["internal"] is False
    assert lbs["qinfra-prod-lb"]["securityGroups"] == ["qinfra-prod-lb-id"]
    assert lbs["qinfra-prod-in"]["internal"] is True
    assert lbs["qinfra-prod-in"]["securityGroups"] == ["qinfra-prod-internal-id"]


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
    assert "acme-models/llama-3.1-8b/*" in run.one(POLICY, "engine").inputs["policy"]


def test_rollback_is_only_traffic_and_capacity() -> None:
    """ab_test -> rollback: the routers' config parameter and the quantized group's size, nothing
    else; the launch templates (user-data, flags, artifacts) and the routers stay byte for byte."""
    before, after = prod("ab_test", 10), prod("rollback", 0)
    assert changed(before, after) == {
        (PARAMETER, "qinfra-prod-router-config"): [".insecureValue"],
        (ASG, "qinfra-prod-quantized"): [".desiredCapacity", ".maxSize", ".minSize", ".waitForElbCapacity"],
    }
    old, new = router_config(before), router_config(after)
    assert {k for k in old if old[k] != new[k]} == {"quantized_percent"}
    assert listener_weights(after) == {"baseline": 100, "quantized": 0}
    assert after.one(ASG, "quantized").inputs["desiredCapacity"] == 0
    assert before.one(ASG, "baseline").inputs == after.one(ASG, "baseline").inputs  # already 100%
    exported = changes(before.exports, after.exports)
    assert [c for c in exported if not c.startswith(".plan.")] == [
        ".stage", ".variants.baseline.weight_percent", ".variants.quantized.replicas",
        ".variants.quantized.weight_percent"]
    # the recorded plan (what a later preview compares with): the router's weights, the
    # quantized fleet sized for none
    assert [c for c in exported if c.startswith(".plan.")] == [
        ".plan.router.baseline_percent", ".plan.router.quantized_percent",
        ".plan.usd_per_hour", *(f".plan.variants.quantized.{k}" for k in (
            "engines", "gpus", "machines", "sized_for_percent", "usd_per_hour"))]


def test_several_engines_per_machine_get_a_target_group_each() -> None:
    """On an L40S the quantized AWQ model runs three engines per GPU (ports 8000-8002): each port
    is a target group, and the weights still split traffic 90/10 between the variants."""
    run = run_program("prod", _config("ab_test", 10, **{"qinfra:fleet": {"gpus": ["l40s"]}}),
                      ("qinfra:api_key",))
    ports = {g.name: g.inputs["port"] for g in run.of(TG) if g.name != "qinfra-prod-rt"}
    assert ports == {"qinfra-prod-baseline-0": 8000, "qinfra-prod-quantized-0": 8000,
                     "qinfra-prod-quantized-1": 8001, "qinfra-prod-quantized-2": 8002}
    assert len(run.one(ASG, "quantized").inputs["targetGroupArns"]) == 3
    forward = run.one(LISTENER, "prod-quantized").inputs["defaultActions"][0]["forward"]
    assert [int(g["weight"]) for g in forward["targetGroups"]] == [1, 1, 1]  # alike
    assert listener_weights(run) == {"baseline": 90, "quantized": 10}
    rule = run.one(INGRESS, "internal-engine-in").inputs
    assert (rule["fromPort"], rule["toPort"]) == (8000, 8002)


def test_more_engine_ports_than_one_listener_forwards_to_is_refused() -> None:
    """p5.48xlarge: 8 GPUs x several engines each is more target groups than a forward action takes."""
    with pytest.raises(NoFitError, match=r"at most 5\. To fix"):
        run_program("prod", _config("ab_test", 10, **{"qinfra:fleet": {"gpus": ["h100-80gb"]}}),
                    ("qinfra:api_key",))


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


def test_routers_run_in_their_own_group_across_two_subnets() -> None:
    run = prod("ab_test", 10)
    group = run.one(ASG, "router").inputs
    assert (group["minSize"], group["maxSize"], group["desiredCapacity"]) == (2, 2, 2)
    assert group["vpcZoneIdentifiers"] == SUBNETS[:2] and group["healthCheckType"] == "ELB"
    assert group["targetGroupArns"] == ["arn:aws:lb:us-east-1:123456789012:qinfra-prod-rt"]
    router_group = run.one(TG, "-rt").inputs
    assert router_group["port"] == 8080 and router_group["healthCheck"]["path"] == "/health"
    listener = run.one(LISTENER, "prod-http").inputs
    assert listener["port"] == 80
    assert listener["defaultActions"] == [{"type": "forward", "targetGroupArn": group["targetGroupArns"][0]}]
    assert run.one(LB, "prod-lb").inputs["subnets"] == SUBNETS[:2]
    template = run.one(LT, "router").inputs
    assert template["instanceType"] == "c7i.large"
    assert template["metadataOptions"]["httpTokens"] == "required"
    text = base64.b64decode(template["userData"]).decode()
    # the pinned wheels, the parameter name; never a weight
    assert f"{STORE}/{ROUTER_PIN}/" in text and "/qinfra/prod/router-config" in text
    assert "quantized_percent" not in text
    ami = [args for token, args in run.calls if token == "aws:ec2/getAmi:getAmi"]
    assert {"name": "name", "values": ["al2023-ami-2023.*-x86_64"]} in ami[-1]["filters"]


def test_routers_read_only_their_config_and_their_wheels() -> None:
    run = prod("ab_test", 10)
    policy = json.loads(run.one(POLICY, "router").inputs["policy"])
    by_action = {s["Action"]: s for s in policy["Statement"]}
    assert set(by_action) == {"ssm:GetParameter", "s3:GetObject", "s3:ListBucket"}
    assert by_action["ssm:GetParameter"]["Resource"].endswith(":qinfra-prod-router-config")
    wheels = f"arn:aws:s3:::acme-models/llama-3.1-8b/{ROUTER_PIN}/*"
    assert by_action["s3:GetObject"]["Resource"] == wheels
    assert not fnmatch.fnmatch(f"arn:aws:s3:::acme-models/llama-3.1-8b/{PINS['baseline']}/x", wheels)
    assert by_action["s3:ListBucket"]["Condition"] == {"StringLike": {"s3:prefix": [
        f"llama-3.1-8b/{ROUTER_PIN}", f"llama-3.1-8b/{ROUTER_PIN}/*"]}}
    assert run.one(LT, "router").inputs["iamInstanceProfile"] == {
        "arn": "arn:aws:iam:us-east-1:123456789012:qinfra-prod-router"}


@pytest.mark.parametrize(("stage", "percent"), STAGES)
def test_router_config_is_the_rollout(stage: str, percent: int) -> None:
    """The weights the routers serve are the stack's rollout; shadowing pauses at 0 %."""
    config = router_config(prod(stage, percent))
    assert config["quantized_percent"] == percent
    assert set(config["replicas"]) == {"baseline", "quantized"}  # listed even at 0 %
    assert config["salt"] == "qinfra" and config["key_header"] == "X-Qinfra-User"


def test_a_weight_change_replaces_no_machine() -> None:
    """ab_test 10 % -> gradual 25 %: the parameter only; both fleets keep their sizes (the
    quantized one is already sized up) or change size, and no launch template changes."""
    before, after = prod("ab_test", 10), prod("gradual", 25)
    assert not [key for key in changed(before, after) if key[0] == LT]
    assert (PARAMETER, "qinfra-prod-router-config") in changed(before, after)


def test_the_first_pass_of_a_first_up_creates_the_bucket_alone(monkeypatch) -> None:
    """With the store pass set, the program registers the bucket and nothing else, and needs no
    pinned artifact (the push that pins them comes after it)."""
    from qinfra.deploy.bootstrap import STORE_PASS_ENV

    monkeypatch.setenv(STORE_PASS_ENV, "1")
    config = _config("ab_test", 10)
    config["qinfra:variants"] = {name: {k: v for k, v in variant.items() if k != "artifact"}
                                 for name, variant in config["qinfra:variants"].items()}
    run = run_program("prod", config, ("qinfra:api_key",))
    assert sorted(r.typ for r in run.resources) == sorted(BUCKET_PARTS)  # registration order is async
    assert run.one(BUCKET_PARTS[0]).inputs["bucket"] == "acme-models" and run.exports == {}


@pytest.mark.parametrize(("bucket", "deployed", "create", "want"), [
    (False, False, True, True),   # empty account, first up: the bucket first
    (True, False, True, False),   # the bucket is there already: push at once
    (False, True, True, False),   # a deployed stack holds its bucket in its state
    (False, False, False, False),  # create_bucket: false: the user's bucket, never created
])
def test_store_pass_runs_only_for_a_first_up_without_its_bucket(
        s3_endpoint: str, bucket: bool, deployed: bool, create: bool, want: bool) -> None:
    """Asked of a real S3 server (moto): is the bucket there?"""
    import boto3

    from qinfra.deploy.bootstrap import store_pass_needed

    name = f"first-up-{int(bucket)}{int(deployed)}{int(create)}"
    if bucket:
        boto3.client("s3").create_bucket(Bucket=name)
    config = _config("ab_test", 10, **{"qinfra:artifacts": {"store": f"s3://{name}/m",
                                                              "create_bucket": create}})
    config["qinfra:api_key"] = {"secure": "v1:x"}
    spec = parse_config(config, "prod")
    assert store_pass_needed(spec, deployed) is want


def test_a_named_prometheus_group_alone_may_scrape_the_routers() -> None:
    """qinfra:analysis.scrape_security_group opens the routers' port to that group and to no
    address range; without it the routers are reached by the public load balancer only."""
    analysis = {**stack_config("prod", "ab_test", 10)["qinfra:analysis"],
                "scrape_security_group": "sg-0123456789abcdef0"}
    run = run_program("prod", _config("ab_test", 10, **{"qinfra:analysis": analysis}),
                      ("qinfra:api_key",))
    ingress = {r.name.removeprefix("qinfra-prod-"): r.inputs for r in run.of(INGRESS)}
    rule = ingress["metrics-in"]
    assert rule["securityGroupId"] == "qinfra-prod-router-id"
    assert rule["referencedSecurityGroupId"] == "sg-0123456789abcdef0" and "cidrIpv4" not in rule
    assert (rule["ipProtocol"], rule["fromPort"], rule["toPort"]) == ("tcp", 8080, 8080)
    assert "metrics-in" not in {r.name.removeprefix("qinfra-prod-") for r in prod("ab_test", 10).of(INGRESS)}


def test_a_malformed_prometheus_group_is_named() -> None:
    config = {**stack_config("prod", "ab_test", 10), "qinfra:api_key": PULUMI_HELD}
    config["qinfra:analysis"] = {**config["qinfra:analysis"], "scrape_security_group": "prometheus"}
    with pytest.raises(Exception, match=r"scrape_security_group[\s\S]*prometheus"):
        parse_config(config, "prod")
