"""The gate's answers pass without a model: the prompt-set format, what counts as a right answer,
flips and the paired accuracy difference with its interval, and the bars on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from qinfra.core.errors import SpecError
from qinfra.core.formats import Format
from qinfra.quality.gate import judged_reasons
from qinfra.quality.gate_answers import (
    Answered,
    PromptItem,
    is_right,
    judge_answers,
    paired_difference,
    read_prompt_set,
)
from qinfra.quality.gate_online import read_prompts, shipped_prompts
from qinfra.quality.gate_thresholds import thresholds_for


def test_the_shipped_set_carries_checkable_answers() -> None:
    items = read_prompt_set(shipped_prompts())
    assert len(items) == 24 and len(read_prompts(shipped_prompts())) == 24
    checkable = {i.prompt: i.accepted for i in items if i.checkable}
    assert len(checkable) >= 15
    assert "Paris" in checkable["What is the capital of France?"]
    assert "144" in checkable["What is 12 multiplied by 12?"]
    assert "Au" in checkable["What is the chemical symbol for gold?"]


def test_a_user_file_with_and_without_answers(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("# my prompts\nCapital of Italy? => Rome | Roma\n\nSay hello.\n")
    assert read_prompt_set(path) == [PromptItem("Capital of Italy?", ("Rome", "Roma")),
                                     PromptItem("Say hello.")]
    path.write_text("Capital of Italy? =>\n")
    with pytest.raises(SpecError, match=r"mine\.txt:1: '=>' with no accepted answer"):
        read_prompt_set(path)
    path.write_text("# only a comment\n")
    with pytest.raises(SpecError, match="holds no prompts"):
        read_prompt_set(path)


@pytest.mark.parametrize(
    ("text", "accepted", "right"),
    [
        ("The capital of France is Paris.", ("Paris",), True),
        # whole words only: "Au" is not in "Australia"
        ("Australia.", ("Au",), False),
        ("The symbol is Au.", ("Au",), True),
        # numbers beside units and punctuation
        ("12 x 12 = 144.", ("144",), True),
        ("It boils at 100°C.", ("100",), True),
        ("1440", ("144",), False),
        # phrases across punctuation and case, accents kept
        ("¡Buenos días!", ("buenos días",), True),
        ("Plants take in carbon-dioxide.", ("carbon dioxide",), True),
        # a looping answer that never says it
        ("L'Alberle, la femme, la femme, la femme", ("Paris",), False),
    ],
)
def test_right_answers(text: str, accepted: tuple[str, ...], right: bool) -> None:
    assert is_right(text, accepted) is right


def test_paired_difference_and_its_interval() -> None:
    # no flips: no difference and no spread
    assert paired_difference(0, 0, 20) == (0.0, (0.0, 0.0))
    # 4 right -> wrong, 1 wrong -> right of 20: -0.15, interval around it, inside -1..1
    diff, (lo, hi) = paired_difference(4, 1, 20)  # type: ignore[misc]
    assert diff == pytest.approx(-0.15) and lo < -0.15 < hi and lo >= -1 and hi <= 1
    # Wald: se = sqrt(5 - 9/20) / 20
    assert hi - diff == pytest.approx(1.959964 * (5 - 9 / 20) ** 0.5 / 20)
    assert paired_difference(0, 0, 0) is None


def _answers(*texts: str) -> list[Answered]:
    return [Answered(t, len(t.split())) for t in texts]


def test_judged_figures_flips_and_signals() -> None:
    items = [PromptItem("Capital of France?", ("Paris",)), PromptItem("12 x 12?", ("144",)),
             PromptItem("Gold?", ("Au",)), PromptItem("Say something.")]
    base = _answers("Paris.", "It is 144.", "Silver.", "Hello there.")
    quant = _answers("la femme, la femme, la femme, la femme, la femme", "144", "Au!",
                     "I cannot help with that.")
    m = judge_answers(items, base, quant, 64)
    assert (m.baseline.right, m.quantized.right, m.baseline.checkable) == (2, 2, 3)
    assert (m.right_to_wrong, m.wrong_to_right) == (1, 1)
    assert m.accuracy_diff == 0.0 and m.accuracy_diff_ci95 is not None
    assert (m.baseline.loops, m.quantized.loops, m.unexpected_refusals) == (0, 1, 1)
    assert m.judged() == {"accuracy_drop": -0.0, "loop_excess": 0.25,
                          "unexpected_refusal_rate": 0.25}
    assert m.quantized.mean_tokens == pytest.approx((10 + 1 + 1 + 5) / 4)
    assert m.answers[0]["baseline_right"] and not m.answers[0]["quantized_right"]


def test_an_answers_bar_names_the_figure_the_bar_and_the_counts() -> None:
    items = [PromptItem(f"q{i}", ("yes",)) for i in range(10)]
    base = _answers(*["yes"] * 10)
    quant = _answers(*["yes"] * 5, *["no"] * 5)
    m = judge_answers(items, base, quant, 64)
    reasons = judged_reasons(thresholds_for(Format.GGUF_Q8_0), m.judged(), m)
    counts = ": right: baseline 10/10, quantized 5/10; 5 right -> wrong, 0 wrong -> right"
    assert any(r.startswith("answers: accuracy_drop 0.5 > ") and "family w8" in r
               and r.endswith(counts) for r in reasons), reasons
