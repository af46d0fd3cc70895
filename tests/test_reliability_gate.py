"""The gate's evidence is judged, not trusted (issue 26, items 4 and 10): a pinned report whose
figures break the bars is refused whatever verdict it records, and a corrupted quantized GGUF
(real llama-perplexity on NaN weights) is a FAIL verdict with JSON, not a parser error."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from qinfra.core.demomodel import write_demo_model
from qinfra.core.errors import ArtifactError
from qinfra.core.spec import StackSpec, Variant, load_stack
from qinfra.deploy.stackfile import update_stack_file
from qinfra.quality.gate import shipped_text
from qinfra.quality.gate_check import check_gate
from qinfra.quality.gate_kld import CONTEXT_TOKENS, PERPLEXITY, non_finite_running_figures, parse_report
from qinfra.quality.gate_report import (
    GateReport,
    Method,
    Subject,
    Verdict,
    read_report,
    report_uri,
    write_report,
)
from qinfra.serving.llamacpp import PACKAGE, QUANTIZE, find_binary

GATE_PIN = "qinfra:variants.quantized.gate"


def _forge(stacks: Path, tmp_path: Path, metrics: dict[str, Any],
           method: Method = Method.KLD) -> StackSpec:
    """A report for exactly the local stack's pinned artifacts recording `verdict: pass` over
    `metrics`, written by hand (NaN as Python's json writes it) and stored under its own hash
    where `qinfra gate` keeps reports, then pinned in the stack file, as a hostile operator with
    write access to both would; the stack as loaded then."""
    spec = load_stack("local", stacks)

    def side(v: Variant) -> Subject:
        pinned = str(spec.variants.of(v).artifact).rstrip("/").rpartition("/")[2]
        return Subject("demo.gguf", pinned, None, spec.variants.of(v).format.value)

    doc = GateReport(method, Verdict.PASS, side(Variant.BASELINE), side(Variant.QUANTIZED),
                     "c" * 64, {}, {}).to_json()
    data = json.dumps({**doc, "metrics": metrics}, sort_keys=True).encode()
    report_id = "sha256-" + hashlib.sha256(data).hexdigest()
    (tmp_path / "store" / "gate").mkdir(parents=True, exist_ok=True)
    (tmp_path / "store" / "gate" / f"{report_id}.json").write_bytes(data)
    uri = report_uri(f"file://{tmp_path}/store", report_id)
    assert read_report(uri).verdict is Verdict.PASS  # intact: its bytes hash to its name
    update_stack_file(stacks / "Pulumi.local.yaml", {GATE_PIN: uri})
    return load_stack("local", stacks)


def test_a_forged_pass_over_failing_figures_is_refused(stacks: Path, tmp_path: Path) -> None:
    spec = _forge(stacks, tmp_path, {"mean_kld": 2.5, "same_top_p": 0.10, "ppl_ratio": 1.01})
    check = check_gate(spec)
    assert check.quantized_percent == 50 and check.refuses and check.verdict == "fail"
    problem = str(check.problem)
    assert problem.startswith("stack local gives the quantized variant 50% of traffic"), problem
    # each broken bar named: the figure, its value and the bar
    assert "mean_kld 2.5 > 0.15 (acceptance)" in problem, problem
    assert "same_top_p 0.1 < 0.75 (acceptance)" in problem, problem
    assert "mean_kld 2.5 > 0.15 (expected of family w4)" in problem, problem
    assert "records 'pass'" in problem and "--skip-gate" in problem, problem
    assert check.to_props()["problem"] == problem  # what the program and policy pack see


def test_the_bars_the_stack_holds_now_judge_an_older_pass(stacks: Path, tmp_path: Path) -> None:
    healthy = {"mean_kld": 0.05, "same_top_p": 0.87, "ppl_ratio": 1.05}  # SmolLM2 Q4_K_M [S2]
    assert check_gate(_forge(stacks, tmp_path, healthy)).problem is None
    # the bar tightened after the report was written: the recorded verdict is stale
    update_stack_file(stacks / "Pulumi.local.yaml", {"qinfra:gate.acceptance.mean_kld_max": 0.01})
    check = check_gate(load_stack("local", stacks))
    assert check.refuses and "mean_kld 0.05 > 0.01 (acceptance)" in str(check.problem), check.problem


@pytest.mark.parametrize(
    ("metrics", "method", "why"),
    [
        # NaN compares false with every bar: without a finite check it would pass them all
        ({"mean_kld": math.nan, "same_top_p": 0.9, "ppl_ratio": 1.0}, Method.KLD,
         "mean_kld nan is not a finite number (bar: at most 0.15, acceptance)"),
        ({"mean_kld": 0.01, "same_top_p": 0.9, "ppl_ratio": -math.inf}, Method.KLD,
         "ppl_ratio -inf is not a finite number"),
        # null (how a stored report writes NaN), and text where a figure belongs
        ({"mean_kld": 0.01, "same_top_p": None}, Method.KLD, "same_top_p is null (no finite figure)"),
        ({"mean_kld": "0.01", "same_top_p": 0.9}, Method.KLD,
         "mean_kld '0.01' is not a finite number"),
        # no figure at all: nothing to judge, so nothing passes
        ({}, Method.KLD, "mean_kld is missing (a kld report always has it)"),
        ({"exact_match": 1.0}, Method.ONLINE, "prefix_fraction is missing"),
    ],
)
def test_a_pass_without_finite_figures_is_refused(stacks: Path, tmp_path: Path,
                                                  metrics: dict[str, Any], method: Method,
                                                  why: str) -> None:
    check = check_gate(_forge(stacks, tmp_path, metrics, method))
    assert check.refuses and why in str(check.problem), check.problem


def test_a_report_whose_metrics_are_not_a_mapping_is_not_a_report(tmp_path: Path) -> None:
    side = Subject("x", "sha256-" + "a" * 64, None, "gguf-q4_k_m")
    uri = write_report(GateReport(Method.KLD, Verdict.PASS, side, side, "c" * 64, {},
                                  [2.5]),  # type: ignore[arg-type]  (as a hand-written file has it)
                       f"file://{tmp_path}")
    with pytest.raises(ArtifactError, match=r"is not a qinfra gate report .*metrics are not a mapping"):
        read_report(uri)


# A Q8_0 block (ggml-common.h block_q8_0): an fp16 scale, then 32 int8 quants.
Q8_0_BLOCK_BYTES, Q8_0_BLOCK_VALUES = 34, 32
FP16_NAN = b"\x00\x7e"  # little-endian 0x7E00


def _binary(name: str) -> Path:
    try:
        return find_binary(name)
    except ArtifactError as exc:
        pytest.fail(f"{name} ({PACKAGE}, installed by scripts/setup.sh): {exc.message}", pytrace=False)


def _scramble_q8_0_scales(path: Path, tensor_name: str) -> int:
    """Set every block scale of one Q8_0 tensor to fp16 NaN in place, as bit rot or a broken
    converter could; the number of blocks changed. The header and every size stay valid."""
    from gguf import GGMLQuantizationType, GGUFReader

    tensor = next(t for t in GGUFReader(str(path)).tensors if t.name == tensor_name)
    assert tensor.tensor_type is GGMLQuantizationType.Q8_0, tensor.tensor_type
    blocks = int(tensor.n_elements) // Q8_0_BLOCK_VALUES
    assert int(tensor.n_bytes) == blocks * Q8_0_BLOCK_BYTES
    data = np.memmap(path, dtype=np.uint8, mode="r+", offset=int(tensor.data_offset),
                     shape=(blocks, Q8_0_BLOCK_BYTES))
    data[:, :2] = np.frombuffer(FP16_NAN, dtype=np.uint8)
    data.flush()
    del data
    return blocks


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The demo model as F16, a healthy Q8_0 of it, and a copy of that Q8_0 whose block
    scales in blk.0.attn_q.weight are all NaN (made with the real llama-quantize)."""
    folder = tmp_path_factory.mktemp("corrupt")
    f16, q8, bad = folder / "demo-F16.gguf", folder / "demo-Q8_0-ok.gguf", folder / "demo-Q8_0.gguf"
    write_demo_model(f16)
    done = subprocess.run([str(_binary(QUANTIZE)), str(f16), str(q8), "Q8_0"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    shutil.copyfile(q8, bad)
    assert _scramble_q8_0_scales(bad, "blk.0.attn_q.weight") > 0
    return f16, q8, bad


def test_a_corrupted_q8_0_is_a_fail_verdict_with_json(demo_pair: tuple[Path, Path, Path],
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from qinfra.cli.gate import gate

    f16, _, q8 = demo_pair
    _binary(PERPLEXITY)
    monkeypatch.setenv("QINFRA_CACHE_DIR", str(tmp_path / "cache"))

    result = CliRunner().invoke(gate, ["--baseline", str(f16), "--quantized", str(q8), "--json"])
    assert result.exit_code == 1, result.output
    assert result.stdout.startswith("{"), (result.output[-3000:], result.stderr[-3000:])
    # strict JSON: no NaN token
    doc = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert (doc["verdict"], doc["method"]) == ("fail", "kld"), doc
    first = doc["reasons"][0]
    assert first.startswith("llama-perplexity found non-finite figures (mean_kld nan"), first
    assert "demo-Q8_0.gguf gives NaN or infinite logits (a corrupted or broken file)" in first
    assert doc["metrics"]["mean_kld"] is None  # JSON has no NaN; the reason names the value
    # the stored report says the same, and reads back as a FAIL
    stored = read_report(doc["report_uri"])
    assert stored.verdict is Verdict.FAIL and stored.reasons[0] == first

    # the human view of the same run: the verdict, the figures as printed, the reason
    result = CliRunner().invoke(gate, ["--baseline", str(f16), "--quantized", str(q8)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("FAIL: gguf-q8_0 vs gguf-f16 (kld): mean KLD nan"), result.output
    assert "fails: llama-perplexity found non-finite figures" in result.output


def test_nan_chunk_rows_stand_in_for_a_summary_llama_perplexity_lost(
        demo_pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """llama-perplexity sorts the NaN KLDs of a corrupted file (undefined behaviour), and on
    some runs prints its chunk rows but no summary, or dies: the rows decide."""
    f16, healthy, q8 = demo_pair
    logits = tmp_path / "base.kld"
    argv = [str(_binary(PERPLEXITY)), "-f", str(shipped_text()), "-c", str(CONTEXT_TOKENS)]
    subprocess.run([*argv, "-m", str(f16), "--kl-divergence-base", str(logits)],
                   capture_output=True, check=True, timeout=600)

    def output(model: Path) -> str:
        done = subprocess.run([*argv, "-m", str(model), "--kl-divergence-base", str(logits),
                               "--kl-divergence"], capture_output=True, text=True, timeout=600,
                              check=False)
        return done.stdout + "\n" + done.stderr

    # the same output as a run that lost its summary: the parser alone cannot read it
    cut = output(q8).partition("====== Perplexity statistics")[0]
    with pytest.raises(ArtifactError, match="printed no 'Mean KLD' line"):
        parse_report(cut)
    metrics = non_finite_running_figures(cut)
    assert metrics is not None and math.isnan(metrics.mean_kld) and metrics.chunks > 0
    assert metrics.non_finite()[0] == "mean_kld nan"
    # a healthy file's rows are finite: they never stand in for its summary
    assert non_finite_running_figures(output(healthy)) is None
