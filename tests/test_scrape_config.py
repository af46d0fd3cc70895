"""The router's Prometheus scrape job (`qinfra render --what scrape-config`): checked by the real
`promtool check config`, golden per example stack, and selecting exactly what the targets
deploy: the tags the aws program gives the router group, the labels and annotations of the
router pods the kubernetes render writes. The analysis' queries match the label it sets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from qinfra.cli.render import render
from qinfra.core.analysis_spec import QINFRA_STACK_LABEL
from qinfra.core.spec import Variant, load_stack
from qinfra.deploy.targets.prometheus_process import config_text
from qinfra.quality.analysis import shadow_queries, variant_queries
from qinfra.serving.render import render_stack
from qinfra.serving.scrape import FILE, FOLDER, render_scrape_config
from tests.render_helpers import ROOT, STACKS, example, load_yaml

GOLDEN = ROOT / "tests" / "golden" / "scrape"
UPDATE_ENV = "QINFRA_UPDATE_GOLDEN"  # as tests/test_render.py
# Debian's prometheus 2.42 is built without Kubernetes service discovery (its client-go is not
# packaged): its promtool refuses the field by name, and only that field.
NO_KUBERNETES_SD = "field kubernetes_sd_configs not found"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not on PATH: Debian's prometheus package ships it. "
                    "To fix: apt-get install prometheus (scripts/setup.sh does)", pytrace=False)
    return found


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), "check", "config", str(path)], capture_output=True,
                          text=True, timeout=60)


def scrape_text(stack: str) -> str:
    return render_scrape_config(load_stack(stack, STACKS))[Path(FOLDER, FILE)]


def job(text: str) -> dict:
    (only,) = load_yaml(text)["scrape_configs"]
    return only


@pytest.mark.parametrize("stack", ["prod", "local"])
def test_promtool_accepts_the_job(stack, tmp_path):
    path = tmp_path / "prometheus.yml"
    path.write_text(scrape_text(stack))
    done = check_config(path)
    assert done.returncode == 0 and "SUCCESS" in done.stdout + done.stderr, done


def test_promtool_accepts_the_kubernetes_job(tmp_path):
    """The rendered file as it is; where promtool lacks Kubernetes discovery (Debian's build),
    it must refuse that field alone, and the same job with file discovery in its place (the
    relabel rules, durations and names unchanged) must pass."""
    text = scrape_text("k8s")
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    done = check_config(path)
    if done.returncode != 0:
        out = done.stdout + done.stderr
        assert NO_KUBERNETES_SD in out and out.count("FAILED") == 1, out
        sd = job(text)["kubernetes_sd_configs"]
        assert sd == [{"role": "pod", "namespaces": {"names": ["qinfra"]}}]
        swapped = text.replace(
            "    kubernetes_sd_configs:\n      - role: pod\n        namespaces:\n"
            '          names: ["qinfra"]\n',
            f"    file_sd_configs:\n      - files: [{tmp_path / 'targets.json'}]\n")
        assert "kubernetes_sd_configs" not in swapped
        path.write_text(swapped)
        done = check_config(path)
    assert done.returncode == 0 and "SUCCESS" in done.stdout + done.stderr, done


@pytest.mark.parametrize("stack", ["prod", "k8s", "local"])
def test_golden(stack):
    text = scrape_text(stack)
    golden = GOLDEN / f"{stack}.yml"
    if os.environ.get(UPDATE_ENV):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs; rerun with {UPDATE_ENV}=1"


def test_kubernetes_job_keeps_the_router_pods_the_render_writes():
    """Each keep rule names a label of the rendered router pods with its value; the pods carry
    the prometheus.io annotations for jobs that scrape by annotation, on the scraped port."""
    spec, plan = example("k8s")
    deployment = load_yaml(render_stack(spec, plan)[Path("router", "deployment.yaml")])
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    (port,) = container["ports"]
    scrape = job(render_scrape_config(spec)[Path(FOLDER, FILE)])
    keep = {r["source_labels"][0]: r["regex"] for r in scrape["relabel_configs"]
            if r.get("action") == "keep"}
    labels = {f"__meta_kubernetes_pod_label_{k.replace('.', '_').replace('/', '_')}": v
              for k, v in pod["metadata"]["labels"].items()}
    for meta, regex in keep.items():
        if meta.startswith("__meta_kubernetes_pod_label_"):
            assert labels[meta] == regex, meta
    assert keep["__meta_kubernetes_pod_container_port_name"] == port["name"]
    assert {k for k in keep if k.startswith("__meta_kubernetes_pod_label_")} == {
        f"__meta_kubernetes_pod_label_{k.replace('.', '_').replace('/', '_')}"
        for k in deployment["spec"]["selector"]["matchLabels"]}
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(port["containerPort"]),
        "prometheus.io/path": scrape["metrics_path"]}


def test_kubernetes_job_is_for_one_stack_only():
    """Two stacks in one namespace: each job keeps its own router pods (the instance label)."""
    a = job(scrape_text("k8s"))
    spec = load_stack("k8s", STACKS)
    other = job(render_scrape_config(spec.model_copy(update={"name": "k8s-canary"}))
                [Path(FOLDER, FILE)])
    instance = "__meta_kubernetes_pod_label_app_kubernetes_io_instance"

    def keep(j: dict) -> str:
        return next(r["regex"] for r in j["relabel_configs"] if r.get("source_labels") == [instance])

    assert keep(a) != keep(other) and a["job_name"] != other["job_name"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")
def test_aws_job_discovers_the_machines_the_router_group_launches():
    """The EC2 filters are tags the program's router group propagates to its machines, on the
    port its target group sends traffic to."""
    from tests.targets.test_aws import ASG, TG, prod

    run = prod("ab_test", 10)
    group = run.one(ASG, "router").inputs
    propagated = {t["key"]: t["value"] for t in group["tags"] if t["propagateAtLaunch"]}
    (sd,) = job(scrape_text("prod"))["ec2_sd_configs"]
    tags = {f["name"].removeprefix("tag:"): f["values"] for f in sd["filters"]
            if f["name"].startswith("tag:")}
    assert tags and all(propagated[k] == v for k, (v,) in tags.items())
    assert sd["port"] == run.one(TG, "-rt").inputs["port"] and sd["region"] == "us-east-1"


def test_every_job_labels_the_stack_the_queries_match():
    """The rendered jobs, and the local target's own Prometheus, set the label the analysis'
    queries select on, so a shared Prometheus never mixes two stacks in one window."""
    for stack in ("prod", "k8s"):
        relabels = job(scrape_text(stack))["relabel_configs"]
        assert {"target_label": QINFRA_STACK_LABEL, "replacement": stack} in relabels
    local = job(scrape_text("local"))
    assert local["static_configs"][0]["labels"] == {QINFRA_STACK_LABEL: "local"}
    own = job(config_text(load_stack("local", STACKS).model_copy(update={
        "analysis": load_stack("prod", STACKS).analysis})))
    assert own["static_configs"][0]["labels"] == {QINFRA_STACK_LABEL: "local"}
    matcher = f'{QINFRA_STACK_LABEL}="prod"'
    queries = [*variant_queries(Variant.QUANTIZED, 60, "prod").values(),
               *shadow_queries(60, "prod").values()]
    assert all(matcher in q for q in queries)


def test_scrape_interval_follows_the_analysis():
    spec = load_stack("k8s", STACKS)
    fast = spec.model_copy(update={"analysis": spec.analysis.model_copy(
        update={"scrape_interval_s": 0.5})})
    scrape = job(render_scrape_config(fast)[Path(FOLDER, FILE)])
    assert (scrape["scrape_interval"], scrape["scrape_timeout"]) == ("500ms", "500ms")
    slow = spec.model_copy(update={"analysis": spec.analysis.model_copy(
        update={"scrape_interval_s": 30})})
    scrape = job(render_scrape_config(slow)[Path(FOLDER, FILE)])
    assert (scrape["scrape_interval"], scrape["scrape_timeout"]) == ("30s", "10s")


def test_cli_prints_writes_and_refuses(tmp_path, monkeypatch):
    monkeypatch.setenv("QINFRA_STACKS_DIR", str(STACKS))
    printed = CliRunner().invoke(render, ["--stack", "prod", "--what", "scrape-config"])
    assert printed.exit_code == 0, printed.output
    assert printed.output == scrape_text("prod")
    out = tmp_path / "out"
    wrote = CliRunner().invoke(render, ["--stack", "k8s", "--what", "scrape-config", "--out",
                                        str(out)])
    assert wrote.exit_code == 0, wrote.output
    assert (out / FOLDER / FILE).read_text() == scrape_text("k8s")
    assert wrote.output.strip() == f"wrote {out / FOLDER / FILE}"
    refused = CliRunner().invoke(render, ["--stack", "prod"])
    assert refused.exit_code == 2 and "--what launch needs --out" in refused.output


def test_scrape_config_needs_no_pins():
    """The shipped prod stack pins neither its models nor the router's wheels yet: the launch
    files cannot be rendered, the scrape job can (names and ports only)."""
    spec = load_stack("prod", STACKS)
    assert spec.router.artifact is None
    assert list(render_scrape_config(spec)) == [Path(FOLDER, FILE)]
