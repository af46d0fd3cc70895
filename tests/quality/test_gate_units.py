"""The gate's data and bookkeeping without a model: the shipped thresholds table, the bars'
judgement, llama-perplexity's report lines, and reports that read back only as written."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from qinfra.core.errors import ArtifactError, SpecError
from qinfra.core.formats import Format, FormatKind, format_info
from qinfra.core.spec import StackSpec, Variant, load_stack
from qinfra.quality.gate_check import check_gate
from qinfra.quality.gate_online import read_prompts, shipped_prompts
from qinfra.quality.gate_report import GateReport, Method, Subject, Verdict, read_report, write_report
from qinfra.quality.gate_thresholds import BAR_KEYS, TABLE, table, thresholds_for

DATA = Path(__file__).resolve().parents[2] / "qinfra" / "quality" / "data"


def test_every_quantized_format_has_one_family_and_every_figure_a_source() -> None:
    t = table()
    quantized = {f for f in Format if format_info(f).kind is FormatKind.QUANTIZED}
    assert set(t.family_of) == quantized
    for bar in (t.acceptance, *t.families.values()):
        assert all(limit > 0 for _, _, limit in bar.limits())
    text = (DATA / TABLE).read_text()
    # every source cited is listed, and every limit cites one on its line or the comment above
    sources = set(re.findall(r"^#\s+\[(S\d)\]", text, re.M))
    assert set(re.findall(r"\[(S\d)\]", text)) <= sources
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.split(" =")[0] in BAR_KEYS:
            assert "[S" in line or "[S" in lines[i - 1], line


def test_acceptance_is_the_same_for_every_format_and_overrides_apply() -> None:
    q8, q2 = thresholds_for(Format.GGUF_Q8_0), thresholds_for(Format.GGUF_Q2_K)
    assert q8.acceptance == q2.acceptance
    assert (q8.family, q2.family) == ("w8", "w2")
    tighter = thresholds_for(Format.GGUF_Q8_0, {"acceptance": {"mean_kld_max": 0.001},
                                                "family": {"w8": {"same_top_min": 0.99}}})
    assert tighter.acceptance.mean_kld_max == 0.001
    assert tighter.expected.same_top_min == 0.99


@pytest.mark.parametrize(
    ("metrics", "reasons"),
    [
        # a healthy Q8_0 passes both bars
        ({"mean_kld": 0.004, "same_top_p": 0.96, "ppl_ratio": 1.01}, []),
        # a "Q8_0" that drifts like a 4-bit file: under the acceptance bar, over its family's
        ({"mean_kld": 0.05, "same_top_p": 0.87, "ppl_ratio": 1.05},
         ["mean_kld 0.05 > 0.02 (expected of family w8)", "same_top_p 0.87 < 0.9 (expected of family w8)"]),
        # a metric the method did not measure is not judged
        ({"mean_kld": 0.004}, []),
    ],
)
def test_a_q8_drifting_like_4_bit_is_caught(metrics: dict[str, float], reasons: list[str]) -> None:
    assert thresholds_for(Format.GGUF_Q8_0).failures(metrics) == reasons


def test_a_baseline_format_has_no_thresholds() -> None:
    with pytest.raises(SpecError, match="baseline format"):
        thresholds_for(Format.GGUF_F16)


def test_the_shipped_prompts_read() -> None:
    assert len(read_prompts(shipped_prompts())) == 24


def _report() -> GateReport:
    side = Subject("x.gguf", "sha256-" + "a" * 64, "b" * 64, "gguf-q8_0")
    return GateReport(Method.KLD, Verdict.PASS, replace(side, format="gguf-f16"), side, "c" * 64,
                      thresholds_for(Format.GGUF_Q8_0).to_json(), {"mean_kld": 0.004})


def test_a_report_reads_back_and_an_altered_one_is_refused(tmp_path: Path) -> None:
    uri = write_report(_report(), f"file://{tmp_path}")
    assert read_report(uri) == _report()
    stored = tmp_path / "gate" / uri.rpartition("/")[2]
    stored.write_bytes(stored.read_bytes().replace(b'"pass"', b'"fail"'))
    with pytest.raises(ArtifactError, match="was altered after it was written"):
        read_report(uri)
    with pytest.raises(ArtifactError, match="is missing from its store"):
        read_report(uri.replace("sha256-", "sha256-0").replace(uri[-10:], uri[-9:]))


def test_a_report_uri_of_another_shape_is_refused() -> None:
    with pytest.raises(ArtifactError, match="not a gate report URI"):
        read_report("file:///tmp/report.json")


def _local_with(stacks: Path, report: GateReport | None, tmp_path: Path) -> StackSpec:
    """The shipped local stack, its quantized variant pinning `report` (written to a tmp store)."""
    spec = load_stack("local", stacks)
    uri = write_report(report, f"file://{tmp_path}") if report else None
    quantized = spec.variants.quantized.model_copy(update={"gate": uri})
    return spec.model_copy(update={"variants": spec.variants.model_copy(update={"quantized": quantized})})


def _for(spec: StackSpec, verdict: Verdict = Verdict.PASS, **ids: str) -> GateReport:
    def side(v: Variant) -> Subject:
        pinned = str(spec.variants.of(v).artifact).rstrip("/").rpartition("/")[2]
        return Subject("x", ids.get(v.value, pinned), None, spec.variants.of(v).format.value)

    return replace(_report(), verdict=verdict, baseline=side(Variant.BASELINE),
                   quantized=side(Variant.QUANTIZED), reasons=("mean_kld 0.4 > 0.15 (acceptance)",))


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        # a passing report for exactly the pinned artifacts
        ("pass", None),
        # no report pinned
        ("missing", "pins no gate report (qinfra:variants.quantized.gate). To fix: run `qinfra gate"),
        # a report for another quantized artifact
        ("stale", "was made for other artifacts: quantized sha256-"),
        # a failed report
        ("failed", "failed (mean_kld 0.4 > 0.15 (acceptance))"),
    ],
)
def test_quantized_traffic_needs_a_passing_report_for_the_pinned_artifacts(
    stacks: Path, tmp_path: Path, case: str, problem: str | None
) -> None:
    spec = load_stack("local", stacks)
    report = {"pass": _for(spec), "missing": None, "failed": _for(spec, Verdict.FAIL),
              "stale": _for(spec, quantized="sha256-" + "9" * 64)}[case]
    check = check_gate(_local_with(stacks, report, tmp_path))
    assert check.quantized_percent > 0
    if problem is None:
        assert (check.problem, check.refuses) == (None, False)
    else:
        assert check.refuses and problem in str(check.problem), check.problem
        head = f"stack local gives the quantized variant {check.quantized_percent}%"
        assert str(check.problem).startswith(head)
