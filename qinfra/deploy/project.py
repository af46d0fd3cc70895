"""Where a qinfra project keeps things (Pulumi.yaml, state, logs, the CLI), and what can be
known about it from its files alone, without starting the Pulumi CLI: the CLI's version, kept
per binary, and whether the file backend holds a stack."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from qinfra.core.errors import DeployError
from qinfra.core.fileio import write_atomic
from qinfra.core.paths import PROJECT_FILE, project_root

BACKEND_ENV = "PULUMI_BACKEND_URL"
PASSPHRASE_ENV = "PULUMI_CONFIG_PASSPHRASE"
PASSPHRASE_FILE_ENV = "PULUMI_CONFIG_PASSPHRASE_FILE"
RUN_DIR_ENV = "QINFRA_RUN_DIR"  # where the local target's servers keep pids and logs
VERSION_CACHE = "pulumi-version.json"  # in .qinfra/cache: `pulumi version` per binary identity


# Pulumi.yaml's top-level `name:` line, bare or quoted (a project name is letters, digits, `_.-`).
_PROJECT_NAME = re.compile(r"""^name:[ \t]*(["']?)([\w.-]+)\1[ \t]*(?:#.*)?$""", re.M)


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
        """The local target's run folder: $QINFRA_RUN_DIR, else the project's .qinfra/run. The
        one rule: the engine hands it to the program, the CLI reads the servers' files there."""
        return Path(os.environ.get(RUN_DIR_ENV) or self.root / ".qinfra" / "run")

    @property
    def logs_dir(self) -> Path:
        return self.root / ".qinfra" / "logs"

    @property
    def cache_dir(self) -> Path:
        return self.root / ".qinfra" / "cache"

    @property
    def tools_bin(self) -> Path:
        """scripts/install-pulumi.sh's folder, in this project or in qinfra's own checkout."""
        own = self.root / ".tools" / "pulumi" / "bin"
        checkout = Path(__file__).resolve().parents[2] / ".tools" / "pulumi" / "bin"
        return own if own.is_dir() or not checkout.is_dir() else checkout

    @property
    def backend_url(self) -> str:
        return os.environ.get(BACKEND_ENV) or self.backend or f"file://{self.state_dir}"

    @property
    def name(self) -> str | None:
        """Pulumi.yaml's project name, under which the file backend keeps its stacks; None when
        the file cannot be read or names it in a form this plain reading does not follow."""
        try:
            text = (self.root / "Pulumi.yaml").read_text()
        except OSError:
            return None
        match = _PROJECT_NAME.search(text)
        return match.group(2) if match else None

    @classmethod
    def find(cls, start: Path | None = None) -> Project:
        """The project at or above `start` (the working directory), else qinfra's own checkout."""
        package_root = Path(__file__).resolve().parents[2]
        root = project_root(start) or (
            package_root if (package_root / PROJECT_FILE).is_file() else None)
        if root is None:
            here = (start or Path.cwd()).resolve()
            raise DeployError(f"no {PROJECT_FILE} in {here} or above: run qinfra inside the project")
        return cls(root)


def cli_version(binary: Path, cache: Path) -> str:
    """`<binary> version`, run once per build of the binary rather than on every command.

    The Automation API asks the CLI its version at every start (0.15-0.35 s here) only to choose
    features; the answer is kept in `cache` keyed by the binary's path and identity (device,
    inode, size, mtime_ns, ctime_ns), which any rebuild, reinstall or in-place edit changes. The
    cache is an optimisation: a cache that cannot be read or written is ignored.
    """
    stat = binary.stat()
    key = str(binary.resolve())
    identity = [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("identity") == identity:
        return str(entry.get("version", ""))
    env = {**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"}
    try:
        version = subprocess.run([str(binary), "version"], env=env, check=True,
                                 capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DeployError(f"`{binary} version` failed: {exc}. Reinstall the Pulumi CLI "
                          "(scripts/install-pulumi.sh)") from None
    known[key] = {"identity": identity, "version": version}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps(known, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # a read-only project still works, at the price of asking every time
    return version


def holds_stack(folder: Path | None, project: str | None, stack: str) -> bool | None:
    """Whether the file backend in `folder` holds `stack`, read from its checkpoint file as
    Pulumi's diy backend lays it out: `.pulumi/stacks/<project>/<stack>.json` once
    `.pulumi/meta.yaml` says version 1, `.pulumi/stacks/<stack>.json` before (no meta.yaml, or
    version 0); `.json.gz` when gzipped. `stack init` writes the file and `stack rm` deletes it.
    None where only the CLI can tell: not a file backend, a relative path, an unknown layout."""
    if folder is None or not folder.is_absolute():
        return None
    try:
        version = re.search(r"^version:\s*(\d+)", (folder / ".pulumi" / "meta.yaml").read_text(),
                            re.M)
    except FileNotFoundError:
        version = None  # a legacy backend, or one never written to
    except OSError:
        return None
    stacks = folder / ".pulumi" / "stacks"
    if version is not None and version.group(1) != "0":
        if version.group(1) != "1" or project is None:
            return None
        stacks = stacks / project
    return any((stacks / f"{stack}{suffix}").is_file() for suffix in (".json", ".json.gz"))
