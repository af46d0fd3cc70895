"""`qinfra init` below the CLI: from a model id to the text of a reviewed stack file, and the one
place that writes it (never over an existing file without `force`).

The comparison and the recommendation are planning/compare.py's (pure); this module adds what
touches the world: the model's facts (shipped, a local directory, or the hub), this machine's
memory for target local, the gate's thresholds table, and the file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qinfra.core import modelinfo
from qinfra.core.engines import Engine, traits
from qinfra.core.errors import ModelInfoError, NoFitError, SpecError
from qinfra.core.format_choice import preferences
from qinfra.core.formats import Format, FormatKind, engine_loads, format_info
from qinfra.core.hardware import catalog
from qinfra.core.hub import is_hub_id
from qinfra.core.modelinfo import DEMO_MODEL_ID, ModelInfo
from qinfra.core.spec import NAMESPACE, StackSpec, Target, parse_config, stack_path
from qinfra.planning.compare import (
    ArtifactKind,
    Comparison,
    ExpectedDrift,
    Recommendation,
    compare,
)
from qinfra.planning.sizing import StackPlan, plan_stack

TEMPLATE = "init/Pulumi.stack.yaml.j2"
# Defaults when --max-model-len / --concurrency are not given: a chat-sized context and a small
# team's load on GPUs (the examples in stacks/), and what one CPU host serves on target local.
DEFAULT_MAX_MODEL_LEN = {Target.LOCAL: 4096, Target.AWS: 8192, Target.KUBERNETES: 8192}
DEFAULT_CONCURRENCY = {Target.LOCAL: 4, Target.AWS: 32, Target.KUBERNETES: 32}
# Target local plans llama.cpp in half of this machine's RAM unless --cpu-memory-gib says more:
# the rest stays for the OS, the router and the other engine.
LOCAL_RAM_SHARE = 0.5
KUBERNETES_PROVIDER = {"kubernetes:namespace": "qinfra",
                       # the router's weights ConfigMap is edited in place (see stacks/Pulumi.k8s.yaml)
                       "kubernetes:enableConfigMapMutable": "true"}
_STACK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class InitRequest:
    """`qinfra init`'s options; None: a default from the target and the model."""

    model: str
    target: Target = Target.AWS
    stack: str | None = None
    engine: Engine | None = None
    revision: str = "main"
    max_model_len: int | None = None
    concurrency: int | None = None
    gpus: tuple[str, ...] | None = None
    cpu_memory_gib: float | None = None
    threads: int | None = None
    store: str | None = None


@dataclass(frozen=True)
class InitResult:
    """What `init` would write: the comparison always; the stack, its text and its plan when a
    pair was recommended."""

    name: str
    path: Path
    comparison: Comparison
    spec: StackSpec | None = None
    plan: StackPlan | None = None
    text: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)


def expected_drift(overrides: Mapping[str, Any] | None = None) -> dict[Format, ExpectedDrift]:
    """Each quantized format's family bar from the gate's table (with a stack's overrides)."""
    from qinfra.quality.gate_thresholds import thresholds_for

    out = {}
    for fmt in Format:
        if format_info(fmt).kind is FormatKind.QUANTIZED:
            bar = thresholds_for(fmt, overrides).expected
            out[fmt] = ExpectedDrift(thresholds_for(fmt, overrides).family, bar.mean_kld_max,
                                     bar.same_top_min)
    return out


def load_model(model_id: str, revision: str, root: Path) -> ModelInfo:
    """The model's facts; a hub id qinfra has no facts for and the hub cannot give fails in one
    line that names what to pass instead."""
    try:
        return modelinfo.load(model_id, revision, root=root)
    except ModelInfoError as exc:
        if not is_hub_id(model_id) or model_id.lower() in modelinfo.shipped_models():
            raise
        shipped = sorted({m.source for m in modelinfo.shipped_models().values()})
        why = exc.message.split(". To fix", 1)[0].replace("\n", " ")
        raise ModelInfoError(
            f"qinfra ships no facts for '{model_id}' and could not read them ({why}). To fix: "
            f"pass --model DIR, a local directory holding its config.json (or a .gguf file), or "
            f"one of {', '.join(shipped)}") from None


def plan_init(request: InitRequest, stacks: Path) -> InitResult:
    """Compare, recommend and render the stack file for `request` (nothing is written).

    Raises ModelInfoError (the model's facts), SpecError (a bad option) and NoFitError only
    for a recommended stack that fails to plan as written (a bug); a comparison with no pair
    that fits is returned with `spec` None, so the caller can show the table first.
    """
    root = stacks.resolve().parent
    info = load_model(request.model, request.revision, root)
    name = request.stack or default_stack_name(request.model)
    if not _STACK_NAME.fullmatch(name):
        raise SpecError(f"--stack '{name}': a stack name is letters, digits, '_', '.' and '-'")
    path = stack_path(name, stacks)
    config = _draft_config(request, info, name, root)
    draft = parse_config(config, name, root=root)
    engines = (request.engine,) if request.engine else ()
    comparison = compare(draft, info, catalog(), expected_drift(), engines)
    rec = comparison.recommendation
    if rec is None:
        return InitResult(name, path, comparison)
    final = _final_config(config, draft, rec)
    spec = parse_config(final, name, root=root)
    text = render_stack_file(spec, rec, final)
    _check_round_trip(text, spec, name, root)
    plan = plan_stack(spec, info, catalog())
    if not plan.fits:
        refused = "; ".join(r for v in plan.variants for r in v.refused[:1])
        raise NoFitError(f"the recommended stack {name} does not plan as written ({refused}); "
                         "this is a bug in qinfra init. To fix: pass --gpus or --engine")
    return InitResult(name, path, comparison, spec, plan, text, final)


def write_stack_file(path: Path, text: str, force: bool) -> None:
    """Write the stack file; an existing one only with `force` (checked again at the write,
    with an exclusive create, so a file that appeared meanwhile is not clobbered)."""
    from qinfra.core.fileio import write_atomic

    if force:
        write_atomic(path, text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", encoding="utf-8") as out:
            out.write(text)
    except FileExistsError:
        raise SpecError(refuse_existing(path)) from None


def refuse_existing(path: Path) -> str:
    return (f"{path} exists; qinfra init does not overwrite a stack file. To fix: pass --stack "
            "with another name, or --force to replace it")


def default_stack_name(model: str) -> str:
    """A stack name from the model's own name (`meta-llama/Llama-3.1-8B-Instruct` ->
    `llama-3.1-8b-instruct`)."""
    base = Path(model.rstrip("/")).name
    base = base[: -len(".gguf")] if base.endswith(".gguf") else base
    slug = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-.") or "model"
    return slug[:60]


def served_name(model: str) -> str:
    return default_stack_name(model)


# --- the stack's keys ---------------------------------------------------------------------------


def _draft_config(request: InitRequest, info: ModelInfo, name: str, root: Path) -> dict[str, Any]:
    """The stack's keys before the recommendation: placeholder formats the first engine loads."""
    target = request.target
    order = [e for e in preferences().engines[target.value]
             if target is not Target.LOCAL or traits(e).local]
    engine = request.engine or order[0]
    if target is Target.LOCAL and not traits(engine).local:
        raise SpecError(f"--engine {engine.value} does not run on target local; llama.cpp does")
    formats = {kind: next(f for f in _ordered(kind) if engine_loads(engine, f)) for kind in FormatKind}
    model_len = request.max_model_len or min(info.max_position_embeddings, DEFAULT_MAX_MODEL_LEN[target])
    config: dict[str, Any] = {f"{NAMESPACE}:target": target.value}
    config.update(_provider(target))
    config.update({
        f"{NAMESPACE}:model": {"id": _model_id(request.model, root), "revision": request.revision,
                               "served_name": served_name(request.model)},
        f"{NAMESPACE}:artifacts": {"store": request.store or _default_store(target, name, root)},
        f"{NAMESPACE}:variants": {"baseline": {"format": formats[FormatKind.BASELINE].value},
                                  "quantized": {"format": formats[FormatKind.QUANTIZED].value}},
        f"{NAMESPACE}:serving": {"engine": engine.value, "max_model_len": model_len,
                                 "concurrency": request.concurrency or DEFAULT_CONCURRENCY[target]},
        f"{NAMESPACE}:fleet": _fleet(request),
        f"{NAMESPACE}:rollout": {"stage": "baseline_only", "quantized_percent": 0},
    })
    return config


def _ordered(kind: FormatKind) -> list[Format]:
    rows = [p for p in preferences().rows.values() if p.kind is kind]
    return [p.format for p in sorted(rows, key=lambda p: p.rank)]


def _provider(target: Target) -> dict[str, Any]:
    if target is Target.AWS:
        return {"aws:region": catalog().price_region}  # the region the prices are listed for
    if target is Target.KUBERNETES:
        return dict(KUBERNETES_PROVIDER)
    return {}


def _model_id(model: str, root: Path) -> str:
    """A local path as the stack file should hold it: relative to the project when inside it
    (the stack file travels with the project), else absolute; hub ids and the demo as given."""
    path = Path(model).expanduser()
    if model == DEMO_MODEL_ID or not path.exists():
        return model
    full = path.resolve()
    try:
        return str(full.relative_to(root.resolve()))
    except ValueError:
        return str(full)


def _default_store(target: Target, name: str, root: Path) -> str:
    if target is Target.LOCAL:
        return f"file://{root.resolve()}/.qinfra/artifacts/{name}"
    bucket = re.sub(r"[^a-z0-9-]+", "-", f"qinfra-{name}".lower()).strip("-")[:63]
    return f"s3://{bucket}/models"


def _fleet(request: InitRequest) -> dict[str, Any]:
    fleet: dict[str, Any] = {}
    if request.target is Target.LOCAL or request.cpu_memory_gib is not None:
        memory = request.cpu_memory_gib or _host_memory_gib()
        fleet["cpu"] = {"memory_gib": memory, "threads": request.threads or os.cpu_count() or 1}
    if request.target is not Target.LOCAL:
        fleet["gpus"] = list(request.gpus) if request.gpus else list(catalog().gpus)
    elif request.gpus:
        raise SpecError("--gpus: target local serves with llama.cpp in this machine's RAM "
                        "(--cpu-memory-gib); use target aws or kubernetes for GPUs")
    return fleet


def _host_memory_gib() -> float:
    """Half of this machine's RAM, in whole GiB (at least 1)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return float(max(1, int(total * LOCAL_RAM_SHARE / 2**30)))


def _final_config(config: Mapping[str, Any], draft: StackSpec,
                  rec: Recommendation) -> dict[str, Any]:
    out = json.loads(json.dumps(config))  # a deep copy of plain data
    variants = out[f"{NAMESPACE}:variants"]
    for name, pick in (("baseline", rec.baseline), ("quantized", rec.quantized)):
        variants[name] = {"format": pick.candidate.format.value}
        if pick.candidate.artifact.source:
            variants[name]["source"] = pick.candidate.artifact.source
        if pick.candidate.artifact.recipe:
            variants[name]["recipe"] = dict(pick.candidate.artifact.recipe)
    out[f"{NAMESPACE}:serving"]["engine"] = rec.engine.value
    if draft.fleet.gpus:
        out[f"{NAMESPACE}:fleet"]["gpus"] = list(rec.gpus)
    if draft.target is Target.KUBERNETES:
        out[f"{NAMESPACE}:kubernetes"] = {"gateway": draft.kubernetes.gateway}
    return out


# --- the file -----------------------------------------------------------------------------------


def render_stack_file(spec: StackSpec, rec: Recommendation, config: Mapping[str, Any]) -> str:
    """The stack file's text: the keys of `config` with a comment on each block and the next
    commands (templates/init/Pulumi.stack.yaml.j2)."""
    from qinfra.serving.render import environment

    env = environment()
    env.filters["yaml"] = yaml_scalar
    name = spec.name
    quantized = rec.quantized.candidate
    pending = [p.candidate for p in (rec.baseline, rec.quantized)
               if p.candidate.artifact.kind is ArtifactKind.PENDING]
    baseline_route = rec.baseline.candidate.artifact
    values = {
        "name": name,
        "target": spec.target.value,
        "model_id": spec.model.id,
        "revision": spec.model.revision,
        "served_name": spec.model.served_name,
        "store": spec.artifacts.store,
        "store_note": _store_note(spec),
        "provider": sorted((k, v) for k, v in config.items() if not k.startswith(f"{NAMESPACE}:")),
        "baseline": rec.baseline.candidate.format.value,
        "baseline_source": spec.variants.baseline.source,
        "baseline_recipe": dict(rec.baseline.candidate.artifact.recipe),
        "quantized_recipe": dict(quantized.artifact.recipe),
        "baseline_note": _wrapped([f"no source: qinfra does not make it yet "
                                   f"({baseline_route.how.removeprefix('recipe: ')}); set source "
                                   "to a GGUF file or hub repo holding it"], 88)
        if baseline_route.kind is ArtifactKind.PENDING else (),
        "baseline_reasons": _wrapped(rec.baseline.reasons),
        "quantized": quantized.format.value,
        "quantized_source": spec.variants.quantized.source,
        "quantized_source_note": _quantized_note(rec),
        "quantized_reasons": _wrapped(rec.quantized.reasons
                                      + tuple(f"Passed over {p}." for p in rec.passed_over)),
        "engine": spec.serving.engine.value,
        "max_model_len": spec.serving.max_model_len,
        "concurrency": spec.serving.concurrency,
        "gpus": spec.fleet.gpus,
        "cpu": spec.fleet.cpu,
        "kubernetes_gateway": spec.kubernetes.gateway if spec.target is Target.KUBERNETES else None,
        "next_steps": next_steps(name, [c.variant.value for c in pending]),
    }
    return env.get_template(TEMPLATE).render(values)


def next_steps(name: str, pending: Sequence[str] = ()) -> tuple[str, ...]:
    """The commands after `init`, in order; `pending` variants need a source set first."""
    steps = [f"qinfra plan --stack {name}            # GPUs, memory and cost per variant",
             f"qinfra artifacts push --stack {name}  # fetch or make both artifacts, pin them here"]
    for variant in pending:
        steps.insert(-1, f"set qinfra:variants.{variant}.source (see below) before pushing")
    steps += [f"qinfra up --stack {name}              # provision and serve the baseline",
              f"qinfra gate --stack {name}            # judge the quantized variant's drift",
              f"qinfra rollout --stack {name} --percent 10   # then give it traffic"]
    return tuple(steps)


def _wrapped(lines: Sequence[str], width: int = 92) -> tuple[str, ...]:
    """Comment lines short enough to review in a diff."""
    import textwrap

    return tuple(part for line in lines for part in textwrap.wrap(line, width, break_on_hyphens=False))


def _store_note(spec: StackSpec) -> str:
    if spec.target is Target.LOCAL:
        return "a folder on this machine"
    if spec.target is Target.AWS:
        return "a globally unique bucket name; `qinfra up` creates it (create_bucket: true)"
    return "an existing bucket the engine pods may read (qinfra:kubernetes.service_account_role_arn)"


def _quantized_note(rec: Recommendation) -> str:
    route = rec.quantized.candidate.artifact
    if route.kind is ArtifactKind.HUB:
        return "a quantized checkpoint on the hub"
    if route.kind is ArtifactKind.RECIPE:
        return f"made by {route.how.removeprefix('recipe: ')}"
    return (f"qinfra does not make it yet ({route.how.removeprefix('recipe: ')}): set source "
            "to a hub repo or local directory holding it")


_PLAIN = re.compile(r"[A-Za-z0-9/~][A-Za-z0-9._/@+:~-]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}
# Numbers, dates and YAML 1.1 sexagesimals read back as something other than text.
_NUMBER_LIKE = re.compile(r"[0-9.+-][0-9._:eE+-]*|\.?(inf|nan)", re.IGNORECASE)


def yaml_scalar(value: object) -> str:
    """A YAML scalar that reads back as `value`: plain where that is safe, else a JSON string
    (JSON strings are YAML double-quoted scalars)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    plain = (_PLAIN.fullmatch(text) is not None and not text.endswith(":")
             and text.lower() not in _YAML_WORDS and not _NUMBER_LIKE.fullmatch(text))
    return text if plain else json.dumps(text)


def _check_round_trip(text: str, spec: StackSpec, name: str, root: Path) -> None:
    """The written text must read back as the recommended spec: the same validation `qinfra
    plan --stack` runs, over what the file will hold."""
    from ruamel.yaml import YAML

    doc = YAML(typ="safe").load(text)
    back = parse_config(doc["config"], name, root=root)
    assert back.model_dump(exclude={"path"}) == spec.model_dump(exclude={"path"}), "stack file drift"


def compare_stack(spec: StackSpec, engines: Sequence[Engine] = ()) -> Comparison:
    """`qinfra plan --compare`: the same comparison over an existing stack's fleet."""
    info = modelinfo.load(spec.model.id, spec.model.revision, root=spec.root)
    return compare(spec, info, catalog(), expected_drift(spec.gate.thresholds()), engines)


__all__ = [
    "InitRequest",
    "InitResult",
    "compare_stack",
    "default_stack_name",
    "expected_drift",
    "load_model",
    "next_steps",
    "plan_init",
    "refuse_existing",
    "render_stack_file",
    "write_stack_file",
    "yaml_scalar",
]
