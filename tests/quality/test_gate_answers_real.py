"""The gate's answers pass on the real SmolLM2 model through `qinfra gate`: per variant accuracy,
loops, refusals and mean tokens in the JSON, flips between them; a Q8_0 file that forgot a few
facts (its answer words' embedding rows overwritten: text the KLD reads never uses them) passes
every KLD bar and is refused on its answers; a user's own prompt file with answers is used."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from qinfra.cli.gate import gate
from qinfra.serving.llamacpp import quantize
from tests.quality.gate_models import gate_cache, smollm2_models  # noqa: F401  (fixtures)

pytestmark = pytest.mark.real

# Answer words of the shipped prompts the baseline gets right, none of them in the KLD text.
FORGOTTEN = ("Paris", "Jupiter", "Shakespeare", "green", "Green", "lion", "Lion", "Portuguese",
             "temperature", "worm", "modern")
RARE_TOKEN = 48000  # any token the text never needs: its row replaces the forgotten ones


def _forgetful_q8(f16: Path, folder: Path) -> Path:
    """A Q8_0 made from an F16 whose answer words' token rows were overwritten (SmolLM2 ties
    input and output embeddings: the model can neither read nor say those words)."""
    from gguf import GGUFReader

    broken = folder / "forgets-F16.gguf"
    shutil.copy(f16, broken)
    reader = GGUFReader(str(broken), "r+")
    field = reader.fields["tokenizer.ggml.tokens"]
    vocab = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
    ids = [i for i, t in enumerate(vocab) if t.removeprefix("\u0120") in FORGOTTEN]
    assert len(ids) >= len(FORGOTTEN), ids
    embeddings = next(t for t in reader.tensors if t.name == "token_embd.weight")
    embeddings.data[ids] = embeddings.data[RARE_TOKEN]
    del reader
    out = folder / "forgets-Q8_0.gguf"
    quantize(broken, out, "Q8_0")
    return out


def _gate(baseline: Path, quantized: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(gate, ["--baseline", str(baseline), "--quantized",
                                       str(quantized), "--json", *extra])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture(scope="module")
def cache_env(gate_cache: Path):  # noqa: F811
    mp = pytest.MonkeyPatch()
    mp.setenv("QINFRA_CACHE_DIR", str(gate_cache))
    yield
    mp.undo()


def test_a_variant_that_forgot_facts_passes_kld_and_fails_on_its_answers(
        smollm2_models: Callable[[str], Path], tmp_path: Path, cache_env: None) -> None:  # noqa: F811
    bad = _forgetful_q8(smollm2_models("F16"), tmp_path)
    code, doc = _gate(smollm2_models("F16"), bad)
    assert (code, doc["verdict"]) == (1, "fail")
    # the drift bars hold: KLD over the text cannot see the forgotten words
    kld_bars = doc["thresholds"]["expected"]
    assert doc["metrics"]["mean_kld"] <= kld_bars["mean_kld_max"]
    assert doc["metrics"]["same_top_p"] >= kld_bars["same_top_min"]
    assert not any(r.startswith(("mean_kld", "same_top_p", "ppl_ratio")) for r in doc["reasons"])
    # the answers do not: the reason names the figure, the bar and the counts
    assert any(r.startswith("answers: accuracy_drop ") and "family w8" in r and "right -> wrong" in r
               for r in doc["reasons"]), doc["reasons"]
    for side in ("baseline", "quantized"):
        assert {"accuracy", "loops", "refusals", "mean_tokens"} <= set(doc[side])
    assert doc["quantized"]["accuracy"] < doc["baseline"]["accuracy"]
    assert doc["flips"]["right_to_wrong"] > doc["flips"]["wrong_to_right"]
    low, high = doc["flips"]["accuracy_diff_ci95"]
    assert low <= doc["flips"]["accuracy_diff"] <= high


def test_a_healthy_q8_passes_with_its_answers_reported(
        smollm2_models: Callable[[str], Path], cache_env: None) -> None:  # noqa: F811
    code, doc = _gate(smollm2_models("F16"), smollm2_models("Q8_0"))
    assert (code, doc["verdict"], doc["reasons"]) == (0, "pass", [])
    answers = doc["metrics"]["answers"]
    assert answers["prompts"] == 24 and answers["baseline"]["checkable"] >= 15
    assert 0 < doc["baseline"]["mean_tokens"] <= answers["max_tokens"]
    # every answer is kept as evidence, with its judgements
    assert all({"baseline", "quantized", "baseline_loop"} <= set(row) for row in answers["answers"])


def test_a_users_prompt_file_with_answers(smollm2_models: Callable[[str], Path], tmp_path: Path,  # noqa: F811
                                          cache_env: None) -> None:
    mine = tmp_path / "mine.txt"
    mine.write_text("What is the capital of France? => Paris\nSay hello.\n")
    _, doc = _gate(smollm2_models("F16"), smollm2_models("Q8_0"), "--prompts", str(mine))
    answers = doc["metrics"]["answers"]
    assert answers["prompts"] == 2 and answers["baseline"]["checkable"] == 1
    assert [row["prompt"] for row in answers["answers"]] == ["What is the capital of France?",
                                                              "Say hello."]
