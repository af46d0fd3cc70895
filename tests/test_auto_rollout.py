"""`qinfra rollout --auto` end to end on the real local stack: the real Pulumi engine, router,
llama-servers (the demo model: its answers do not matter here) and Prometheus scraping the
router, with a client loop as the load generator and short windows.

Too little traffic holds (exit 3) and changes nothing; with --commit a passing step is applied
and committed, then a killed quantized engine is rolled back by the error-rate check (exit 1),
and Git, the stack file and the deployment agree; a run killed mid-apply leaves the file naming
the deployed step, and the next run resumes there and promotes the healthy variant to full;
walked again after a rollback, a stalled (SIGSTOP-cycled) quantized engine is rolled back by the
latency check, counted here, not a dry run. Each fault test prints the time from fault start to
traffic back on the baseline. (The Q2_K rollback by shadow agreement on SmolLM2:
tests/test_auto_rollout_shadow.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from qinfra.deploy.stackfile import update_stack_file
from tests.local_stack import entered, free_ports, local_stack, qinfra
from tests.test_local_router import ROOT, ask, router_health

pytestmark = pytest.mark.real
ANALYSIS = {
    # 6-second windows and three inconclusive ones tolerated: on a busy machine (two cores
    # shared with builds) 3-second windows saw 4 requests per variant and held the rollout.
    "scrape_interval_s": 0.5, "initial_delay_s": 0.5, "interval_s": 6.0, "windows": 1,
    "min_requests": 10, "inconclusive_limit": 3,
    # Two llama-servers share two cores here, so the ratio of two fast p95s is noise: the
    # latency check runs as a dry run (recorded, never counted) except in the latency fault
    # test, where an injected stall makes the quantized p95 seconds long.
    "checks": {"e2e_latency": {"dry_run": True}, "ttft": {"enabled": False}},
}
# The latency fault: the quantized llama-server stopped (SIGSTOP) for STALL_S of every
# STALL_S + RUN_S, so its answers wait about STALL_S; the check ignores p95s under
# min_baseline_s (the noise above) and fails past max_ratio. RUN_S leaves the stalled engine
# time to drain its queue, so a window still sees min_requests answers (1.5 s stalls with 0.1 s
# runs once left too few and held the rollout).
STALL_S, RUN_S = 1.0, 0.3
LATENCY_CHECK = {"dry_run": False, "max_ratio": 2.0, "min_baseline_s": 0.5}
PROMPTS = ("What is the capital of France?", "Name three primary colours.",
           "Write a haiku about the sea.", "What is 12 times 12?", "Say hello in Spanish.")
GIT_ENV = {"GIT_AUTHOR_NAME": "qinfra test", "GIT_AUTHOR_EMAIL": "test@qinfra.invalid",
           "GIT_COMMITTER_NAME": "qinfra test", "GIT_COMMITTER_EMAIL": "test@qinfra.invalid"}


def write_stack(root: Path, demo: bool = True) -> tuple[int, Path]:
    """The project of `tests.local_stack.write_project`, on four free ports (router, engines,
    Prometheus); (router port, stack file)."""
    (root / "Pulumi.yaml").write_text(
        "name: qinfra\nruntime:\n  name: python\n  options:\n    toolchain: pip\n"
        f"    virtualenv: {ROOT / '.venv'}\nmain: {ROOT / 'qinfra' / 'deploy' / 'program.py'}\n"
        "stackConfigDir: stacks\n")
    (root / "stacks").mkdir()
    port = free_ports(4)
    stack = root / "stacks" / "Pulumi.local.yaml"
    stack.write_text(local_stack(port, f"file://{root}/store", demo=demo))
    return port, stack


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("auto-rollout")
    port, stack = write_stack(root)
    update_stack_file(stack, {"qinfra:analysis": ANALYSIS, "qinfra:rollout.steps": [50, 75, 100]})
    with entered(root, GIT_ENV):
        (root / ".gitignore").write_text(".qinfra/\n.pulumi-home/\ncache/\nstore/\n")
        for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "initial"]):
            subprocess.run(["git", *argv], cwd=root, check=True, capture_output=True)
        result = qinfra("up", "--stack", "local", "--yes", "--json", "--skip-gate")
        assert result.exit_code == 0, result.output
        subprocess.run(["git", "commit", "-q", "-am", "pins"], cwd=root, check=False,
                       capture_output=True)
        yield {"root": root, "port": port, "stack": stack,
               "run": root / ".qinfra" / "run" / "local"}


class Load:
    """A client loop through the router (random users, so both variants get traffic)."""

    def __init__(self, port: int, workers: int = 4, max_tokens: int = 4,
                 prompts: tuple[str, ...] = PROMPTS) -> None:
        self.port, self.stop, self.statuses = port, threading.Event(), []
        self.max_tokens, self.prompts = max_tokens, prompts
        self.threads = [threading.Thread(target=self._loop, args=(w,)) for w in range(workers)]

    join_s = 90  # longer than one request takes

    def ask(self, user: str, prompt: str) -> int:
        return ask(self.port, user, prompt, self.max_tokens)[0]

    def _loop(self, worker: int) -> None:
        rng = random.Random(worker)
        while not self.stop.is_set():
            self.statuses.append(self.ask(f"user-{rng.randrange(10**6)}", rng.choice(self.prompts)))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.join_s)


def rollout_config(stack: Path) -> dict[str, Any]:
    return dict(YAML(typ="safe").load(stack.read_text())["config"]["qinfra:rollout"])


def apply_s(updates: Path) -> float:
    """How long the last recorded update's apply took (the router is told before it starts)."""
    last = json.loads(updates.read_text().splitlines()[-1])
    return float(last["finished"] - last["started"])


def deployed(project: dict[str, Any]) -> tuple[str, int]:
    outputs = json.loads(qinfra("status", "--stack", "local", "--json").output)["outputs"]
    return outputs["stage"], outputs["variants"]["quantized"]["weight_percent"]


def test_too_little_traffic_holds_and_changes_nothing(project):
    before = project["stack"].read_bytes()
    result = qinfra("rollout", "--stack", "local", "--auto", "--json")
    assert result.exit_code == 3, result.output
    run = json.loads(result.output)
    assert run["outcome"] == "held"
    assert run["steps"][0]["windows"] == ["inconclusive"] * (ANALYSIS["inconclusive_limit"] + 1)
    assert "fewer than 10 requests" in run["message"]
    assert project["stack"].read_bytes() == before
    assert router_health(project["port"])["quantized_percent"] == 50


def test_a_killed_quantized_engine_is_rolled_back_and_committed(project):
    """Step 50 passes and 75 is applied and committed; then the quantized llama-server is
    killed, again each time its supervisor restarts it (a crash loop): the router fails its
    users over to the baseline and counts them, the error-rate check fails the next window and
    the rollback is applied at once."""
    fault: dict[str, float] = {}
    done = threading.Event()

    def weight() -> float:
        return router_health(project["port"])["quantized_percent"]

    updates = project["root"] / ".qinfra" / "analysis" / "local" / "updates.jsonl"

    def applied(percent: int) -> bool:  # the auto rollout records an update once applied
        lines = updates.read_text().splitlines() if updates.is_file() else []
        return any(json.loads(line)["quantized_percent"] == percent for line in lines)

    def inject() -> None:
        while not applied(75):
            if done.wait(0.05):
                return
        # a crash loop: the local supervisor restarts a killed engine in about a second, so
        # the engine is killed again each time it comes back, until the rollback
        fault["start"] = time.monotonic()
        killed: set[int] = set()
        while weight() != 0 and not done.wait(0.02):
            with contextlib.suppress(OSError, ValueError):
                pid = int((project["run"] / "quantized" / "server.pid").read_text())
                if pid not in killed:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
        fault["baseline_only"] = time.monotonic()

    injector = threading.Thread(target=inject, daemon=True)
    with Load(project["port"]):
        injector.start()
        result = qinfra("rollout", "--stack", "local", "--auto", "--commit", "--json")
        done.set()
        injector.join(timeout=60)
    assert result.exit_code == 1, result.output
    run = json.loads(result.output)
    assert run["outcome"] == "rolled_back" and "error_rate" in run["message"], run
    assert [s["outcome"] for s in run["steps"]] == ["promote", "rollback"]
    took = fault["baseline_only"] - fault["start"]  # measured, not asserted: wall time
    print(f"\nkilled engine: fault start -> traffic back on the baseline: {took:.1f} s "
          f"(windows of {ANALYSIS['interval_s']} s; rollback step {run['steps'][1]['windows']}; "
          f"then the rollback's apply {apply_s(updates):.1f} s)")
    log = subprocess.run(["git", "log", "--format=%s"], cwd=project["root"], check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert log[0].startswith("rollout local: rollback at 75% -> rollback 0% (verdict fail")
    assert log[1].startswith("rollout local: step 50% passed -> ab_test 75% (verdict pass")
    assert run["steps"][1]["analysis_id"] in log[0]
    status = subprocess.run(["git", "status", "--porcelain", "stacks"], cwd=project["root"],
                            check=True, capture_output=True, text=True).stdout
    assert status == ""  # the committed file is the file on disk
    rollout = rollout_config(project["stack"])
    assert (rollout["stage"], rollout["quantized_percent"]) == ("rollback", 0)
    assert deployed(project) == ("rollback", 0)


def test_a_kill_mid_apply_leaves_the_file_naming_what_runs(project):
    """SIGTERM while the first step (rollback -> 50%) is being applied: the apply finishes
    (the engine is a child the signal does not stop), then the run ends with the stack file
    and the deployment both at 50%."""
    before = rollout_config(project["stack"])
    assert before["quantized_percent"] == 0
    proc = subprocess.Popen([sys.executable, "-m", "qinfra", "rollout", "--stack", "local",
                             "--auto", "--json"], cwd=project["root"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while rollout_config(project["stack"])["quantized_percent"] != 50:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err
    rollout = rollout_config(project["stack"])
    assert (rollout["stage"], rollout["quantized_percent"]) == ("ab_test", 50)
    assert deployed(project) == ("ab_test", 50)
    assert router_health(project["port"])["quantized_percent"] == 50


def test_a_healthy_variant_is_promoted_to_full(project):
    """Resumed from the deployed 50% step (no new apply of it), then promoted to full."""
    update_stack_file(project["stack"], {"qinfra:rollout.steps": [50, 100]})
    with Load(project["port"]) as load:
        result = qinfra("rollout", "--stack", "local", "--auto", "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.output)
    assert run["outcome"] == "promoted" and [s["percent"] for s in run["steps"]] == [50]
    updates = (project["root"] / ".qinfra" / "analysis" / "local" / "updates.jsonl").read_text()
    assert [json.loads(u)["reason"] for u in updates.splitlines()][-2:] == [
        "first step", "step 50% passed"]  # resumed: 50% was applied once, by the killed run
    assert 200 in load.statuses
    rollout = rollout_config(project["stack"])
    assert (rollout["stage"], rollout["quantized_percent"]) == ("full", 100)
    assert deployed(project) == ("full", 100)
    windows = json.loads(qinfra("analysis", "--stack", "local", "--json").output)
    last = windows[-1]
    assert last["analysis_id"] == run["steps"][0]["analysis_id"] and last["verdict"] == "pass"
    assert last["values"]["quantized"]["requests"] >= 10
    # The step to full restarts the quantized llama-server in place (more slots for its larger
    # share) while the router already sends it the traffic, so requests during that apply may
    # fail (a limitation of the local target); the analysed window, after it, saw no error.
    assert last["values"]["quantized"]["errors"] == 0 == last["values"]["baseline"]["errors"]
    assert "qinfra_router_requests_total" in last["queries"]["quantized"]["requests"]
    history = json.loads(qinfra("history", "--stack", "local", "--json").output)
    assert history[0]["stage"] == "full"
    assert history[0]["analysis_id"] == run["steps"][0]["analysis_id"]


def test_a_stalled_quantized_engine_is_rolled_back_by_the_latency_check(project):
    """From full, rolled back by hand, then walked again with the latency check counted: once
    the first step is applied the quantized llama-server is stalled (SIGSTOP for STALL_S of
    every STALL_S + RUN_S: slow, never failing), and the p95 ratio fails the window."""
    assert qinfra("rollback", "--stack", "local", "--yes", "--json").exit_code == 0
    checks = {**ANALYSIS["checks"], "e2e_latency": LATENCY_CHECK}
    update_stack_file(project["stack"], {"qinfra:analysis": {**ANALYSIS, "checks": checks},
                                         "qinfra:rollout.steps": [50, 100]})
    updates = project["root"] / ".qinfra" / "analysis" / "local" / "updates.jsonl"
    seen = len(updates.read_text().splitlines())
    fault: dict[str, float] = {}
    done = threading.Event()

    def weight() -> float:
        return router_health(project["port"])["quantized_percent"]

    def stall() -> None:
        while len(updates.read_text().splitlines()) == seen:  # the first step's apply
            if done.wait(0.05):
                return
        pid = int((project["run"] / "quantized" / "server.pid").read_text())
        fault["start"] = time.monotonic()
        try:
            while not done.is_set() and weight() != 0:
                os.kill(pid, signal.SIGSTOP)
                done.wait(STALL_S)
                os.kill(pid, signal.SIGCONT)
                done.wait(RUN_S)
            fault["baseline_only"] = time.monotonic()
        finally:
            os.kill(pid, signal.SIGCONT)  # never leave it stopped: the rollback deletes it

    staller = threading.Thread(target=stall, daemon=True)
    with Load(project["port"], workers=6):
        staller.start()
        result = qinfra("rollout", "--stack", "local", "--auto", "--json")
        done.set()
        staller.join(timeout=60)
    assert result.exit_code == 1, result.output
    run = json.loads(result.output)
    assert run["outcome"] == "rolled_back" and "e2e_latency" in run["message"], run
    assert "error_rate" not in run["message"]  # slow, not failing
    assert [s["outcome"] for s in run["steps"]] == ["rollback"]
    windows = json.loads(qinfra("analysis", "--stack", "local", "--json").output)
    (latency,) = [c for c in windows[-1]["checks"] if c["check"] == "e2e_latency"]
    assert latency["verdict"] == "fail" and not latency["dry_run"]
    assert latency["values"]["ratio"] > LATENCY_CHECK["max_ratio"]
    assert (rollout_config(project["stack"])["stage"], deployed(project)) == (
        "rollback", ("rollback", 0))
    took = fault["baseline_only"] - fault["start"]  # measured, not asserted: wall time
    print(f"\nstalled engine: fault start -> traffic back on the baseline: {took:.1f} s "
          f"(p95 {latency['values']['quantized_p95_s']:.2f} s vs baseline "
          f"{latency['values']['baseline_p95_s']:.3f} s; windows {run['steps'][0]['windows']}; "
          f"then the rollback's apply {apply_s(updates):.1f} s)")


@pytest.mark.parametrize(("stage", "percent", "index"), [
    ("baseline_only", 0, 0),  # from the start
    ("rollback", 0, 0),
    ("ab_test", 25, 1),       # resumes at the deployed step, analysing it again
    ("gradual", 10, 1),       # between steps: the next one up
    ("full", 100, None),      # nothing left to do
])
def test_where_a_run_starts(stage, percent, index):
    from qinfra.core.spec import Stage, load_stack
    from qinfra.deploy.auto_rollout import start_index

    spec = load_stack("local", ROOT / "stacks")
    rollout = spec.rollout.model_copy(update={"stage": Stage(stage), "quantized_percent": percent,
                                              "steps": [5, 25, 50, 100]})
    assert start_index(spec.model_copy(update={"rollout": rollout})) == index


def test_auto_needs_an_analysis_config(stacks):
    result = qinfra("rollout", "--stack", "local", "--auto")
    assert result.exit_code == 2
    assert "has no qinfra:analysis" in result.output and "To fix" in result.output
    assert qinfra("rollout", "--stack", "local", "--auto", "--percent", "5").exit_code == 2
