"""Pure parts around the engine: error classification, backend choice, rollout stages, history
rows and the preview report (including the PR-comment size limit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qinfra.core import modelinfo
from qinfra.deploy.engine import BACKEND_ENV, Change, Engine, HistoryEntry, Project, classify
from qinfra.core.errors import SpecError
from qinfra.core.hardware import catalog
from qinfra.deploy.history import entries
from qinfra.deploy.preview import MARKDOWN_LIMIT, build_report, to_markdown
from qinfra.deploy.rollout import rollback, rollout
from qinfra.planning.sizing import plan_stack
from qinfra.core.spec import Stage, load_stack


def test_classify_maps_a_lock_to_an_actionable_error(tmp_path):
    text = ("error: the stack is currently locked by 1 lock(s). Either wait for the other "
            "process(es) to end or delete the lock file with `pulumi cancel`.\n  file://x: "
            "created by alice@host (pid 42) at 2026-11-27T05:00:00Z")
    err = classify(text, tmp_path / "log")
    assert "pid 42" in err.format_message() and "pulumi cancel" in err.format_message()
    assert str(tmp_path / "log") in err.format_message()


def test_classify_unknown_failure_keeps_the_last_lines():
    err = classify("\n".join(f"line {i}" for i in range(40)), None)
    assert "line 39" in err.format_message() and "line 10" not in err.format_message()


@pytest.mark.parametrize(
    ("env", "stack_setting", "expected"),
    [
        (None, None, "file:///p/.qinfra/state"),  # the project's own state folder
        (None, "s3://team-state/qinfra", "s3://team-state/qinfra"),  # qinfra:backend
        ("s3://from-env", "s3://team-state/qinfra", "s3://from-env"),  # the environment wins
    ],
)
def test_backend_choice(monkeypatch, env, stack_setting, expected):
    if env is None:
        monkeypatch.delenv(BACKEND_ENV, raising=False)
    else:
        monkeypatch.setenv(BACKEND_ENV, env)
    engine = Engine("prod", project=Project(Path("/p")), backend=stack_setting)
    assert engine.env()[BACKEND_ENV] == expected


def test_backend_setting_is_validated(stacks):
    path = stacks / "Pulumi.prod.yaml"
    path.write_text(path.read_text() + "  qinfra:backend: gs://nope\n")
    with pytest.raises(SpecError, match=r"qinfra:backend: got 'gs://nope'"):
        load_stack("prod")


@pytest.mark.parametrize(
    ("current", "percent", "stage", "expected"),
    [
        (Stage.ROLLBACK, 10, None, (Stage.AB_TEST, 10)),  # back out of a rollback: A/B first
        (Stage.AB_TEST, 30, None, (Stage.AB_TEST, 30)),
        (Stage.GRADUAL, 60, None, (Stage.GRADUAL, 60)),
        (Stage.AB_TEST, 60, Stage.GRADUAL, (Stage.GRADUAL, 60)),
        (Stage.GRADUAL, 100, None, (Stage.FULL, 100)),
        (Stage.FULL, 0, None, (Stage.BASELINE_ONLY, 0)),
    ],
)
def test_rollout_stages(stacks, current, percent, stage, expected):
    spec = load_stack("prod")
    spec = spec.model_copy(update={"rollout": spec.rollout.model_copy(
        update={"stage": current, "quantized_percent": 0 if current is Stage.ROLLBACK else 50})})
    edit = rollout(spec, percent, stage)
    assert (edit.stage, edit.quantized_percent) == expected


def test_rollout_refuses_a_stage_that_contradicts_the_percent(stacks):
    with pytest.raises(SpecError, match="does not go with 100%"):
        rollout(load_stack("prod"), 100, Stage.AB_TEST)


def test_rollback_is_two_keys():
    assert rollback().updates() == {"qinfra:rollout.stage": "rollback",
                                    "qinfra:rollout.quantized_percent": 0}


def test_history_rows_read_stage_weights_and_artifacts():
    config = {
        "qinfra:rollout": json.dumps({"stage": "gradual", "quantized_percent": 25}),
        "qinfra:variants": json.dumps({"baseline": {"format": "bf16", "artifact": "s3://b/sha256-1/"},
                                       "quantized": {"format": "awq", "artifact": "s3://b/sha256-2/"}}),
    }
    rows = entries("prod", [HistoryEntry(3, "update", "succeeded", "t0", "t1", config, {"update": 2})])
    assert rows[0]["stage"] == "gradual"
    assert rows[0]["weights"] == {"baseline": 75, "quantized": 25}
    assert rows[0]["artifacts"] == {"baseline": "s3://b/sha256-1/", "quantized": "s3://b/sha256-2/"}


def _plans(reference_models: Path, stacks: Path):
    spec = load_stack("prod")
    spec = spec.model_copy(update={"model": spec.model.model_copy(
        update={"id": str(reference_models / "llama-3.1-8b")})})
    info = modelinfo.load(spec.model.id)
    after_spec = spec.model_copy(update={"rollout": spec.rollout.model_copy(
        update={"stage": Stage.ROLLBACK, "quantized_percent": 0})})
    return spec.name, plan_stack(spec, info, catalog()), plan_stack(after_spec, info, catalog())


def test_report_shows_script_lines_that_changed_and_the_plan_delta(reference_models, stacks):
    name, before, after = _plans(reference_models, stacks)
    change = Change("update", "urn:x::srv", "pulumi-python:dynamic/qinfra:LlamaServer", "srv",
                    ("server_sh",), {"server_sh": "a\n--threads 2\nb\n"},
                    {"server_sh": "a\n--threads 1\nb\n"})
    report = build_report(name, [change], {"update": 1, "same": 4}, before, after)
    assert report.summary == {"update": 1}
    prop = report.resources[0].properties[0]
    assert (prop.key, prop.old, prop.new) == ("server_sh", "--threads 2", "--threads 1")
    quantized = next(v for v in report.variants if v.variant == "quantized")
    assert quantized.before["engines"] > 0 and quantized.after["engines"] == 0
    assert report.usd_per_hour_after < report.usd_per_hour_before
    text = to_markdown(report)
    assert "--threads 1" in text and "→ 0" in text


def test_markdown_stays_under_the_comment_limit(reference_models, stacks):
    name, before, after = _plans(reference_models, stacks)
    big = "x" * 2000
    changes = [Change("update", f"urn:x::r{i}", "t", f"r{i}", ("script",),
                      {"script": f"{big}\n{i}"}, {"script": f"{big}\n{i + 1}"}) for i in range(3000)]
    text = to_markdown(build_report(name, changes, {"update": 3000}, before, after))
    assert len(text) <= MARKDOWN_LIMIT < 65_536
    assert "summarised" in text or "resources changed" in text
