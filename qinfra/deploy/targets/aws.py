"""The aws target: per variant a GPU Auto Scaling group behind one weighted application load balancer."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from qinfra.core.errors import NoFitError, SpecError
from qinfra.core.spec import StackSpec
from qinfra.deploy.targets import Deployed, DeployInput, boot_s, variant_output
from qinfra.serving.contexts import LaunchInputs, generation_s
from qinfra.serving.launch import artifact_bytes, check_variant, engine_instances

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
# Elastic Load Balancing User Guide (ALB): a forward action takes at most 5 target groups,
# weights 0..999; group stickiness 1 s..7 days; slow start 30..900 s; deregistration delay
# 0..3600 s; idle timeout 1..4000 s.
MAX_FORWARD_TARGET_GROUPS = 5
MAX_WEIGHT = 999
STICKINESS_S = 24 * 3600  # an A/B user keeps one variant for a day
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

    name: str
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
    groups = sum(len(f.ports) for f in out)
    if groups > MAX_FORWARD_TARGET_GROUPS:
        each = ", ".join(f"{f.name} {len(f.ports)} on {f.instance_type}" for f in out)
        raise NoFitError(f"stack {spec.name}: the plan runs {groups} engines per machine ({each}), "
                         "each port a target group, and one load balancer forwards to at most "
                         f"{MAX_FORWARD_TARGET_GROUPS}. To fix: list GPUs sold in smaller machines "
                         "in qinfra:fleet.gpus (l4, a10g, l40s)")
    return out


def target_group_weights(traffic: Mapping[str, int], groups: Mapping[str, int]) -> dict[str, int]:
    """The weight of each of a variant's target groups. The load balancer splits by weight over
    target groups, so a variant with k groups gives each share * L / k (L: the lcm of the k's)."""
    lcm = math.lcm(*groups.values())
    out = {name: traffic[name] * lcm // k for name, k in groups.items()}
    assert max(out.values()) <= MAX_WEIGHT, out
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
    balancer_sg: aws.ec2.SecurityGroup
    engine_sg: aws.ec2.SecurityGroup


def network(spec: StackSpec, ports: Sequence[int]) -> Network:
    """The default VPC; the engine ports open to the load balancer's security group only."""
    vpc = aws.ec2.get_vpc(default=True)
    subnets = aws.ec2.get_subnets(filters=[{"name": "vpc-id", "values": [vpc.id]}])
    balancer = aws.ec2.SecurityGroup(f"qinfra-{spec.name}-lb", vpc_id=vpc.id,
                                     description=f"qinfra {spec.name}: load balancer",
                                     tags=_tags(spec, f"qinfra-{spec.name}-lb"))
    engines = aws.ec2.SecurityGroup(f"qinfra-{spec.name}-engine", vpc_id=vpc.id,
                                    description=f"qinfra {spec.name}: engines, reached by the "
                                    "load balancer only", tags=_tags(spec, f"qinfra-{spec.name}-engine"))
    low, high = min(ports), max(ports)
    aws.vpc.SecurityGroupIngressRule(f"qinfra-{spec.name}-lb-http", security_group_id=balancer.id,
                                     ip_protocol="tcp", from_port=LISTENER_PORT,
                                     to_port=LISTENER_PORT, cidr_ipv4="0.0.0.0/0")
    aws.vpc.SecurityGroupEgressRule(f"qinfra-{spec.name}-lb-engines", security_group_id=balancer.id,
                                    ip_protocol="tcp", from_port=low, to_port=high,
                                    referenced_security_group_id=engines.id)
    aws.vpc.SecurityGroupIngressRule(f"qinfra-{spec.name}-engine-from-lb",
                                     security_group_id=engines.id, ip_protocol="tcp",
                                     from_port=low, to_port=high,
                                     referenced_security_group_id=balancer.id)
    # Out: S3, SSM and the image registries.
    aws.vpc.SecurityGroupEgressRule(f"qinfra-{spec.name}-engine-out", security_group_id=engines.id,
                                    ip_protocol="-1", cidr_ipv4="0.0.0.0/0")
    return Network(vpc.id, subnets.ids, balancer, engines)


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


def load_balancer(spec: StackSpec, net: Network, forward: Sequence[tuple[aws.lb.TargetGroup, int]]
                  ) -> aws.lb.LoadBalancer:
    """One front door; the listener splits traffic by weight, and group stickiness keeps a user
    on the variant they were first sent to."""
    alb = aws.lb.LoadBalancer(
        _short(f"qinfra-{spec.name}", "lb"), load_balancer_type="application", internal=False,
        security_groups=[net.balancer_sg.id], subnets=list(net.subnet_ids),
        idle_timeout=min(generation_s(spec), MAX_IDLE_TIMEOUT_S), drop_invalid_header_fields=True,
        tags=_tags(spec, f"qinfra-{spec.name}"))
    aws.lb.Listener(
        f"qinfra-{spec.name}-http", load_balancer_arn=alb.arn, port=LISTENER_PORT, protocol="HTTP",
        default_actions=[{"type": "forward", "forward": {
            "target_groups": [{"arn": g.arn, "weight": w} for g, w in forward],
            "stickiness": {"enabled": True, "duration": STICKINESS_S},
        }}],
        tags=_tags(spec, f"qinfra-{spec.name}-http"))
    return alb


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
    traffic = spec.rollout.traffic_percent()
    per_group = target_group_weights(traffic, {f.name: len(f.ports) for f in plan})
    forward: list[tuple[aws.lb.TargetGroup, int]] = []
    for fleet in plan:
        template = launch_template(spec, fleet, deploy.file(fleet.name, "user-data.yaml"), ami,
                                   profile, net)
        groups = target_groups(spec, fleet, net.vpc_id)
        group(spec, fleet, template, groups, net)
        forward += [(g, per_group[fleet.name]) for g in groups]
    alb = load_balancer(spec, net, forward)
    variants = {v.name: variant_output(deploy, v, weight_percent=traffic[v.name])
                for v in deploy.plan.variants}
    return Deployed(variants=variants, endpoint=pulumi.Output.concat("http://", alb.dns_name))
