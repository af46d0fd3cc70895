"""The stack-file keys qinfra itself writes (rollouts, pins, the gate), spelled once: an edit,
a history reading and an error message all name the same key."""

from __future__ import annotations

NAMESPACE = "qinfra"
ROLLOUT = f"{NAMESPACE}:rollout"
ROLLOUT_STAGE = f"{ROLLOUT}.stage"
ROLLOUT_PERCENT = f"{ROLLOUT}.quantized_percent"
VARIANTS = f"{NAMESPACE}:variants"
GATE = f"{NAMESPACE}:gate"
GATE_SKIP = f"{GATE}.skip"  # what --skip-gate writes (GateSpec.skip)
GATE_REPORT = f"{VARIANTS}.quantized.gate"  # what `qinfra gate --stack` pins
ROUTER_ARTIFACT = f"{NAMESPACE}:router.artifact"  # the router's wheels, pinned by every push


def variant_key(variant: str) -> str:
    """qinfra:variants.<variant>: the block a variant's fields live under."""
    return f"{VARIANTS}.{variant}"


def artifact_key(variant: str) -> str:
    """Where `qinfra artifacts push` pins a variant's content-addressed artifact."""
    return f"{variant_key(variant)}.artifact"
