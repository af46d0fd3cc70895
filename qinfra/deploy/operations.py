"""qinfra's operations on one stack, under every front end: `Stack.open` loads, validates and
preflights once; each change (`up`, `rollback`, `rollout`, one step of an automatic rollout) is
one locked transaction: edit the stack file only after the gate agrees, tell a local router,
preview, ask, apply, and put the file's bytes back when the change is refused or fails before
consent. Progress and questions go through the caller's `Events`; nothing here prints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qinfra.core.errors import Declined, DeployError, NeedsConsent
from qinfra.core.fileio import write_atomic
from qinfra.core.spec import StackSpec, Stage, Target, load_stack
from qinfra.deploy.edit_lock import edit_lock
from qinfra.deploy.engine import Deployer, Outcome
from qinfra.deploy.events import SILENT, Events
from qinfra.deploy.gate_guard import gate_updates
from qinfra.deploy.project import Project
from qinfra.deploy.rollout import RolloutEdit
from qinfra.deploy.stackfile import update_stack_file

# How long a rollback waits for another change of the same stack (an automatic rollout applying
# a step) before it gives up: going back to the baseline is what an operator needs most, so it
# queues; every other change fails at once rather than act on a file another one is editing.
ROLLBACK_LOCK_WAIT_S = 600.0


class StackFileChanged(DeployError):
    """The stack file is no longer what this change read or previewed (someone edited it)."""

    exit_code = 4


@dataclass(frozen=True)
class Applied:
    """What an applied change left running."""

    stack: str
    summary: Mapping[str, int]
    outputs: Mapping[str, Any]


@dataclass(frozen=True)
class ChangeResult:
    """A change of the stack file and, unless it was left for review, its apply."""

    stack: str
    path: Path
    diff: str
    applied: Applied | None = None
    written: bytes | None = None  # the file's bytes after this change (what the engine ran)


@dataclass
class _Edit:
    """The stack file's bytes before a transaction and after its own write."""

    before: bytes
    written: bytes | None = None
    consented: bool = False


@dataclass
class Stack:
    """One stack, loaded once: its spec, its project and its Pulumi stack."""

    spec: StackSpec
    project: Project
    deployer: Deployer
    events: Events = field(default_factory=lambda: SILENT)
    _parsed: bytes = b""  # the file's bytes when the spec was read

    def __post_init__(self) -> None:
        self._parsed = self.path.read_bytes()

    @classmethod
    def open(cls, name: str, events: Events | None = None, *, check: bool = True) -> Stack:
        """Load and validate stacks/Pulumi.<name>.yaml and (with `check`) run its target's
        preflight; a broken stack file or a missing credential stops here, before the engine
        starts. A read of the recorded state alone needs no credentials: `check=False`."""
        from qinfra.deploy.targets.registry import preflight

        spec = load_stack(name)
        if check:
            preflight(spec)
        project = Project.find()
        return cls(spec, project, Deployer.for_spec(spec, project), events or SILENT)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def path(self) -> Path:
        assert self.spec.path is not None  # load_stack always sets it
        return self.spec.path

    def reload(self) -> StackSpec:
        """Read the stack file again: only after a write of this process's own."""
        self.spec = load_stack(self.name)
        self._parsed = self.path.read_bytes()
        return self.spec

    # -- pieces every change uses ------------------------------------------------------------

    def tell_router(self, spec: StackSpec | None = None) -> bool:
        """Hand the stack file's weights to a running local router at once (it polls its config
        file), ahead of the engine run that records and reconciles them: a rollback takes effect
        in well under a second, and a failed apply still leaves file and router agreeing, which
        the next `up` brings the state to. Other targets and stopped routers: nothing to do."""
        spec = spec or self.spec
        if spec.target is not Target.LOCAL:
            return False
        from qinfra.deploy.targets.router_process import tell_router

        return tell_router(spec, self.project.run_dir)

    def end_orphans(self) -> None:
        """End what a killed update left running (its dynamic provider, its program), and say so."""
        from qinfra.deploy.processes import end_orphans, engine_records

        for ended in end_orphans(engine_records(self.project.run_dir)):
            self.events.warning(f"ended the {ended.role} (pid {ended.process.pid}) an interrupted "
                                "update left running")

    def gate(self, edit: RolloutEdit | None, skip: bool, refuse: bool = True) -> dict[str, str]:
        """The gate's word on the stack as `edit` would leave it, asked before anything is
        written: {} to go on, the recorded skip with `skip`, else DeployError (see gate_updates)."""
        return gate_updates(self._edited(edit), skip, self.events, refuse=refuse)

    def record(self, updates: Mapping[str, object]) -> str:
        """Write keys that change nothing that runs (pins, a gate skip) under the edit lock, and
        read the file again; the diff ("" when it already said so)."""
        if not updates:
            return ""
        with edit_lock(self.project.root / ".qinfra", self.name):
            diff = update_stack_file(self.path, updates)
        if diff:
            self.reload()
        return diff

    def ensure_artifacts(self) -> StackSpec:
        """Push and pin what the stack file does not pin; push a pinned artifact the store lacks
        only when its source makes exactly that pin (else ArtifactError: never re-pinned here)."""
        from qinfra.artifacts import push as art
        from qinfra.artifacts import router_wheels

        spec = self.spec
        state = art.pin_state(spec)
        router = router_wheels.wanted(spec)  # pinned to the qinfra running now, every time
        if not state.to_push and not router:
            return spec
        with self.events.push_progress() as progress:
            results = art.push_stack(spec, progress=progress, only=state.to_push,
                                     restore=state.not_held) if state.to_push else {}
            wheels = router_wheels.push_router(spec, progress=progress) if router else None
        if diff := self.record({**art.pins(results), **router_wheels.pins(wheels)}):
            self.events.pinned(diff)
        return self.spec

    def deployed_percent(self) -> int | None:
        """The quantized share the last update deployed (its `variants` output); None if unknown."""
        with contextlib.suppress(Exception):
            quantized = (self.deployer.outputs().get("variants") or {}).get("quantized") or {}
            return int(quantized["weight_percent"])
        return None

    # -- read-only --------------------------------------------------------------------------

    def preview(self) -> Any:
        """What `up` would change (a PreviewReport); a stack never deployed is previewed and not
        left behind. Without the policy pack (which denies it), a gate refusal is a warning."""
        if self.deployer.policy_packs() is None:
            self.gate(None, skip=False, refuse=False)
        with self.deployer.transient():
            return self._preview_report()

    def _preview_report(self) -> Any:
        """Preview, and the deployed plan (the stack's `plan` output) as the preview's own Stack
        step reports it: no `stack output` calls beside the preview (they ran the CLI twice). The
        "after" plan is made while the engine previews (reading a GGUF's facts takes seconds)."""
        from concurrent.futures import ThreadPoolExecutor

        from qinfra.deploy.preview import build_report, deployed_plan
        from qinfra.planning.stack import plan_for

        spec, deployer = self.spec, self.deployer
        with ThreadPoolExecutor(max_workers=1) as pool:
            after = pool.submit(plan_for, spec)
            outcome = deployer.preview()
            before = outcome.outputs_before
            deployed = deployed_plan(lambda: before if before is not None
                                     else deployer.outputs(mask_secrets=True))
            return build_report(spec.name, outcome.changes, outcome.summary, deployed,
                                after.result())

    # -- changes ----------------------------------------------------------------------------

    def up(self, *, yes: bool, skip_gate: bool = False, preview: bool = True) -> ChangeResult:
        """Push and pin missing artifacts, record a gate skip if asked, preview, ask, apply.
        Fails at once, before pushing or previewing, while another update holds the stack's
        lock; after pinning, before the engine, while the gate refuses the quantized share."""
        from qinfra.deploy.bootstrap import create_store, store_pass_needed

        self._require_answer(yes, no_apply=False)
        self.deployer.check_unlocked()
        if store_pass_needed(self.spec, self.deployer.exists()):  # the bucket before the push
            self.events.progress(f"creating {self.spec.artifacts.store.split('/')[2]} for the "
                                 "artifacts first")
            create_store(self.spec)
        self.ensure_artifacts()
        return self._change(None, yes=yes, no_apply=False, skip_gate=skip_gate, preview=preview)

    def rollback(self, *, yes: bool, no_apply: bool = False, preview: bool = True) -> ChangeResult:
        """Send all traffic back to the baseline: a two-line edit (stage rollback, 0%), then
        preview and apply. Waits for a change of this stack that is under way."""
        from qinfra.deploy.rollout import rollback

        return self._change(rollback(), yes=yes, no_apply=no_apply, skip_gate=False,
                            preview=preview, lock_wait_s=ROLLBACK_LOCK_WAIT_S)

    def rollout(self, percent: int, stage: Stage | None = None, *, yes: bool,
                no_apply: bool = False, skip_gate: bool = False,
                preview: bool = True) -> ChangeResult:
        """Move the quantized variant's traffic share to `percent`."""
        from qinfra.deploy.rollout import rollout

        return self._change(rollout(self.spec, percent, stage), yes=yes, no_apply=no_apply,
                            skip_gate=skip_gate, preview=preview)

    def step(self, edit: RolloutEdit, expect: bytes) -> ChangeResult:
        """One step of an automatic rollout: applied without a question, and only while the
        stack file still holds `expect` (what the rollout itself last wrote): a hand edit or a
        manual rollback since then raises StackFileChanged and applies nothing. Any failure puts
        the file back and tells the router, so the file names what the last update deployed."""
        return self._change(edit, yes=True, no_apply=False, skip_gate=False, preview=False,
                            expect=expect, restore_on_failure=True)

    def destroy(self, *, yes: bool) -> Outcome:
        """Stop and delete everything the stack runs; artifacts in the store are kept."""
        self._require_answer(yes, no_apply=False, edits=False)
        if not yes and not self.events.confirm(f"Destroy every resource of stack {self.name}?"):
            raise Declined("Aborted!")
        self.end_orphans()
        return self.deployer.destroy()

    # -- the transaction --------------------------------------------------------------------

    def _require_answer(self, yes: bool, no_apply: bool, edits: bool = True) -> None:
        """A question needs someone to answer it: without --yes and a terminal, stop now."""
        if not yes and not no_apply and not self.events.can_ask:
            raise NeedsConsent("not a terminal: pass --yes to apply without asking"
                               + (f"; {self.path} was not changed" if edits else ""))

    def _edited(self, edit: RolloutEdit | None) -> StackSpec:
        """The spec as it will read once `edit` is written (for the gate, before any write)."""
        if edit is None:
            return self.spec
        rollout = self.spec.rollout.model_copy(update={
            "stage": edit.stage, "quantized_percent": edit.quantized_percent})
        return self.spec.model_copy(update={"rollout": rollout})

    @contextlib.contextmanager
    def _transaction(self, lock_wait_s: float, expect: bytes | None,
                     restore_on_failure: bool) -> Iterator[_Edit]:
        """The edit lock for the whole edit-preview-apply, and the file's bytes put back when the
        block ends before consent (a "no", a failed preview, a refusal, Ctrl-C), or on any
        failure with `restore_on_failure`; only while the file still holds this change's own
        write, so a hand edit made meanwhile is never overwritten."""
        with edit_lock(self.project.root / ".qinfra", self.name, lock_wait_s,
                       waiting=lambda who: self.events.progress(
                           f"waiting for {who} to finish changing stack {self.name}")):
            before = self.path.read_bytes()
            if expect is not None and before != expect:
                raise StackFileChanged(
                    f"{self.path} changed since this automatic rollout last wrote it (a manual "
                    "rollback or rollout, or a hand edit): stopped without applying anything; "
                    "traffic stays as that change set it")
            edit = _Edit(before)
            try:
                yield edit
            except BaseException:
                if ((restore_on_failure or not edit.consented) and edit.written is not None
                        and self.path.read_bytes() == edit.written):
                    write_atomic(self.path, before)
                    self.events.warning(f"{self.path} left as it was: the change was not applied")
                    with contextlib.suppress(Exception):  # the original failure is what to report
                        self.reload()
                        self.tell_router()
                raise

    def _change(self, edit: RolloutEdit | None, *, yes: bool, no_apply: bool, skip_gate: bool,
                preview: bool, lock_wait_s: float = 0.0,
                expect: bytes | None = None, restore_on_failure: bool = False) -> ChangeResult:
        self._require_answer(yes, no_apply)
        with self._transaction(lock_wait_s, expect, restore_on_failure) as tx:
            if tx.before != self._parsed:
                self.reload()  # changed since it was read (a change we waited for): use it now
            updates = dict(edit.updates()) if edit is not None else {}
            updates |= self.gate(edit, skip_gate, refuse=not no_apply)
            diff = update_stack_file(self.path, updates) if updates else ""
            if diff:
                tx.written = self.path.read_bytes()
                self.reload()
            if edit is None:
                if diff:
                    self.events.pinned(diff)  # up: a recorded gate skip
            else:
                self.events.edited(self.path, diff)
            if no_apply:
                return ChangeResult(self.name, self.path, diff)
            if yes and edit is not None:
                self.tell_router()  # agreed already: the router takes the weights before the engine
            applied = self._apply(tx, yes=yes, preview=preview,
                                  agreed=(lambda: self.tell_router()) if not yes and edit else None)
            return ChangeResult(self.name, self.path, diff, applied, tx.written or tx.before)

    def _apply(self, tx: _Edit, *, yes: bool, preview: bool, agreed: Any) -> Applied:
        """Preview, ask, apply what was previewed. A lock another update holds fails here,
        before the preview. `agreed()` runs once the user has said yes, before the engine."""
        deployer = self.deployer
        deployer.check_unlocked()
        self.end_orphans()
        previewed = self.path.read_bytes()
        if preview or not yes:
            with deployer.transient() as scratch:  # a "no" to a first deployment leaves no stack
                report = self._preview_report()
                # The engine writes the file itself when it creates a stack (its secrets'
                # encryptionsalt): what is applied is the file as the preview left it, and a
                # refusal puts back the bytes from before this change, salt line and all.
                previewed = self.path.read_bytes()
                if tx.written is not None:
                    tx.written = previewed
                self.events.previewed(report)
                if not yes and not self.events.confirm(f"Apply these changes to stack "
                                                       f"{self.name}?"):
                    raise Declined("Aborted!")
                scratch.keep = True
        tx.consented = True
        if agreed is not None:
            agreed()
        if self.path.read_bytes() != previewed:
            raise StackFileChanged(f"{self.path} changed after it was previewed; nothing was "
                                   "applied. Run the command again to preview what it says now")
        self.events.progress("applying; servers count once healthy and warm…")
        outcome = deployer.up()
        return Applied(self.name, outcome.summary, outcome.outputs)
