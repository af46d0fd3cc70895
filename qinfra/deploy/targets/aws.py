"""The aws target: per variant a GPU Auto Scaling group behind an internal load balancer, and the
router's own group behind the public one (aws_router.py).

Request path: client -> public ALB :80 -> router (c7i.large x2, two zones) :8080 -> internal ALB
:8100 (baseline) / :8101 (quantized) -> that variant's engines :8000+. Security groups chain the
same way: only the public ALB reaches the routers, only the routers reach the internal ALB, only
the internal ALB reaches the engines."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from qinfra.core.errors import NoFitError, SpecError
from qinfra.core.spec import StackSpec, Variant
from qinfra.deploy.targets import Deployed, DeployInput, boot_s, variant_output
from qinfra.deploy.targets.aws_router import (
    RouterFleet,
    internal_listeners,
    internal_port,
    internal_ports,
    parameter,
    router_subnets,
)
from qinfra.deploy.targets.aws_router import fleet as router_fleet
from qinfra.serving.contexts import LaunchInputs, generation_s
from qinfra.serving.frontdoor import ROUTER_PORT
from qinfra.serving.launch import artifact_bytes, check_variant, engine_instances
from qinfra.serving.render import ROUTER

# AWS Deep Learning Base GPU AMI (Ubuntu 22.04): NVIDIA driver, docker and the NVIDIA container
# toolkit, AWS CLI (AWS DLAMI Developer Guide, "DLAMI release notes", Base OSS Nvidia Driver GPU
# AMI). Every instance type in qinfra/data/instances.toml is x86_64.
AMI_OWNER = "amazon"
AMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
AMI_ARCHITECTURE = "x86_64"
# Root volume beyond the AMI's own snapshot: the engine image while docker pulls it (vLLM's is
# ~10 GB compressed and holds both forms during the pull; an estimate) and working headroom.
ENGINE_IMAGE_GIB = 40
HEADROOM_GIB = 10
LISTENER_PORT = 80
# Elastic Load Balancing User Guide (ALB): a forward action takes at most 5 target groups;
# slow start 30..900 s; deregistration delay 0..3600 s; idle timeout 1..4000 s.
MAX_FORWARD_TARGET_GROUPS = 5
SLOW_START_S = 120  # a warmed replica still ramps up before taking its full share
MAX_DEREGISTRATION_S = 3600
MAX_IDLE_TIMEOUT_S = 4000
HEALTH_PATH = "/health"


@dataclass(frozen=True)
class Store:
    bucket: str
    prefix: str  # no leading or trailing '/'; "" for a whole bucket

    @property
    def objects_arn(self) -> str:
        return f"arn:aws:s3:::{self.bucket}/{self.prefix + '/' if self.prefix else ''}*"


@dataclass(frozen=True)
class Fleet:
    """What one variant runs: its machines, and the engine ports on each of them."""

    name: Variant
    instance_type: str
    machines: int
    ports: tuple[int, ...]
    artifact_bytes: int
    boot_s: int  # launch to warm engines: image pull, artifact fetch + verify, engine start


def store(spec: StackSpec) -> Store:
    bucket, _, prefix = spec.artifacts.store.removeprefix("s3://").partition("/")
    return Store(bucket, prefix.strip("/"))


def fleets(deploy: DeployInput) -> list[Fleet]:
    """Each variant's machines and ports as the render laid them out, so the load balancer
    reaches exactly the engines the user-data starts."""
    spec, out = deploy.spec, []
    for index, plan in enumerate(deploy.plan.variants):
        v = check_variant(spec, deploy.plan, plan.name, index, LaunchInputs())
        if v.option.instance_type is None:
            raise SpecError(f"stack {spec.name}: qinfra:fleet.cpu serves on this machine's CPU, and "
                            "target aws launches GPU instances. To fix: list GPUs in "
                            "qinfra:fleet.gpus, or use target local")
        out.append(Fleet(
            name=plan.name,
            instance_type=v.option.instance_type,
            machines=v.option.machines,
            ports=tuple(i.port for i in engine_instances(v, spec.serving.port)),
            artifact_bytes=artifact_bytes(v.option),
            boot_s=boot_s(spec, v.option),
        ))
    for f in out:
        if len(f.ports) > MAX_FORWARD_TARGET_GROUPS:
            raise NoFitError(
                f"stack {spec.name}: the plan runs {len(f.ports)} {f.name} engines per "
                f"{f.instance_type}, each port a target group, and one listener forwards to at "
                f"most {MAX_FORWARD_TARGET_GROUPS}. To fix: list GPUs sold in smaller machines in "
                "qinfra:fleet.gpus (l4, a10g, l40s)")
    return out


def _tags(spec: StackSpec, name: str, **extra: str) -> dict[str, str]:
    return {"Name": name, "qinfra:stack": spec.name, **extra}


def _short(*parts: str, limit: int = 24) -> str:
    """A logical name that still fits after the provider's 8-character random suffix (target
    groups and load balancers allow 32 characters); the stack part is shortened first."""
    head, *rest = parts
    tail = "-".join(rest)
    return f"{head[: max(1, limit - len(tail) - 1)]}-{tail}".strip("-")


def artifact_bucket(spec: StackSpec, where: Store) -> None:
    """Versioned, encrypted, private; kept when the stack is destroyed, because artifacts outlive
    deployments (a rollback months later still finds its baseline)."""
    keep = pulumi.ResourceOptions(retain_on_delete=True)
    name = f"qinfra-{spec.name}-artifacts"
    bucket = aws.s3.Bucket(name, bucket=where.bucket, tags=_tags(spec, where.bucket), opts=keep)
    aws.s3.BucketVersioning(name, bucket=bucket.id,
                            versioning_configuration={"status": "Enabled"}, opts=keep)
    # SSE-S3: readers need no KMS grant beyond s3:GetObject.
    aws.s3.BucketServerSideEncryptionConfiguration(
        name, bucket=bucket.id,
        rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}], opts=keep)
    aws.s3.BucketPublicAccessBlock(name, bucket=bucket.id, block_public_acls=True,
                                   block_public_policy=True, ignore_public_acls=True,
                                   restrict_public_buckets=True, opts=keep)


def store_pass(spec: StackSpec) -> None:
    """The first pass of a first `up` (qinfra/deploy/bootstrap.py): the bucket only."""
    if spec.artifacts.create_bucket:
        artifact_bucket(spec, store(spec))


def api_key_parameter(spec: StackSpec) -> aws.ssm.Parameter | None:
    """The Pulumi secret as the SSM SecureString the machines read at boot (never in user-data)."""
    secret = pulumi.Config("qinfra").get_secret("api_key")
    if secret is None:
        return None
    return aws.ssm.Parameter(f"qinfra-{spec.name}-api-key", name=f"/qinfra/{spec.name}/api-key",
                             type="SecureString", value=secret,
                             tags=_tags(spec, f"qinfra-{spec.name}-api-key"))


def policy_document(where: Store, region: str, parameter_arn: str | None) -> str:
    """The engines' only permissions: read the artifact prefix, and the API key if there is one."""
    statements: list[dict[str, Any]] = [
        {"Sid": "ReadArtifacts", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": where.objects_arn},
        {"Sid": "ListArtifacts", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{where.bucket}",
         **({"Condition": {"StringLike": {"s3:prefix": [where.prefix, f"{where.prefix}/*"]}}}
            if where.prefix else {})},
    ]
    if parameter_arn is not None:
        statements += [
            {"Sid": "ReadApiKey", "Effect": "Allow", "Action": "ssm:GetParameter",
             "Resource": parameter_arn},
            # SecureString values are decrypted by SSM with the account's aws/ssm key.
            {"Sid": "DecryptApiKey", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {"StringEquals": {"kms:ViaService": f"ssm.{region}.amazonaws.com"}}},
        ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def instance_profile(spec: StackSpec, where: Store, region: str,
                     parameter: aws.ssm.Parameter | None) -> aws.iam.InstanceProfile:
    name = f"qinfra-{spec.name}-engine"
    role = aws.iam.Role(name, tags=_tags(spec, name), assume_role_policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                       "Principal": {"Service": "ec2.amazonaws.com"}}],
    }))
    arn: pulumi.Input[str | None] = parameter.arn if parameter is not None else None
    aws.iam.RolePolicy(name, role=role.id, policy=pulumi.Output.from_input(arn).apply(
        lambda a: policy_document(where, region, a)))
    return aws.iam.InstanceProfile(name, role=role.name, tags=_tags(spec, name))


@dataclass(frozen=True)
class Network:
    vpc_id: str
    subnet_ids: Sequence[str]
    balancer_sg: aws.ec2.SecurityGroup  # the public load balancer
    router_sg: aws.ec2.SecurityGroup
    internal_sg: aws.ec2.SecurityGroup  # the internal load balancer in front of the engines
    engine_sg: aws.ec2.SecurityGroup


def _group(spec: StackSpec, vpc_id: str, role: str, what: str) -> aws.ec2.SecurityGroup:
    name = f"qinfra-{spec.name}-{role}"
    return aws.ec2.SecurityGroup(name, vpc_id=vpc_id, description=f"qinfra {spec.name}: {what}",
                                 tags=_tags(spec, name))


def _hop(spec: StackSpec, name: str, source: aws.ec2.SecurityGroup, target: aws.ec2.SecurityGroup,
         ports: tuple[int, int]) -> None:
    """`source` may open connections to `target` on `ports` and nowhere else on them: the egress
    rule on one side, the ingress rule on the other, each naming the other's group."""
    low, high = ports
    aws.vpc.SecurityGroupEgressRule(f"qinfra-{spec.name}-{name}-out", security_group_id=source.id,
                                    ip_protocol="tcp", from_port=low, to_port=high,
                                    referenced_security_group_id=target.id)
    aws.vpc.SecurityGroupIngressRule(f"qinfra-{spec.name}-{name}-in", security_group_id=target.id,
                                     ip_protocol="tcp", from_port=low, to_port=high,
                                     referenced_security_group_id=source.id)


def network(spec: StackSpec, ports: Sequence[int]) -> Network:
    """The default VPC, and one chain of security groups: the world reaches the public load
    balancer, it the routers, they the internal load balancer, and it the engines; no group
    lets anything else in, except a Prometheus group the analysis names (the routers' port)."""
    vpc = aws.ec2.get_vpc(default=True)
    subnets = aws.ec2.get_subnets(filters=[{"name": "vpc-id", "values": [vpc.id]}])
    net = Network(
        vpc.id, subnets.ids,
        balancer_sg=_group(spec, vpc.id, "lb", "public load balancer"),
        router_sg=_group(spec, vpc.id, "router", "routers, reached by the public load balancer only"),
        internal_sg=_group(spec, vpc.id, "internal", "internal load balancer, reached by the "
                           "routers only"),
        engine_sg=_group(spec, vpc.id, "engine", "engines, reached by the internal load balancer "
                         "only"),
    )
    aws.vpc.SecurityGroupIngressRule(f"qinfra-{spec.name}-lb-http", security_group_id=net.balancer_sg.id,
                                     ip_protocol="tcp", from_port=LISTENER_PORT,
                                     to_port=LISTENER_PORT, cidr_ipv4="0.0.0.0/0")
    _hop(spec, "lb-router", net.balancer_sg, net.router_sg, (ROUTER_PORT, ROUTER_PORT))
    if spec.analysis is not None and (prometheus := spec.analysis.scrape_security_group):
        # The routers serve /metrics on their one port; the named Prometheus group may reach it
        # (the scrape config `qinfra render --what scrape-config` writes needs this path).
        aws.vpc.SecurityGroupIngressRule(f"qinfra-{spec.name}-metrics-in",
                                         security_group_id=net.router_sg.id, ip_protocol="tcp",
                                         from_port=ROUTER_PORT, to_port=ROUTER_PORT,
                                         referenced_security_group_id=prometheus)
    _hop(spec, "router-internal", net.router_sg, net.internal_sg, internal_ports())
    _hop(spec, "internal-engine", net.internal_sg, net.engine_sg, (min(ports), max(ports)))
    # Out: routers to S3, SSM and the package repository (HTTPS only); engines also pull images.
    aws.vpc.SecurityGroupEgressRule(f"qinfra-{spec.name}-router-https", security_group_id=net.router_sg.id,
                                    ip_protocol="tcp", from_port=443, to_port=443,
                                    cidr_ipv4="0.0.0.0/0")
    aws.vpc.SecurityGroupEgressRule(f"qinfra-{spec.name}-engine-out", security_group_id=net.engine_sg.id,
                                    ip_protocol="-1", cidr_ipv4="0.0.0.0/0")
    return net


def gpu_ami() -> aws.ec2.AwaitableGetAmiResult:
    return aws.ec2.get_ami(most_recent=True, owners=[AMI_OWNER], filters=[
        {"name": "name", "values": [AMI_NAME]},
        {"name": "architecture", "values": [AMI_ARCHITECTURE]},
        {"name": "state", "values": ["available"]},
    ])


def root_volume_gib(ami: aws.ec2.AwaitableGetAmiResult, fleet: Fleet) -> int:
    """The AMI's snapshot, the engine image and the artifact, which is fetched once and verified
    in place."""
    snapshot = next((int(m.ebs["volume_size"]) for m in ami.block_device_mappings or ()
                     if m.device_name == ami.root_device_name and m.ebs.get("volume_size")), 0)
    return snapshot + ENGINE_IMAGE_GIB + math.ceil(fleet.artifact_bytes / 2**30) + HEADROOM_GIB


def launch_template(spec: StackSpec, fleet: Fleet, user_data: str, ami: aws.ec2.AwaitableGetAmiResult,
                    profile: aws.iam.InstanceProfile, net: Network) -> aws.ec2.LaunchTemplate:
    name = f"qinfra-{spec.name}-{fleet.name}"
    tags = _tags(spec, name, **{"qinfra:variant": fleet.name})
    return aws.ec2.LaunchTemplate(
        name,
        image_id=ami.id,
        instance_type=fleet.instance_type,
        user_data=base64.b64encode(user_data.encode()).decode(),
        iam_instance_profile={"arn": profile.arn},
        vpc_security_group_ids=[net.engine_sg.id],
        # IMDSv2 only, one hop: the host's AWS CLI reads the role, the engine containers cannot.
        metadata_options={"http_endpoint": "enabled", "http_tokens": "required",
                          "http_put_response_hop_limit": 1},
        block_device_mappings=[{"device_name": ami.root_device_name, "ebs": {
            "volume_size": root_volume_gib(ami, fleet), "volume_type": "gp3", "encrypted": "true",
            "delete_on_termination": "true"}}],
        update_default_version=True,
        tag_specifications=[{"resource_type": kind, "tags": tags} for kind in ("instance", "volume")],
        tags=tags,
    )


def target_groups(spec: StackSpec, fleet: Fleet, vpc_id: str) -> list[aws.lb.TargetGroup]:
    """One per engine port on a machine; health on /health, slow start, and a draining replica
    keeps the time one generation may take."""
    drain = min(generation_s(spec), MAX_DEREGISTRATION_S)
    return [
        aws.lb.TargetGroup(
            _short(f"qinfra-{spec.name}", fleet.name, str(i)),
            port=port, protocol="HTTP", target_type="instance", vpc_id=vpc_id,
            slow_start=SLOW_START_S, deregistration_delay=drain,
            load_balancing_algorithm_type="least_outstanding_requests",
            health_check={"path": HEALTH_PATH, "port": "traffic-port", "protocol": "HTTP",
                          "matcher": "200", "interval": 15, "timeout": 5, "healthy_threshold": 2,
                          "unhealthy_threshold": 3},
            tags=_tags(spec, f"qinfra-{spec.name}-{fleet.name}-{port}",
                       **{"qinfra:variant": fleet.name}),
        )
        for i, port in enumerate(fleet.ports)
    ]


def group(spec: StackSpec, fleet: Fleet, template: aws.ec2.LaunchTemplate,
          groups: Sequence[aws.lb.TargetGroup], net: Network) -> aws.autoscaling.Group:
    """Sized by the plan (min = max = desired); a variant at zero keeps its empty group, so rolling
    forward only changes these numbers. `up` waits until the machines pass the load balancer's
    health check."""
    name = f"qinfra-{spec.name}-{fleet.name}"
    return aws.autoscaling.Group(
        name,
        min_size=fleet.machines, max_size=fleet.machines, desired_capacity=fleet.machines,
        wait_for_elb_capacity=fleet.machines,
        wait_for_capacity_timeout=f"{math.ceil(fleet.boot_s / 60) + 5}m",
        health_check_type="ELB", health_check_grace_period=fleet.boot_s,
        vpc_zone_identifiers=list(net.subnet_ids),
        launch_template={"id": template.id, "version": template.latest_version.apply(str)},
        target_group_arns=[g.arn for g in groups],
        # New user-data (a new artifact or flags) replaces machines, new ones healthy first.
        instance_refresh={"strategy": "Rolling",
                          "preferences": {"min_healthy_percentage": 100, "max_healthy_percentage": 200}},
        tags=[{"key": k, "value": v, "propagate_at_launch": True}
              for k, v in _tags(spec, name, **{"qinfra:variant": fleet.name}).items()],
    )


def load_balancers(spec: StackSpec, net: Network) -> tuple[aws.lb.LoadBalancer, aws.lb.LoadBalancer]:
    """(public, internal): the front door the routers sit behind, and the one before the engines."""
    idle = min(generation_s(spec), MAX_IDLE_TIMEOUT_S)
    public = aws.lb.LoadBalancer(
        _short(f"qinfra-{spec.name}", "lb"), load_balancer_type="application", internal=False,
        security_groups=[net.balancer_sg.id], subnets=router_subnets(spec, net.subnet_ids),
        idle_timeout=idle, drop_invalid_header_fields=True, tags=_tags(spec, f"qinfra-{spec.name}"))
    internal = aws.lb.LoadBalancer(
        _short(f"qinfra-{spec.name}", "in"), load_balancer_type="application", internal=True,
        security_groups=[net.internal_sg.id], subnets=list(net.subnet_ids),
        idle_timeout=idle, drop_invalid_header_fields=True,
        tags=_tags(spec, f"qinfra-{spec.name}-internal"))
    return public, internal


def deploy(deploy: DeployInput) -> Deployed:
    spec = deploy.spec
    where = store(spec)
    region = str(spec.provider_config.get("aws:region") or aws.get_region().region)
    plan = fleets(deploy)
    if spec.artifacts.create_bucket:
        artifact_bucket(spec, where)
    profile = instance_profile(spec, where, region, api_key_parameter(spec))
    net = network(spec, [p for f in plan for p in f.ports])
    ami = gpu_ami()
    public, internal = load_balancers(spec, net)
    groups: dict[Variant, list[aws.lb.TargetGroup]] = {}
    for fleet in plan:
        template = launch_template(spec, fleet, deploy.file(fleet.name, "user-data.yaml"), ami,
                                   profile, net)
        groups[fleet.name] = target_groups(spec, fleet, net.vpc_id)
        group(spec, fleet, template, groups[fleet.name], net)
    internal_listeners(spec, internal, groups)
    config = parameter(spec, internal.dns_name)
    routers = RouterFleet(deploy.file(ROUTER, "user-data.yaml"), net.router_sg,
                          router_subnets(spec, net.subnet_ids), net.vpc_id)
    front = router_fleet(spec, routers, config, _tags(spec, f"qinfra-{spec.name}-router"))
    aws.lb.Listener(
        f"qinfra-{spec.name}-http", load_balancer_arn=public.arn, port=LISTENER_PORT, protocol="HTTP",
        default_actions=[{"type": "forward", "target_group_arn": front.arn}],
        tags=_tags(spec, f"qinfra-{spec.name}-http"))
    traffic = spec.rollout.traffic_percent()
    variants = {v.name: variant_output(
        deploy, v, weight_percent=traffic[v.name],
        endpoint=pulumi.Output.concat("http://", internal.dns_name, f":{internal_port(Variant(v.name))}"))
        for v in deploy.plan.variants}
    return Deployed(variants=variants, endpoint=pulumi.Output.concat("http://", public.dns_name))
