"""Round-trip edits of stack files: the change and nothing else, written atomically."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from qinfra.core.errors import SpecError
from qinfra.core.spec import Stage, load_stack
from qinfra.deploy.stackfile import update_stack_file

ROOT = Path(__file__).resolve().parents[1]

# A stack file in the styles people write: comments everywhere, quotes, flow and block lists.
STYLED = """\
# Production stack: reviewed in pull requests.
config:
  aws:region: "us-east-1"          # quoted on purpose
  qinfra:model:
    id: 'meta-llama/Llama-3.1-8B-Instruct'
  qinfra:variants:
    baseline:                         # bf16 | fp16 | gguf-f16
      format: bf16
      artifact: s3://acme/llama/sha256-old/    # pinned by `qinfra artifacts push`
    quantized:
      format: awq   # AWQ int4
  # How it is served

  qinfra:fleet:
    gpus: [l4, a10g]
    zones:
    - us-east-1a
    - us-east-1b
  qinfra:rollout:
    stage: ab_test
    quantized_percent: 10
# end of stack
"""


@pytest.fixture
def styled(tmp_path: Path) -> Path:
    path = tmp_path / "Pulumi.styled.yaml"
    path.write_text(STYLED)
    return path


def _changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    old, new = before.splitlines(), after.splitlines()
    return [line for line in old if line not in new], [line for line in new if line not in old]


@pytest.mark.parametrize("stack", sorted(p.name for p in (ROOT / "stacks").glob("Pulumi.*.yaml")))
def test_shipped_stacks_round_trip_byte_for_byte(stack: str, tmp_path: Path) -> None:
    path = tmp_path / stack
    path.write_text((ROOT / "stacks" / stack).read_text())
    assert update_stack_file(path, {}) == ""
    assert path.read_text() == (ROOT / "stacks" / stack).read_text()


def test_styled_file_round_trips_byte_for_byte(styled: Path) -> None:
    assert update_stack_file(styled, {"qinfra:rollout.stage": "ab_test"}) == ""
    assert styled.read_text() == STYLED


def test_pin_new_artifact_after_commented_key(styled: Path) -> None:
    diff = update_stack_file(styled, {"qinfra:variants.quantized.artifact": "s3://acme/q/"})
    assert diff.splitlines()[:2] == ["--- a/Pulumi.styled.yaml", "+++ b/Pulumi.styled.yaml"]
    assert [line for line in diff.splitlines()[3:] if line[:1] in "+-"] == [
        "+      artifact: s3://acme/q/"
    ]
    lines = styled.read_text().splitlines()
    at = lines.index("      format: awq   # AWQ int4")
    # The new key sits inside `quantized`, above the comment that opened the next section.
    assert lines[at + 1 : at + 4] == ["      artifact: s3://acme/q/", "  # How it is served", ""]


def test_replace_keeps_end_of_line_comment(styled: Path) -> None:
    update_stack_file(styled, {"qinfra:variants.baseline.artifact": "s3://acme/llama/sha256-new/"})
    removed, added = _changed_lines(STYLED, styled.read_text())
    assert removed == [
        "      artifact: s3://acme/llama/sha256-old/    # pinned by `qinfra artifacts push`"
    ]
    assert added == [
        "      artifact: s3://acme/llama/sha256-new/    # pinned by `qinfra artifacts push`"
    ]


def test_rollback_is_a_two_line_change_of_a_valid_stack(stacks: Path) -> None:
    path = stacks / "Pulumi.prod.yaml"
    before = path.read_text()
    update_stack_file(
        path, {"qinfra:rollout.stage": "rollback", "qinfra:rollout.quantized_percent": 0}
    )
    removed, added = _changed_lines(before, path.read_text())
    assert (removed, added) == (
        ["    stage: ab_test", "    quantized_percent: 10"],
        ["    stage: rollback", "    quantized_percent: 0"],
    )
    assert load_stack("prod").rollout.stage is Stage.ROLLBACK


def test_add_and_remove_at_the_end_keep_the_closing_comment(styled: Path) -> None:
    update_stack_file(styled, {"qinfra:serving.engine": "vllm"})  # a new top-level key
    text = styled.read_text()
    assert text.endswith("  qinfra:serving:\n    engine: vllm\n# end of stack\n")
    update_stack_file(styled, {"qinfra:serving": None})
    assert styled.read_text() == STYLED


@pytest.mark.parametrize(
    ("updates", "expected"),
    [
        # a missing parent mapping is created
        ({"qinfra:serving.engine": "vllm"}, {"engine": "vllm"}),
        # removing a key that is not there changes nothing
        ({"qinfra:serving.port": None}, None),
        # non-string values keep their YAML type
        ({"qinfra:serving.port": 8080}, {"port": 8080}),
    ],
)
def test_values_land_where_the_dotted_path_says(
    styled: Path, updates: dict[str, object], expected: object
) -> None:
    update_stack_file(styled, updates)
    config = YAML(typ="safe").load(styled.read_text())["config"]
    assert config.get("qinfra:serving") == expected


def test_unchanged_file_is_not_rewritten(styled: Path) -> None:
    inode = styled.stat().st_ino
    assert update_stack_file(styled, {"qinfra:variants.quantized.format": "awq"}) == ""
    assert styled.stat().st_ino == inode


def test_write_is_atomic_and_keeps_mode(styled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    styled.chmod(0o640)
    update_stack_file(styled, {"qinfra:rollout.stage": "full"})
    assert stat.S_IMODE(styled.stat().st_mode) == 0o640
    before = styled.read_text()

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        update_stack_file(styled, {"qinfra:rollout.stage": "rollback"})
    assert styled.read_text() == before
    assert os.listdir(styled.parent) == [styled.name]  # no temporary file left behind


@pytest.mark.parametrize(
    ("text", "updates", "message"),
    [
        # a path through a scalar
        (STYLED, {"qinfra:rollout.stage.x": 1}, "qinfra:rollout.stage holds 'ab_test'"),
        # not YAML at all
        ("config: [unclosed\n", {"a:b": 1}, "is not valid YAML"),
        # YAML, but not a stack file
        ("- just\n- a list\n", {"a:b": 1}, "expected a top-level 'config:' mapping"),
    ],
)
def test_errors_name_the_file_and_problem(
    tmp_path: Path, text: str, updates: dict[str, object], message: str
) -> None:
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message):
        update_stack_file(path, updates)
    assert path.read_text() == text


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read stack file"):
        update_stack_file(tmp_path / "Pulumi.none.yaml", {"qinfra:x": 1})


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40))
def test_any_string_round_trips_and_touches_one_key(tmp_path: Path, value: str) -> None:
    path = tmp_path / "Pulumi.h.yaml"
    path.write_text(STYLED)
    update_stack_file(path, {"qinfra:variants.quantized.artifact": value})
    config = YAML(typ="safe").load(path.read_text())["config"]
    expected = YAML(typ="safe").load(STYLED)["config"]
    expected["qinfra:variants"]["quantized"]["artifact"] = value
    assert config == expected
