"""The Prometheus scrape job for a stack's router, for the Prometheus the analysis reads
(`qinfra:analysis.prometheus_url`): EC2 service discovery by the router group's tags (aws), pod
discovery by the router's labels (kubernetes), the router's own port (local).

Every target gets the label QINFRA_STACK_LABEL naming the stack, and the analysis' queries
match on it, so a Prometheus that scrapes several stacks, or scrapes the router pods a second
time through a generic `prometheus.io/scrape` job, never mixes them into one window.
Needs no pinned artifact: the job depends on names and ports only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qinfra.core.analysis_spec import QINFRA_STACK_LABEL, AnalysisSpec
from qinfra.core.spec import StackSpec
from qinfra.serving.contexts import METRICS_PATH
from qinfra.serving.frontdoor import ROUTER_PORT
from qinfra.serving.kube import k8s_name
from qinfra.serving.render import TARGETS, environment, render_template

FOLDER = "prometheus"  # beside the variants' folders in `qinfra render --out`
FILE = "scrape-config.yml"
PORT_NAME = "http"  # the router container's named port (templates/kubernetes/router-deployment)
# Prometheus' own default scrape timeout; a timeout may not exceed the interval.
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ScrapeContext:
    """One scrape job; each target's template reads the fields that apply to it."""

    stack: str
    target: str
    job_name: str
    stack_label: str
    scrape_interval: str  # Prometheus durations, e.g. "5s", "500ms"
    scrape_timeout: str
    metrics_path: str
    port: int
    region: str | None  # aws; None: the region of the machine Prometheus runs on
    ec2_filters: tuple[tuple[str, str], ...]  # aws: (DescribeInstances filter, value)
    namespace: str | None  # kubernetes
    pod_labels: tuple[tuple[str, str], ...]  # kubernetes: (meta label, value) of router pods
    port_name: str | None  # kubernetes: the container port scraped
    static_target: str | None  # local


def router_machine_name(stack: str) -> str:
    """The Name tag of a stack's router machines (qinfra/deploy/targets/aws.py tags them so)."""
    return f"qinfra-{stack}-router"


def router_selector(stack: str) -> tuple[tuple[str, str], ...]:
    """The router pods' labels (qinfra/serving/frontdoor.py:kube_router_context sets them)."""
    return (("app.kubernetes.io/name", "qinfra-router"),
            ("app.kubernetes.io/instance", k8s_name(stack)),
            ("app.kubernetes.io/component", "router"))


def _duration(seconds: float) -> str:
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def _meta_label(label: str) -> str:
    """Kubernetes SD's meta label of a pod label: every character outside [a-zA-Z0-9_] is _."""
    return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() or c == "_" else "_"
                                                     for c in label)


def _literal(value: str) -> str:
    """A label value as a regex matching only itself (label values hold [-A-Za-z0-9_.])."""
    return value.replace(".", "\\.")


def scrape_context(spec: StackSpec) -> ScrapeContext:
    """The job for the stack's target, at the analysis' scrape interval (its default when the
    stack has no qinfra:analysis yet)."""
    interval_s = (spec.analysis or AnalysisSpec()).scrape_interval_s
    rule = TARGETS[spec.target].scrape
    region = spec.provider_config.get("aws:region")
    return ScrapeContext(
        stack=spec.name,
        target=spec.target.value,
        job_name=f"qinfra-router-{spec.name}",
        stack_label=QINFRA_STACK_LABEL,
        scrape_interval=_duration(interval_s),
        scrape_timeout=_duration(min(interval_s, DEFAULT_TIMEOUT_S)),
        metrics_path=METRICS_PATH,
        port=spec.serving.port if rule.static else ROUTER_PORT,
        region=str(region) if region and rule.ec2_region else None,
        ec2_filters=(("tag:qinfra:stack", spec.name), ("tag:Name", router_machine_name(spec.name)),
                     ("instance-state-name", "running")),
        namespace=str(spec.provider_config.get("kubernetes:namespace") or "default") if rule.pods else None,
        pod_labels=tuple((_meta_label(k), _literal(v)) for k, v in router_selector(spec.name)),
        port_name=PORT_NAME if rule.pods else None,
        static_target=f"127.0.0.1:{spec.serving.port}" if rule.static else None,
    )


def render_scrape_config(spec: StackSpec, *, templates: Path | None = None) -> dict[Path, str]:
    """{prometheus/scrape-config.yml: text}, the shape render_stack returns, so write_rendered
    writes it. Pure; RenderError for a template fault."""
    ctx = scrape_context(spec)
    text = render_template(environment(templates), TARGETS[spec.target].scrape.template, ctx, FOLDER)
    return {Path(FOLDER, FILE): text}


__all__ = ["FILE", "FOLDER", "ScrapeContext", "render_scrape_config", "router_machine_name",
           "router_selector", "scrape_context"]
