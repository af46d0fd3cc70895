"""The CLI through click's CliRunner: exit codes, JSON shape, first line of errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from qinfra.cli.main import cli
from qinfra.core.errors import NoFitError, SpecError

REQUIRED_KEYS = {"format", "engine", "gpu", "tensor_parallel_size", "weights_gib",
                 "kv_bytes_per_token", "overhead_gib", "kv_cache_gib", "kv_cache_tokens",
                 "max_concurrency", "fits", "errors", "warnings"}


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def llama(reference_models: Path) -> str:
    return str(reference_models / "llama-3.1-8b")


def test_adhoc_plan_json(reference_models):
    result = run("plan", "--model", llama(reference_models), "--format", "awq", "--gpu", "l4",
                 "--max-model-len", "8192", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data.keys() >= REQUIRED_KEYS
    assert data["fits"] is True and data["errors"] == []
    assert data["kv_bytes_per_token"] == 131072 and isinstance(data["kv_cache_tokens"], int)
    assert data["flags"]["quantization"] == "awq_marlin"


def test_adhoc_public_log_from_the_command_line(reference_models):
    result = run("plan", "--model", llama(reference_models), "--format", "bf16",
                 "--gpu-memory-gib", "23.58", "--compute-capability", "8.6",
                 "--max-model-len", "20000", "--max-num-batched-tokens", "20000",
                 "--gpu-memory-utilization", "0.9", "--cuda-graph-gib", "0", "--json")
    data = json.loads(result.output)
    assert result.exit_code == 0 and abs(data["kv_cache_tokens"] - 31232) <= 32


def test_refused_combination_exits_1_with_json(reference_models):
    result = run("plan", "--model", llama(reference_models), "--format", "gguf-q4_k_m",
                 "--engine", "vllm", "--gpu", "l4", "--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["fits"] is False and "llama.cpp" in data["errors"][0]


def test_not_fitting_exits_1(reference_models):
    result = run("plan", "--model", llama(reference_models), "--format", "bf16", "--gpu", "a10g",
                 "--max-model-len", "131072", "--json")
    assert result.exit_code == 1 and json.loads(result.output)["fits"] is False


@pytest.mark.parametrize(
    ("args", "first_line"),
    [
        (["plan"], "give --stack NAME, or --model and --format"),
        (["plan", "--model", "x", "--format", "awq"], "give exactly one of --gpu"),
        (["plan", "--model", "x", "--format", "awq", "--gpu", "h100"], "Invalid value for '--gpu'"),
        (["plan", "--stack", "prod", "--model", "x"], "either --stack or --model"),
        (["plan", "--model", "x", "--format", "awq", "--gpu", "l4", "--compute-capability", "8"],
         "--compute-capability goes with --gpu-memory-gib"),
    ],
)
def test_usage_errors_exit_2(args, first_line):
    result = run(*args)
    assert result.exit_code == 2
    assert first_line in result.output


def test_stack_plan_json(stacks, reference_models):
    text = (stacks / "Pulumi.prod.yaml").read_text()
    (stacks / "Pulumi.prod.yaml").write_text(
        text.replace("meta-llama/Llama-3.1-8B-Instruct", llama(reference_models)))
    result = run("plan", "--stack", "prod", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data["variants"]) == {"baseline", "quantized"}
    assert data["variants"]["baseline"]["share_percent"] == 100
    chosen = data["variants"]["quantized"]["chosen"]
    assert chosen["plan"]["format"] == "awq" and chosen["instance_type"]


def test_stack_plan_table(stacks):
    result = run("plan", "--stack", "local")
    assert result.exit_code == 0, result.output
    assert "baseline" in result.output and "gguf-q4_k_m" in result.output
    assert "estimate" in result.output


def test_bad_stack_exits_2_naming_the_key(stacks):
    path = stacks / "Pulumi.local.yaml"
    path.write_text(path.read_text().replace("max_model_len: 1024", "max_model_len: tiny"))
    result = run("plan", "--stack", "local")
    assert result.exit_code == 2
    assert "qinfra:serving.max_model_len: got 'tiny'" in result.output


def test_hub_model_offline_is_one_error_line():
    result = run("plan", "--model", "qinfra-tests/absent", "--format", "awq", "--gpu", "l4")
    assert result.exit_code == 1
    assert result.output.startswith("Error: config.json of qinfra-tests/absent@main is not cached")


def test_help_does_not_import_heavy_packages():
    code = ("import sys; from qinfra.cli.main import cli\n"
            "try:\n    cli(['plan', '--help'])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('pulumi', 'pulumi_aws', 'boto3', 'pydantic', 'rich', 'jinja2',"
            " 'huggingface_hub') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def _group_raising(error: BaseException) -> click.Group:
    """A group built like `qinfra` (same class, same --debug) whose one command raises `error`."""

    @click.group(cls=type(cli))
    @click.option("--debug", is_flag=True)
    def root(debug: bool) -> None:
        pass

    @root.command()
    def boom() -> None:
        raise error

    return root


@pytest.mark.parametrize(
    ("error", "exit_code", "first_line"),
    [
        # qinfra's errors carry their exit code; the CLI alone turns them into `Error:` lines
        (SpecError("qinfra:target: got 'gcp'"), 2, "Error: qinfra:target: got 'gcp'"),
        (NoFitError("stack prod does not fit"), 1, "Error: stack prod does not fit"),
        # anything else is one line too, pointing at --debug
        (KeyError("gpu"), 1, "Error: KeyError: 'gpu' (run with --debug for a traceback)"),
    ],
)
def test_errors_become_exit_codes_and_one_line(error, exit_code, first_line):
    result = CliRunner().invoke(_group_raising(error), ["boom"])
    assert result.exit_code == exit_code
    assert result.output.splitlines()[0] == first_line


def test_a_command_invoked_on_its_own_maps_errors_too():
    from qinfra.cli.command import Command

    @click.command(cls=Command)
    def boom() -> None:
        raise SpecError("qinfra:fleet.gpus[0]: got 'h100'")

    result = CliRunner().invoke(boom, [])
    assert result.exit_code == 2
    assert result.output.splitlines()[0] == "Error: qinfra:fleet.gpus[0]: got 'h100'"


def test_debug_shows_the_traceback_of_unexpected_errors():
    result = CliRunner().invoke(_group_raising(KeyError("gpu")), ["--debug", "boom"])
    assert isinstance(result.exception, KeyError) and result.exit_code == 1
    assert "Error:" not in result.output


def test_error_root_is_independent_of_click():
    assert not isinstance(SpecError("x"), click.ClickException)
    code = ("import sys; import qinfra.core.errors, qinfra.core.spec, qinfra.planning.stack\n"
            "print('CLICK', 'click' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "CLICK False" in out.stdout


@pytest.mark.parametrize(
    ("variants", "names"),
    [
        # target local: long gguf format names, no GPU or instance, an endpoint per variant
        ({"baseline": {"format": "gguf-f16", "weight_percent": 90, "replicas": 1,
                       "endpoint": "http://127.0.0.1:18080"},
          "quantized": {"format": "gguf-q4_k_m", "weight_percent": 10, "replicas": 1,
                        "endpoint": "http://127.0.0.1:18081"}},
         ["baseline", "quantized", "gguf-f16", "gguf-q4_k_m", "http://127.0.0.1:18081"]),
        # target kubernetes: a long in-cluster endpoint must fold, not push the names out
        ({"baseline": {"format": "bf16", "weight_percent": 75, "replicas": 3, "gpu": "l40s",
                       "endpoint": "http://qinfra-k8s-baseline.qinfra.svc.cluster.local:8000"},
          "quantized": {"format": "fp8", "weight_percent": 25, "replicas": 1, "gpu": "l40s",
                        "endpoint": "http://qinfra-k8s-quantized.qinfra.svc.cluster.local:8000"}},
         ["baseline", "quantized", "bf16", "fp8", "l40s"]),
    ],
)
def test_status_table_never_cuts_names_at_80_columns(variants, names):
    from io import StringIO

    from rich.console import Console

    from qinfra.cli.observe import endpoints_table

    out = StringIO()
    Console(file=out, width=80).print(endpoints_table("local", {"stage": "ab_test",
                                                                 "variants": variants}))
    text = out.getvalue()
    assert "…" not in text, text
    for name in names:
        assert name in text, text
