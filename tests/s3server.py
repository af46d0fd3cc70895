"""Pytest plugin: a real moto S3 server on 127.0.0.1, spoken to over HTTP by boto3."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from qinfra.artifacts.stores import MIB, TransferSettings
from tests.ports import free_port

# S3's smallest part is 5 MiB (s3transfer raises smaller chunk sizes to it): with it a 6 MiB file
# is a two-part upload and a 12 MiB one a three-part upload. One transfer thread keeps the order
# in which files are sent, and so where a test cuts an upload, the same on every run.
SMALL_PARTS = TransferSettings(
    multipart_threshold_bytes=5 * MIB, multipart_chunk_bytes=5 * MIB, max_concurrency=1
)
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means it is serving
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def moto_server(log_path: Path) -> Iterator[str]:
    """Run `python -m moto.server` on a free 127.0.0.1 port until the block ends; yield its URL.

    Also used by benchmarks/. Raises RuntimeError (with the server's log) when it never answers.
    """
    for _attempt in range(3):  # the port is free when picked; another process may take it first
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + _START_TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                if _answers(f"{endpoint}/moto-api/"):
                    yield endpoint
                    return
                time.sleep(0.1)
        finally:
            _stop(proc)
    raise RuntimeError(f"moto_server did not answer on 127.0.0.1:\n{log_path.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real moto S3 server for the whole session; a missing moto fails the test, naming it."""
    missing = None
    try:
        import moto.server  # noqa: F401  (only to learn that it is there; it runs as a process)
    except ImportError as exc:
        missing = str(exc)
    if missing is not None:
        pytest.fail(
            f"the S3 part, moto server, is not installed ({missing}). To fix: run "
            "scripts/setup.sh, or pip install 'moto[server]'",
            pytrace=False,
        )
    try:
        server = moto_server(tmp_path_factory.mktemp("moto") / "moto_server.log")
        endpoint = server.__enter__()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield endpoint
    finally:
        server.__exit__(None, None, None)


@pytest.fixture
def s3_endpoint(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The server's URL, with boto3 pointed at it through AWS_ENDPOINT_URL and fake credentials
    (no real config or credentials file is read)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    return s3_server


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket for one test."""
    import boto3

    name = f"qinfra-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name
