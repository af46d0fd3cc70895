"""The output-signal detectors the router and the gate share (qinfra/serving/router/signals.py):
what counts as a loop and as a refusal, and that their cost per answer is bounded."""

from __future__ import annotations

import time

import pytest

from qinfra.serving.router.signals import LOOP_WORDS, has_loop, is_refusal, unexpected_refusal


@pytest.mark.parametrize(
    ("text", "loop"),
    [
        # the first screen: Q4_K_M looping in French (its 64-token answer)
        ("L'Alberle, la femme, le monde, le monde, la femme, la femme, la femme, la femme, "
         "la femme, la femme, la femme, la femme, la femme, la femme, la femme,", True),
        # the same answer cut at 16 words: not yet four times
        ("L'Alberle, la femme, le monde, le monde, la femme, la femme, la femme, la fem", False),
        # one word over and over
        ("the the the the the the the the the the", True),
        # a sentence said again and again, cut at max_tokens
        ("Paris is the capital of France. " * 3 + "Paris is the capital", True),
        # a restatement, three times: repetitive prose, not a loop
        ("A thermometer measures the temperature of a room, the temperature of a liquid and the "
         "temperature of a gas.", False),
        # a plain right answer
        ("The capital of France is Paris.", False),
        # a list of distinct items with repeated glue words
        ("Red, blue and yellow; cyan, magenta and yellow; red, green and blue.", False),
        # a phrase said twice is emphasis, not a loop
        ("Very good, very good indeed: the sea is wide and the sea is deep.", False),
        # empty
        ("", False),
    ],
)
def test_loops(text: str, loop: bool) -> None:
    assert has_loop(text) is loop


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        # the lesson's patterns
        ("I cannot help with that.", True),
        ("I must decline to answer.", True),
        ("This request is inappropriate.", True),
        # the common chat-model openings, with a typographic apostrophe
        ("I\u2019m sorry, but I can\u2019t assist with that request.", True),
        ("As an AI language model, I cannot browse the web.", True),
        # answers that merely mention help or sorrow
        ("I can help: the answer is 144.", False),
        ("Sorry to hear that! Paris is the capital.", False),
        # a refusal buried after 300 characters is an answer that quotes one
        ("x" * 400 + " I cannot help with that.", False),
    ],
)
def test_refusals(text: str, refusal: bool) -> None:
    assert is_refusal(text) is refusal


def test_a_refusal_is_unexpected_only_where_the_baseline_answered() -> None:
    refuse, answer = "I cannot answer that.", "Paris."
    assert unexpected_refusal(refuse, answer)
    assert not unexpected_refusal(refuse, "I can't help with that, sorry.")
    assert not unexpected_refusal(answer, refuse)


def test_cost_per_answer_is_bounded_by_the_tail() -> None:
    """A 100x longer answer costs about the same: only the tail and the opening are read."""
    short = "word " * LOOP_WORDS
    long = "word " * (LOOP_WORDS * 100)

    def cost(text: str) -> float:
        start = time.perf_counter()
        for _ in range(50):
            has_loop(text)
            is_refusal(text)
        return time.perf_counter() - start

    cost(short)  # warm up the regexes
    assert cost(long) < 5 * cost(short) + 0.01
