"""The router in a preview's plan delta: the shipped prod (aws) and k8s stacks run under Pulumi
mocks as `up` would (their `plan` output is the deployed side), the stack file is edited as
`qinfra rollback` edits it, and the report shows the router's row: its weights, what runs it and,
on aws, what its machines cost from the instance table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from qinfra.core.hardware import catalog
from qinfra.core.spec import load_stack
from qinfra.deploy.engine import Change
from qinfra.deploy.preview import (
    PreviewReport,
    VariantDelta,
    build_report,
    plan_record,
    read_deployed,
    to_markdown,
)
from qinfra.deploy.rollout import rollback
from qinfra.deploy.stackfile import update_stack_file
from qinfra.planning.stack import plan_for
from tests.render_helpers import LLAMA_8B, PINS, ROUTER_IMAGE, ROUTER_PIN, example, load_yaml
from tests.targets.mocks import API_KEY, Run, changed, run_program

# Loading every pulumi_aws module under mocks warns about the provider's own deprecated types.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")

STORE = "s3://acme-models/llama-3.1-8b"
PARAMETER = "aws:ssm/parameter:Parameter"
ASG = "aws:autoscaling/group:Group"
LT = "aws:ec2/launchTemplate:LaunchTemplate"
CONFIGMAP = "kubernetes:core/v1:ConfigMap"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
# The figures of a variant's fleet that a rollback sets to zero (quantized kept at zero).
CAPACITY = {"sized_for_percent", "engines", "machines", "gpus", "usd_per_hour"}
# Per shipped stack: its rollout as shipped, and the resources a rollback changes.
SHIPPED = {
    "prod": ((90, 10), {(PARAMETER, "qinfra-prod-router-config"), (ASG, "qinfra-prod-quantized")}),
    "k8s": ((75, 25), {(CONFIGMAP, "qinfra-k8s-router-config"), (DEPLOYMENT, "qinfra-k8s-quantized")}),
}


def pin(stacks: Path, stack: str) -> Path:
    """Pin the copied stack file as `qinfra artifacts push --stack` would (models, router code)
    and point the model at its reference config.json; the rollout stays as shipped."""
    path = stacks / f"Pulumi.{stack}.yaml"
    update_stack_file(path, {
        "qinfra:model.id": str(LLAMA_8B),
        **{f"qinfra:variants.{v}.artifact": f"{STORE}/{aid}/" for v, aid in PINS.items()},
        "qinfra:router": {"artifact": f"{STORE}/{ROUTER_PIN}/", "image": ROUTER_IMAGE},
        # no gate report here: the skip `--skip-gate` records (test_gate_enforcement proves it)
        "qinfra:gate": {"skip": f"{STORE}/{PINS['quantized']}/"},
    })
    return path


def up(path: Path, stack: str) -> Run:
    """The program under mocks with the stack file's config, as `pulumi up` runs it."""
    config = load_yaml(path.read_text())["config"]
    return run_program(stack, {**config, "qinfra:api_key": API_KEY}, ("qinfra:api_key",))


def engine_changes(before: Run, after: Run) -> tuple[Change, ...]:
    """What the engine's preview would report between two runs: an update per resource whose
    inputs differ, with the top-level keys that do."""
    old, new = before.by_key(), after.by_key()
    return tuple(Change("update", f"urn:pulumi:{typ}::{name}", typ, name,
                        tuple(dict.fromkeys(p.split(".")[1].split("[")[0] for p in paths)),
                        old[(typ, name)], new[(typ, name)])
                 for (typ, name), paths in changed(before, after).items())


def preview(stack: str, deployed: Run | None, changes: tuple[Change, ...] = ()) -> PreviewReport:
    """The report `qinfra preview` builds: the deployed side from the stack's outputs (as JSON,
    the way the engine hands them over), the after side planned from the stack file."""
    outputs = json.loads(json.dumps(deployed.exports)) if deployed else {}
    return build_report(stack, changes, {"update": len(changes)}, read_deployed(outputs),
                        plan_for(load_stack(stack)))


def moved(delta: VariantDelta) -> dict[str, tuple[Any, Any]]:
    before, after = delta.before or {}, delta.after or {}
    return {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys()
            if before.get(k) != after.get(k)}


def rich_text(report: PreviewReport, capsys: pytest.CaptureFixture[str],
              monkeypatch: pytest.MonkeyPatch) -> str:
    """The `qinfra preview` table as a person sees it."""
    from qinfra.cli.preview_view import print_report

    monkeypatch.setenv("COLUMNS", "240")
    print_report(report, as_json=False, markdown=False)
    return capsys.readouterr().out


def test_prod_preview_shows_the_router_machines_and_their_cost(stacks, capsys, monkeypatch) -> None:
    path = pin(stacks, "prod")
    run = up(path, "prod")
    report = preview("prod", None)  # nothing deployed yet: the router's row is all new
    router = report.router.after
    assert report.router.before is None
    price = catalog().cpu_instances["c7i.large"].usd_per_hour  # core/data/instances.toml
    assert router == {
        "baseline_percent": 90, "quantized_percent": 10, "shadow_percent": 0.0,
        "replicas": 2, "instance_type": "c7i.large", "usd_per_hour": round(2 * price, 4),
        "artifact": f"{STORE}/{ROUTER_PIN}/", "image": None, "cpu_request": None,
        "memory_request": None, "port": 8080}
    # the plan's figures are the resources' figures
    group = run.one(ASG, "router").inputs
    assert group["minSize"] == group["maxSize"] == group["desiredCapacity"] == router["replicas"]
    assert run.one(LT, "router").inputs["instanceType"] == router["instance_type"]
    served = json.loads(run.one(PARAMETER, "router-config").inputs["insecureValue"])
    assert served["quantized_percent"] == router["quantized_percent"]
    assert served["shadow_percent"] == router["shadow_percent"]
    # the stack's cost is its fleets and its routers
    fleets = sum(v.after["usd_per_hour"] for v in report.variants)
    assert report.usd_per_hour_after == pytest.approx(fleets + router["usd_per_hour"])
    assert report.to_json()["plan"]["router"] == {"before": None, "after": router}
    markdown = to_markdown(report)
    assert ("| | baseline_percent | quantized_percent | shadow_percent | replicas | instance_type |"
            in markdown)
    assert "| router | - → 90 | - → 10 | - → 0.0 | - → 2 | - → c7i.large | - → 0.1785 |" in markdown
    text = rich_text(report, capsys, monkeypatch)
    assert "router (deployed → this stack file)" in text and "- → c7i.large" in text


def test_k8s_preview_shows_the_router_pods(stacks) -> None:
    path = pin(stacks, "k8s")
    run = up(path, "k8s")
    report = preview("k8s", run)  # deployed as the file says: every figure the same
    router = report.router.after
    assert report.router.before == router
    assert {k: router[k] for k in ("baseline_percent", "quantized_percent", "replicas", "image",
                                   "cpu_request", "memory_request", "instance_type",
                                   "usd_per_hour")} == {
        "baseline_percent": 75, "quantized_percent": 25, "replicas": 2, "image": ROUTER_IMAGE,
        "cpu_request": "1", "memory_request": "512Mi", "instance_type": None, "usd_per_hour": None}
    deployment = run.one(DEPLOYMENT, "router").inputs["spec"]
    (container,) = deployment["template"]["spec"]["containers"]
    assert deployment["replicas"] == router["replicas"] and container["image"] == router["image"]
    assert container["resources"]["requests"] == {"cpu": router["cpu_request"],
                                                  "memory": router["memory_request"]}
    assert container["ports"][0]["containerPort"] == router["port"]
    served = json.loads(run.one(CONFIGMAP, "router").inputs["data"]["config.json"])
    assert served["quantized_percent"] == router["quantized_percent"]
    # figures that do not apply to kubernetes are left out of the row
    assert [k for k, _ in report.router.rows()] == [
        "baseline_percent", "quantized_percent", "shadow_percent", "replicas", "image",
        "cpu_request", "memory_request", "port"]
    assert "| router | 75 | 25 | 0.0 | 2 | " + ROUTER_IMAGE + " | 1 | 512Mi | 8080 |" in to_markdown(report)


@pytest.mark.parametrize("stack", sorted(SHIPPED))
def test_a_rollback_preview_shows_the_weights_and_the_quantized_capacity_only(
        stack: str, stacks, capsys, monkeypatch) -> None:
    (baseline, quantized), resources = SHIPPED[stack]
    path = pin(stacks, stack)
    deployed = up(path, stack)
    assert update_stack_file(path, rollback().updates())  # what `qinfra rollback` writes
    report = preview(stack, deployed, engine_changes(deployed, up(path, stack)))
    assert {(r.type, r.name) for r in report.resources} == resources
    # the router: its weights and nothing else (same machines or pods, same code)
    assert moved(VariantDelta("router", report.router.before, report.router.after)) == {
        "baseline_percent": (baseline, 100), "quantized_percent": (quantized, 0)}
    rows = dict(report.router.rows())
    assert (rows["baseline_percent"], rows["quantized_percent"]) == (f"{baseline} → 100",
                                                                      f"{quantized} → 0")
    by_name = {v.variant: v for v in report.variants}
    assert moved(by_name["baseline"]) == {}  # sized for all traffic already
    capacity = moved(by_name["quantized"])
    assert set(capacity) == CAPACITY and all(after == 0 for _, after in capacity.values())
    assert report.usd_per_hour_before is not None and capacity["usd_per_hour"][0] > 0
    saved = report.usd_per_hour_before - report.usd_per_hour_after
    assert saved == pytest.approx(capacity["usd_per_hour"][0])
    assert f"| {quantized} → 0 |" in to_markdown(report)
    assert f"{quantized} → 0" in rich_text(report, capsys, monkeypatch)


def test_a_record_from_before_the_router_reads_as_no_router_recorded(stacks) -> None:
    """A stack deployed before the plan record held the router: the row shows it as new, the
    variants still compare."""
    _, plan = example("prod")
    record = plan_record(plan)
    del record["router"]
    deployed = read_deployed({"plan": record})
    assert deployed.router is None and deployed.variants
    report = build_report("prod", [], {}, deployed, plan)
    assert report.router.before is None
    assert dict(report.router.rows())["quantized_percent"] == "- → 10"
    assert all(v.before == v.after for v in report.variants)


def test_the_local_router_row_is_its_port() -> None:
    spec, plan = example("local")
    figures = plan.router.figures()
    assert figures["port"] == spec.serving.port and figures["replicas"] == 1
    assert figures["usd_per_hour"] is None and figures["instance_type"] is None
    assert plan.usd_per_hour == sum(v.chosen.usd_per_hour for v in plan.variants if v.chosen)


def test_plan_shows_what_the_routers_add_per_hour(stacks) -> None:
    """`qinfra plan --stack prod`: the routers' machines and cost beside the fleets."""
    from qinfra.cli.views import router_line, stack_plan_dict

    _, plan = example("prod")
    assert router_line(plan) == ("router: 2 x c7i.large machines, $0.18/hour; "
                                 "weights baseline 90%, quantized 10%")
    assert stack_plan_dict(plan)["router"]["usd_per_hour"] == 0.1785


def test_preview_without_a_kubeconfig_says_what_is_missing(stacks, monkeypatch, tmp_path) -> None:
    from qinfra.cli.main import cli

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    result = CliRunner().invoke(cli, ["preview", "--stack", "k8s"])
    assert result.exit_code == 1, result.output
    first = result.output.splitlines()[0]
    assert first == ("Error: stack k8s targets kubernetes, but there is no kubeconfig: set "
                     "KUBECONFIG or `kubernetes:kubeconfig` in the stack file")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize(("value", "says"), [
    (".qinfra/kube/kubeconfig", "is a relative path, which the Kubernetes provider resolves against "
                                "its own working directory"),
    ("/nonexistent/kubeconfig", "names /nonexistent/kubeconfig, which is not a file"),
])
def test_a_kubeconfig_path_the_provider_cannot_read_is_named(stacks, monkeypatch, value, says) -> None:
    """Fault found against the real control plane: a relative `kubernetes:kubeconfig` made the
    provider look in its own working directory and fail far from the cause."""
    from qinfra.cli.main import cli

    stack = stacks / "Pulumi.k8s.yaml"
    namespace = "  kubernetes:namespace: qinfra\n"
    stack.write_text(stack.read_text().replace(
        namespace, f"{namespace}  kubernetes:kubeconfig: {value}\n"))
    result = CliRunner().invoke(cli, ["preview", "--stack", "k8s"])
    assert result.exit_code == 1, result.output
    assert says in result.output and "Traceback" not in result.output
