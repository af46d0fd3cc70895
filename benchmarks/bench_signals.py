"""The router's per-answer cost of the output signals (repetition loop, refusal): the work the
router already does on every completed answer (parse the body into a Tally, record its metrics)
with the signals off and on, in the same process, interleaved, for short, long and looping answers.

Run: .venv/bin/python benchmarks/bench_signals.py [--rounds 2000]
Prints microseconds per answer without and with the signals and their ratio; the detectors read
at most the last 256 words and the first 300 characters, so the cost must not grow with length.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qinfra.serving.router.metrics as metrics_module  # noqa: E402
from qinfra.core.spec import Variant  # noqa: E402
from qinfra.serving.router.metrics import RouterMetrics  # noqa: E402
from qinfra.serving.router.tally import Tally  # noqa: E402

SENTENCE = "The capital of France is Paris, a city on the Seine. "
CASES = {
    "short answer (~32 tokens)": SENTENCE * 2,
    "long answer (~2,000 tokens)": " ".join(f"word{i}" for i in range(2000)),
    "looping answer (~2,000 tokens)": "la femme, " * 700,
}


def body(text: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"content": text}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split())}}).encode()


def per_answer_us(raw: bytes, metrics: RouterMetrics, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        tally = Tally()
        tally.read_body(raw)
        metrics.completed(Variant.QUANTIZED, tally, 0.0, 0.1)
    return (time.perf_counter() - start) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    real = (metrics_module.has_loop, metrics_module.is_refusal)
    off = (lambda _text: False, lambda _text: False)
    metrics = RouterMetrics()
    print(f"{'answer':34} {'without us':>11} {'with us':>9} {'ratio':>6}")
    for name, text in CASES.items():
        raw = body(text)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):  # interleaved, so drift hits both sides alike
            for on in (False, True):
                metrics_module.has_loop, metrics_module.is_refusal = real if on else off
                times[on].append(per_answer_us(raw, metrics, args.rounds))
        metrics_module.has_loop, metrics_module.is_refusal = real
        without, with_ = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name:34} {without:11.1f} {with_:9.1f} {with_ / without:6.2f}x")


if __name__ == "__main__":
    main()
