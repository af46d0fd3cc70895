"""`qinfra init`: the comparison, the recommendation and the written stack file, which `qinfra plan`
and `qinfra render` read as written; `qinfra plan --compare` over an existing stack."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from qinfra.cli.init import GPUS, TARGETS, init
from qinfra.cli.plan import plan
from qinfra.cli.render import render
from qinfra.core.data import DATA_DIR
from qinfra.core.format_choice import hub_artifacts, preferences
from qinfra.core.formats import Format, FormatKind, format_info
from qinfra.core.hardware import catalog
from qinfra.core.modelinfo import shipped_models
from qinfra.core.spec import Target, load_stack
from qinfra.deploy.init_stack import yaml_scalar
from qinfra.deploy.stackfile import update_stack_file
from qinfra.planning.compare import Kernel, kernel

MODEL = "meta-llama/Llama-3.1-8B-Instruct"  # shipped facts: planned offline
PIN = "sha256-" + "e" * 64


def _init(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(init, ["--model", MODEL, *args])
    return result.exit_code, result.stdout, result.stderr


def _json_init(*args: str) -> dict:
    code, out, err = _init(*args, "--json", "--yes")
    assert code == 0, out + err
    return json.loads(out)


def _pin(path: Path, store: str, target: str) -> None:
    """What `qinfra artifacts push --stack` adds (each variant's artifact, and on aws the
    router's wheels), written by the same code path; the kubernetes router image is the user's."""
    updates = {f"qinfra:variants.{v}.artifact": f"{store}/{PIN}/" for v in ("baseline", "quantized")}
    if target == "aws":
        updates["qinfra:router.artifact"] = f"{store}/{PIN}/"
    if target == "kubernetes":
        updates["qinfra:router.image"] = "ghcr.io/acme/qinfra-router@sha256:" + "d" * 64
    update_stack_file(path, updates)


@pytest.mark.parametrize("target", TARGETS)
def test_init_writes_a_stack_plan_and_render_accept(stacks: Path, tmp_path: Path, target: str) -> None:
    extra = ["--cpu-memory-gib", "32"] if target == "local" else []
    code, out, err = _init("--target", target, "--stack", f"new-{target}", "--yes", *extra)
    assert code == 0, out + err
    path = stacks / f"Pulumi.new-{target}.yaml"
    assert f"wrote {path}" in out
    text = path.read_text()
    # commented blocks and the next command, in the file itself
    assert "# Next:" in text and f"qinfra plan --stack new-{target}" in text
    assert text.count("\n  # ") >= 8
    spec = load_stack(f"new-{target}")
    assert spec.target is Target(target)
    result = CliRunner().invoke(plan, ["--stack", f"new-{target}"])
    assert result.exit_code == 0, result.output
    # render needs pinned artifacts; the unpinned file fails only for that ...
    out_dir = tmp_path / "out"
    result = CliRunner().invoke(render, ["--stack", f"new-{target}", "--out", str(out_dir)])
    assert result.exit_code == 1 and "artifact" in result.output and "push" in result.output
    # ... and with the pins `artifacts push` writes (nothing else changed) it renders
    _pin(path, spec.artifacts.store, target)
    assert path.read_text().startswith(text.split("config:", 1)[0])
    result = CliRunner().invoke(render, ["--stack", f"new-{target}", "--out", str(out_dir)])
    assert result.exit_code == 0, result.output
    assert (out_dir / "baseline").is_dir() and (out_dir / "quantized").is_dir()


@pytest.mark.parametrize(
    ("args", "engine", "baseline", "quantized"),
    [
        # FP8 tensor cores on the list (l4, h100): FP8 with a known hub checkpoint
        (["--gpus", "l4,a10g,h100-80gb"], "vllm", "bf16", "fp8"),
        # no FP8 tensor cores (A10G, A100 run FP8 weight-only): AWQ instead, FP8 passed over
        (["--gpus", "a10g,a100-80gb"], "vllm", "bf16", "awq"),
        # T4 has no bfloat16 and no Marlin: fp16 baseline, and int8 is the one quantized format
        # with its full kernel there
        (["--gpus", "t4"], "vllm", "fp16", "int8"),
        # target local: llama.cpp in RAM, GGUF (the lesson's recommended default Q5_K_M)
        (["--target", "local", "--cpu-memory-gib", "32"], "llama.cpp", "gguf-f16", "gguf-q5_k_m"),
        # llama.cpp asked for on GPUs: GGUF there too
        (["--engine", "llama.cpp", "--gpus", "l4"], "llama.cpp", "gguf-f16", "gguf-q5_k_m"),
    ],
)
def test_recommendation_follows_the_hardware(stacks: Path, args: list[str], engine: str,
                                             baseline: str, quantized: str) -> None:
    doc = _json_init(*args, "--stack", "pick")
    rec = doc["comparison"]["recommendation"]
    assert (rec["engine"], rec["baseline"]["format"], rec["quantized"]["format"]) == (
        engine, baseline, quantized)
    assert all(1 <= len(p["reasons"]) <= 2 for p in (rec["baseline"], rec["quantized"]))
    spec = load_stack("pick")
    assert (spec.variants.baseline.format, spec.variants.quantized.format) == (baseline, quantized)
    if quantized == "awq":
        assert any(p.startswith("fp8: no full-speed kernel on a10g, a100-80gb") for p in rec["passed_over"])
        assert spec.variants.quantized.source == "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"
        assert spec.fleet.gpus == ["a10g", "a100-80gb"]
    if quantized == "fp8":
        assert spec.fleet.gpus == ["l4", "h100-80gb"]  # where FP8 runs on tensor cores
    fp8 = [c for c in doc["comparison"]["candidates"] if c["format"] == "fp8"]
    if engine == "vllm" and fp8:
        assert fp8[0]["expected_drift"]["family"] == "w8"


def test_an_existing_stack_file_is_refused_without_force(stacks: Path) -> None:
    before = (stacks / "Pulumi.prod.yaml").read_text()
    code, out, err = _init("--stack", "prod", "--yes")
    assert code == 2
    assert err.splitlines()[0].startswith(f"Error: {stacks / 'Pulumi.prod.yaml'} exists")
    assert (stacks / "Pulumi.prod.yaml").read_text() == before
    code, out, err = _init("--stack", "prod", "--yes", "--force", "--gpus", "l4")
    assert code == 0, out + err
    assert load_stack("prod").variants.quantized.format is Format.FP8


def test_an_unknown_model_fails_in_one_line_naming_a_local_directory(stacks: Path) -> None:
    result = CliRunner().invoke(init, ["--model", "acme/not-a-shipped-model", "--yes"])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: qinfra ships no facts for 'acme/not-a-shipped-model'")
    assert "pass --model DIR, a local directory holding its config.json" in lines[0]
    assert not list(stacks.glob("Pulumi.not-a-shipped-model.yaml"))


def test_a_local_model_directory_works(stacks: Path, reference_models: Path) -> None:
    model = reference_models / "llama-3.1-8b"
    result = CliRunner().invoke(init, ["--model", str(model), "--stack", "dir", "--gpus", "l4",
                                       "--yes"])
    assert result.exit_code == 0, result.output
    assert load_stack("dir").model.id == str(model.resolve())


def test_nothing_fits_prints_the_table_and_writes_nothing(stacks: Path) -> None:
    result = CliRunner().invoke(init, ["--model", "meta-llama/Llama-3.1-70B-Instruct", "--target",
                                       "local", "--cpu-memory-gib", "4", "--stack", "tiny", "--yes"],
                                 env={"COLUMNS": "250"})
    assert result.exit_code == 1
    assert "no fit" in result.stdout
    assert result.stderr.startswith("Error: nothing to write for meta-llama/Llama-3.1-70B-Instruct")
    assert not (stacks / "Pulumi.tiny.yaml").exists()


def test_json_carries_the_table_and_the_file(stacks: Path) -> None:
    doc = _json_init("--gpus", "l4", "--stack", "j")
    assert doc["written"] is True
    assert doc["text"] == (stacks / "Pulumi.j.yaml").read_text()
    row = doc["comparison"]["candidates"][0]
    for key in ("format", "engine", "gpu", "tensor_parallel_size", "engines", "weights_gib_per_gpu",
                "usd_per_hour", "kernels", "expected_drift", "artifact"):
        assert key in row
    assert doc["plan"]["fits"] is True


def test_plan_compare_marks_the_stacks_formats(stacks: Path) -> None:
    result = CliRunner().invoke(plan, ["--stack", "prod", "--compare", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["formats"] == {"baseline": "bf16", "quantized": "awq"}
    assert doc["recommendation"]["quantized"]["format"] == "fp8"  # prod lists l4 and h100-80gb
    result = CliRunner().invoke(plan, ["--stack", "prod", "--compare"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "recommended on vllm" in result.stdout and "the stack's formats" in result.stdout
    result = CliRunner().invoke(plan, ["--compare"])
    assert result.exit_code == 2


def test_help_explains_with_an_example() -> None:
    result = CliRunner().invoke(init, ["--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    assert "qinfra init --model meta-llama/Llama-3.1-8B-Instruct --target aws" in result.output


# --- the data and the pure parts -------------------------------------------------------------


def test_preference_table_covers_every_format_with_a_reason_and_a_source() -> None:
    prefs = preferences()
    assert set(prefs.rows) == set(Format)
    for row in prefs.rows.values():
        assert row.reason and row.recipe and row.sources
        assert format_info(row.format).kind is row.kind
    for kind in FormatKind:
        ranks = sorted(r.rank for r in prefs.rows.values() if r.kind is kind)
        assert ranks == list(range(len(ranks)))
    assert set(prefs.engines) == {t.value for t in Target}
    raw = tomllib.loads((DATA_DIR / "format_preferences.toml").read_text())
    assert set(raw) == {"engines", "baseline", "quantized"}


def test_hub_artifacts_name_shipped_models_and_quantized_formats() -> None:
    shipped = {m.source.lower() for m in shipped_models().values()}
    for model, formats in hub_artifacts().items():
        assert model in shipped, model
        for fmt, row in formats.items():
            assert format_info(fmt).kind is FormatKind.QUANTIZED
            assert row.repo.count("/") == 1 and row.source.startswith("[")


@pytest.mark.parametrize(
    ("fmt", "cc", "want"),
    [
        (Format.FP8, 9.0, Kernel.FULL),  # Hopper: FP8 tensor cores
        (Format.FP8, 8.0, Kernel.FALLBACK),  # A100: weight-only through Marlin
        (Format.FP8, 7.5, Kernel.NONE),  # T4
        (Format.AWQ, 7.5, Kernel.FALLBACK),  # loads, no Marlin below 8.0
        (Format.AWQ, 8.6, Kernel.FULL),
        (Format.BF16, 7.5, Kernel.NONE),  # no bfloat16 before Ampere
        (Format.GGUF_Q4_K_M, 7.5, Kernel.NONE),  # vLLM does not load GGUF
    ],
)
def test_kernel_by_compute_capability(fmt: Format, cc: float, want: Kernel) -> None:
    from qinfra.core.engines import Engine

    assert kernel(fmt, Engine.VLLM, cc) is want


def test_gpu_choices_match_the_catalog() -> None:
    assert set(GPUS) == set(catalog().gpus)


@pytest.mark.parametrize("value", ["qinfra", "s3://b/p", "true", "1.0", "2024-01-01", "a: b", "#x",
                                   "file:///tmp/a b", "x:", "~", "no", "12"])
def test_yaml_scalars_read_back_as_text(value: str) -> None:
    from ruamel.yaml import YAML

    assert YAML(typ="safe").load(f"k: {yaml_scalar(value)}\n")["k"] == value
