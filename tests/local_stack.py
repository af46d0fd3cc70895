"""The shipped local stack turned back onto the built-in tiny demo model, for tests that need a
whole local deployment fast (the real SmolLM2 stack is for the few tests that need its answers).

Only the model and the pins change: ports, router, fleet and rollout stay as shipped. The tiny
random model would fail a quality gate, so these stacks record a skip of it (qinfra:gate.skip,
as `--skip-gate` writes it), except where a test proves the gate's enforcement.
"""

from __future__ import annotations

import io
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "stacks" / "Pulumi.local.yaml"
# What `qinfra artifacts push` makes from the demo model (content-addressed: the same everywhere).
DEMO_PINS = {
    "baseline": "sha256-d0491170f1000b2bffe3fefd5796cfec80c35ed4c2dc0d1e8af53ea9b64c9494",
    "quantized": "sha256-b2cc860a29874bce0927b848e1ece8af3b3fe9592fbfe3c0bf094598b8ea9061",
}


def local_stack(port: int, store: str, demo: bool = True, skip_gate: bool = True) -> str:
    """The local stack's text with the router on `port` (engines on port + 1, + 2), artifacts
    in `store` (file://...), with `demo` the demo model instead of SmolLM2, and with
    `skip_gate` the quantized artifact let through the quality gate (recorded)."""
    yaml = YAML()
    doc = yaml.load(SHIPPED.read_text())
    config = doc["config"]
    config["qinfra:artifacts"]["store"] = store
    config["qinfra:serving"]["port"] = port
    for name, variant in config["qinfra:variants"].items():
        pinned = str(variant.get("artifact", "")).rstrip("/").rsplit("/", 1)[-1]
        if demo:
            pinned = DEMO_PINS[name]
        variant["artifact"] = f"{store}/{pinned}/"
    if demo:
        config["qinfra:model"]["id"] = "qinfra-demo"
        config["qinfra:model"]["served_name"] = "qinfra-demo"
    if skip_gate:
        # by content id alone (the URI would repeat the store in the text)
        config["qinfra:gate"] = {"skip": config["qinfra:variants"]["quantized"]["artifact"]
                                 .rstrip("/").rpartition("/")[2]}
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()
