"""The output signals a monitor can read from an answer without ground truth (the lesson's
"Monitoring Quantization Quality Drift in Production", shared/reference/lesson-deploying-
quantized-models.txt): a repetition loop, a refusal, and the length. The router counts them per
variant on every completed answer; the gate counts them on its prompts for both variants.

Both detectors read a bounded part of the answer (the last LOOP_WORDS words, the first
REFUSAL_CHARS characters), so their cost per answer does not grow with the answer.
"""

from __future__ import annotations

import re
from collections import Counter

# A loop is a 4-word sequence said LOOP_REPEATS times or more in the answer's tail. The lesson
# fires on a 4-gram said more than 4 times in answers of hundreds of words; answers here are
# often 32-64 tokens (the gate's, a router's short chat turns), so 4 times is enough. Measured on
# SmolLM2-135M's 64-token greedy answers to the gate's 24 prompts: 3 times also fired on natural
# restatements ("measures the temperature of a ... the temperature of a"), 4 times fires on
# "la femme, la femme, ..." and "the balcony of the balcony of ..." only.
LOOP_N = 4
LOOP_REPEATS = 4
# A looping model loops to max_tokens: the tail shows it. 256 words bound the work per answer.
LOOP_WORDS = 256
_WORD = re.compile(r"\w+")

# The lesson's refusal patterns, and the "I'm sorry, but I can't" / "As an AI" openings chat models
# use. Refusals open an answer, so only its start is read.
REFUSAL_CHARS = 300
_REFUSAL = re.compile(
    r"\bi (?:cannot|can't|can not|am unable to|won't|will not) (?:help|assist|answer|respond|"
    r"provide|comply|fulfil|fulfill)"
    r"|\bi (?:don't|do not) (?:feel comfortable|think it's appropriate)"
    r"|\bthis (?:request|question|topic) (?:is|seems) (?:inappropriate|harmful|dangerous)"
    r"|\bi must (?:decline|refuse)"
    r"|\bi'm (?:sorry|afraid),? (?:but )?i (?:can't|cannot|am unable)"
    r"|\bas an ai(?: language model)?,? i (?:cannot|can't|am not able|don't)")


def has_loop(text: str) -> bool:
    """True when some 4-word sequence occurs LOOP_REPEATS times in the answer's last LOOP_WORDS
    words (case and punctuation ignored)."""
    words = _WORD.findall(text[-LOOP_WORDS * 12:].casefold())[-LOOP_WORDS:]
    if len(words) < LOOP_N + LOOP_REPEATS - 1:  # the fewest words that can say one 4-gram 4 times
        return False
    grams = Counter(zip(*(words[i:] for i in range(LOOP_N)), strict=False))
    return max(grams.values()) >= LOOP_REPEATS


def is_refusal(text: str) -> bool:
    """True when the answer opens like a refusal (the lesson's phrases and their kin)."""
    return _REFUSAL.search(text[:REFUSAL_CHARS].casefold().replace("\u2019", "'")) is not None


def unexpected_refusal(answer: str, baseline_answer: str) -> bool:
    """A refusal where the baseline, asked the same prompt, did not refuse."""
    return is_refusal(answer) and not is_refusal(baseline_answer)
