"""deploy/processes.launch_until_ready: the one way the router and Prometheus are started."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from qinfra.deploy.processes import alive, launch_until_ready


def test_a_process_that_exits_is_reported_with_its_log_tail(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('port 1 is taken'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"thing did not start on u \(exit 3\): port 1 is taken"):
        launch_until_ready(argv, tmp_path, tmp_path / "log", lambda: False, what="thing", url="u",
                           timeout_s=30, poll_s=0.01)


def test_one_that_overruns_is_ended(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; print('slow', flush=True); time.sleep(60)"]
    with pytest.raises(RuntimeError, match=r"did not start .*slow") as info:
        launch_until_ready(argv, tmp_path, tmp_path / "log", lambda: False, what="thing", url="u",
                           timeout_s=0.5, poll_s=0.01)
    assert "exit -9" in str(info.value)


def test_a_ready_one_keeps_running_detached(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    argv = [sys.executable, "-c", f"import pathlib, time; pathlib.Path({str(flag)!r}).touch(); "
            "time.sleep(60)"]
    proc = launch_until_ready(argv, tmp_path, tmp_path / "log", flag.exists, what="thing",
                              url="u", timeout_s=30, poll_s=0.01)
    try:
        assert alive(proc.pid) and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
