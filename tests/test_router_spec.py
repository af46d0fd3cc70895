"""The `qinfra:router` section: validated like every other key, and mapped onto the router's own
config (weights from the rollout, an engine per variant that takes traffic)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from qinfra.core.errors import SpecError
from qinfra.core.spec import Variant, parse_config
from qinfra.deploy.targets.router_process import config_props, router_config, tell_router
from qinfra.serving.router.config import parse_config as parse_router_config
from tests.render_helpers import load_yaml

ROOT = Path(__file__).resolve().parents[1]


def local_config() -> dict:
    return load_yaml((ROOT / "stacks" / "Pulumi.local.yaml").read_text())["config"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("key_header", "X Qinfra", "must be a header or cookie name"),  # a space is no token
        ("salt", "", "at least 1 character"),
        ("shadow_percent", 150, "less than or equal to 100"),
        ("shadow_percent", 0.125, "at most two decimals"),
        ("max_in_flight", 0, "greater than or equal to 1"),
        ("max_in_flight", True, "a whole number"),  # YAML true is not 1
        ("read_timeout_s", 0, "greater than 0"),
        ("salts", "x", "unknown key"),
    ],
)
def test_bad_router_settings_name_key_value_and_rule(key, value, message):
    cfg = copy.deepcopy(local_config())
    cfg["qinfra:router"][key] = value
    with pytest.raises(SpecError) as err:
        parse_config(cfg, "local")
    assert f"qinfra:router.{key}: " in err.value.message and message in err.value.message


@pytest.mark.parametrize(
    ("stage", "percent", "replicas"),
    [
        ("ab_test", 50, {"baseline", "quantized"}),
        ("rollback", 0, {"baseline"}),  # a variant at 0% has no replicas in the router
        ("baseline_only", 0, {"baseline"}),
        ("full", 100, {"quantized"}),
    ],
)
def test_router_config_follows_the_rollout(stage, percent, replicas):
    cfg = copy.deepcopy(local_config())
    cfg["qinfra:rollout"] = {"stage": stage, "quantized_percent": percent}
    cfg["qinfra:router"]["shadow_percent"] = 5
    spec = parse_config(cfg, "local")
    config = router_config(spec)
    assert config.quantized_percent == percent
    assert {v.value for v, urls in config.replicas.items() if urls} == replicas
    for variant in config.replicas:
        assert config.replicas[variant] == (f"http://127.0.0.1:{spec.serving.local_port(variant)}",)
    assert config.shadow_percent == (5 if Variant.QUANTIZED in config.replicas else 0)
    assert config.salt == "qinfra-local" and config.key_header == "X-Qinfra-User"
    assert parse_router_config(config_props(spec)) == config  # the state's mapping reads back


def test_ports_router_first_then_engines():
    spec = parse_config(local_config(), "local")
    assert list(spec.ports()) == [8080, 8081, 8082]
    assert [spec.serving.local_port(v) for v in Variant] == [8081, 8082]


def test_tell_router_writes_nothing_without_a_running_router(tmp_path):
    spec = parse_config(local_config(), "local")
    assert tell_router(spec, tmp_path) is False
    assert not list(tmp_path.rglob("*"))
