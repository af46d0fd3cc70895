"""The Pulumi engine through the Automation API: stacks over the project's own program, state on a
file backend in the project (or PULUMI_BACKEND_URL), results as qinfra's own frozen types.

Only this module touches pulumi.automation; failures map through one pattern table to EngineError
with the last lines of the engine's output, and the full log goes to .qinfra/logs/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qinfra.core.errors import EngineError
from qinfra.deploy.processes import alive

BACKEND_ENV = "PULUMI_BACKEND_URL"
PASSPHRASE_ENV = "PULUMI_CONFIG_PASSPHRASE"
PASSPHRASE_FILE_ENV = "PULUMI_CONFIG_PASSPHRASE_FILE"


@dataclass(frozen=True)
class Project:
    """Where the project's Pulumi.yaml, state, logs and tools are."""

    root: Path
    backend: str | None = None  # the stack file's qinfra:backend

    @property
    def state_dir(self) -> Path:
        return self.root / ".qinfra" / "state"

    @property
    def run_dir(self) -> Path:
        return self.root / ".qinfra" / "run"

    @property
    def logs_dir(self) -> Path:
        return self.root / ".qinfra" / "logs"

    @property
    def tools_bin(self) -> Path:
        """scripts/install-pulumi.sh's folder, in this project or in qinfra's own checkout."""
        own = self.root / ".tools" / "pulumi" / "bin"
        checkout = Path(__file__).resolve().parents[2] / ".tools" / "pulumi" / "bin"
        return own if own.is_dir() or not checkout.is_dir() else checkout

    @property
    def backend_url(self) -> str:
        return os.environ.get(BACKEND_ENV) or self.backend or f"file://{self.state_dir}"

    @classmethod
    def find(cls, start: Path | None = None) -> Project:
        here = (start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / "Pulumi.yaml").is_file():
                return cls(folder)
        package_root = Path(__file__).resolve().parents[2]
        if (package_root / "Pulumi.yaml").is_file():
            return cls(package_root)
        raise EngineError(f"no Pulumi.yaml in {here} or above: run qinfra inside the project")


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


@dataclass(frozen=True)
class HistoryEntry:
    version: int | None
    kind: str
    result: str
    start_time: str
    end_time: str | None
    config: Mapping[str, Any]
    resource_changes: Mapping[str, int]


# Engine output -> what to tell the user. First match wins; {0} is the matched text.
_FAILURES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"the stack is currently locked.*?(?=\n\n|\Z)", re.S),
     "stack is locked by another update: {0}\nWait for it, or if it died run `pulumi cancel` "
     "(the lock file names who holds it and since when)"),
    (re.compile(r"passphrase must be set with PULUMI_CONFIG_PASSPHRASE[^\n]*|incorrect passphrase"),
     "secrets passphrase problem: {0}. Set PULUMI_CONFIG_PASSPHRASE (or ..._FILE)"),
    (re.compile(r"no resource plugin 'pulumi-resource-[\w-]+'[^\n]*"),
     "a provider plugin is missing: {0}. It is installed by `pulumi plugin install` where the "
     "plugin registry is reachable"),
    (re.compile(r"NoFitError: [^\n]*|does not fit its fleet[^\n]*"), "{0}"),
    (re.compile(r"(SpecError|RenderError|ModelInfoError): [^\n]*"), "{0}"),
)


def classify(text: str, log: Path | None) -> EngineError:
    tail = "\n".join(line for line in text.strip().splitlines()[-12:])
    where = f"\nFull log: {log}" if log else ""
    for pattern, message in _FAILURES:
        match = pattern.search(text)
        if match:
            return EngineError(message.format(match.group(0).strip()) + where)
    return EngineError(f"the Pulumi engine failed; last lines:\n{tail}{where}")


class Engine:
    """One qinfra stack's Pulumi stack. Creates it on first use."""

    def __init__(self, stack: str, project: Project | None = None,
                 env: Mapping[str, str] | None = None, backend: str | None = None):
        self.stack_name = stack
        self.project = project or Project.find()
        if backend:
            self.project = replace(self.project, backend=backend)
        self._extra_env = dict(env or {})
        self._stack: Any = None

    # -- plumbing ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Offline-safe settings for every CLI call; the user's own settings win."""
        env = {
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
            BACKEND_ENV: self.project.backend_url,
            # where the local target keeps pid files and logs (the program's cwd may differ)
            "QINFRA_RUN_DIR": os.environ.get("QINFRA_RUN_DIR", str(self.project.run_dir)),
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
        from pulumi import automation as auto

        tools = self.project.tools_bin / "pulumi"
        if tools.is_file():
            return auto.PulumiCommand(root=str(tools.parent.parent), skip_version_check=True)
        if shutil.which("pulumi") is None:
            raise EngineError("no `pulumi` CLI: run scripts/setup.sh (it installs one into "
                              ".tools/pulumi/bin) or put yours on PATH")
        return auto.PulumiCommand(skip_version_check=True)

    def stack(self) -> Any:
        if self._stack is None:
            from pulumi import automation as auto

            if self.project.backend_url.startswith("file://"):
                Path(self.project.backend_url.removeprefix("file://")).mkdir(parents=True,
                                                                              exist_ok=True)
            opts = auto.LocalWorkspaceOptions(
                work_dir=str(self.project.root),
                env_vars=self.env(),
                pulumi_command=self._command(),
            )
            try:
                self._stack = auto.create_or_select_stack(
                    stack_name=self.stack_name, work_dir=str(self.project.root), opts=opts)
            except auto.CommandError as exc:
                raise classify(str(exc), None) from None
        return self._stack

    def _log_path(self, op: str) -> Path:
        self.project.logs_dir.mkdir(parents=True, exist_ok=True)
        return self.project.logs_dir / f"{self.stack_name}-{op}-{time.strftime('%Y%m%dT%H%M%S')}.log"

    def _run(self, op: str, call: Callable[..., Any], on_event: Callable[[Any], None] | None,
             **kwargs: Any) -> tuple[Any, tuple[Change, ...], Path]:
        from pulumi import automation as auto

        log = self._log_path(op)
        changes: list[Change] = []

        def collect(event: Any) -> None:
            pre = getattr(event, "resource_pre_event", None)
            if pre is not None and pre.metadata.type != "pulumi:pulumi:Stack":
                changes.append(_change(pre.metadata))
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
                    raise classify(str(exc), log) from None
        return result, tuple(changes), log

    def clear_stale_locks(self) -> list[Path]:
        """Remove this stack's file-backend locks held by processes on this host that no longer
        exist (an `up` killed mid-update); a live holder's lock is never touched."""
        url = self.project.backend_url
        if not url.startswith("file://"):
            return []
        locks = Path(url.removeprefix("file://")) / ".pulumi" / "locks"
        removed = []
        for lock in locks.rglob(f"{self.stack_name}/*.json") if locks.is_dir() else ():
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
        stack = self.stack()
        result, changes, log = self._run("preview", stack.preview, on_event, diff=True)
        return Outcome(changes=changes, summary=dict(result.change_summary or {}), log=log)

    def up(self, on_event: Callable[[Any], None] | None = None, refresh: bool = True) -> Outcome:
        """Apply. `refresh` first reconciles state with reality (a server that died)."""
        stack = self.stack()
        result, changes, log = self._run("up", stack.up, on_event, refresh=refresh)
        outputs = {k: v.value for k, v in result.outputs.items()}
        summary = dict(result.summary.resource_changes or {})
        return Outcome(changes=changes, summary=summary, outputs=outputs, log=log)

    def destroy(self, on_event: Callable[[Any], None] | None = None) -> Outcome:
        stack = self.stack()
        result, changes, log = self._run("destroy", stack.destroy, on_event)
        return Outcome(changes=changes, summary=dict(result.summary.resource_changes or {}), log=log)

    def outputs(self) -> dict[str, Any]:
        return {k: v.value for k, v in self.stack().outputs().items()}

    def history(self) -> list[HistoryEntry]:
        entries = []
        for h in self.stack().history():
            entries.append(HistoryEntry(
                version=h.version,
                kind=str(h.kind),
                result=str(h.result),
                start_time=h.start_time.isoformat() if h.start_time else "",
                end_time=h.end_time.isoformat() if h.end_time else None,
                config={k: v.value for k, v in (h.config or {}).items()},
                resource_changes=dict(h.resource_changes or {}),
            ))
        return entries


def _change(meta: Any) -> Change:
    old = dict(meta.old.inputs or {}) if meta.old is not None else {}
    new = dict(meta.new.inputs or {}) if meta.new is not None else {}
    name = meta.urn.rsplit("::", 1)[-1]
    op = getattr(meta.op, "value", str(meta.op))
    return Change(op=op, urn=meta.urn, type=meta.type, name=name,
                  diffs=tuple(meta.diffs or ()), old=old, new=new)
