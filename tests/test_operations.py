"""The operations API under the CLI, on the real local stack (real Pulumi engine, router,
llama-servers on the demo model, Prometheus): up, rollout, rollback and an automatic rollout
driven with no CLI by an events object that answers the questions; how often a change parses
the stack file; and the races of issue 26, with real concurrent commands: two rollouts at once,
a manual rollback or a hand edit during an automatic rollout, Ctrl-C during one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import qinfra.core.spec as spec_module
from qinfra.core.errors import Declined
from qinfra.deploy.auto_rollout import EXIT_HELD, EXIT_INTERRUPTED, EXIT_STOPPED, AutoRollout
from qinfra.deploy.events import Events
from qinfra.deploy.operations import Stack
from qinfra.deploy.stackfile import update_stack_file
from tests.local_stack import entered, qinfra
from tests.test_auto_rollout import ANALYSIS, GIT_ENV, rollout_config, write_stack
from tests.test_local_router import router_health

pytestmark = pytest.mark.real
STEPS = [50, 75, 100]


class Answering(Events):
    """Answers each question with the next of `answers`; keeps what it was told."""

    can_ask = True

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.questions: list[str] = []
        self.reports: list[Any] = []
        self.told: list[str] = []

    def confirm(self, question: str) -> bool:
        self.questions.append(question)
        return self.answers.pop(0)

    def previewed(self, report: Any) -> None:
        self.reports.append(report)

    def progress(self, message: str) -> None:
        self.told.append(message)

    def warning(self, message: str) -> None:
        self.told.append(message)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("operations")
    port, stack = write_stack(root)
    update_stack_file(stack, {"qinfra:analysis": ANALYSIS, "qinfra:rollout.steps": STEPS})
    with entered(root, GIT_ENV):
        pushed = qinfra("artifacts", "push", "--stack", "local")  # so each test may deploy
        assert pushed.exit_code == 0, pushed.output
        yield {"root": root, "port": port, "stack": stack}


def quantized_percent(project: dict[str, Any]) -> int:
    return int(router_health(project["port"])["quantized_percent"])


def deployed_percent(project: dict[str, Any]) -> int:
    outputs = json.loads(qinfra("status", "--stack", "local", "--json").output)["outputs"]
    return int(outputs["variants"]["quantized"]["weight_percent"])


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every parse of a stack file in this process (load_stack and the program's reader both
    end in parse_config)."""
    seen: list[str] = []
    real = spec_module.parse_config

    def counting(raw: Any, stack: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(stack)
        return real(raw, stack, *args, **kwargs)

    monkeypatch.setattr(spec_module, "parse_config", counting)
    return seen


def test_the_operations_run_without_the_cli(project, parses):
    events = Answering(True)
    stack = Stack.open("local", events)
    result = stack.up(yes=False)
    assert events.questions == ["Apply these changes to stack local?"]
    assert len(events.reports) == 1 and events.reports[0].summary.get("create")
    assert result.applied is not None
    assert result.applied.outputs["variants"]["quantized"]["weight_percent"] == 50
    assert quantized_percent(project) == 50

    before = project["stack"].read_bytes()
    declined = Answering(False)
    with pytest.raises(Declined):
        Stack.open("local", declined).rollout(25, yes=False)
    assert declined.questions == ["Apply these changes to stack local?"]
    assert project["stack"].read_bytes() == before  # a "no" leaves every byte
    assert any("left as it was" in line for line in declined.told)
    assert quantized_percent(project) == 50

    agreed = Answering(True)
    result = Stack.open("local", agreed).rollout(25, yes=False)
    assert "+    quantized_percent: 25" in result.diff
    assert quantized_percent(project) == 25 and deployed_percent(project) == 25

    result = Stack.open("local").rollback(yes=True)
    assert result.applied is not None and quantized_percent(project) == 0
    assert rollout_config(project["stack"])["stage"] == "rollback"

    # the metric-gated walk on the same API: no traffic, so its first step holds (exit 3)
    parses.clear()
    run = AutoRollout(Stack.open("local", Answering()), commit=False)(skip_gate=False)
    assert len(parses) == 2  # opened once, read once after its one write (the first step)
    assert (run.outcome, run.exit_code) == ("held", EXIT_HELD), run.message
    assert quantized_percent(project) == 50 and deployed_percent(project) == 50


@pytest.mark.parametrize("argv", [
    ("rollout", "--stack", "local", "--percent", "25", "--yes"),
    ("rollback", "--stack", "local", "--yes"),
    ("rollout", "--stack", "local", "--percent", "50", "--yes"),
])
def test_a_change_parses_the_stack_file_once_and_once_after_its_write(project, parses, argv):
    result = qinfra(*argv)
    assert result.exit_code == 0, result.output
    assert parses == ["local", "local"], parses  # was 5 for a rollback (issue 21)


def _start(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "qinfra", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_concurrent_rollouts_deploy_only_what_one_previewed(project):
    """Issue 26.2: `--percent 40 & sleep 0.3; --percent 60` deployed 60 after the 40 command
    previewed 30 -> 40. The edit lock holds from edit to apply: the second command fails at once
    and leaves the file alone; what runs is what the first one previewed."""
    first = _start("rollout", "--stack", "local", "--percent", "40", "--yes")
    time.sleep(0.3)
    second = subprocess.run([sys.executable, "-m", "qinfra", "rollout", "--stack", "local",
                             "--percent", "60", "--yes"], capture_output=True, text=True,
                            timeout=300)
    _out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 1, second.stderr
    assert "is being changed by pid" in second.stderr and "nothing was edited" in second.stderr
    assert rollout_config(project["stack"])["quantized_percent"] == 40
    assert quantized_percent(project) == 40 and deployed_percent(project) == 40


def _auto_rollout_analysing(project: dict[str, Any]) -> subprocess.Popen[str]:
    """`rollout --auto --json` from the deployed 50% step, once it has judged its first window
    and waits for the next (no traffic: its windows are inconclusive, so it waits there)."""
    at_50 = qinfra("rollout", "--stack", "local", "--percent", "50", "--yes")
    assert at_50.exit_code == 0, at_50.output
    audit = project["root"] / ".qinfra" / "analysis" / "local"
    seen = set(audit.glob("*-w*.json"))
    proc = _start("rollout", "--stack", "local", "--auto", "--json")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if set(audit.glob("*-w*.json")) - seen:
            return proc
        time.sleep(0.2)
    raise AssertionError(f"the automatic rollout never judged a window: {proc.communicate()}")


@pytest.mark.parametrize("change", ["manual rollback", "hand-edited salt"])
def test_a_change_during_an_automatic_rollout_stops_it(project, change):
    """Issue 26.1 and 26.13: a rollback between windows was undone by the next promotion (0%,
    then 100% 20 s later); a salt edited by hand was deployed at the next step unseen. Either
    now stops the automatic rollout (exit 4) before it applies anything more."""
    proc = _auto_rollout_analysing(project)
    router_file = project["root"] / ".qinfra" / "run" / "local" / "router" / "config.json"
    salt, before = json.loads(router_file.read_text())["salt"], project["stack"].read_bytes()
    if change == "manual rollback":
        result = qinfra("rollback", "--stack", "local", "--yes")
        assert result.exit_code == 0, result.output
    else:
        update_stack_file(project["stack"], {"qinfra:router.salt": "edited-by-hand"})
    out, err = proc.communicate(timeout=120)
    doc = json.loads(out)
    assert (proc.returncode, doc["outcome"]) == (EXIT_STOPPED, "stopped"), err
    assert "changed while this automatic rollout analysed" in doc["message"]
    assert "traffic_percent" in doc
    if change == "manual rollback":
        assert quantized_percent(project) == 0 and deployed_percent(project) == 0
        assert rollout_config(project["stack"])["stage"] == "rollback"
    else:
        assert json.loads(router_file.read_text())["salt"] == salt  # the edit never ran
        assert deployed_percent(project) == 50
        project["stack"].write_bytes(before)


def test_ctrl_c_during_an_automatic_rollout_says_where_traffic_stands(project):
    """Issue 26.6: Ctrl-C during `rollout --auto --json` exited 1 ("rolled back" in the README)
    with no JSON while 50% stayed live."""
    proc = _auto_rollout_analysing(project)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    doc = json.loads(out)
    assert (proc.returncode, doc["outcome"]) == (EXIT_INTERRUPTED, "interrupted"), err
    assert doc["traffic_percent"] == {"baseline": 50, "quantized": 50}
    assert quantized_percent(project) == 50


def test_status_exits_1_while_a_variant_with_traffic_does_not_answer(project):
    """Issue 26.8: a dead quantized engine printed `unreachable` and `status` exited 0. A
    stalled one (SIGSTOP: no supervisor restarts it) now makes `status` exit 1 naming it."""
    import os

    from qinfra.deploy.targets import local

    assert qinfra("rollout", "--stack", "local", "--percent", "50", "--yes").exit_code == 0
    folder = project["root"] / ".qinfra" / "run" / "local" / "quantized"
    assert local.recorded_server(folder) is not None  # its supervisor, which qinfra started
    engine = int((folder / local.PID_FILE).read_text())  # the llama-server it runs
    os.kill(engine, signal.SIGSTOP)
    try:
        result = qinfra("status", "--stack", "local", "--json")
    finally:
        os.kill(engine, signal.SIGCONT)
    assert result.exit_code == 1, result.output
    doc = json.loads(result.output)
    assert doc["down"] == ["quantized"] and doc["health"]["baseline"] == "ok"
    assert qinfra("status", "--stack", "local", "--json").exit_code == 0
