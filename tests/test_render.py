"""Rendering: golden files for the example stacks, determinism, failures named before any write,
secrets kept out, and `qinfra render` from the command line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qinfra.core.errors import QinfraError, RenderError
from qinfra.core.formats import Format
from qinfra.serving.render import (
    LaunchInputs,
    render_files,
    render_stack,
    templates_dir,
    write_rendered,
)
from tests.render_helpers import (
    PINS,
    ROOT,
    SECRET,
    example,
    load_yaml,
    plan_for,
    scripts,
    vllm_stack,
    with_api_key,
)

GOLDEN = ROOT / "tests" / "golden"
UPDATE_ENV = "QINFRA_UPDATE_GOLDEN"  # QINFRA_UPDATE_GOLDEN=1 pytest tests/test_render.py
# What each target writes per variant.
EXPECTED = {
    "local": {"server.sh", "warmup.sh"},
    "prod": {"user-data.yaml"},
    "k8s": {"configmap.yaml", "deployment.yaml", "service.yaml", "poddisruptionbudget.yaml"},
}
# The cloud targets render their router beside the variants; the local one starts it as a process.
FOLDERS = {"local": {"baseline", "quantized"}, "prod": {"baseline", "quantized", "router"},
           "k8s": {"baseline", "quantized", "router"}}


def _digest(files: dict[Path, str]) -> str:
    return hashlib.sha256(json.dumps({str(k): v for k, v in files.items()}).encode()).hexdigest()


@pytest.mark.parametrize("stack", sorted(EXPECTED))
def test_golden(stack):
    spec, plan = example(stack)
    files = render_stack(spec, plan)
    assert {p.name for p in files} == EXPECTED[stack]
    assert {p.parts[0] for p in files} == FOLDERS[stack]
    folder = GOLDEN / stack
    if os.environ.get(UPDATE_ENV):
        shutil.rmtree(folder, ignore_errors=True)
        write_rendered(files, folder)
    on_disk = {p.relative_to(folder): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}
    assert sorted(on_disk) == sorted(files), f"golden files differ; rerun with {UPDATE_ENV}=1"
    for rel, text in files.items():
        assert text == on_disk[rel], f"{stack}/{rel} differs from its golden file ({UPDATE_ENV}=1)"


def test_same_input_same_bytes_in_another_process():
    """No timestamps, no set or hash order: another interpreter with another hash seed agrees."""
    spec, plan = example("k8s")
    first = render_stack(spec, plan)
    assert render_stack(spec, plan) == first
    assert list(first) == sorted(first)
    code = (
        "from qinfra.serving.render import render_stack; from tests.render_helpers import example; "
        "from tests.test_render import _digest; print(_digest(render_stack(*example('k8s'))))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == _digest(first)


def test_undefined_template_value_names_variant_template_and_value(tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(templates_dir(), templates)
    broken = templates / "llama_cpp" / "server.sh.j2"
    broken.write_text(broken.read_text() + "  --seed {{ llama_cpp.sampling_seed }}\n")
    spec, plan = example("local")
    with pytest.raises(RenderError) as err:
        render_stack(spec, plan, templates=templates)
    message = err.value.format_message()
    assert "variant 'baseline'" in message
    assert "llama_cpp/server.sh.j2" in message and "sampling_seed" in message


def test_nothing_is_written_when_a_variant_fails(tmp_path):
    spec, plan = example("prod")
    unpinned = spec.variants.quantized.model_copy(update={"artifact": None})
    spec = spec.model_copy(update={"variants": spec.variants.model_copy(update={"quantized": unpinned})})
    out = tmp_path / "out"
    with pytest.raises(RenderError) as err:
        render_files(spec, plan, out)
    assert not out.exists()  # the baseline rendered fine, yet nothing was written
    message = err.value.format_message()
    assert "variant 'quantized'" in message
    assert "qinfra:variants.quantized.artifact is not pinned" in message
    assert "qinfra artifacts push --stack prod" in message


def test_format_the_engine_cannot_load_fails_with_variant_and_field():
    """model_copy skips validation, as a hand-built spec would; render checks again."""
    spec, plan = example("prod")
    gguf = spec.variants.quantized.model_copy(update={"format": Format.GGUF_Q4_K_M})
    spec = spec.model_copy(update={"variants": spec.variants.model_copy(update={"quantized": gguf})})
    with pytest.raises(RenderError) as err:
        render_stack(spec, plan)
    message = err.value.format_message()
    assert "variant 'quantized'" in message
    assert "qinfra:variants.quantized.format is gguf-q4_k_m" in message and "vllm cannot load" in message
    assert isinstance(err.value, QinfraError) and err.value.exit_code == 1


def test_a_plan_for_another_format_is_refused():
    spec, _ = example("prod")
    other = vllm_stack("aws", "bf16", "fp8", ["l4"])
    with pytest.raises(RenderError, match=r"variant 'quantized': the plan is for vllm/fp8"):
        render_stack(spec, plan_for(other))


def test_a_plan_that_does_not_fit_is_refused():
    spec = vllm_stack("aws", "fp16", "awq", ["t4"], max_num_batched_tokens=16)
    spec = spec.model_copy(update={"serving": spec.serving.model_copy(update={"max_model_len": 10**6})})
    with pytest.raises(RenderError, match=r"variant 'baseline': the plan does not fit"):
        render_stack(spec, plan_for(spec))


@pytest.mark.parametrize("stack", sorted(EXPECTED))
def test_secrets_never_appear(stack):
    """The key's ciphertext is never rendered; each target hands the engine its key at run time."""
    spec, _ = example(stack)
    spec = with_api_key(spec)
    files = render_stack(spec, plan_for(spec))
    text = "\n".join(files.values())
    assert "TOP-SECRET" not in text and SECRET not in text
    env_name = "VLLM_API_KEY" if spec.serving.engine == "vllm" else "LLAMA_API_KEY"
    for name, script in scripts(files).items():
        if name.endswith(("/serve.sh", "/server.sh")):
            assert f"printenv {env_name}" in script and "--api-key" not in script
    if stack == "prod":
        assert "aws ssm get-parameter --with-decryption" in text and "/qinfra/prod/api-key" in text
    if stack == "k8s":
        deployment = load_yaml(files[Path("baseline", "deployment.yaml")])
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {
            "name": env_name,
            "valueFrom": {"secretKeyRef": {"name": "qinfra-k8s-api-key", "key": "api-key"}},
        } in env


def test_scripts_are_valid_posix_shell():
    sh = shutil.which("sh")
    assert sh is not None
    for stack in EXPECTED:
        spec, _ = example(stack)
        for api_key in (False, True):
            s = with_api_key(spec) if api_key else spec
            for name, script in scripts(render_stack(s, plan_for(s))).items():
                done = subprocess.run([sh, "-n"], input=script, text=True, capture_output=True)
                assert done.returncode == 0, f"{stack}/{name}: {done.stderr}"


def test_launch_inputs_set_model_path_host_and_port():
    spec, plan = example("local")
    files = render_stack(
        spec,
        plan,
        {
            "quantized": LaunchInputs(model_path="/m/q.gguf", host="::1", port=9123),
        },
    )
    server = files[Path("quantized", "server.sh")]
    assert "model=/m/q.gguf\n" in server and "--host ::1 " in server
    assert '--port "${QINFRA_PORT:-9123}"' in server
    assert 'base="http://[::1]:${QINFRA_PORT:-9123}"' in files[Path("quantized", "warmup.sh")]
    # Without inputs: the pinned file:// artifact, loopback, behind the router on serving.port:
    # serving.port + 1 plus the variant's index.
    baseline = files[Path("baseline", "server.sh")]
    assert f"model=/tmp/qinfra-artifacts/local/{PINS['baseline']}\n" in baseline
    assert '--port "${QINFRA_PORT:-8081}"' in baseline and "--host 127.0.0.1" in baseline
    with pytest.raises(RenderError, match="unknown variant"):
        render_stack(spec, plan, {"canary": LaunchInputs()})


def test_several_engines_on_one_machine_get_their_own_port_and_gpus():
    """8B fp16 needs TP 2 on T4s: a g4dn.12xlarge (4 GPUs) runs two engines, GPUs 0,1 and 2,3."""
    spec = vllm_stack("aws", "fp16", "gptq", ["t4"])
    files = render_stack(spec, plan_for(spec))
    doc = load_yaml(files[Path("baseline", "user-data.yaml")])
    env_files = {e["path"]: e["content"] for e in doc["write_files"] if e["path"].endswith(".env")}
    assert env_files == {
        "/etc/qinfra/engine-0.env": "QINFRA_PORT=8000\nCUDA_VISIBLE_DEVICES=0,1\n",
        "/etc/qinfra/engine-1.env": "QINFRA_PORT=8001\nCUDA_VISIBLE_DEVICES=2,3\n",
    }
    assert doc["runcmd"][-1] == [
        "systemctl",
        "enable",
        "--now",
        "--no-block",
        "qinfra-engine@0.service",
        "qinfra-engine@1.service",
    ]


def test_kubernetes_refuses_engines_sharing_a_gpu():
    """Sizing never plans shared GPUs for kubernetes (pods get whole GPUs); a plan that does
    anyway, say one made for aws, is refused at render time."""
    from dataclasses import replace

    spec = vllm_stack("kubernetes", "bf16", "fp8", ["a100-80gb"])
    plan = plan_for(spec)
    assert all(v.chosen.replicas_per_gpu == 1 for v in plan.variants)
    shared = replace(plan.variants[0], chosen=replace(plan.variants[0].chosen, replicas_per_gpu=2))
    plan = replace(plan, variants=(shared, *plan.variants[1:]))
    with pytest.raises(RenderError, match=r"variant 'baseline': the plan puts 2 engines on one a100-80gb"):
        render_stack(spec, plan)


def test_write_rendered_makes_scripts_executable_and_stays_inside(tmp_path):
    spec, plan = example("local")
    written = render_files(spec, plan, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "baseline/server.sh",
        "baseline/warmup.sh",
        "quantized/server.sh",
        "quantized/warmup.sh",
    ]
    assert all(os.access(p, os.X_OK) for p in written)
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind
    with pytest.raises(RenderError, match="outside"):
        write_rendered({Path("..", "escape.sh"): ""}, tmp_path)


# --- the command line ----------------------------------------------------------------------------


def _pin_local_stack(stacks: Path, pin: bool = True) -> None:
    """Pin (or unpin) both variants in the copied stack file, as `qinfra artifacts push --stack`
    would, whatever the shipped file holds."""
    from ruamel.yaml import YAML

    path = stacks / "Pulumi.local.yaml"
    yaml = YAML()
    doc = yaml.load(path)
    for name, aid in PINS.items():
        variant = doc["config"]["qinfra:variants"][name]
        variant.pop("artifact", None)
        if pin:
            variant["artifact"] = f"file:///tmp/qinfra-artifacts/local/{aid}/"
    yaml.dump(doc, path)


def test_cli_render_writes_and_lists(stacks, tmp_path):
    from qinfra.cli.render import render

    _pin_local_stack(stacks)
    out = tmp_path / "out"
    result = CliRunner().invoke(render, ["--stack", "local", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"wrote {out / 'baseline' / 'server.sh'}"
    golden = GOLDEN / "local"
    for path in golden.rglob("*.sh"):
        assert (out / path.relative_to(golden)).read_text() == path.read_text()
    result = CliRunner().invoke(render, ["--stack", "local", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["target"] == "local"
    assert [f["path"] for f in doc["files"]] == [
        "baseline/server.sh",
        "baseline/warmup.sh",
        "quantized/server.sh",
        "quantized/warmup.sh",
    ]


def test_cli_render_unpinned_stack_fails_with_one_error_line(stacks, tmp_path):
    from qinfra.cli.render import render

    _pin_local_stack(stacks, pin=False)
    out = tmp_path / "out"
    result = CliRunner().invoke(render, ["--stack", "local", "--out", str(out)])
    assert result.exit_code == 1
    assert result.output.splitlines()[0].startswith(
        "Error: cannot render stack 'local', variant 'baseline': qinfra:variants.baseline.artifact"
    )
    assert not out.exists()
