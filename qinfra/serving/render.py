"""Launch files from the plan: jinja2 templates under templates/, filled from typed contexts."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import jinja2

from qinfra.core.errors import RenderError
from qinfra.core.fileio import write_atomic
from qinfra.core.spec import StackSpec, Target, Variant
from qinfra.planning.sizing import StackPlan
from qinfra.serving.contexts import (
    LLAMA_CPP_BUILD,
    PROBE_PERIOD_S,
    VLLM_IMAGE,
    ArtifactContext,
    ArtifactUnitContext,
    EmbeddedFile,
    LaunchInputs,
    MachineContext,
    ScrapeRule,
    bin_path,
    template_values,
)
from qinfra.serving.engines import engine_launch
from qinfra.serving.frontdoor import kube_router_context, machine_router_context, router_artifact
from qinfra.serving.kube import kube_context
from qinfra.serving.launch import (
    VariantRender,
    api_key_context,
    artifact_context,
    check_variant,
    engine_instances,
    fetch_timeout_s,
    launch_context,
    launch_template,
    local_model_path,
    unit_context,
)

# EC2 refuses user data over 16 KB (EC2 User Guide, "Run commands when you launch an instance").
USER_DATA_MAX_BYTES = 16 * 1024
KUBERNETES_KINDS = ("configmap", "deployment", "service", "poddisruptionbudget")
ROUTER = "router"  # the folder of the router's files, beside the variants'
# Router machines: dnf's python3.11, the wheels' fetch and verification, the offline install.
ROUTER_INSTALL_S = 600

_Rendered = dict[Path, str]


def templates_dir() -> Path:
    """templates/ beside the qinfra package (a checkout or editable install), else package data."""
    beside = Path(__file__).resolve().parents[2] / "templates"
    if beside.is_dir():
        return beside
    packaged = Path(str(resources.files("qinfra"))) / "templates"
    if packaged.is_dir():
        return packaged
    raise RenderError(f"no templates folder at {beside} or {packaged}. To fix: reinstall qinfra")


def environment(directory: Path | None = None) -> jinja2.Environment:
    """StrictUndefined, so a missing value fails the render instead of leaving a blank flag."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory or templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sh"] = lambda value: shlex.quote(str(value))  # one shell word
    env.filters["yaml_str"] = lambda value: json.dumps(str(value))  # JSON strings are YAML
    return env


def render_template(env: jinja2.Environment, name: str, context: object, variant: str) -> str:
    """Render one template from a context dataclass; template faults become RenderError."""
    try:
        return env.get_template(name).render(template_values(context))
    except jinja2.UndefinedError as exc:
        raise RenderError(
            f"variant '{variant}': template {name} uses a value its context does not define: "
            f"{exc.message}. To fix: add the field to the context in qinfra/serving/contexts.py or "
            "correct the template"
        ) from None
    except jinja2.TemplateNotFound as exc:
        loader = env.loader
        where = loader.searchpath if isinstance(loader, jinja2.FileSystemLoader) else "?"
        raise RenderError(f"variant '{variant}': template {exc.name} not found under {where}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"variant '{variant}': template {exc.name}:{exc.lineno}: {exc.message}") from None


def _script(env: jinja2.Environment, template: str, ctx: object, variant: str,
            name: str) -> EmbeddedFile:
    return EmbeddedFile(name, bin_path(name), "0755", render_template(env, template, ctx, variant))


def _etc(env: jinja2.Environment, template: str, ctx: object, variant: str, path: str) -> EmbeddedFile:
    return EmbeddedFile(Path(path).name, path, "0644", render_template(env, template, ctx, variant))


# --- targets -------------------------------------------------------------------------------------


def _render_local(env: jinja2.Environment, v: VariantRender) -> _Rendered:
    """Launch and warm-up scripts for this machine, each variant on its own loopback port."""
    launch = launch_context(v, model_path=local_model_path(v), host=v.inputs.host or "127.0.0.1",
                            port=v.inputs.port or v.spec.serving.local_port(v.name))
    if launch.api_key_env is not None:  # the local target hands the key over as a 0600 file
        launch = replace(launch, api_key_file_env=engine_launch(v.engine).api_key_file_env)
    template, script = launch_template(v.engine)
    return {
        Path(v.name, script): render_template(env, template, launch, v.name),
        Path(v.name, "warmup.sh"): render_template(env, "warmup/warmup.sh.j2", launch, v.name),
    }


def _render_aws(env: jinja2.Environment, v: VariantRender) -> _Rendered:
    """cloud-init user-data: fetch and verify the artifact, then the machine's engines as
    instances of one systemd template unit, each with its port and GPUs in a small env file."""
    artifact = artifact_context(v, need_s3=True)
    launch = launch_context(v, model_path=v.inputs.model_path or artifact.directory,
                            host=v.inputs.host or "0.0.0.0", port=v.inputs.port or v.spec.serving.port)
    template, script = launch_template(v.engine)
    instances = engine_instances(v, launch.port)
    files = [
        _script(env, "artifact/fetch-s3.sh.j2", artifact, v.name, "fetch-artifact.sh"),
        _script(env, "artifact/verify.sh.j2", artifact, v.name, "verify-artifact.sh"),
        _script(env, template, launch, v.name, script),
        _script(env, "warmup/warmup.sh.j2", launch, v.name, "warmup.sh"),
        _etc(env, "systemd/qinfra-artifact.service.j2",
             ArtifactUnitContext(artifact, bin_path("fetch-artifact.sh"),
                                 fetch_timeout_s(artifact.estimate_bytes)),
             v.name, "/etc/systemd/system/qinfra-artifact.service"),
        _etc(env, "systemd/qinfra-engine.service.j2",
             unit_context(v, launch, script, gpu=instances[0].gpus is not None),
             v.name, "/etc/systemd/system/qinfra-engine@.service"),
    ]
    files += [_etc(env, "systemd/engine.env.j2", i, v.name, f"/etc/qinfra/engine-{i.index}.env")
              for i in instances]
    key = api_key_context(v, launch, artifact.region)
    if key is not None:
        files.append(_script(env, "artifact/fetch-api-key.sh.j2", key, v.name, "fetch-api-key.sh"))
    machine = MachineContext(
        stack=v.spec.name,
        variant=v.name,
        artifact=artifact,
        files=tuple(files),
        units=tuple(f"qinfra-engine@{i.index}.service" for i in instances),
        api_key_script=bin_path("fetch-api-key.sh") if key is not None else None,
    )
    text = render_template(env, "cloud-init/user-data.yaml.j2", machine, v.name)
    if len(text.encode()) > USER_DATA_MAX_BYTES:
        raise v.fail(f"cloud-init user-data is {len(text.encode())} bytes, over EC2's limit of "
                     f"{USER_DATA_MAX_BYTES}")
    return {Path(v.name, "user-data.yaml"): text}


def _render_kubernetes(env: jinja2.Environment, v: VariantRender) -> _Rendered:
    """ConfigMap (the same scripts the machines get), Deployment, Service, PodDisruptionBudget."""
    artifact = artifact_context(v, need_s3=True)
    launch = launch_context(v, model_path=v.inputs.model_path or artifact.directory,
                            host=v.inputs.host or "0.0.0.0", port=v.inputs.port or v.spec.serving.port)
    template, script = launch_template(v.engine)
    scripts = (
        _script(env, template, launch, v.name, script),
        _script(env, "artifact/verify.sh.j2", artifact, v.name, "verify-artifact.sh"),
        _script(env, "warmup/warmup.sh.j2", launch, v.name, "warmup.sh"),
    )
    ctx = kube_context(v, launch, artifact, scripts, script)
    return {
        Path(v.name, f"{kind}.yaml"): render_template(env, f"kubernetes/{kind}.yaml.j2", ctx, v.name)
        for kind in KUBERNETES_KINDS
    }


def _render_router_aws(env: jinja2.Environment, spec: StackSpec) -> _Rendered:
    """cloud-init user-data of the router machines: the pinned wheels fetched, verified and
    installed offline; the config copied from SSM by a timer; the router as a systemd unit."""
    artifact = router_artifact(spec)
    ctx = machine_router_context(spec, artifact)
    fetch = bin_path("fetch-router.sh")
    units = "/etc/systemd/system"
    files = (
        _script(env, "router/fetch.sh.j2", ctx, ROUTER, "fetch-router.sh"),
        _script(env, "artifact/verify.sh.j2", artifact, ROUTER, "verify-router.sh"),
        _script(env, "router/install.sh.j2", ctx, ROUTER, "install-router.sh"),
        _script(env, "router/sync-config.sh.j2", ctx, ROUTER, "sync-router-config.sh"),
        _etc(env, "systemd/qinfra-router-install.service.j2",
             ArtifactUnitContext(artifact, fetch, ROUTER_INSTALL_S), ROUTER,
             f"{units}/qinfra-router-install.service"),
        _etc(env, "systemd/qinfra-router-config.service.j2", ctx, ROUTER,
             f"{units}/qinfra-router-config.service"),
        _etc(env, "systemd/qinfra-router-config.timer.j2", ctx, ROUTER,
             f"{units}/qinfra-router-config.timer"),
        _etc(env, "systemd/qinfra-router.service.j2", ctx, ROUTER, f"{units}/qinfra-router.service"),
    )
    text = render_template(env, "cloud-init/router-user-data.yaml.j2", replace(ctx, files=files),
                           ROUTER)
    if len(text.encode()) > USER_DATA_MAX_BYTES:
        raise RenderError(f"cannot render stack '{spec.name}', router: cloud-init user-data is "
                          f"{len(text.encode())} bytes, over EC2's limit of {USER_DATA_MAX_BYTES}")
    return {Path(ROUTER, "user-data.yaml"): text}


def _render_router_kubernetes(env: jinja2.Environment, spec: StackSpec) -> _Rendered:
    """The router's ConfigMap (weights and settings), Deployment, Service, PodDisruptionBudget."""
    ctx = kube_router_context(spec)
    return {
        Path(ROUTER, f"{kind}.yaml"): render_template(env, f"kubernetes/router-{kind}.yaml.j2", ctx,
                                                      ROUTER)
        for kind in KUBERNETES_KINDS
    }


@dataclass(frozen=True)
class TargetRendering:
    """The serving half of the target registry: one row per Target (deploy/targets/registry.py
    and planning/targets.py hold the other halves)."""

    variant: Callable[[jinja2.Environment, VariantRender], _Rendered]  # one variant's files
    # The router's files; None where the target starts its router as a process (local).
    router: Callable[[jinja2.Environment, StackSpec], _Rendered] | None
    scrape: ScrapeRule  # the Prometheus job of `qinfra render --what scrape-config`


TARGETS: dict[Target, TargetRendering] = {
    Target.LOCAL: TargetRendering(
        _render_local, None,
        ScrapeRule("prometheus/scrape-local.yml.j2", static=True, ec2_region=False, pods=False)),
    Target.AWS: TargetRendering(
        _render_aws, _render_router_aws,
        ScrapeRule("prometheus/scrape-aws.yml.j2", static=False, ec2_region=True, pods=False)),
    Target.KUBERNETES: TargetRendering(
        _render_kubernetes, _render_router_kubernetes,
        ScrapeRule("prometheus/scrape-kubernetes.yml.j2", static=False, ec2_region=False, pods=True)),
}


# --- entry points --------------------------------------------------------------------------------


def render_stack(
    spec: StackSpec,
    plan: StackPlan,
    inputs: Mapping[str, LaunchInputs] | None = None,
    *,
    templates: Path | None = None,
) -> dict[Path, str]:
    """Every file the stack's target needs, as {<variant>/<file>: text} (the cloud targets'
    router under router/), sorted by path.

    Pure and deterministic: the same spec and plan give byte-identical text. Raises RenderError
    (naming the variant and the field) for an unpinned artifact, a plan that does not fit or does
    not match the spec, a format the engine cannot load, or a template value that is undefined.
    """
    inputs = inputs or {}
    unknown = sorted(set(inputs) - set(Variant))
    if unknown:
        raise RenderError(f"launch inputs for unknown variant(s) {', '.join(unknown)}; "
                          f"variants are {', '.join(Variant)}")
    env = environment(templates)
    checked = [check_variant(spec, plan, name, i, inputs.get(name, LaunchInputs()))
               for i, name in enumerate(Variant)]
    rendering = TARGETS[spec.target]
    out: dict[Path, str] = {}
    for v in checked:
        out.update(rendering.variant(env, v))
    if rendering.router is not None:
        out.update(rendering.router(env, spec))
    return dict(sorted(out.items()))


def write_rendered(files: Mapping[Path, str], out: Path) -> list[Path]:
    """Write rendered files under `out`, each through a temporary file and a rename, scripts
    executable. Render first (render_stack), so that a failed render writes nothing."""
    for rel in files:
        if rel.is_absolute() or ".." in rel.parts:
            raise RenderError(f"refusing to write {rel} outside {out}")
    written: list[Path] = []
    for rel, text in sorted(files.items()):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text, mode=0o755 if path.suffix == ".sh" else 0o644)
        written.append(path)
    return written


def render_files(spec: StackSpec, plan: StackPlan, out: Path,
                 inputs: Mapping[str, LaunchInputs] | None = None) -> list[Path]:
    """render_stack, then write_rendered: all in memory first, so bad input writes nothing."""
    return write_rendered(render_stack(spec, plan, inputs), out)


__all__ = [
    "LLAMA_CPP_BUILD",
    "PROBE_PERIOD_S",
    "ROUTER",
    "TARGETS",
    "USER_DATA_MAX_BYTES",
    "VLLM_IMAGE",
    "ArtifactContext",
    "LaunchInputs",
    "TargetRendering",
    "environment",
    "render_files",
    "render_stack",
    "render_template",
    "templates_dir",
    "write_rendered",
]
