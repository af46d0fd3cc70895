"""`qinfra rollout --auto`: walk qinfra:rollout.steps, applying each as the same two-line stack
edit `qinfra rollout --yes` applies, and let the analysis of every window decide: promote, roll
back at once (exit 1), or hold for a human (exit 3).

The stack file always describes what is deployed: an interrupted apply (Ctrl-C, SIGTERM) puts
the file back and tells the router the old weights, so a rerun resumes from the deployed step;
with --commit every applied change is committed, naming its step, verdict and analysis id.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from qinfra.core.errors import DeployError, SpecError
from qinfra.core.spec import StackSpec, Stage, Variant, load_stack
from qinfra.quality.analysis import StepOutcome, StepTally, Window, analyse, wait_until
from qinfra.quality.analysis_audit import (
    AppliedUpdate,
    audit_dir,
    new_analysis_id,
    record_update,
    save_window,
)

EXIT_ROLLED_BACK = 1
EXIT_HELD = 3  # as Argo's Inconclusive: a human decides
_READ_SLACK_S = 0.5  # after a window ends: the last scrape lands, then Prometheus answers


@dataclass
class Run:
    """What one `rollout --auto` did, for its JSON and its exit code."""

    stack: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    outcome: str = "promoted"
    exit_code: int = 0
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"stack": self.stack, "outcome": self.outcome, "exit_code": self.exit_code,
                "message": self.message, "steps": self.steps}


def start_index(spec: StackSpec) -> int | None:
    """The step to begin with: the deployed one when the file names a step in ab_test/gradual
    (a rerun resumes there, analysing it again), else the first step above the current share;
    None when the stack is fully promoted already."""
    steps, rollout = spec.rollout.steps, spec.rollout
    if rollout.stage is Stage.FULL:
        return None
    if rollout.stage in (Stage.BASELINE_ONLY, Stage.ROLLBACK):
        return 0
    if rollout.quantized_percent in steps:
        return steps.index(rollout.quantized_percent)
    return next(i for i, s in enumerate(steps) if s > rollout.quantized_percent)


class _Interrupts:
    """SIGINT and SIGTERM stop the loop at once while it waits or analyses (the file names the
    deployed step then), but only after an apply that is under way: the engine runs as a child
    process that a signal to this one does not stop, so leaving mid-apply would leave the file
    behind what the engine goes on to deploy. (Ctrl-C in a terminal reaches the engine too: it
    cancels, `up` fails, and `_apply` puts the file back.)"""

    def __init__(self) -> None:
        self.deferring = False
        self.pending: int | None = None

    def handle(self, signum: int, _frame: Any) -> None:
        if self.deferring:
            self.pending = signum
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # Python delivers signals to the main thread only: nothing to install
            return
        previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold signals until the block ends, then act on one that came."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending is not None:
            raise KeyboardInterrupt


def _apply(spec: StackSpec, updates: dict[str, object]) -> tuple[float, float]:
    """Edit the stack file, tell a local router at once, run the engine; (start, end) times.
    Anything that stops the apply before it completes puts the file back and tells the router
    the old weights, so file, router and the last completed update agree."""
    from qinfra.cli.stack import _end_orphans, _tell_router
    from qinfra.core.fileio import write_atomic
    from qinfra.deploy.engine import Deployer
    from qinfra.deploy.stackfile import update_stack_file

    assert spec.path is not None
    before = spec.path.read_bytes()
    started = time.time()
    try:
        update_stack_file(spec.path, updates)
        _tell_router(spec.name)
        deployer = Deployer(spec.name, backend=spec.backend)
        _end_orphans(deployer)
        deployer.up()
    except BaseException:
        write_atomic(spec.path, before)
        with contextlib.suppress(Exception):  # the original failure is what to report
            _tell_router(spec.name)
        raise
    return started, time.time()


def _commit(spec: StackSpec, message: str) -> str | None:
    """Commit the stack file alone; the new commit's id (None when nothing changed)."""
    assert spec.path is not None and spec.root is not None
    git = ["git", "-C", str(spec.root)]
    subprocess.run([*git, "add", "--", str(spec.path)], check=True, capture_output=True)
    done = subprocess.run([*git, "commit", "--quiet", "-m", message, "--", str(spec.path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        if "nothing to commit" in done.stdout + done.stderr:
            return None
        raise DeployError(f"git commit of {spec.path} failed: {done.stderr.strip()[-300:]}")
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    return head.stdout.strip()


def _require_git(spec: StackSpec) -> None:
    assert spec.root is not None
    inside = subprocess.run(["git", "-C", str(spec.root), "rev-parse", "--is-inside-work-tree"],
                            capture_output=True, text=True)
    if inside.returncode != 0:
        raise SpecError(f"--commit needs a Git work tree; {spec.root} is not in one. To fix: "
                        "`git init` there, or run without --commit")


def _deployed_percent(spec: StackSpec) -> int | None:
    """The quantized share the last update deployed (its `variants` output); None if unknown."""
    from qinfra.deploy.engine import Deployer

    with contextlib.suppress(Exception):
        outputs = Deployer(spec.name, backend=spec.backend).outputs()
        quantized = (outputs.get("variants") or {}).get(Variant.QUANTIZED.value) or {}
        return int(quantized["weight_percent"])
    return None


class AutoRollout:
    """One automatic rollout of one stack (see the module docstring)."""

    def __init__(self, stack: str, commit: bool, say: Callable[[str], None]) -> None:
        self.stack, self.commit, self.say = stack, commit, say
        self.run = Run(stack)
        self.interrupts = _Interrupts()

    def _spec(self) -> StackSpec:
        spec = load_stack(self.stack)
        if spec.prometheus_url() is None:
            key = "qinfra:analysis" + ("" if spec.analysis is None else ".prometheus_url")
            raise SpecError(f"stack {self.stack} has no {key}: `rollout --auto` judges each "
                            "step from the router's metrics in Prometheus. To fix: add "
                            "`qinfra:analysis: {}` (target local runs its own Prometheus) or "
                            "name your server in qinfra:analysis.prometheus_url")
        return spec

    def apply(self, spec: StackSpec, stage: Stage, percent: int, reason: str,
              analysis_id: str | None, verdict: str | None) -> StackSpec:
        """Apply one two-line edit, record it for `history`, commit it with --commit."""
        updates = {"qinfra:rollout.stage": stage.value, "qinfra:rollout.quantized_percent": percent}
        self.say(f"applying {stage.value} {percent}% ({reason})")
        with self.interrupts.deferred():
            started, finished = _apply(spec, updates)
            commit = None
            if self.commit:
                commit = _commit(spec, f"rollout {spec.name}: {reason} -> {stage.value} "
                                 f"{percent}% (verdict {verdict or 'none'}, analysis "
                                 f"{analysis_id or 'none'})")
            record_update(audit_dir(spec.root or Path.cwd(), spec.name), AppliedUpdate(
                started, finished, stage.value, percent, reason, analysis_id, verdict, commit))
        return load_stack(self.stack)

    def analyse_step(self, spec: StackSpec, percent: int) -> tuple[StepOutcome, str, list[Window]]:
        """Windows of `interval_s` after `initial_delay_s`, counted by StepTally until decided."""
        analysis = spec.analysis
        assert analysis is not None
        url = spec.prometheus_url()
        assert url is not None
        analysis_id = new_analysis_id(spec.name, percent)
        folder = audit_dir(spec.root or Path.cwd(), spec.name)
        shadowing = spec.router.shadow_percent > 0
        tally, windows = StepTally(analysis), []
        start = time.time() + analysis.initial_delay_s
        while True:
            end = start + analysis.interval_s
            wait_until(end + min(analysis.scrape_interval_s, analysis.interval_s) + _READ_SLACK_S)
            window = analyse(analysis, url, shadowing, analysis_id, len(windows), percent,
                             start, end, stack=spec.name)
            save_window(folder, window.to_json())
            windows.append(window)
            self.say(f"  {percent}% window {window.index}: {window.verdict.value}"
                     + "".join(f"; {c.check.value} {c.verdict.value}: {c.reason}"
                               for c in window.checks if c.verdict.value != "pass")
                     + (f"; {window.error}" if window.error else ""))
            outcome = tally.add(window.verdict)
            if outcome is not None:
                return outcome, analysis_id, windows
            start = end

    def step(self, spec: StackSpec, index: int) -> tuple[StackSpec, bool]:
        """Analyse step `index` (applied already); (the spec after, whether to go on)."""
        steps = spec.rollout.steps
        percent = steps[index]
        outcome, analysis_id, windows = self.analyse_step(spec, percent)
        last = windows[-1]
        self.run.steps.append({"percent": percent, "analysis_id": analysis_id,
                               "outcome": outcome.value,
                               "windows": [w.verdict.value for w in windows]})
        if outcome is StepOutcome.PROMOTE:
            nxt = steps[index + 1]
            stage = Stage.FULL if nxt == 100 else spec.rollout.stage
            if stage not in (Stage.AB_TEST, Stage.GRADUAL, Stage.FULL):
                stage = Stage.AB_TEST
            return self.apply(spec, stage, nxt, f"step {percent}% passed", analysis_id,
                              "pass"), True
        if outcome is StepOutcome.ROLLBACK:
            failed = last.failed_checks()
            why = ("; ".join(f"{c.check.value}: {c.reason}" for c in failed)
                   or f"metrics unreadable: {last.error}")
            rolled = self.apply(spec, Stage.ROLLBACK, 0, f"rollback at {percent}%",
                                analysis_id, "fail" if failed else "error")
            self.run.outcome, self.run.exit_code = "rolled_back", EXIT_ROLLED_BACK
            self.run.message = f"rolled back at {percent}%: {why} (analysis {analysis_id})"
            return rolled, False
        self.run.outcome, self.run.exit_code = "held", EXIT_HELD
        reasons = [c.reason for c in last.checks if c.counted.value == "inconclusive"]
        self.run.message = (f"held at {percent}%: inconclusive ({reasons[0] if reasons else '?'};"
                            f" analysis {analysis_id}). To fix: send more traffic and rerun, or "
                            "move it by hand with `qinfra rollout --percent`")
        return spec, False

    def __call__(self, skip_gate: bool) -> Run:
        spec = self._spec()
        if self.commit:
            _require_git(spec)
        index = start_index(spec)
        if index is None:
            self.run.message = f"stack {self.stack} is fully promoted already (stage full)"
            return self.run
        steps = spec.rollout.steps
        with self.interrupts.installed():
            spec = self._prepare(spec, steps[index], skip_gate)
            if (spec.rollout.stage in (Stage.AB_TEST, Stage.GRADUAL)
                    and spec.rollout.quantized_percent == steps[index]
                    and _deployed_percent(spec) == steps[index]):
                self.say(f"resuming at the deployed step {steps[index]}%")
            else:
                spec = self.apply(spec, Stage.AB_TEST if steps[index] < 100 else Stage.FULL,
                                  steps[index], "first step", None, None)
            while steps[index] < 100:
                spec, go_on = self.step(spec, index)
                if not go_on:
                    return self.run
                index += 1
        self.run.message = f"stack {self.stack} fully promoted (stage full)"
        return self.run

    def _prepare(self, spec: StackSpec, percent: int, skip_gate: bool) -> StackSpec:
        """Like `up`: push and pin what is not pinned, then the quality gate for the first step
        that gives the quantized variant traffic (a --skip-gate is written to the file). Neither
        changes what runs, so with --commit both ride in the next applied step's commit."""
        from qinfra.cli.gate_guard import gate_updates
        from qinfra.cli.stack import _ensure_artifacts
        from qinfra.deploy.stackfile import update_stack_file

        spec = _ensure_artifacts(spec, quiet=True)
        rollout = spec.rollout.model_copy(update={"stage": Stage.AB_TEST if percent < 100
                                                  else Stage.FULL, "quantized_percent": percent})
        skip = gate_updates(spec.model_copy(update={"rollout": rollout}), skip_gate)
        if skip:
            assert spec.path is not None
            update_stack_file(spec.path, skip)
            spec = load_stack(self.stack)
        return spec


def run_auto(stack: str, commit: bool, as_json: bool, skip_gate: bool) -> int:
    """Run it, print the outcome (JSON with --json); the exit code."""
    def say(message: str) -> None:
        if not as_json:
            click.echo(message, err=True)

    run = AutoRollout(stack, commit, say)(skip_gate)
    if as_json:
        from qinfra.cli.output import echo_json

        echo_json(run.to_json())
    else:
        click.echo(run.message)
    return run.exit_code
