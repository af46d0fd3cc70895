"""The engine and target registries cover every Engine and Target, each layer's table keyed by
the enum it names, so a new member without its rows fails here instead of with a KeyError deep
in a plan, a render or a deployment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from qinfra.core.engines import ENGINES, Engine
from qinfra.core.formats import Format, default_engine, engine_loads, format_info
from qinfra.core.spec import Target
from qinfra.deploy.targets.registry import TARGETS as DEPLOY_TARGETS
from qinfra.planning.engines import PLANNERS
from qinfra.planning.targets import TARGET_PLANS
from qinfra.quality.allocation import ACTUALS
from qinfra.serving.engines import LAUNCHES
from qinfra.serving.render import TARGETS as RENDER_TARGETS
from qinfra.serving.render import templates_dir

ENGINE_TABLES: dict[str, Mapping[Engine, Any]] = {
    "core/engines.py ENGINES": ENGINES,
    "planning/engines.py PLANNERS": PLANNERS,
    "serving/engines.py LAUNCHES": LAUNCHES,
    "quality/allocation.py ACTUALS": ACTUALS,
}
TARGET_TABLES: dict[str, Mapping[Target, Any]] = {
    "planning/targets.py TARGET_PLANS": TARGET_PLANS,
    "serving/render.py TARGETS": RENDER_TARGETS,
    "deploy/targets/registry.py TARGETS": DEPLOY_TARGETS,
}


@pytest.mark.parametrize("table", ENGINE_TABLES, ids=str)
def test_every_engine_has_a_row(table: str) -> None:
    assert set(ENGINE_TABLES[table]) == set(Engine), table


@pytest.mark.parametrize("table", TARGET_TABLES, ids=str)
def test_every_target_has_a_row(table: str) -> None:
    assert set(TARGET_TABLES[table]) == set(Target), table


@pytest.mark.parametrize("engine", list(Engine), ids=str)
def test_engine_rows_name_their_key(engine: Engine) -> None:
    # a row copied from another engine and left with its name would plan or launch the wrong one
    assert ENGINES[engine].engine is engine
    assert PLANNERS[engine].engine is engine
    assert LAUNCHES[engine].engine is engine


@pytest.mark.parametrize("engine", list(Engine), ids=str)
def test_engine_launch_template_ships(engine: Engine) -> None:
    assert (templates_dir() / LAUNCHES[engine].template).is_file()


@pytest.mark.parametrize("target", list(Target), ids=str)
def test_target_rows_name_their_key_and_templates(target: Target) -> None:
    assert TARGET_PLANS[target].target is target
    assert (templates_dir() / RENDER_TARGETS[target].scrape.template).is_file()


@pytest.mark.parametrize("fmt", list(Format), ids=str)
def test_the_default_engine_loads_its_format(fmt: Format) -> None:
    # `qinfra plan --format F` without --engine: llama.cpp for gguf-*, else vLLM, as --help says
    assert engine_loads(default_engine(fmt), fmt)
    assert default_engine(fmt) is (Engine.LLAMA_CPP if format_info(fmt).is_gguf else Engine.VLLM)
