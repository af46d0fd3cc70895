"""`qinfra bench` and `qinfra bench compare` through click, against a real llama-server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qinfra.cli.main import cli

pytestmark = pytest.mark.real

VLLM_KEYS = {"completed", "failed", "request_throughput", "output_throughput", "mean_ttft_ms",
             "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "mean_itl_ms",
             "mean_e2el_ms", "p99_e2el_ms", "ttfts", "itls", "input_lens", "output_lens", "errors"}
QINFRA_KEYS = {"goodput", "target", "variant", "seed", "usd_per_million_output_tokens", "client"}


def _bench(runner: CliRunner, base: str, *extra: str) -> dict:
    argv = ["bench", "--target", base, "--requests", "6", "--concurrency", "2",
            "--input-tokens", "16", "--output-tokens", "4", "--json", *extra]
    done = runner.invoke(cli, argv, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def test_bench_json_has_vllms_keys_and_qinfras_and_keeps_the_result(
        demo_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    out = tmp_path / "mine.json"
    result = _bench(runner, demo_server.base, "--slo", "ttft=10s", "--seed", "4", "--out", str(out))
    assert set(result) >= VLLM_KEYS | QINFRA_KEYS
    assert result["completed"] == 6 and result["seed"] == 4 and result["model_id"] == "bench-model"
    assert result["goodput"]["fraction"] == 1.0
    assert result["usd_per_million_output_tokens"] is None  # a bare URL has no price
    kept = list((tmp_path / ".qinfra" / "bench").glob("url-*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == result
    assert json.loads(out.read_text()) == result


def test_compare_two_saved_runs(demo_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for name in ("a", "b"):
        _bench(runner, demo_server.base, "--out", str(tmp_path / f"{name}.json"))
    done = runner.invoke(cli, ["bench", "compare", "a.json", "b.json", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert set(report["metrics"]) == {"ttft", "tpot", "itl", "e2el"}
    for row in report["metrics"].values():
        assert row["ci_low_ms"] <= row["difference_ms"] <= row["ci_high_ms"]
        assert row["verdict"] in {"faster", "slower", "no significant difference"}
    shown = runner.invoke(cli, ["bench", "compare", "a.json", "b.json"])
    assert shown.exit_code == 0 and "95% CI" in shown.stdout


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        # a malformed SLO is a usage error that names the part
        (["bench", "--target", "http://127.0.0.1:9", "--slo", "ttft=fast"], 2, "--slo part"),
        # a stack target needs the stack
        (["bench", "--target", "router"], 2, "pass --stack NAME"),
        # an unknown target name, with a suggestion
        (["bench", "--stack", "local", "--target", "quantised"], 2, "Did you mean 'quantized'?"),
        # a rate is a positive number or inf
        (["bench", "--target", "http://127.0.0.1:9", "--rate", "0"], 2, "--rate '0'"),
        # a server that is not there
        (["bench", "--target", "http://127.0.0.1:9"], 1, "/v1/models did not answer"),
    ],
)
def test_bench_refusals(argv: list[str], code: int, says: str) -> None:
    done = CliRunner().invoke(cli, argv)
    assert done.exit_code == code, done.output
    assert says in done.output


def test_compare_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"sweep": []}))
    done = CliRunner().invoke(cli, ["bench", "compare", str(tmp_path / "x.json"),
                                    str(tmp_path / "x.json")])
    assert done.exit_code == 1
    assert "is not the result of one `qinfra bench` run" in done.output
