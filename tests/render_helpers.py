"""Stacks, plans and script extraction shared by the rendering tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from qinfra.core import modelinfo
from qinfra.core.hardware import catalog
from qinfra.core.spec import Encrypted, StackSpec, load_stack, parse_config
from qinfra.planning.sizing import StackPlan, plan_stack

ROOT = Path(__file__).resolve().parents[1]
STACKS = ROOT / "stacks"
LLAMA_8B = ROOT / "tests" / "data" / "models" / "llama-3.1-8b"
# Fixed artifact ids, so golden files do not change when a real push would.
PINS = {"baseline": "sha256-" + "a" * 64, "quantized": "sha256-" + "b" * 64}
SECRET = "v1:TOP-SECRET-CIPHERTEXT-do-not-render"
# The router's pinned wheels (aws) and image (kubernetes), fixed like PINS.
ROUTER_PIN = "sha256-" + "c" * 64
ROUTER_IMAGE = "ghcr.io/acme/qinfra-router@sha256:" + "d" * 64


def load_yaml(text: str) -> Any:
    return YAML(typ="safe").load(text)


def pinned(spec: StackSpec, store: str | None = None) -> StackSpec:
    """The spec with both variants and the router pinned as `qinfra artifacts push --stack`
    would pin them (and the router's image as a user sets it)."""
    store = store or spec.artifacts.store
    variants = spec.variants.model_copy(update={
        name: getattr(spec.variants, name).model_copy(update={"artifact": f"{store}/{aid}/"})
        for name, aid in PINS.items()
    })
    router = spec.router.model_copy(update={"artifact": f"{store}/{ROUTER_PIN}/",
                                            "image": ROUTER_IMAGE})
    return spec.model_copy(update={"variants": variants, "router": router})


def with_api_key(spec: StackSpec) -> StackSpec:
    return spec.model_copy(update={"api_key": Encrypted(secure=SECRET)})


def plan_for(spec: StackSpec) -> StackPlan:
    """Plan offline: the demo model by name, a local checkpoint or GGUF (the local stacks'
    SmolLM2) from its files, the hub ids of the examples by their config copy."""
    local = (spec.model.id == modelinfo.DEMO_MODEL_ID
             or Path(spec.local_source(spec.model.id)).exists())
    source = spec.model.id if local else str(LLAMA_8B)
    return plan_stack(spec, modelinfo.load(source, spec.model.revision, root=spec.root), catalog())


def example(stack: str) -> tuple[StackSpec, StackPlan]:
    """A shipped example stack, pinned, and its plan."""
    spec = pinned(load_stack(stack, STACKS))
    return spec, plan_for(spec)


def vllm_stack(target: str, baseline: str, quantized: str, gpus: list[str],
               kv_cache_dtype: str = "auto", model: str = "meta-llama/Llama-3.1-8B-Instruct",
               engine: str = "vllm", **serving: Any) -> StackSpec:
    """A validated ad-hoc stack for combinations the examples do not cover."""
    config = {
        "aws:region": "us-west-2",
        "kubernetes:namespace": "models",
        "qinfra:target": target,
        "qinfra:model": {"id": model, "served_name": "llm"},
        "qinfra:artifacts": {"store": "s3://bucket/prefix"},
        "qinfra:variants": {"baseline": {"format": baseline}, "quantized": {"format": quantized}},
        "qinfra:serving": {"engine": engine, "max_model_len": 4096, "concurrency": 16,
                           "kv_cache_dtype": kv_cache_dtype, **serving},
        "qinfra:fleet": {"gpus": gpus},
        "qinfra:rollout": {"stage": "ab_test", "quantized_percent": 10},
    }
    return pinned(parse_config(config, "adhoc"))


def scripts(files: dict[Path, str]) -> dict[str, str]:
    """Every shell script in a render, keyed `<variant>/<name>`: local files, cloud-init
    write_files entries and ConfigMap keys."""
    out: dict[str, str] = {}
    for rel, text in files.items():
        variant = rel.parts[0]
        if rel.suffix == ".sh":
            out[f"{variant}/{rel.name}"] = text
        elif rel.name == "user-data.yaml":
            for entry in load_yaml(text)["write_files"]:
                if entry["path"].endswith(".sh"):
                    out[f"{variant}/{Path(entry['path']).name}"] = entry["content"]
        elif rel.name == "configmap.yaml":
            for name, content in load_yaml(text)["data"].items():
                out[f"{variant}/{name}"] = content
    return out


def launch_command(script: str, program: str) -> list[str]:
    """The argv of the script's `exec <program> ...` line, continuation lines joined."""
    import shlex

    joined = script.replace("\\\n", " ")
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words[:2] == ["exec", program] or (words and words[0] == "exec" and program in words[1]):
            return words[1:]
    raise AssertionError(f"no `exec {program}` line in:\n{script}")
