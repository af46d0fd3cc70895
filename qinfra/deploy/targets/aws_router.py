"""The aws target's front door: routers on small CPU machines in their own Auto Scaling group
behind the public load balancer, their config in an SSM parameter they re-read, and an internal
load balancer with one listener per variant that only the routers reach.

Why an internal load balancer: the router's config lists base URLs per variant, and engine
machines come and go (instance refresh, scaling to zero on a rollback). One stable URL per variant
(the internal load balancer's DNS name and the variant's listener port) keeps the config to the
weights, so a rollback rewrites one SSM value and replaces no machine; the load balancer already
health-checks and drains the engines, spreads across a machine's engine ports, and its security
group is the one door into the engines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from qinfra.core.errors import SpecError
from qinfra.core.spec import StackSpec, Variant
from qinfra.planning.router import ROUTER_INSTANCE_TYPE  # the plan prices these machines
from qinfra.serving.contexts import generation_s
from qinfra.serving.frontdoor import (
    ROUTER_PORT,
    ROUTER_REPLICAS,
    config_text,
    parameter_name,
    router_config,
)

# Amazon Linux 2023 (AWS CLI v2 included; python3.11 from its AMI-locked package repository).
ROUTER_AMI_NAME = "al2023-ami-2023.*-x86_64"
ROUTER_ROOT_GIB = 20
ROUTER_BOOT_S = 600  # dnf's python3.11, the wheels' fetch, verify and install, the first sync
# One internal listener per variant, on these ports of the internal load balancer.
INTERNAL_BASE_PORT = 8100
SUBNETS = 2  # routers and the public load balancer span two subnets (two zones)
MAX_DEREGISTRATION_S = 3600
HEALTH_PATH = "/health"


def internal_port(variant: Variant) -> int:
    return INTERNAL_BASE_PORT + list(Variant).index(variant)


def internal_ports() -> tuple[int, int]:
    """(lowest, highest) internal listener port: what the routers may reach."""
    ports = [internal_port(v) for v in Variant]
    return min(ports), max(ports)


def router_subnets(spec: StackSpec, subnet_ids: Sequence[str]) -> list[str]:
    if len(subnet_ids) < SUBNETS:
        raise SpecError(f"stack {spec.name}: the default VPC has {len(subnet_ids)} subnet(s); the "
                        f"routers and the public load balancer need {SUBNETS} in two zones. To "
                        "fix: add a default subnet in another zone (`aws ec2 create-default-subnet`)")
    return sorted(subnet_ids)[:SUBNETS]


@dataclass(frozen=True)
class RouterPin:
    """The router's pinned wheels in S3, as IAM names them."""

    bucket: str
    key_prefix: str  # <prefix>/sha256-<hex>, no trailing '/'

    @classmethod
    def of(cls, spec: StackSpec) -> RouterPin:
        uri = spec.router.artifact
        assert uri is not None and uri.startswith("s3://")  # the render refused anything else
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return cls(bucket, key.strip("/"))


def parameter(spec: StackSpec, internal_dns: pulumi.Output[str]) -> aws.ssm.Parameter:
    """The router config: the rollout's weights, the internal listener of each variant."""
    def text(dns: str) -> str:
        return config_text(router_config(spec, {v: f"http://{dns}:{internal_port(v)}" for v in Variant}))

    name = f"qinfra-{spec.name}-router-config"
    return aws.ssm.Parameter(name, name=parameter_name(spec.name), type="String", tier="Standard",
                             # insecure_value: the weights show in plain text in a preview diff
                             insecure_value=internal_dns.apply(text),
                             tags={"Name": name, "qinfra:stack": spec.name})


def policy_document(pin: RouterPin, parameter_arn: str) -> str:
    """The routers' only permissions: read their config parameter and their pinned wheels."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadRouterConfig", "Effect": "Allow", "Action": "ssm:GetParameter",
         "Resource": parameter_arn},
        {"Sid": "ReadRouterWheels", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": f"arn:aws:s3:::{pin.bucket}/{pin.key_prefix}/*"},
        {"Sid": "ListRouterWheels", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{pin.bucket}",
         "Condition": {"StringLike": {"s3:prefix": [pin.key_prefix, f"{pin.key_prefix}/*"]}}},
    ]}, sort_keys=True)


def instance_profile(spec: StackSpec, config: aws.ssm.Parameter) -> aws.iam.InstanceProfile:
    name = f"qinfra-{spec.name}-router"
    tags = {"Name": name, "qinfra:stack": spec.name}
    role = aws.iam.Role(name, tags=tags, assume_role_policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                       "Principal": {"Service": "ec2.amazonaws.com"}}],
    }))
    pin = RouterPin.of(spec)
    aws.iam.RolePolicy(name, role=role.id, policy=config.arn.apply(lambda a: policy_document(pin, a)))
    return aws.iam.InstanceProfile(name, role=role.name, tags=tags)


def router_ami() -> aws.ec2.AwaitableGetAmiResult:
    return aws.ec2.get_ami(most_recent=True, owners=["amazon"], filters=[
        {"name": "name", "values": [ROUTER_AMI_NAME]},
        {"name": "architecture", "values": ["x86_64"]},
        {"name": "state", "values": ["available"]},
    ])


@dataclass(frozen=True)
class RouterFleet:
    """What the router group needs from the rest of the stack."""

    user_data: str
    security_group: aws.ec2.SecurityGroup
    subnets: Sequence[str]
    vpc_id: str


def fleet(spec: StackSpec, routers: RouterFleet, config: aws.ssm.Parameter,
          tags: Mapping[str, str]) -> aws.lb.TargetGroup:
    """The router machines and the target group the public listener forwards to. Their launch
    template holds no weight: a rollback changes the parameter, not the machines."""
    import base64

    name = f"qinfra-{spec.name}-router"
    ami = router_ami()
    profile = instance_profile(spec, config)
    template = aws.ec2.LaunchTemplate(
        name, image_id=ami.id, instance_type=ROUTER_INSTANCE_TYPE,
        user_data=base64.b64encode(routers.user_data.encode()).decode(),
        iam_instance_profile={"arn": profile.arn},
        vpc_security_group_ids=[routers.security_group.id],
        metadata_options={"http_endpoint": "enabled", "http_tokens": "required",
                          "http_put_response_hop_limit": 1},
        block_device_mappings=[{"device_name": ami.root_device_name, "ebs": {
            "volume_size": ROUTER_ROOT_GIB, "volume_type": "gp3", "encrypted": "true",
            "delete_on_termination": "true"}}],
        update_default_version=True,
        tag_specifications=[{"resource_type": kind, "tags": dict(tags)}
                            for kind in ("instance", "volume")],
        tags=dict(tags))
    group = aws.lb.TargetGroup(
        f"qinfra-{spec.name}-rt"[:24], port=ROUTER_PORT, protocol="HTTP", target_type="instance",
        vpc_id=routers.vpc_id, deregistration_delay=min(generation_s(spec), MAX_DEREGISTRATION_S),
        health_check={"path": HEALTH_PATH, "port": "traffic-port", "protocol": "HTTP",
                      "matcher": "200", "interval": 10, "timeout": 5, "healthy_threshold": 2,
                      "unhealthy_threshold": 3},
        tags=dict(tags))
    aws.autoscaling.Group(
        name, min_size=ROUTER_REPLICAS, max_size=ROUTER_REPLICAS, desired_capacity=ROUTER_REPLICAS,
        wait_for_elb_capacity=ROUTER_REPLICAS,
        wait_for_capacity_timeout=f"{math.ceil(ROUTER_BOOT_S / 60) + 5}m",
        health_check_type="ELB", health_check_grace_period=ROUTER_BOOT_S,
        vpc_zone_identifiers=list(routers.subnets),
        launch_template={"id": template.id, "version": template.latest_version.apply(str)},
        target_group_arns=[group.arn],
        instance_refresh={"strategy": "Rolling",
                          "preferences": {"min_healthy_percentage": 100, "max_healthy_percentage": 200}},
        tags=[{"key": k, "value": v, "propagate_at_launch": True} for k, v in tags.items()],
        opts=pulumi.ResourceOptions(depends_on=[config]))
    return group


def internal_listeners(spec: StackSpec, balancer: aws.lb.LoadBalancer,
                       groups: Mapping[Variant, Sequence[aws.lb.TargetGroup]]) -> None:
    """One listener per variant on the internal load balancer, spreading over the variant's
    engine ports alike."""
    for variant, targets in groups.items():
        forward: dict[str, Any] = {"target_groups": [{"arn": g.arn, "weight": 1} for g in targets]}
        aws.lb.Listener(
            f"qinfra-{spec.name}-{variant}", load_balancer_arn=balancer.arn,
            port=internal_port(variant), protocol="HTTP",
            default_actions=[{"type": "forward", "forward": forward}],
            tags={"Name": f"qinfra-{spec.name}-{variant}", "qinfra:stack": spec.name,
                  "qinfra:variant": str(variant)})
