"""A run's summary under the key names of `vllm bench serve`'s result file, so tools that read
vLLM's results read these; qinfra's own keys (goodput, target, variant, seed, cost, client)
sit beside them.

vLLM's keys (benchmarks/benchmark_serving.py, `vllm bench serve --save-result`): `duration`,
`completed`, `total_input_tokens`, `total_output_tokens`, `request_throughput`,
`request_goodput`, `output_throughput`, `total_token_throughput`, `{mean,median,std,pNN}_
{ttft,tpot,itl,e2el}_ms`, and the per-request arrays `input_lens`, `output_lens`, `ttfts`,
`itls`, `errors` (seconds). qinfra adds `failed`, `tpots` and `e2els` (seconds), which
`qinfra bench compare` resamples, `sent_s` (when each request left, from the start) and the
server's own `server_prompt_ms`/`server_predicted_ms` where it reports them (llama-server).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qinfra.core.errors import SpecError
from qinfra.quality.bench_client import RequestResult

PERCENTILES = (90, 95, 99)
LATENCIES = ("ttft", "tpot", "itl", "e2el")
# The client limited a run when its event loop (one thread) kept a core this busy ...
CLIENT_CPU_LIMIT = 0.9
# ... or when open-loop sends left this much later than scheduled (p99): 2 ms, or a quarter of
# the mean gap between arrivals when that is longer.
CLIENT_LAG_FLOOR_S = 0.002
CLIENT_LAG_GAP_SHARE = 0.25


@dataclass(frozen=True)
class Slo:
    """Limits a request must meet to count towards goodput (ms); None: not limited."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def met(self, r: RequestResult) -> bool:
        tpot = r.tpot_s
        return r.ok and all((
            self.ttft_ms is None or r.ttft_s * 1000 <= self.ttft_ms,
            self.tpot_ms is None or tpot is None or tpot * 1000 <= self.tpot_ms,
            self.e2el_ms is None or r.e2el_s * 1000 <= self.e2el_ms,
        ))

    def to_json(self) -> dict[str, float]:
        return {k: v for k, v in (("ttft_ms", self.ttft_ms), ("tpot_ms", self.tpot_ms),
                                  ("e2el_ms", self.e2el_ms)) if v is not None}


_SLO_PART = re.compile(r"^(ttft|tpot|e2el)=(\d+(?:\.\d+)?)(ms|s)$")


def parse_slo(text: str) -> Slo:
    """`ttft=200ms,tpot=50ms,e2el=2s` as typed on --slo; SpecError names the bad part."""
    limits: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _SLO_PART.match(part)
        if match is None:
            raise SpecError(f"--slo part {part!r} is not NAME=LIMIT. To fix: ttft, tpot or e2el "
                            "with ms or s, e.g. --slo ttft=200ms,tpot=50ms")
        value = float(match[2]) * (1000 if match[3] == "s" else 1)
        limits[f"{match[1]}_ms"] = value
    return Slo(**limits)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation (numpy's default, as vLLM computes it)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _describe(name: str, seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    out = {f"mean_{name}_ms": statistics.fmean(ms) if ms else 0.0,
           f"median_{name}_ms": percentile(ms, 50),
           f"std_{name}_ms": statistics.pstdev(ms) if ms else 0.0}
    out.update({f"p{q}_{name}_ms": percentile(ms, q) for q in PERCENTILES})
    return out


def client_report(results: Sequence[RequestResult], cpu_s: float, wall_s: float,
                  mean_gap_s: float | None) -> dict[str, Any]:
    """What the client cost and whether it, not the server, limited the run."""
    lags = [max(0.0, r.sent_s - r.scheduled_s) for r in results]
    lag_p99 = percentile(lags, 99) if mean_gap_s is not None else 0.0
    cpu_fraction = cpu_s / wall_s if wall_s > 0 else 0.0
    lag_limit = max(CLIENT_LAG_FLOOR_S, CLIENT_LAG_GAP_SHARE * (mean_gap_s or 0.0))
    why = []
    if cpu_fraction >= CLIENT_CPU_LIMIT:
        why.append(f"the client kept its core {cpu_fraction:.0%} busy")
    if mean_gap_s is not None and lag_p99 > lag_limit:
        why.append(f"requests left {lag_p99 * 1000:.1f} ms late (p99), over the "
                   f"{lag_limit * 1000:.1f} ms the arrival rate allows")
    return {
        "overhead_ms_per_request": (statistics.fmean(r.client_s for r in results) * 1000
                                    if results else 0.0),
        "cpu_fraction": round(cpu_fraction, 4),
        "schedule_lag_p99_ms": round(lag_p99 * 1000, 3),
        "limited": bool(why),
        "why": "; ".join(why),
    }


def summarize(results: Sequence[RequestResult], duration_s: float, slo: Slo | None,
              extra: dict[str, Any]) -> dict[str, Any]:
    """The run's result file: vLLM's keys, qinfra's, then the per-request arrays."""
    done = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in done)
    in_tokens = sum(r.input_tokens for r in done)
    tpots = [t for r in done if (t := r.tpot_s) is not None]
    per_s = 1 / duration_s if duration_s > 0 else 0.0
    good = [r for r in done if slo is None or slo.met(r)]
    summary: dict[str, Any] = {
        "duration": duration_s,
        "completed": len(done),
        "failed": len(results) - len(done),
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": len(done) * per_s,
        "request_goodput": len(good) * per_s if slo is not None else None,
        "output_throughput": out_tokens * per_s,
        "total_token_throughput": (in_tokens + out_tokens) * per_s,
    }
    summary |= _describe("ttft", [r.ttft_s for r in done])
    summary |= _describe("tpot", tpots)
    summary |= _describe("itl", [gap for r in done for gap in r.itl_s])
    summary |= _describe("e2el", [r.e2el_s for r in done])
    summary["goodput"] = ({"slo": slo.to_json(), "requests_per_s": len(good) * per_s,
                           "fraction": len(good) / len(results) if results else 0.0}
                          if slo is not None else None)
    summary |= extra
    summary |= {
        "input_lens": [r.input_tokens for r in results],
        "output_lens": [r.output_tokens for r in results],
        "ttfts": [r.ttft_s for r in results],
        "tpots": [r.tpot_s for r in results],
        "e2els": [r.e2el_s for r in results],
        "itls": [r.itl_s for r in results],
        "errors": [r.error for r in results],
        "sent_s": [r.sent_s for r in results],
        "server_prompt_ms": [r.server_prompt_ms for r in results],
        "server_predicted_ms": [r.server_predicted_ms for r in results],
    }
    return summary


def usd_per_million_output_tokens(usd_per_hour: float | None, output_throughput: float) -> float | None:
    """What a million generated tokens cost at the plan's hourly price and this throughput;
    None where the stack has no price (a local target) or nothing was generated."""
    if not usd_per_hour or output_throughput <= 0:
        return None
    return usd_per_hour / (output_throughput * 3600) * 1_000_000
