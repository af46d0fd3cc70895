"""The stack config schema (everything under `qinfra:` in stacks/Pulumi.<stack>.yaml) and loading."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from qinfra.core import spec_problems
from qinfra.core.analysis_spec import DEFAULT_STEPS, AnalysisSpec, valid_steps
from qinfra.core.artifact_uri import parse_artifact_uri, parse_store_uri
from qinfra.core.engines import engines_where, serves_on_cpu, traits
from qinfra.core.errors import SpecError, suggest
from qinfra.core.formats import (
    VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
    Engine,
    Format,
    FormatKind,
    KvCacheDtype,
    engine_loads,
    format_info,
    formats_loaded_by,
)
from qinfra.core.recipes import RecipeSpec, recipe_problem
from qinfra.core.spec_problems import FieldError
from qinfra.core.spec_sections import GateSpec, KubernetesSpec, RouterSpec
from qinfra.core.spec_types import Number, SpecModel, Whole

NAMESPACE = "qinfra"
STACKS_DIR_ENV = "QINFRA_STACKS_DIR"
MAX_PORT = 65535



class Target(StrEnum):
    LOCAL = "local"
    AWS = "aws"
    KUBERNETES = "kubernetes"


class Stage(StrEnum):
    BASELINE_ONLY = "baseline_only"
    AB_TEST = "ab_test"
    GRADUAL = "gradual"
    FULL = "full"
    ROLLBACK = "rollback"


class Variant(StrEnum):
    """The two artifacts every stack deploys; iteration order is the order everything is shown in."""

    BASELINE = "baseline"
    QUANTIZED = "quantized"

    @property
    def kind(self) -> FormatKind:
        """The format kind this variant must use (formats.toml's `kind`)."""
        return FormatKind(self.value)


def traffic_percent(stage: Stage, quantized_percent: int) -> dict[Variant, int]:
    """Each variant's share of live traffic: the rollout's quantized share (none while the stage
    is baseline_only or rollback), the rest to the baseline. Targets, history and the planner's
    fleet shares all read this one rule."""
    quantized = 0 if stage in (Stage.ROLLBACK, Stage.BASELINE_ONLY) else quantized_percent
    return {Variant.BASELINE: 100 - quantized, Variant.QUANTIZED: quantized}


class Encrypted(BaseModel):
    """A `secure:` value as Pulumi stores it; qinfra never decrypts it, Pulumi does."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    secure: str

    def __repr__(self) -> str:
        return "Encrypted(<secret>)"

    __str__ = __repr__


_Model = SpecModel


class ModelSpec(_Model):
    id: str = Field(description="Hub id (owner/name), a local dir holding config.json, a .gguf "
                    "file, or 'qinfra-demo' for the built-in tiny model.", min_length=1)
    revision: str = Field("main", description="Hub revision (branch, tag or commit).")
    served_name: str | None = Field(None, description="Model name the OpenAI API answers to.")


class ArtifactsSpec(_Model):
    store: str = Field(description="Where artifacts live: s3://bucket/prefix or file:///abs/path.")
    create_bucket: bool = Field(True, description="aws target: create the store's S3 bucket "
                                "(versioned, encrypted, private); false when it exists already.")

    @field_validator("store")
    @classmethod
    def _store_uri(cls, v: str) -> str:
        return parse_store_uri(v)


class VariantSpec(_Model):
    format: Format = Field(description="Weight format of this variant.")
    source: str | None = Field(None, description="Where the weights come from (hub id, dir or "
                               "file); default model.id. A gguf-* quantized variant with no "
                               "source is quantized from the baseline.")
    recipe: RecipeSpec | None = Field(None, description="How `qinfra artifacts push` makes "
                                      "the artifact from `source` (default model.id): gguf, "
                                      "llm-compressor or dequantize, recorded in its manifest.")
    artifact: str | None = Field(None, description="Pinned artifact URI, written by "
                                 "`qinfra artifacts push --stack`.")

    gate: str | None = Field(None, description="Pinned gate report URI (quantized variant "
                             "only), written by `qinfra gate --stack`.")

    @field_validator("artifact")
    @classmethod
    def _artifact_uri(cls, v: str | None) -> str | None:
        if v is not None:
            parse_artifact_uri(v)  # ValueError: pydantic reports the key, the value and the shape
        return v

    @field_validator("gate")
    @classmethod
    def _gate_uri(cls, v: str | None) -> str | None:
        if v is not None and not _GATE_REPORT_URI.match(v):
            raise ValueError("must be <store>/gate/sha256-<64 hex digits>.json. To fix: pin it "
                             "with `qinfra gate --stack`")
        return v


# Where `qinfra gate` keeps a report (qinfra/quality/gate_report.py writes it).
_GATE_REPORT_URI = re.compile(r"^(s3://[^/]+|file://)/.*gate/sha256-[0-9a-f]{64}\.json$")


class VariantsSpec(_Model):
    baseline: VariantSpec
    quantized: VariantSpec

    def of(self, variant: Variant) -> VariantSpec:
        """The typed accessor: one place maps a `Variant` to its field."""
        return self.baseline if variant is Variant.BASELINE else self.quantized

    def pairs(self) -> tuple[tuple[Variant, VariantSpec], ...]:
        return tuple((v, self.of(v)) for v in Variant)

    @model_validator(mode="after")
    def _kinds(self) -> VariantsSpec:
        if self.baseline.gate is not None:
            raise FieldError(("baseline", "gate"), self.baseline.gate,
                             "nothing: the gate report is pinned on the quantized variant")
        for name, variant in self.pairs():
            want, fmt = name.kind, variant.format
            if format_info(fmt).kind is not want:
                allowed = [f.value for f in Format if format_info(f).kind is want]
                raise FieldError(
                    (name, "format"), fmt.value, f"a {want.value} format: {', '.join(allowed)}"
                )
            if variant.recipe is not None and (
                    problem := recipe_problem(variant.recipe, fmt, variant.source)):
                field, value, allowed_ = problem
                raise FieldError((name, "recipe", field), value, allowed_)
        return self


class ServingSpec(_Model):
    engine: Engine = Field(description="Serving engine.")
    max_model_len: Whole = Field(ge=16, le=10_000_000, description="Longest request (prompt + "
                               "output tokens) every replica must accept.")
    concurrency: Whole = Field(ge=1, le=1_000_000, description="Sequences at max_model_len the "
                             "whole fleet must hold at once.")
    gpu_memory_utilization: Number = Field(VLLM_DEFAULT_GPU_MEMORY_UTILIZATION, gt=0.0, le=0.99,
                                          description="vLLM's share of "
                                          "each GPU's total memory.")
    kv_cache_dtype: KvCacheDtype = Field(KvCacheDtype.AUTO, description="auto (model dtype) or "
                                         "fp8 (1 byte per element).")
    max_num_batched_tokens: Whole | None = Field(None, ge=16, description="vLLM's prefill chunk; "
                                               "default by GPU class as vLLM does.")
    port: Whole = Field(8000, ge=1, le=MAX_PORT, description="Port the engine listens on "
                        "(target local: the router, the stack's front door; the baseline "
                        "engine takes port + 1, the quantized one port + 2 and, when "
                        "qinfra:analysis asks for one, Prometheus port + 3).")

    def local_port(self, variant: Variant) -> int:
        """Where a variant's engine listens when all share one host (target local): behind the
        router on `port`, the baseline on the next port and the quantized variant after it."""
        return self.port + 1 + list(Variant).index(variant)


class CpuSpec(_Model):
    memory_gib: Number = Field(gt=0, description="RAM one engine may use on the host (vLLM: "
                               "its KV space is what is left after weights and runtime, in whole GiB).")
    threads: Whole = Field(ge=1, le=1024, description="--threads for llama-server; the cores "
                           "vLLM's CPU build binds its OpenMP threads to.")


class FleetSpec(_Model):
    gpus: list[str] = Field(default_factory=list, description="GPU models the planner may "
                            "choose from (see `qinfra plan --help`).")
    cpu: CpuSpec | None = Field(None, description="Serve on CPU RAM (llama.cpp, or vLLM's CPU build).")
    max_tensor_parallel: Whole = Field(8, ge=1, le=8, description="Largest tensor-parallel size.")

    @field_validator("gpus")
    @classmethod
    def _known(cls, gpus: list[str]) -> list[str]:
        from qinfra.core.hardware import catalog

        known = catalog().gpus
        for i, name in enumerate(gpus):
            if name not in known:
                raise FieldError(
                    (i,), name, f"one of {', '.join(known)}.{suggest(name, known)}"
                )
        return gpus

    @model_validator(mode="after")
    def _something(self) -> FleetSpec:
        if not self.gpus and self.cpu is None:
            raise ValueError("give gpus: [...] or cpu: {memory_gib, threads}")
        return self


class RolloutSpec(_Model):
    stage: Stage = Field(description="Where the quantized variant is in its rollout.")
    quantized_percent: Annotated[Whole, Field(ge=0, le=100)] = Field(
        description="Share of traffic sent to the quantized variant."
    )
    steps: list[Annotated[Whole, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: list(DEFAULT_STEPS),
        description="Quantized traffic percentages `qinfra rollout --auto` walks, ending at 100.")

    @field_validator("steps")
    @classmethod
    def _rising(cls, v: list[int]) -> list[int]:
        return valid_steps(v)

    def traffic_percent(self) -> dict[Variant, int]:
        """Each variant's share of live traffic at this stage (see `traffic_percent`)."""
        return traffic_percent(self.stage, self.quantized_percent)

    @model_validator(mode="after")
    def _stage_percent(self) -> RolloutSpec:
        allowed = _STAGE_PERCENT[self.stage]
        if self.quantized_percent not in allowed:
            lo, hi = allowed.start, allowed.stop - 1
            want = str(lo) if lo == hi else f"{lo}..{hi}"
            raise FieldError(
                ("quantized_percent",),
                self.quantized_percent,
                f"{want} in stage {self.stage.value}",
            )
        return self


_STAGE_PERCENT: dict[Stage, range] = {
    Stage.BASELINE_ONLY: range(0, 1),
    Stage.ROLLBACK: range(0, 1),
    Stage.AB_TEST: range(1, 100),
    Stage.GRADUAL: range(1, 100),
    Stage.FULL: range(100, 101),
}


class StackSpec(_Model):
    """One stack: one model as a baseline and a quantized variant."""

    name: str
    target: Target
    model: ModelSpec
    artifacts: ArtifactsSpec
    variants: VariantsSpec
    serving: ServingSpec
    fleet: FleetSpec
    rollout: RolloutSpec
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec, description="Settings "
                                       "of the kubernetes target.")
    gate: GateSpec = Field(default_factory=GateSpec, description="Quality gate thresholds "
                           "(overriding the shipped table) and a recorded --skip-gate.")
    router: RouterSpec = Field(default_factory=RouterSpec, description="The traffic router "
                               "(target local): sticky key, salt, shadow share, bounds.")
    analysis: AnalysisSpec | None = Field(None, description="How `qinfra rollout --auto` judges "
                                          "each step from Prometheus; target local also runs "
                                          "a Prometheus for it.")
    backend: str | None = Field(None, description="Pulumi state backend of this stack: "
                                "s3://bucket/prefix (shared state and locks for a team) or "
                                "file:///abs/path; default .qinfra/state; PULUMI_BACKEND_URL wins.")
    api_key: Encrypted | None = Field(None, description="API key the engines require; a "
                                      "Pulumi secret (`pulumi config set --secret`).")
    hf_token: Encrypted | None = Field(None, description="Hub token for gated models; a "
                                       "Pulumi secret.")
    provider_config: dict[str, Any] = Field(default_factory=dict, description="Other "
                                            "namespaces' keys (aws:region, kubernetes:...).")
    path: Path | None = None
    root: Path | None = Field(None, description="The project root (the folder holding "
                              "Pulumi.yaml): relative model and source paths start here.")

    def ports(self) -> range:
        """Every port the target listens on from the stack file alone: on target local the
        router and both variants' engines share one host, side by side (`ServingSpec.local_port`)."""
        if self.target is Target.LOCAL:
            prometheus = 1 if self.local_prometheus() else 0
            return range(self.serving.port, self.serving.port + 1 + len(Variant) + prometheus)
        return range(self.serving.port, self.serving.port + 1)

    def local_prometheus(self) -> bool:
        """Target local runs its own Prometheus (after the engines' ports) when the analysis
        asks for metrics and names no server of its own."""
        return (self.target is Target.LOCAL and self.analysis is not None
                and self.analysis.prometheus_url is None)

    def prometheus_url(self) -> str | None:
        """Where the analysis reads the router's metrics: the configured server, else the local
        target's own on the port after the engines."""
        if self.analysis is None:
            return None
        if self.analysis.prometheus_url is not None:
            return self.analysis.prometheus_url
        if self.local_prometheus():
            return f"http://127.0.0.1:{self.serving.port + 1 + len(Variant)}"
        return None

    def local_source(self, source: str) -> str:
        """`source` (model.id or a variant's source) with a relative local path made absolute
        against the project root, as the CLI and the Pulumi program must both read it."""
        from qinfra.core.modelinfo import resolve_path

        return resolve_path(source, self.root)

    @model_validator(mode="after")
    def _combinations(self) -> StackSpec:
        engine = self.serving.engine
        for name, variant in self.variants.pairs():
            fmt = variant.format
            if not engine_loads(engine, fmt):
                loads = [f.value for f in formats_loaded_by(engine)]
                raise FieldError(
                    ("variants", name, "format"),
                    fmt.value,
                    f"a format {engine.value} loads: {', '.join(loads)}",
                )
        if self.fleet.cpu is not None and not traits(engine).cpu_fleet:
            raise FieldError(("fleet", "cpu"), "cpu",
                             f"only with serving.engine {engines_where(lambda e: e.cpu_fleet)}")
        if self.fleet.cpu is not None and not self.fleet.gpus:
            for name, variant in self.variants.pairs():
                if not serves_on_cpu(engine, variant.format):
                    allowed = ", ".join(sorted(traits(engine).cpu_formats or ()))
                    near = [f.value for f in format_info(variant.format).equivalents
                            if serves_on_cpu(engine, f) and engine_loads(engine, f)]
                    nearest = f"; nearest: {near[0]}" if near else ""
                    raise FieldError(("variants", name, "format"), variant.format.value,
                                     f"a format {engine.value}'s CPU build serves "
                                     f"(qinfra:fleet has only cpu): {allowed}{nearest}")
        if self.target is Target.LOCAL and not traits(engine).local:
            raise FieldError(("serving", "engine"), engine.value,
                             f"{engines_where(lambda e: e.local)} for target local")
        if (last := self.ports()[-1]) > MAX_PORT:
            used = len(self.ports())
            raise FieldError(("serving", "port"), self.serving.port,
                              f"1..{MAX_PORT - used + 1} for target {self.target.value}, which "
                              f"listens on {used} ports from it (the last would be {last})")
        return self

    @field_validator("backend")
    @classmethod
    def _backend_uri(cls, v: str | None) -> str | None:
        if v is None or v.startswith(("s3://", "file:///")):
            return v
        raise ValueError("must be s3://bucket[/prefix] or file:///absolute/path")


_SECRET_KEYS = {"api_key", "hf_token"}
_FIELDS = [k for k in StackSpec.model_fields
           if k not in {"name", "path", "root", "provider_config"}]


def parse_config(
    config: Mapping[str, Any], stack: str, path: Path | None = None, root: Path | None = None
) -> StackSpec:
    """Validate a stack's config mapping (keys `qinfra:...` and other namespaces); `root` is
    the project root relative paths start from (default: the one holding `path`).

    Raises SpecError naming every bad key path with its value and what is allowed.
    """
    ours: dict[str, Any] = {}
    others: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in config.items():
        ns, _, sub = str(key).partition(":")
        if ns != NAMESPACE:
            others[str(key)] = value
        elif sub in _FIELDS:
            ours[sub] = value
        else:
            problems.append(f"{spec_problems.shown_text(str(key))}: unknown key."
                            f"{suggest(sub[:spec_problems.MAX_SHOWN], _FIELDS)} Known: "
                            + ", ".join(f"{NAMESPACE}:{k}" for k in _FIELDS))
    for key in _SECRET_KEYS & ours.keys():
        if not (isinstance(ours[key], Mapping) and "secure" in ours[key]):
            problems.append(f"{NAMESPACE}:{key}: must be a secret, not plain text; run "
                            f"`pulumi config set --secret {NAMESPACE}:{key}` --stack {stack}")
            ours.pop(key)
    try:
        root = root or (project_root(path) if path else None)
        spec = StackSpec(name=stack, provider_config=others, path=path, root=root, **ours)
    except ValidationError as exc:
        problems.extend(spec_problems.problems(exc, ours, StackSpec, NAMESPACE))
    if problems:
        raise SpecError(spec_problems.report(stack, path, problems))
    return spec


def stacks_dir(start: Path | None = None) -> Path:
    """The project's stacks/ folder: $QINFRA_STACKS_DIR, else found upward from the cwd."""
    if env := os.environ.get(STACKS_DIR_ENV):
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "Pulumi.yaml").is_file() and (folder / "stacks").is_dir():
            return folder / "stacks"
    return here / "stacks"


def project_root(stack_file: Path) -> Path:
    """The project a stack file belongs to: the nearest folder above it holding Pulumi.yaml,
    else the stack file's parent's parent (stackConfigDir: stacks)."""
    folder = stack_file.resolve().parent
    for candidate in (folder, *folder.parents):
        if (candidate / "Pulumi.yaml").is_file():
            return candidate
    return folder.parent


def stack_path(stack: str, directory: Path | None = None) -> Path:
    return (directory or stacks_dir()) / f"Pulumi.{stack}.yaml"


def load_stack(stack: str, directory: Path | None = None) -> StackSpec:
    """Load and validate stacks/Pulumi.<stack>.yaml; secure values stay encrypted."""
    from ruamel.yaml import YAML, YAMLError

    path = stack_path(stack, directory)
    if not path.is_file():
        known = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in path.parent.glob("Pulumi.*.yaml"))
        raise SpecError(
            f"no stack file {path}.{suggest(stack, known)} Stacks here: {', '.join(known) or 'none'}"
        )
    text = spec_problems.read_stack_text(path)
    try:
        doc = YAML(typ="safe").load(text)
    except YAMLError as exc:
        raise SpecError(f"{path} is not valid YAML: {spec_problems.shown_text(str(exc), 2000)}") from None
    except RecursionError:  # the composer recurses per level: `[` x 100,000
        raise SpecError(f"{path} nests too deep to read. To fix: flatten it") from None
    if problem := spec_problems.expansion_problem(doc):
        raise SpecError(f"{path}: {problem}")
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise SpecError(f"{path}: expected a top-level 'config:' mapping")
    return parse_config(doc["config"], stack, path)


def parse_program_config(flat: Mapping[str, str], secret_keys: Collection[str],
                         stack: str, root: Path | None = None) -> StackSpec:
    """The same validation over the config the Pulumi program is handed (every value as text).

    `secret_keys` are the keys Pulumi marks secret. qinfra's own secrets never enter the spec in
    plain text: the spec only learns that they are set (`PULUMI_HELD`), which decides what gets
    rendered, and the program reads them with `pulumi.Config.get_secret` where they are used.
    Other namespaces' keys (aws:region, kubernetes:namespace) feed the rendered files as in the
    stack file, except their secrets, which are left out.
    """
    raw: dict[str, Any] = {}
    for key in sorted(flat):
        ns, _, sub = key.partition(":")
        if ns == NAMESPACE and sub in _FIELDS:
            raw[key] = PULUMI_HELD if sub in _SECRET_KEYS else _config_value(flat[key])
        elif ns != NAMESPACE and key not in secret_keys:
            raw[key] = _config_value(flat[key])
    return parse_config(raw, stack, root=root)


# Stands in for a secret the Pulumi program reads itself (pulumi.Config.get_secret).
PULUMI_HELD = {"secure": "<held by pulumi>"}


def _config_value(text: str) -> Any:
    """Pulumi hands objects over as JSON text and scalars as plain strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


__all__ = [
    "AnalysisSpec",
    "ArtifactsSpec",
    "Encrypted",
    "FleetSpec",
    "KubernetesSpec",
    "KvCacheDtype",
    "ModelSpec",
    "RolloutSpec",
    "RouterSpec",
    "ServingSpec",
    "StackSpec",
    "Stage",
    "Target",
    "VariantSpec",
    "VariantsSpec",
    "load_stack",
    "parse_config",
    "parse_program_config",
    "project_root",
]
