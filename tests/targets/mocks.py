"""Pulumi mocks that record every resource the program registers, and shipped stacks as config."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pulumi
from pulumi.runtime import settings
from ruamel.yaml import YAML

from tests.render_helpers import LLAMA_8B, PINS, ROUTER_IMAGE, ROUTER_PIN, STACKS

API_KEY = "sk-qinfra-test-key"  # plain text only inside Pulumi, as a secret config value
REGION = "us-east-1"
AMI_ID = "ami-0123456789abcdef0"
VPC_ID = "vpc-0default"
SUBNETS = ["subnet-0a", "subnet-0b", "subnet-0c"]
AMI_ROOT_GIB = 75

# What the provider functions return; keys as the providers' schemas name them.
INVOKES: dict[str, dict[str, Any]] = {
    "aws:ec2/getAmi:getAmi": {
        "id": AMI_ID,
        "imageId": AMI_ID,
        "name": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20250601",
        "architecture": "x86_64",
        "rootDeviceName": "/dev/sda1",
        "blockDeviceMappings": [
            {"deviceName": "/dev/sda1", "ebs": {"volume_size": str(AMI_ROOT_GIB), "volume_type": "gp3"}},
        ],
    },
    "aws:ec2/getVpc:getVpc": {"id": VPC_ID, "default": True, "cidrBlock": "172.31.0.0/16"},
    "aws:ec2/getSubnets:getSubnets": {"id": REGION, "ids": SUBNETS},
    "aws:index/getRegion:getRegion": {"id": REGION, "region": REGION, "name": REGION},
}


def _outputs(typ: str, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """What a provider would add to the inputs: ARNs, names it generates, a DNS name."""
    extra: dict[str, Any] = {"name": inputs.get("name", name)}
    if typ.startswith("aws:"):
        extra["arn"] = f"arn:aws:{typ.split(':')[1].split('/')[0]}:{REGION}:123456789012:{name}"
    if typ == "aws:lb/loadBalancer:LoadBalancer":
        extra["dnsName"] = f"{name}-1234567890.{REGION}.elb.amazonaws.com"
    if typ == "aws:ec2/launchTemplate:LaunchTemplate":
        extra["latestVersion"] = 1
    return {**extra, **inputs}


@dataclass(frozen=True)
class Recorded:
    typ: str
    name: str
    inputs: dict[str, Any]


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    resources: list[Recorded] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    evidence: list[Recorded] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        # the gate's evidence for the policy pack is no infrastructure: kept apart
        kept = self.evidence if args.typ == "qinfra:quality:GateEvidence" else self.resources
        kept.append(Recorded(args.typ, args.name, dict(args.inputs)))
        return f"{args.name}-id", _outputs(args.typ, args.name, args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]] | dict[str, Any]:
        self.calls.append((args.token, dict(args.args)))
        return INVOKES[args.token]


@dataclass(frozen=True)
class Run:
    """One program run: every registered resource, in order, and the resolved stack outputs."""

    resources: list[Recorded]
    exports: dict[str, Any]
    calls: list[tuple[str, dict[str, Any]]]
    evidence: list[Recorded] = field(default_factory=list)  # qinfra:quality:GateEvidence

    def of(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str, contains: str = "") -> Recorded:
        found = [r for r in self.of(typ) if contains in r.name]
        assert len(found) == 1, f"{len(found)} {typ} named *{contains}*: {[r.name for r in found]}"
        return found[0]

    def by_key(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r.typ, r.name): r.inputs for r in self.resources}


def stack_config(stack: str, stage: str, percent: int, **overrides: Any) -> dict[str, Any]:
    """A shipped stack's config, pinned as `qinfra artifacts push` pins it (the router too), the
    model read from its reference config.json, at the given rollout stage."""
    config = dict(YAML(typ="safe").load((STACKS / f"Pulumi.{stack}.yaml").read_text())["config"])
    config["qinfra:model"] = {**config["qinfra:model"], "id": str(LLAMA_8B)}
    store = config["qinfra:artifacts"]["store"]
    config["qinfra:variants"] = {
        name: {**spec, "artifact": f"{store}/{PINS[name]}/"}
        for name, spec in config["qinfra:variants"].items()
    }
    config["qinfra:router"] = {**config.get("qinfra:router", {}), "artifact": f"{store}/{ROUTER_PIN}/",
                               "image": ROUTER_IMAGE}
    config["qinfra:rollout"] = {"stage": stage, "quantized_percent": percent}
    # no gate report here: the skip `--skip-gate` records (tests/test_gate_enforcement.py
    # proves the refusal without it)
    config["qinfra:gate"] = {"skip": config["qinfra:variants"]["quantized"]["artifact"]}
    config.update(overrides)
    return config


def run_program(stack: str, config: Mapping[str, Any], secret_keys: tuple[str, ...] = ()) -> Run:
    """qinfra.deploy.program.main() under fresh mocks and config, as `pulumi up` would run it."""
    from qinfra.deploy import program
    # Pulumi's mocks run on the thread's current event loop; a test before this one that used
    # asyncio.run() leaves none set (asyncio.run clears it), so give each run its own.
    asyncio.set_event_loop(asyncio.new_event_loop())
    settings.ROOT.set(None)  # a fresh root stack resource per run; mocks are process-wide
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="qinfra", stack=stack, preview=False)
    pulumi.runtime.set_all_config(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}, list(secret_keys))
    exported: dict[str, Any] = {}
    resolved: dict[str, Any] = {}

    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        program.main()
        return pulumi.Output.from_input(exported).apply(resolved.update)

    try:
        with mock.patch.object(pulumi, "export", exported.__setitem__):
            run()
    finally:
        pulumi.runtime.set_all_config({}, [])
    return Run(mocks.resources, resolved, mocks.calls, mocks.evidence)


def walk(value: Any) -> Iterator[Any]:
    """Every leaf of a nested input value (to look for plain-text secrets)."""
    if isinstance(value, Mapping):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from walk(item)
    else:
        yield value


def changes(old: Any, new: Any, path: str = "") -> list[str]:
    """Paths where two recorded input values differ, e.g. `.spec.replicas`."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(old.keys() | new.keys())
                for c in changes(old.get(k), new.get(k), f"{path}.{k}")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new, strict=True))
                for c in changes(a, b, f"{path}[{i}]")]
    return [] if old == new else [path]


def changed(before: Run, after: Run) -> dict[tuple[str, str], list[str]]:
    """Per resource (type, name) whose inputs differ between two runs, the paths that do."""
    old, new = before.by_key(), after.by_key()
    assert old.keys() == new.keys(), sorted(old.keys() ^ new.keys())
    out = {key: changes(old[key], new[key]) for key in old}
    return {key: paths for key, paths in out.items() if paths}
