"""The workload is a pure function of its seed: prompts, output lengths and arrival offsets; the
arrival offsets follow the asked rate and burstiness (statistical checks at 4 standard errors)."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from pathlib import Path

import pytest

from qinfra.core.errors import SpecError
from qinfra.quality.bench_stats import parse_slo, percentile
from qinfra.quality.bench_workload import (
    TOKENS_PER_WORD,
    Arrival,
    BenchError,
    Distribution,
    arrival_offsets,
    from_jsonl,
    parse_distribution,
    shipped_text,
    synthetic,
)

FIXED_16 = Distribution("fixed", 16)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("128", Distribution("fixed", 128)),  # a plain count
        ("uniform:64-256", Distribution("uniform", 64, 256)),
        ("normal:128,32", Distribution("normal", 128.0, 32.0)),
        (" 7 ", Distribution("fixed", 7)),  # spaces around are forgiven
    ],
)
def test_distributions_parse(text: str, expected: Distribution) -> None:
    assert parse_distribution("--input-tokens", text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "uniform:9-3", "gauss:1,2", "12k", ""])
def test_bad_distributions_name_the_option_and_the_forms(text: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_distribution("--output-tokens", text)
    assert "--output-tokens" in err.value.message


def test_same_seed_same_prompts_other_seed_other_prompts() -> None:
    dist = parse_distribution("--input-tokens", "uniform:16-64")
    outs = parse_distribution("--output-tokens", "uniform:4-32")
    a, b = synthetic(50, dist, outs, seed=7), synthetic(50, dist, outs, seed=7)
    c = synthetic(50, dist, outs, seed=8)
    assert a == b
    assert [r.prompt for r in a] != [r.prompt for r in c]
    for r in a:
        assert 16 <= r.planned_input_tokens <= 64 and 4 <= r.max_tokens <= 32
        assert len(r.prompt.split()) == math.ceil(r.planned_input_tokens / TOKENS_PER_WORD)
        body = r.body("m")
        assert body["ignore_eos"] is True and body["max_tokens"] == r.max_tokens
        assert body["stream_options"] == {"include_usage": True}


def test_prompts_come_from_the_shipped_public_domain_text() -> None:
    words = set(shipped_text().split())
    for r in synthetic(20, parse_distribution("-", "40"), FIXED_16, seed=1):
        assert set(r.prompt.split()) <= words


def test_jsonl_prompts_and_chats(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "Hello there", "max_tokens": 5}),
        json.dumps({"messages": [{"role": "user", "content": "Hi"}]}),
        "",
    ]))
    requests = from_jsonl(path, 5, FIXED_16, seed=0)
    assert [r.chat for r in requests] == [False, True, False, True, False]  # cycles
    assert requests[0].max_tokens == 5 and requests[1].max_tokens == 16
    assert requests[1].body("m")["messages"] == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("not json", "is not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"prompt": ""}', 'neither a non-empty "prompt"'),
        ('{"messages": [{"role": "user"}]}', 'neither a non-empty "prompt"'),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path: Path, line: str, says: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(BenchError) as err:
        from_jsonl(path, None, FIXED_16, seed=0)
    assert f"{path}:2" in err.value.message and says in err.value.message


def _gaps(offsets: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(offsets)]


@pytest.mark.parametrize("burstiness", [1.0, 0.5, 4.0])
def test_arrival_gaps_have_the_asked_mean_and_spread(burstiness: float) -> None:
    """Gamma gaps of shape k and mean 1/rate: coefficient of variation 1/sqrt(k)."""
    rate, n = 20.0, 4000
    gaps = _gaps(arrival_offsets(n, rate, Arrival.POISSON, burstiness, seed=3))
    mean, sd = statistics.fmean(gaps), statistics.stdev(gaps)
    expected_sd = (1 / rate) / math.sqrt(burstiness)
    assert abs(mean - 1 / rate) < 4 * expected_sd / math.sqrt(len(gaps))
    assert sd / mean == pytest.approx(1 / math.sqrt(burstiness), rel=0.1)


def test_constant_and_infinite_rates() -> None:
    assert _gaps(arrival_offsets(5, 4.0, Arrival.CONSTANT)) == [0.25] * 4
    assert arrival_offsets(3, math.inf) == [0.0, 0.0, 0.0]
    assert arrival_offsets(10, 5.0, seed=1) == arrival_offsets(10, 5.0, seed=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ttft=200ms,tpot=50ms", {"ttft_ms": 200.0, "tpot_ms": 50.0}),
        ("e2el=2s", {"e2el_ms": 2000.0}),  # seconds become ms
    ],
)
def test_slo_parses(text: str, expected: dict[str, float]) -> None:
    assert parse_slo(text).to_json() == expected


def test_bad_slo_names_the_part() -> None:
    with pytest.raises(SpecError, match="'ttft=fast'"):
        parse_slo("ttft=fast")


def test_percentile_interpolates_as_numpy_does() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([], 50) == 0.0


def test_a_shift_under_the_material_effect_is_no_difference() -> None:
    """A 3% shift with an interval clear of zero is noise between runs, not a verdict; a 10%
    shift with the same spread is one."""
    from qinfra.quality.bench_compare import MIN_EFFECT, Verdict, compare_metric

    a = [(0.100 + 0.0001 * (i % 5), 1) for i in range(200)]
    for shift, want in ((0.03, Verdict.SAME), (0.10, Verdict.SLOWER), (-0.10, Verdict.FASTER)):
        b = [(s * (1 + shift), n) for s, n in a]
        row = compare_metric("e2el", a, b)
        assert row.verdict is want, (shift, row)
        assert (row.ci_low_ms > 0 or row.ci_high_ms < 0) and MIN_EFFECT == 0.05
