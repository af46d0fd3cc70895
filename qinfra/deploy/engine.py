"""The Pulumi engine through the Automation API: stacks over the project's own program, state on a
file backend in the project (or PULUMI_BACKEND_URL), results as qinfra's own frozen types.

Only this module touches pulumi.automation. Every call goes through `Deployer._run` (operations
that stream events) or `Deployer._read` (state reads); both map failures through one pattern table
to DeployError with the last lines of the engine's output, and keep the full log in .qinfra/logs/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qinfra.core.errors import DeployError, NeverDeployedError
from qinfra.deploy.history import SECRET, HistoryEntry, history_entries
from qinfra.deploy.history import UpdateKind as UpdateKind  # re-exported: engine's result types
from qinfra.deploy.history import UpdateResult as UpdateResult
from qinfra.deploy.processes import alive
from qinfra.deploy.project import (
    BACKEND_ENV,
    PASSPHRASE_ENV,
    PASSPHRASE_FILE_ENV,
    RUN_DIR_ENV,
    VERSION_CACHE,
    Project,
    cli_version,
    holds_stack,
)

if TYPE_CHECKING:
    from qinfra.core.spec import StackSpec


@dataclass(frozen=True)
class Change:
    """One resource step of a preview or update, with the properties that differ."""

    op: str
    urn: str
    type: str
    name: str
    diffs: tuple[str, ...] = ()
    old: Mapping[str, Any] = field(default_factory=dict)
    new: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """A preview or update: its steps, the count per operation and, after an update, outputs."""

    changes: tuple[Change, ...]
    summary: Mapping[str, int]
    outputs: Mapping[str, Any] = field(default_factory=dict)
    log: Path | None = None
    # The stack's outputs before the operation, secrets reading `[secret]`, as the engine's own
    # step for the root Stack resource reports them ({} for a new stack; None: no such step
    # seen). A preview gets the deployed plan from here rather than two `stack output` calls.
    outputs_before: Mapping[str, Any] | None = None




# Engine output -> what to tell the user. First match wins; {0} is the matched text.
_FAILURES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"the stack is currently locked.*?(?=\n\n|\Z)", re.S),
     "stack is locked by another update: {0}\nWait for it, or if it died run `pulumi cancel` "
     "(the lock file names who holds it and since when)"),
    (re.compile(r"unexpected end of JSON input|invalid character [^\n]* (?:looking for|after)"
                r"[^\n]*"),
     "the stack's state file is damaged ({0}). {state}"),
    (re.compile(r"passphrase must be set with PULUMI_CONFIG_PASSPHRASE[^\n]*|incorrect passphrase"),
     "secrets passphrase problem: {0}. Set PULUMI_CONFIG_PASSPHRASE (or ..._FILE)"),
    (re.compile(r"no resource plugin 'pulumi-resource-[\w-]+'[^\n]*"),
     "a provider plugin is missing: {0}. It is installed by `pulumi plugin install` where the "
     "plugin registry is reachable"),
    (re.compile(r"NoFitError: [^\n]*|does not fit its fleet[^\n]*"), "{0}"),
    (re.compile(r"(SpecError|RenderError|ModelInfoError|DeployError): [^\n]*"), "{0}"),
    # a mandatory policy of the pack (policies/): `[mandatory]  <rule>  (<resource>)`, the rule's
    # description on the same line (a preview's diff) or the next (an update), then the violation
    (re.compile(r"\[mandatory\]\s+(\S+)\s+\([^)\n]*\)(?:[^\n]+|\n[^\n]*)\n\s*([^\n]+)"),
     "policy {1} denied it: {2}"),
)


# A Python exception raised inside a dynamic provider (the local target's servers, artifact
# checks), as the engine's diagnostics show it: a `<type> (<resource name>):` heading, then
# `error: Traceback ...`, the frames, and the exception's `SomeError: message` line.
_RESOURCE = re.compile(r"^  \S+ \(([^()\s]+)\):$")
_EXCEPTION = re.compile(r"^\s*(?:[\w.]+\.)?(?:Exception|\w*Error|\w*Exception): (.+)$")
# A native provider's diagnostic under its resource heading: `error: <message>`, then (for
# several) `\t* <reason>` lines; "update failed" is the engine's summary, not a cause.
_ERROR = re.compile(r"^    error: (.+)$")
_REASON = re.compile(r"^\s+\* (.+)$")
_NOT_A_CAUSE = {"update failed", "preview failed", "destroy failed"}
_SEVERAL = re.compile(r"\d+ errors occurred:")
# How the program's own RPC fails once the engine stopped for a resource's error (the
# RunError, or grpc's error before it): a consequence, not a cause.
_MONITOR_GONE = ("Resource monitor has terminated", "<_InactiveRpcError")
_TRACEBACK = re.compile(r'^\s*(?:error: )?(Traceback \(most recent call last\)|File "[^"]+", '
                        r"line \d+)", re.M)


def classify(text: str, log: Path | None, state: Path | None = None) -> DeployError:
    """The user's error for an engine failure: a known cause with its fix; a provider's
    exception as one line naming the resource and the cause; else the last lines. Traceback
    lines never reach the message, only the log. `state` is the stack's state file, named when
    it is damaged together with the backup Pulumi keeps beside it."""
    where = f"\nFull log: {log}" if log else ""
    for pattern, message in _FAILURES:
        match = pattern.search(text)
        if match:
            return DeployError(message.format(match.group(0).strip(), *match.groups(),
                                              state=_restore(state)) + where)
    if _TRACEBACK.search(text) and (cause := _provider_cause(text)):
        return DeployError(cause + where)
    kept = [line for line in text.strip().splitlines() if not _TRACEBACK.match(line)]
    tail = "\n".join(kept[-12:])
    return DeployError(f"the Pulumi engine failed; last lines:\n{tail}{where}")


def _provider_cause(text: str) -> str | None:
    """`<resource> failed: <first line of the exception>`, a line per resource whose provider
    raised, read from the diagnostics after their tracebacks; a native provider's error (no
    traceback: the Kubernetes provider's await) with its `* ` reasons on the same line. The
    program's own "resource monitor has terminated" is what the engine does after such a
    failure, so it names the cause only when nothing else does. None when there is none."""
    causes: dict[str, str] = {}
    name, in_traceback, in_error = None, False, False
    for line in text.splitlines():
        if heading := _RESOURCE.match(line):
            name, in_traceback, in_error = heading.group(1), False, False
        elif _TRACEBACK.match(line):
            in_traceback, in_error = True, False
        elif in_traceback and name and (exc := _EXCEPTION.match(line)):
            causes[name], in_traceback = exc.group(1).strip(), False
        elif name and (err := _ERROR.match(line)) and err.group(1) not in _NOT_A_CAUSE:
            # "3 errors occurred:" says only that reasons follow
            causes[name] = "" if _SEVERAL.fullmatch(err.group(1)) else err.group(1).strip()
            in_error = True
        elif in_error and name and (reason := _REASON.match(line)):
            causes[name] = "; ".join(filter(None, (causes[name], reason.group(1).strip())))
        elif not line.strip():
            in_error = False
    real = {n: c for n, c in causes.items() if not c.startswith(_MONITOR_GONE)}
    return "\n".join(f"{n} failed: {cause}" for n, cause in (real or causes).items()) or None


def _restore(state: Path | None) -> str:
    """How to put back the copy of the state Pulumi keeps before each write."""
    if state is None:
        return ("Pulumi keeps the previous state beside it as <stack>.json.bak in the backend's "
                ".pulumi/stacks/ folder; copy it over the damaged file, then run `qinfra up`")
    backup = state.with_name(state.name + ".bak")
    if not backup.is_file():
        return f"{state} has no backup beside it ({backup.name}); restore it from your own copy"
    return (f"Pulumi kept the previous state in {backup}. To fix: cp {backup} {state} "
            f"(keep the damaged file aside first if you want it), then run `qinfra up` to "
            "reconcile what changed since")


@dataclass
class Transient:
    """A stack `Deployer.transient` created for a look; `keep` leaves it in the backend."""

    keep: bool = False


class Deployer:
    """One qinfra stack's Pulumi stack: preview, up, destroy and the state reads. `up` creates
    the stack on first use; the reads and `destroy` never do, and a preview in `transient()`
    removes the stack it had to create. (Named for what it does; `Engine` is the serving-engine
    enum.)"""

    def __init__(self, stack: str, project: Project | None = None,
                 env: Mapping[str, str] | None = None, backend: str | None = None):
        self.stack_name = stack
        self.project = project or Project.find()
        if backend:
            self.project = replace(self.project, backend=backend)
        self._extra_env = dict(env or {})
        self._stack: Any = None
        self._cli: Any = None
        self._outputs_before: dict[str, Any] | None = None

    @classmethod
    def for_spec(cls, spec: StackSpec, project: Project | None = None) -> Deployer:
        """The Deployer of a loaded stack, on the state backend its file names (qinfra:backend):
        every caller gets the same backend, so none reads or writes another stack's state."""
        return cls(spec.name, project=project, backend=spec.backend)

    # -- plumbing ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Offline-safe settings for every CLI call; the user's own settings win."""
        env = {
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
            BACKEND_ENV: self.project.backend_url,
            # where the local target keeps pid files and logs (the program's cwd may differ)
            RUN_DIR_ENV: str(self.project.run_dir),
        }
        if PASSPHRASE_ENV not in os.environ and PASSPHRASE_FILE_ENV not in os.environ:
            # The file backend's secrets provider wants a passphrase; an empty one keeps local
            # use zero-setup. Shared (s3://) backends should set their own (see README).
            env[PASSPHRASE_ENV] = ""
        if self.project.tools_bin.is_dir():
            env["PATH"] = f"{self.project.tools_bin}{os.pathsep}{os.environ.get('PATH', '')}"
        env.update(self._extra_env)
        return env

    def _command(self) -> Any:
        """The Automation API's handle on the CLI, its version read from the cache
        (`cli_version`): the SDK's own constructor runs `pulumi version` on every start."""
        from pulumi import automation as auto
        from semver import VersionInfo  # the Pulumi SDK's own version type

        if self._cli is not None:
            return self._cli
        tools = self.project.tools_bin / "pulumi"
        if tools.is_file():
            binary, command = tools, str(tools)  # as PulumiCommand(root=...) names it
        elif found := shutil.which("pulumi"):
            binary, command = Path(found), "pulumi"
        else:
            raise DeployError("no `pulumi` CLI: run scripts/setup.sh (it installs one into "
                              ".tools/pulumi/bin) or put yours on PATH")
        version = cli_version(binary, self.project.cache_dir / VERSION_CACHE)
        cli = auto.PulumiCommand.__new__(auto.PulumiCommand)  # its two public fields, no call
        cli.command = command
        try:
            cli.version = VersionInfo.parse(version.removeprefix("v"))
        except ValueError:
            cli.version = None  # as the SDK leaves it with its version check skipped
        self._cli = cli
        return cli

    def stack(self) -> Any:
        """The Automation API stack, selected (or created) once per Deployer."""
        if self._stack is None:
            if folder := self._file_backend():
                folder.mkdir(parents=True, exist_ok=True)
            self._stack = self._read("select", lambda: self._select(create=True))
        return self._stack

    def exists(self) -> bool:
        """Whether the state backend holds this stack; binds it when it does, creates nothing
        (not even the file backend's folder). A file backend answers from its checkpoint files;
        another backend through the CLI."""
        if self._stack is not None:
            return True
        folder = self._file_backend()
        if folder is not None and not (folder / ".pulumi").is_dir():
            return False  # never written to: no need to start the CLI to know
        self._stack = self._read("select", lambda: self._select(create=False))
        return self._stack is not None

    def deployed(self) -> Any:
        """The stack for a read; NeverDeployedError when the backend does not hold it."""
        if not self.exists():
            raise NeverDeployedError(
                f"stack {self.stack_name} has never been deployed (the state backend "
                f"{self.project.backend_url} holds no such stack); nothing was created. "
                f"Run `qinfra up --stack {self.stack_name}` to deploy it")
        return self._stack

    @contextmanager
    def transient(self) -> Iterator[Transient]:
        """The stack for a look that needs one (a preview): a stack this call had to create is
        removed again afterwards, so looking leaves the backend as it was, unless the caller
        sets `keep` (the user agreed to apply)."""
        created = not self.exists()
        scratch = Transient()
        try:
            self.stack()
            yield scratch
        finally:
            if created and not scratch.keep and self._stack is not None:
                stack, self._stack = self._stack, None
                # preserve_config: `stack rm` would delete stacks/Pulumi.<stack>.yaml too
                self._read("remove", lambda: stack.workspace.remove_stack(
                    self.stack_name, preserve_config=True))

    def _file_backend(self) -> Path | None:
        url = self.project.backend_url
        return Path(url.removeprefix("file://")) if url.startswith("file://") else None

    def _select(self, create: bool) -> Any:
        """The stack in a workspace over the project. Where the checkpoint says the stack
        exists, no `stack select` runs (0.2 s that only re-reads it; every later command names
        the stack with --stack, so the CLI's "current stack" is not needed and not changed)."""
        from pulumi import automation as auto
        from pulumi.automation._stack import StackInitMode  # only for the Stack's repr

        held = holds_stack(self._file_backend(), self.project.name, self.stack_name)
        if held is False and not create:
            return None
        workspace = auto.LocalWorkspace(work_dir=str(self.project.root), env_vars=self.env(),
                                        pulumi_command=self._command())
        if held:
            stack = auto.Stack.__new__(auto.Stack)  # Stack's fields without its CLI call
            stack.name, stack.workspace = self.stack_name, workspace
            stack._mode = StackInitMode.SELECT
            return stack
        try:
            if held is False:
                return auto.Stack.create(self.stack_name, workspace)
            if create:
                return auto.Stack.create_or_select(self.stack_name, workspace)
            return auto.Stack.select(self.stack_name, workspace)
        except auto.StackNotFoundError:
            return None
        except auto.StackAlreadyExistsError:  # the checkpoint was not where this looked
            return auto.Stack.select(self.stack_name, workspace)

    def state_file(self) -> Path | None:
        """The stack's checkpoint in a file backend (project-scoped or legacy layout), if any."""
        folder = self._file_backend()
        stacks = folder / ".pulumi" / "stacks" if folder else None
        if stacks is None or not stacks.is_dir():
            return None
        return next(iter(sorted(stacks.rglob(f"{self.stack_name}.json"))), None)

    def _log_path(self, op: str) -> Path:
        self.project.logs_dir.mkdir(parents=True, exist_ok=True)
        return self.project.logs_dir / f"{self.stack_name}-{op}-{time.strftime('%Y%m%dT%H%M%S')}.log"

    def _run(self, op: str, call: Callable[..., Any], on_event: Callable[[Any], None] | None,
             **kwargs: Any) -> tuple[Any, tuple[Change, ...], Path]:
        """An operation that streams events: its resource steps collected, its output logged,
        a stale lock of a dead process cleared once, failures classified."""
        from pulumi import automation as auto

        log = self._log_path(op)
        changes: list[Change] = []
        self._outputs_before = None

        def collect(event: Any) -> None:
            pre = getattr(event, "resource_pre_event", None)
            if pre is not None and pre.metadata.type != "pulumi:pulumi:Stack":
                changes.append(_change(pre.metadata))
            elif pre is not None:
                old = pre.metadata.old
                self._outputs_before = dict(old.outputs or {}) if old is not None else {}
            if on_event is not None:
                on_event(event)

        with open(log, "w") as out:
            for attempt in (1, 2):
                changes.clear()
                try:
                    result = call(on_output=lambda line: out.write(line + "\n"), on_event=collect,
                                  color="never", **kwargs)
                    break
                except auto.ConcurrentUpdateError as exc:
                    # A lock whose process died with an interrupted update is released once.
                    if attempt == 1 and self.clear_stale_locks():
                        continue
                    raise classify(f"the stack is currently locked {exc}", log) from None
                except auto.CommandError as exc:
                    out.write(str(exc))
                    raise classify(str(exc), log, self.state_file()) from None
        return result, tuple(changes), log

    def check_unlocked(self) -> None:
        """Fail at once when another update holds this stack's file-backend lock, before any
        preview: the engine itself only finds the lock when it starts to apply. Locks of dead
        processes on this host are cleared first, as `_run` does."""
        self.clear_stale_locks()
        held = []
        for lock in self._locks():
            try:
                c = json.loads(lock.read_text())
            except (OSError, json.JSONDecodeError):
                c = {}
            held.append(f"  {self.project.backend_url}: created by {c.get('username', '?')}@"
                        f"{c.get('hostname', '?')} (pid {c.get('pid', '?')}) at "
                        f"{c.get('timestamp', '?')}")
        if held:
            text = (f"the stack is currently locked by {len(held)} lock(s). Either wait for the "
                    "other process(es) to end or delete the lock file with `pulumi cancel`.\n"
                    + "\n".join(held))
            raise classify(text, None)

    def _locks(self) -> list[Path]:
        folder = self._file_backend()
        locks = folder / ".pulumi" / "locks" if folder else None
        if locks is None or not locks.is_dir():
            return []
        return sorted(lock for lock in locks.rglob("*.json") if lock.parent.name == self.stack_name)

    def clear_stale_locks(self) -> list[Path]:
        """Remove this stack's file-backend locks held by processes on this host that no longer
        exist (an `up` killed mid-update); a live holder's lock is never touched."""
        removed = []
        for lock in self._locks():
            try:
                content = json.loads(lock.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if content.get("hostname") == socket.gethostname() and not alive(
                    int(content.get("pid") or 0)):
                lock.unlink(missing_ok=True)
                removed.append(lock)
        return removed

    # -- operations -------------------------------------------------------------------------

    def preview(self, on_event: Callable[[Any], None] | None = None) -> Outcome:
        """What `up` would change, with per-property diffs (the stack is created if missing:
        wrap the call in `transient()` to leave no trace)."""
        stack = self.stack()
        result, changes, log = self._run("preview", stack.preview, on_event, diff=True,
                                         policy_packs=self.policy_packs())
        return Outcome(changes=changes, summary=dict(result.change_summary or {}), log=log,
                       outputs_before=self._outputs_before)

    def up(self, on_event: Callable[[Any], None] | None = None, refresh: bool = True) -> Outcome:
        """Apply. `refresh` first reconciles state with reality (a server that died)."""
        stack = self.stack()
        result, changes, log = self._run("up", stack.up, on_event, refresh=refresh,
                                         policy_packs=self.policy_packs())
        outputs = {k: v.value for k, v in result.outputs.items()}
        summary = dict(result.summary.resource_changes or {})
        return Outcome(changes=changes, summary=summary, outputs=outputs, log=log)

    def policy_packs(self) -> list[str] | None:
        """The project's pack (policies/), which `pulumi preview --policy-pack policies` runs
        too: the same rules whichever door a change comes through. None: the project has none."""
        pack = self.project.root / "policies"
        return [str(pack)] if (pack / "PulumiPolicy.yaml").is_file() else None

    def destroy(self, on_event: Callable[[Any], None] | None = None) -> Outcome:
        """Delete every resource of the stack (resources marked retain_on_delete stay);
        NeverDeployedError, creating nothing, for a stack the backend does not hold."""
        stack = self.deployed()
        result, changes, log = self._run("destroy", stack.destroy, on_event)
        return Outcome(changes=changes, summary=dict(result.summary.resource_changes or {}), log=log)

    def outputs(self, mask_secrets: bool = False) -> dict[str, Any]:
        """The stack outputs of the last update; {} when nothing is deployed. With `mask_secrets`,
        a secret output reads `[secret]`."""
        outputs = self._read("outputs", lambda: self.deployed().outputs())
        return {k: SECRET if mask_secrets and v.secret else v.value for k, v in outputs.items()}

    def history(self) -> list[HistoryEntry]:
        """Every recorded operation, newest first, failures included; secrets read `[secret]`.
        Read page by page: unpaged, the CLI returns only the newest 10. NeverDeployedError for a
        stack the backend does not hold."""
        from qinfra.deploy.history import every_page

        def read() -> list[Any]:
            stack = self.deployed()
            return every_page(lambda size, page: stack.history(page_size=size, page=page,
                                                               show_secrets=False))

        return history_entries(self._read("history", read))

    def _read(self, op: str, call: Callable[[], Any]) -> Any:
        """A state read through the same classifier as the operations; the CLI's own output
        goes to a log file only when it fails."""
        from pulumi import automation as auto

        try:
            return call()
        except auto.CommandError as exc:
            log = self._log_path(op)
            log.write_text(str(exc))
            raise classify(str(exc), log, self.state_file()) from None


def _change(meta: Any) -> Change:
    old = dict(meta.old.inputs or {}) if meta.old is not None else {}
    new = dict(meta.new.inputs or {}) if meta.new is not None else {}
    name = meta.urn.rsplit("::", 1)[-1]
    op = getattr(meta.op, "value", str(meta.op))
    return Change(op=op, urn=meta.urn, type=meta.type, name=name,
                  diffs=tuple(meta.diffs or ()), old=old, new=new)
