"""The metric-gated rollout (`qinfra rollout --auto`): walk qinfra:rollout.steps, applying each
as the same two-line stack edit `qinfra rollout --yes` applies (one `Stack.step` transaction),
and let the analysis of every window decide: promote, roll back at once (exit 1), or hold for a
human (exit 3).

The stack file always describes what is deployed: an interrupted apply (Ctrl-C, SIGTERM) puts
the file back and tells the router the old weights, so a rerun resumes from the deployed step;
with --commit every applied change is committed, naming its step, verdict and analysis id.
The file is the operator's too: a manual rollback, rollout or hand edit made while this runs
stops it (exit 4) before it applies anything more, and a Ctrl-C between applies ends it with
exit 130 and says where traffic stands.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qinfra.core.errors import DeployError, SpecError
from qinfra.core.spec import StackSpec, Stage, Variant
from qinfra.deploy.operations import Stack, StackFileChanged
from qinfra.deploy.rollout import RolloutEdit, rollback, rollout
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
EXIT_STOPPED = 4  # someone else changed the stack file: their change stands
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, as a shell reports a SIGINT
_FILE_CHECK_S = 1.0  # how often a wait looks whether someone else changed the stack file
_READ_SLACK_S = 0.5  # after a window ends: the last scrape lands, then Prometheus answers


@dataclass
class Run:
    """What one `rollout --auto` did, for its JSON and its exit code."""

    stack: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    outcome: str = "promoted"
    exit_code: int = 0
    message: str = ""
    traffic: dict[str, int] | None = None  # where traffic stands as the run ends (deployed)

    def to_json(self) -> dict[str, Any]:
        return {"stack": self.stack, "outcome": self.outcome, "exit_code": self.exit_code,
                "message": self.message, "steps": self.steps, "traffic_percent": self.traffic}


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




class AutoRollout:
    """One automatic rollout of one opened stack (see the module docstring)."""

    def __init__(self, stack: Stack, commit: bool) -> None:
        self.stack, self.commit = stack, commit
        self.run = Run(stack.name)
        self.interrupts = _Interrupts()
        self.expect = stack.path.read_bytes()  # what the file must hold at the next step

    def say(self, message: str) -> None:
        self.stack.events.progress(message)

    def _check_analysis(self, spec: StackSpec) -> None:
        if spec.prometheus_url() is None:
            key = "qinfra:analysis" + ("" if spec.analysis is None else ".prometheus_url")
            raise SpecError(f"stack {spec.name} has no {key}: `rollout --auto` judges each "
                            "step from the router's metrics in Prometheus. To fix: add "
                            "`qinfra:analysis: {}` (target local runs its own Prometheus) or "
                            "name your server in qinfra:analysis.prometheus_url")

    def apply(self, edit: RolloutEdit, reason: str, analysis_id: str | None,
              verdict: str | None) -> StackSpec:
        """Apply one two-line edit, record it for `history`, commit it with --commit."""
        spec = self.stack.spec
        self.say(f"applying {edit.stage.value} {edit.quantized_percent}% ({reason})")
        with self.interrupts.deferred():
            started = time.time()
            result = self.stack.step(edit, self.expect)
            finished = time.time()
            assert result.written is not None
            self.expect = result.written
            commit = None
            if self.commit:
                commit = _commit(spec, f"rollout {spec.name}: {reason} -> {edit.stage.value} "
                                 f"{edit.quantized_percent}% (verdict {verdict or 'none'}, "
                                 f"analysis {analysis_id or 'none'})")
            record_update(audit_dir(spec.root or Path.cwd(), spec.name), AppliedUpdate(
                started, finished, edit.stage.value, edit.quantized_percent, reason, analysis_id,
                verdict, commit))
        return self.stack.spec

    def _wait(self, moment: float) -> None:
        """Sleep until `moment`, stopping at once when someone else changes the stack file."""
        while (left := moment - time.time()) > 0:
            wait_until(time.time() + min(left, _FILE_CHECK_S))
            if self.stack.path.read_bytes() != self.expect:
                raise StackFileChanged(
                    f"{self.stack.path} changed while this automatic rollout analysed a step (a "
                    "manual rollback or rollout, or a hand edit): stopped without applying "
                    "anything; traffic stays as that change set it")

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
            self._wait(end + min(analysis.scrape_interval_s, analysis.interval_s) + _READ_SLACK_S)
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

    def step(self, index: int) -> bool:
        """Analyse step `index` (applied already); whether to go on."""
        spec = self.stack.spec
        steps = spec.rollout.steps
        percent = steps[index]
        outcome, analysis_id, windows = self.analyse_step(spec, percent)
        last = windows[-1]
        self.run.steps.append({"percent": percent, "analysis_id": analysis_id,
                               "outcome": outcome.value,
                               "windows": [w.verdict.value for w in windows]})
        if outcome is StepOutcome.PROMOTE:
            self.apply(rollout(spec, steps[index + 1]), f"step {percent}% passed", analysis_id,
                       "pass")
            return True
        if outcome is StepOutcome.ROLLBACK:
            failed = last.failed_checks()
            why = ("; ".join(f"{c.check.value}: {c.reason}" for c in failed)
                   or f"metrics unreadable: {last.error}")
            self.apply(rollback(), f"rollback at {percent}%", analysis_id,
                       "fail" if failed else "error")
            self.run.outcome, self.run.exit_code = "rolled_back", EXIT_ROLLED_BACK
            self.run.message = f"rolled back at {percent}%: {why} (analysis {analysis_id})"
            return False
        self.run.outcome, self.run.exit_code = "held", EXIT_HELD
        reasons = [c.reason for c in last.checks if c.counted.value == "inconclusive"]
        self.run.message = (f"held at {percent}%: inconclusive ({reasons[0] if reasons else '?'};"
                            f" analysis {analysis_id}). To fix: send more traffic and rerun, or "
                            "move it by hand with `qinfra rollout --percent`")
        return False

    def __call__(self, skip_gate: bool) -> Run:
        """Run it to its end; an interrupt or someone else's change ends it with its own
        outcome and exit code, and the JSON says where traffic stands."""
        try:
            self._walk(skip_gate)
        except KeyboardInterrupt:
            self.run.outcome, self.run.exit_code = "interrupted", EXIT_INTERRUPTED
            self.run.message = ("interrupted: nothing more is applied; traffic stays as the last "
                                "applied step set it. Rerun to resume there, or `qinfra rollback "
                                f"--stack {self.stack.name}`")
        except StackFileChanged as exc:
            self.run.outcome, self.run.exit_code = "stopped", EXIT_STOPPED
            self.run.message = exc.message
        except DeployError:
            if self.interrupts.pending is None:
                raise
            # Ctrl-C in a terminal reaches the engine too: it cancels, and the step's apply
            # fails and puts the file back; that is the interrupt, not a failure of its own
            self.run.outcome, self.run.exit_code = "interrupted", EXIT_INTERRUPTED
            self.run.message = ("interrupted during an apply: the stack file was put back to the "
                                "last applied step. Rerun to resume there, or `qinfra rollback "
                                f"--stack {self.stack.name}`")
        if self.run.outcome in ("interrupted", "stopped"):
            self.run.traffic = self._deployed_traffic()
        return self.run

    def _deployed_traffic(self) -> dict[str, int] | None:
        percent = self.stack.deployed_percent()
        if percent is None:
            return None
        return {Variant.BASELINE.value: 100 - percent, Variant.QUANTIZED.value: percent}

    def _walk(self, skip_gate: bool) -> None:
        spec = self.stack.spec
        self._check_analysis(spec)
        if self.commit:
            _require_git(spec)
        index = start_index(spec)
        if index is None:
            self.run.message = f"stack {spec.name} is fully promoted already (stage full)"
            return
        steps = spec.rollout.steps
        with self.interrupts.installed():
            self._prepare(steps[index], skip_gate)
            spec = self.stack.spec
            if (spec.rollout.stage in (Stage.AB_TEST, Stage.GRADUAL)
                    and spec.rollout.quantized_percent == steps[index]
                    and self.stack.deployed_percent() == steps[index]):
                self.say(f"resuming at the deployed step {steps[index]}%")
            else:
                self.apply(rollout(spec, steps[index]), "first step", None, None)
            while steps[index] < 100:
                if not self.step(index):
                    return
                index += 1
        self.run.message = f"stack {spec.name} fully promoted (stage full)"

    def _prepare(self, percent: int, skip_gate: bool) -> None:
        """Like `up`: push and pin what is not pinned, then the quality gate for the first step
        that gives the quantized variant traffic (a --skip-gate is written to the file). Neither
        changes what runs, so with --commit both ride in the next applied step's commit."""
        stack = self.stack
        stack.ensure_artifacts()
        stack.record(stack.gate(rollout(stack.spec, percent), skip_gate))
        self.expect = stack.path.read_bytes()
