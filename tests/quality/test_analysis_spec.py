"""qinfra:analysis and qinfra:rollout.steps as users write them: defaults, and errors that name
the key, the value and what is allowed; the local target's Prometheus port after the engines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from qinfra.core.errors import SpecError
from qinfra.core.spec import parse_config

ROOT = Path(__file__).resolve().parents[2]


def _config(**extra: Any) -> dict[str, Any]:
    config = YAML(typ="safe").load((ROOT / "stacks" / "Pulumi.local.yaml").read_text())["config"]
    config.update(extra)
    return config


def test_defaults_and_the_local_prometheus():
    spec = parse_config(_config(**{"qinfra:analysis": {}}), "local")
    assert spec.rollout.steps == [5, 25, 50, 100]
    assert spec.analysis is not None and spec.analysis.min_requests == 100
    assert spec.analysis.failure_limit == 0 and spec.analysis.error_limit == 4
    # router 8080, engines 8081-8082, Prometheus 8083
    assert list(spec.ports()) == [8080, 8081, 8082, 8083]
    assert spec.prometheus_url() == "http://127.0.0.1:8083"


def test_no_analysis_runs_no_prometheus():
    spec = parse_config(_config(), "local")
    assert spec.analysis is None and spec.prometheus_url() is None
    assert list(spec.ports()) == [8080, 8081, 8082]


def test_a_named_prometheus_is_used_and_none_is_run():
    spec = parse_config(_config(**{"qinfra:analysis": {
        "prometheus_url": "http://prometheus.monitoring:9090/"}}), "local")
    assert spec.prometheus_url() == "http://prometheus.monitoring:9090"
    assert not spec.local_prometheus() and len(spec.ports()) == 3


@pytest.mark.parametrize(("key", "value", "message"), [
    # steps must rise and end at 100
    ("qinfra:rollout", {"stage": "ab_test", "quantized_percent": 50, "steps": [50, 25, 100]},
     "qinfra:rollout.steps: got [50, 25, 100]; steps must rise"),
    ("qinfra:rollout", {"stage": "ab_test", "quantized_percent": 50, "steps": [5, 50]},
     "the last step must be 100"),
    ("qinfra:rollout", {"stage": "ab_test", "quantized_percent": 50, "steps": [0, 100]},
     "qinfra:rollout.steps[0]: got 0"),
    # a check's unknown key and a bound
    ("qinfra:analysis", {"checks": {"error_rate": {"alfa": 0.05}}},
     "qinfra:analysis.checks.error_rate.alfa: unknown key"),
    ("qinfra:analysis", {"checks": {"error_rate": {"alpha": 0.7}}},
     "qinfra:analysis.checks.error_rate.alpha: got 0.7"),
    ("qinfra:analysis", {"min_requests": 0}, "qinfra:analysis.min_requests: got 0"),
    ("qinfra:analysis", {"interval_s": True}, "qinfra:analysis.interval_s: got True"),
    ("qinfra:analysis", {"prometheus_url": "prometheus:9090"},
     "qinfra:analysis.prometheus_url: got 'prometheus:9090'; must be an http:// or https://"),
])
def test_errors_name_the_key_and_the_rule(key, value, message):
    with pytest.raises(SpecError) as caught:
        parse_config(_config(**{key: value}), "local")
    assert message in str(caught.value)
