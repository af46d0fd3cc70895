"""The offline gate method for GGUF: real llama-perplexity saves the baseline's logits over an
evaluation text once (cached: the file is large), then scores the quantized file against them.

The figures are llama-perplexity's own, parsed from its report, so the gate's mean KLD is the
number a direct `llama-perplexity --kl-divergence` run prints on the same text.
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qinfra.core.errors import ArtifactError
from qinfra.core.fileio import replacing
from qinfra.serving.llamacpp import INSTALL_HINT, find_binary

PERPLEXITY = "llama-perplexity"
# llama-perplexity's default context, the one the thresholds were measured at (data table [S2]).
CONTEXT_TOKENS = 512
_TAIL_LINES = 15

# Lines of llama-perplexity's KL-divergence report (tools/perplexity/perplexity.cpp).
# printf's %lf writes a non-finite double as nan, -nan, inf or -inf (glibc): NaN logits from a
# corrupted file reach the report as such, and must parse as figures (judged: FAIL), not as
# a missing line.
_FLOAT = r"(-?[0-9.]+(?:e[-+]?\d+)?|[-+]?nan|[-+]?inf)"
_MEAN_KLD = re.compile(rf"^Mean\s+KLD:\s+{_FLOAT}\s+±\s+{_FLOAT}", re.M)
_PPL_RATIO = re.compile(rf"^Mean PPL\(Q\)/PPL\(base\)\s*:\s+{_FLOAT}\s+±\s+{_FLOAT}", re.M)
_PPL_Q = re.compile(rf"^Mean PPL\(Q\)\s*:\s+{_FLOAT}", re.M)
_PPL_BASE = re.compile(rf"^Mean PPL\(base\)\s*:\s+{_FLOAT}", re.M)
_RMS_DP = re.compile(rf"^RMS Δp\s*:\s+{_FLOAT}\s+±\s+{_FLOAT}\s*%", re.M)
_SAME_TOP = re.compile(rf"^Same top p:\s+{_FLOAT}\s+±\s+{_FLOAT}\s*%", re.M)
_KLD_ROW = re.compile(rf"^\s*(Maximum|Minimum|Median|[0-9.]+%)\s+KLD:\s+{_FLOAT}\s*$", re.M)
_CHUNKS = re.compile(r"computing over (\d+) chunks")
# One row of the running figures printed after each chunk: chunk, PPL(Q), ln(PPL(Q)/PPL(base)),
# KLD, RMS Δp %, same top p % (each with its ±).
_PM = rf"{_FLOAT}\s+±\s+{_FLOAT}"
_CHUNK_ROW = re.compile(rf"^\s*(\d+)\s+{_PM}\s+{_PM}\s+{_PM}\s+{_PM}\s*%\s+{_PM}\s*%\s*$", re.M)


@dataclass(frozen=True)
class KldMetrics:
    """llama-perplexity's KL-divergence figures; shares (same_top_p, rms_dp) as fractions 0..1,
    each with the ± error llama-perplexity prints."""

    mean_kld: float
    mean_kld_err: float
    ppl_ratio: float
    ppl_ratio_err: float
    same_top_p: float
    same_top_p_err: float
    rms_dp: float
    rms_dp_err: float
    ppl_quantized: float
    ppl_base: float
    chunks: int
    kld_percentiles: dict[str, float] = field(default_factory=dict)

    def judged(self) -> dict[str, float]:
        """The metrics the thresholds judge."""
        return {"mean_kld": self.mean_kld, "same_top_p": self.same_top_p, "ppl_ratio": self.ppl_ratio}

    def non_finite(self) -> list[str]:
        """`name value` of every judged figure that is NaN or infinite, as a corrupted or broken
        quantized file makes them: no bar can be said to hold for such a figure."""
        return [f"{k} {v}" for k, v in self.judged().items() if not math.isfinite(v)]

    def to_json(self) -> dict[str, Any]:
        return {
            "mean_kld": self.mean_kld, "mean_kld_err": self.mean_kld_err,
            "ppl_ratio": self.ppl_ratio, "ppl_ratio_err": self.ppl_ratio_err,
            "same_top_p": self.same_top_p, "same_top_p_err": self.same_top_p_err,
            "rms_dp": self.rms_dp, "rms_dp_err": self.rms_dp_err,
            "ppl_quantized": self.ppl_quantized, "ppl_base": self.ppl_base,
            "chunks": self.chunks, "kld_percentiles": dict(self.kld_percentiles),
        }


def parse_report(text: str) -> KldMetrics:
    """The figures of one `llama-perplexity --kl-divergence` run's output.

    Raises ArtifactError when a figure is missing (an older or newer build that prints otherwise).
    """
    def pair(pattern: re.Pattern[str], name: str) -> tuple[float, float]:
        match = pattern.search(text)
        if match is None:
            raise ArtifactError(f"{PERPLEXITY} printed no '{name}' line; its output ends:\n"
                                + "\n".join(text.splitlines()[-_TAIL_LINES:]))
        groups = [float(g) for g in match.groups()]
        return groups[0], groups[1] if len(groups) > 1 else 0.0

    kld, kld_err = pair(_MEAN_KLD, "Mean KLD")
    ratio, ratio_err = pair(_PPL_RATIO, "Mean PPL(Q)/PPL(base)")
    same, same_err = pair(_SAME_TOP, "Same top p")
    rms, rms_err = pair(_RMS_DP, "RMS Δp")
    chunks = _CHUNKS.search(text)
    return KldMetrics(
        mean_kld=kld, mean_kld_err=kld_err, ppl_ratio=ratio, ppl_ratio_err=ratio_err,
        same_top_p=same / 100, same_top_p_err=same_err / 100,
        rms_dp=rms / 100, rms_dp_err=rms_err / 100,
        ppl_quantized=pair(_PPL_Q, "Mean PPL(Q)")[0], ppl_base=pair(_PPL_BASE, "Mean PPL(base)")[0],
        chunks=int(chunks.group(1)) if chunks else 0,
        kld_percentiles={m.group(1).lower(): float(m.group(2)) for m in _KLD_ROW.finditer(text)},
    )


def logits_path(cache: Path, baseline_id: str, text_sha256: str) -> Path:
    """Where the baseline's logits over one text live: per baseline id, text hash and context."""
    return cache / "gate" / "logits" / f"{baseline_id}-text-{text_sha256[:16]}-c{CONTEXT_TOKENS}.kld"


def baseline_logits(baseline: Path, text: Path, dest: Path) -> bool:
    """Save the baseline GGUF's logits over `text` at `dest` unless they are there already;
    True when they were computed now. Written beside `dest` and renamed, so an interrupted run
    never leaves a half file that a later gate would trust."""
    if dest.is_file() and dest.stat().st_size > 0:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dest) as tmp:
        _run([*_base_argv(baseline, text), "--kl-divergence-base", str(tmp)],
             what=f"{PERPLEXITY} on the baseline {baseline.name}")
    return True


def non_finite_running_figures(text: str) -> KldMetrics | None:
    """The running figures of the last chunk row when they are not all finite, else None.

    NaN logits (a corrupted file) make every running sum NaN, so the final figures can only be
    NaN too; and llama-perplexity then sorts NaN KLDs (undefined behaviour in std::sort), so its
    summary may be missing or the process may die. The chunk rows printed before that are
    conclusive evidence for a FAIL, and are used instead of reporting a parser error.
    """
    rows = list(_CHUNK_ROW.finditer(text))
    if not rows:
        return None
    row = [float(g) for g in rows[-1].groups()[1:]]
    ppl, _, ln_ratio, ln_err, kld, kld_err, rms, rms_err, same, same_err = row
    if all(math.isfinite(v) for v in (ppl, ln_ratio, kld, rms, same)):
        return None
    ratio = math.exp(ln_ratio) if math.isfinite(ln_ratio) else math.nan
    chunks = _CHUNKS.search(text)
    return KldMetrics(
        mean_kld=kld, mean_kld_err=kld_err, ppl_ratio=ratio, ppl_ratio_err=ratio * ln_err,
        same_top_p=same / 100, same_top_p_err=same_err / 100, rms_dp=rms / 100,
        rms_dp_err=rms_err / 100, ppl_quantized=ppl, ppl_base=ppl / ratio if ratio else math.nan,
        chunks=int(chunks.group(1)) if chunks else int(rows[-1].group(1)),
    )


def kl_divergence(quantized: Path, text: Path, logits: Path) -> KldMetrics:
    """Score the quantized GGUF against the saved baseline logits; ArtifactError when it fails,
    unless the figures it printed are already NaN or infinite (a corrupted file): those are
    returned, to be judged a FAIL, even when its summary is missing or it died after them."""
    argv = [*_base_argv(quantized, text), "--kl-divergence-base", str(logits), "--kl-divergence"]
    what = f"{PERPLEXITY} --kl-divergence on {quantized.name}"
    code, out = _execute(argv, what=what)
    try:
        return parse_report(_checked(code, out, what=what))
    except ArtifactError:
        if (metrics := non_finite_running_figures(out)) is not None:
            return metrics
        raise


def _base_argv(model: Path, text: Path) -> list[str]:
    return [str(find_binary(PERPLEXITY)), "-m", str(model), "-f", str(text), "-c", str(CONTEXT_TOKENS)]


def _run(argv: list[str], *, what: str) -> str:
    """Run llama-perplexity to completion; its report (stdout and stderr together) on success."""
    code, out = _execute(argv, what=what)
    return _checked(code, out, what=what)


def _execute(argv: list[str], *, what: str) -> tuple[int, str]:
    """Run llama-perplexity to completion: its exit code, and stdout and stderr together."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ArtifactError(f"{what}: cannot run {argv[0]}: {exc}. {INSTALL_HINT}") from exc
    return done.returncode, done.stdout + "\n" + done.stderr


def _checked(code: int, out: str, *, what: str) -> str:
    """`out` of a run that succeeded; ArtifactError with its tail otherwise."""
    # A text shorter than two contexts is refused with exit 0 (and an empty logits file).
    too_short = "you need at least" in out
    if code != 0 or too_short:
        tail = "\n".join(out.strip().splitlines()[-_TAIL_LINES:])
        hint = f"\nTo fix: give a longer text (at least {2 * CONTEXT_TOKENS} tokens)" if too_short else ""
        raise ArtifactError(f"{what} failed (exit code {code}):\n{tail}{hint}")
    return out
