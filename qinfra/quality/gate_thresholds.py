"""The quality gate's bars: an acceptance bar the same for every format, and the drift expected of
each format family, loaded from data/gate_thresholds.toml and overridable per stack."""

from __future__ import annotations

import functools
import math
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from importlib import resources
from typing import Any

from qinfra.core.errors import SpecError, suggest
from qinfra.core.formats import Format, FormatKind, format_info

TABLE = "gate_thresholds.toml"


class Metric(StrEnum):
    """What the gate measures; a bar on each is either a `_max` or a `_min`."""

    MEAN_KLD = "mean_kld"
    SAME_TOP_P = "same_top_p"
    PPL_RATIO = "ppl_ratio"
    EXACT_MATCH = "exact_match"
    PREFIX_FRACTION = "prefix_fraction"
    ACCURACY_DROP = "accuracy_drop"  # baseline accuracy - quantized, on prompts with answers
    LOOP_EXCESS = "loop_excess"  # quantized loop rate - baseline's
    UNEXPECTED_REFUSAL_RATE = "unexpected_refusal_rate"  # refused where the baseline answered


@dataclass(frozen=True)
class Bar:
    """Limits on the metrics; None means no limit on that metric."""

    mean_kld_max: float | None = None
    same_top_min: float | None = None
    ppl_ratio_max: float | None = None
    exact_match_min: float | None = None
    prefix_fraction_min: float | None = None
    accuracy_drop_max: float | None = None
    loop_excess_max: float | None = None
    unexpected_refusal_rate_max: float | None = None

    def limits(self) -> tuple[tuple[Metric, str, float], ...]:
        """(metric, "max" | "min", limit) for every limit set, in table order."""
        out = []
        for field in fields(self):
            limit = getattr(self, field.name)
            if limit is not None:
                name, _, side = field.name.rpartition("_")
                metric = Metric.SAME_TOP_P if name == "same_top" else Metric(name)
                out.append((metric, side, float(limit)))
        return tuple(out)

    def failures(self, metrics: Mapping[str, Any], what: str) -> list[str]:
        """One reason per limit the metrics break, e.g. `mean_kld 0.40 > 0.15 (acceptance)`;
        a metric the method did not measure is not judged. A figure that is not a finite
        number (NaN from a broken file, or text in a hand-written report) breaks every limit
        on it: NaN compares false both ways, so it would otherwise pass."""
        reasons = []
        for metric, side, limit in self.limits():
            value = metrics.get(metric.value)
            if value is None:
                continue
            sign = ">" if side == "max" else "<"
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                bar = "at most" if side == "max" else "at least"
                shown = str(value) if isinstance(value, float) else repr(value)[:40]
                reasons.append(f"{metric.value} {shown} is not a finite number "
                               f"(bar: {bar} {limit:g}, {what})")
            elif (side == "max" and value > limit) or (side == "min" and value < limit):
                reasons.append(f"{metric.value} {value:.4g} {sign} {limit:g} ({what})")
        return reasons

    def merged(self, overrides: Mapping[str, Any]) -> Bar:
        return replace(self, **{k: float(v) for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class Thresholds:
    """The bars one quantized format is judged by: acceptance and its family's expected drift."""

    family: str
    acceptance: Bar
    expected: Bar

    def failures(self, metrics: Mapping[str, Any]) -> list[str]:
        return [*self.acceptance.failures(metrics, "acceptance"),
                *self.expected.failures(metrics, f"expected of family {self.family}")]

    def to_json(self) -> dict[str, Any]:
        drop = {k: v for k, v in asdict(self.acceptance).items() if v is not None}
        fam = {k: v for k, v in asdict(self.expected).items() if v is not None}
        return {"family": self.family, "acceptance": drop, "expected": fam}


@dataclass(frozen=True)
class ThresholdTable:
    acceptance: Bar
    families: Mapping[str, Bar]
    family_of: Mapping[Format, str]


BAR_KEYS = tuple(f.name for f in fields(Bar))


def _bar(row: Mapping[str, Any], where: str) -> Bar:
    unknown = sorted(set(row) - set(BAR_KEYS) - {"formats"})
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {', '.join(BAR_KEYS)}")
    return Bar(**{k: float(row[k]) for k in BAR_KEYS if k in row})


@functools.cache
def table() -> ThresholdTable:
    """The shipped table, read once; ValueError when it is malformed (a test checks it)."""
    raw = tomllib.loads(resources.files("qinfra.quality").joinpath("data", TABLE).read_text())
    families = {name: _bar(row, f"family.{name}") for name, row in raw["family"].items()}
    family_of: dict[Format, str] = {}
    for name, row in raw["family"].items():
        for fmt in row["formats"]:
            if Format(fmt) in family_of:
                raise ValueError(f"{fmt} is in two families: {family_of[Format(fmt)]} and {name}")
            family_of[Format(fmt)] = name
    return ThresholdTable(_bar(raw["acceptance"], "acceptance"), families, family_of)


def thresholds_for(fmt: Format, overrides: Mapping[str, Any] | None = None) -> Thresholds:
    """The bars for a quantized `fmt`, with a stack's `qinfra:gate` overrides applied:
    `{"acceptance": {...}, "family": {"w4": {...}}}` (keys as in the shipped table).

    Raises SpecError when `fmt` is not a quantized format.
    """
    if format_info(fmt).kind is not FormatKind.QUANTIZED:
        raise SpecError(f"the gate judges a quantized variant; {fmt.value} is a baseline format")
    t = table()
    family = t.family_of[fmt]
    overrides = overrides or {}
    for name in overrides.get("family") or {}:
        if name not in t.families:
            raise SpecError(f"qinfra:gate.family.{name}: unknown format family.{suggest(name, t.families)}"
                            f" Known: {', '.join(t.families)}")
    acceptance = t.acceptance.merged(overrides.get("acceptance") or {})
    expected = t.families[family].merged((overrides.get("family") or {}).get(family) or {})
    return Thresholds(family, acceptance, expected)
